"""Evaluate relevance filters on held-out queries: one split, or query-level k-fold cross-validation.

Every row of a result is one filter on the same test candidates: the Cosine Adapter chosen on
validation queries, the best adapter of each feature set (the ablation), and the query-independent
baselines fitted on the same training data (raw cosine, global Platt, per-query min-max, fixed top-k).
Thresholds always come from training/validation queries; only the measuring happens on test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.calibration import Calibrator, baseline_scores
from retrieval.data import Qrels, query_folds
from retrieval.filter_measures import FilterReport
from retrieval.measures import MetricSuite
from training.calibrate import CalibratorTrainer, CandidateSet

Table = dict[str, dict[str, float | None]]


def filter_reports(calibrator: Calibrator, test: CandidateSet, qrels: Qrels,
                   variants: dict[str, Calibrator] | None = None) -> tuple[Table, dict[str, FilterReport]]:
    """Pair metrics plus nDCG@10 of the filtered top-K, for the adapter, its variants and the baselines."""
    suite = MetricSuite({q: qrels[q] for q in test.qids if q in qrels})
    filters: dict[str, tuple[list[np.ndarray], float, bool]] = {
        "adapter": (calibrator.relevance(test.query_vectors, test.cosines), calibrator.threshold, True)}
    for name, variant in (variants or {}).items():
        filters[f"adapter[{name}]"] = (variant.relevance(test.query_vectors, test.cosines), variant.threshold, True)
    for name, spec in calibrator.extra.get("baselines", {}).items():
        filters[name] = (baseline_scores(name, spec, test.cosines), spec["threshold"], name == "platt")
    unfiltered = {q: dict(zip(ids, map(float, c))) for q, ids, c in zip(test.qids, test.doc_ids, test.cosines)}
    base_ndcg = suite.evaluate(unfiltered)["nDCG@10"]
    table: Table = {}
    reports: dict[str, FilterReport] = {}
    for name, (scores, threshold, probabilistic) in filters.items():
        report = FilterReport(scores, test.labels, threshold, probabilistic)
        kept = {q: {d: float(c) for d, c, s in zip(ids, cos, sc) if s >= threshold}
                for q, ids, cos, sc in zip(test.qids, test.doc_ids, test.cosines, scores)}
        table[name] = {**report.summary(), "nDCG@10": suite.evaluate(kept)["nDCG@10"], "nDCG@10_unfiltered": base_ndcg}
        reports[name] = report
    return table, reports


def aggregate(tables: list[Table]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation of every metric of every filter over folds or seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in tables[0]:
        out[name] = {}
        for metric in tables[0][name]:
            values = [float(v) for t in tables if name in t and (v := t[name][metric]) is not None]
            if values:
                out[name][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
    return out


@dataclass
class CalibrationCV:
    """Query-level k-fold cross-validation of a calibrator trainer (for small collections like DL19)."""

    make_trainer: Callable[[int], CalibratorTrainer]
    folds: int = 5
    seed: int = 0

    def run(self, data: CandidateSet, qrels: Qrels, encoder: dict[str, Any] | None = None) -> tuple[list[Table], list[dict]]:
        """Per-fold tables, and per fold the configuration chosen on its validation queries (the
        per-fold :class:`FilterReport` objects stay in ``self.reports`` for pooled curves)."""
        rows = [str(i) for i in range(len(data))]
        parts = [np.array([int(r) for r in part]) for part in query_folds(rows, self.folds, self.seed)]
        tables, chosen = [], []
        self.reports: list[dict[str, FilterReport]] = []
        for fold, test_rows in enumerate(parts):
            train_rows = np.concatenate([p for i, p in enumerate(parts) if i != fold])
            trainer = self.make_trainer(self.seed + fold)
            calibrator = trainer.fit(data.subset(train_rows), encoder)
            table, reports = filter_reports(calibrator, data.subset(test_rows), qrels, trainer.best_by_features)
            tables.append(table)
            self.reports.append(reports)
            chosen.append({"fold": fold, **calibrator.extra["chosen"]})
        return tables, chosen
