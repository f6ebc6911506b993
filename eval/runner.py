"""Run a pipeline over a dataset stage by stage and write the contract files.

``OUT/run.<stage>.trec`` for every stage and ``OUT/metrics.json`` =
``{"stages": {stage: {measure: value}}, "timings": {...}, ...}``, each written atomically.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.machine import cpu_model
from retrieval.artifacts import write_text_atomic
from retrieval.calibration import baseline_scores
from retrieval.data import Dataset, Run, format_run, relevant_grade
from retrieval.filter_measures import FilterReport
from retrieval.hits import Hit
from retrieval.measures import MetricSuite
from retrieval.pipeline import Pipeline


class EvalRunner:
    """Evaluates one pipeline on one dataset; ``run`` returns what it wrote to metrics.json."""

    def __init__(self, pipeline: Pipeline, dataset: Dataset, out: Path, progress: bool = True,
                 measures: Sequence[str] = (), only: bool = False) -> None:
        """``measures``: ir_measures names beside the defaults, or instead of them with ``only``."""
        self.pipeline, self.dataset, self.out, self.progress = pipeline, dataset, Path(out), progress
        self.suite = MetricSuite(dataset.qrels, measures, only)

    def run(self, extra_timings: dict[str, float] | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        result = self.pipeline.run(self.dataset.queries, progress=self.progress)
        total = time.perf_counter() - start
        n = max(1, len(self.dataset.queries))
        self.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, Any]] = {}
        for stage, hits in result.stages.items():
            run: Run = {q: {h.id: h.score for h in ranked} for q, ranked in hits.items()}
            write_text_atomic(self.out / f"run.{stage}.trec", format_run(run, f"siftrank-{stage}"))
            results[stage] = dict(self.suite.evaluate(run))
        if self.pipeline.filter is not None:
            results[self.pipeline.filter.name].update(self.filter_metrics(result.first))
        if self.pipeline.reranker is not None:
            name = self.pipeline.reranker.stage_names[0]
            results[name].update(self.pipeline.reranker.summarise(list(result.stats.get(name, {}).values())))
        timings = {**(extra_timings or {}), "pipeline_seconds": round(total, 3), "ms_per_query": round(1000 * total / n, 2)}
        timings.update({f"{stage}_seconds": round(sec, 3) for stage, sec in result.timings.items()})
        metrics = {
            "stages": results,
            "final_stage": result.final,
            "timings": timings,
            "dataset": str(self.dataset.root),
            "qrels": str(self.dataset.qrels_path),
            "queries": len(self.dataset.queries),
            "pipeline": self.pipeline.describe(),
            "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpu": cpu_model()},
        }
        write_text_atomic(self.out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
        return metrics

    def filter_metrics(self, candidates: dict[str, list[Hit]]) -> dict[str, Any]:
        """Pair-level filter quality over the first stage's candidates, for the calibrator and, in the
        same run, its baselines (thresholds chosen on the calibrator's training data)."""
        calibrator = getattr(self.pipeline.filter, "calibrator", None)
        if calibrator is None:
            return {}
        threshold = self.pipeline.filter.threshold  # type: ignore[union-attr]
        qids = list(self.dataset.queries)
        rel = relevant_grade(self.dataset.qrels)
        labels = [np.array([self.dataset.qrels[q].get(h.id, 0) >= rel for h in candidates[q]], dtype=np.float64) for q in qids]
        relevance = [np.array([h.relevance for h in candidates[q]], dtype=np.float64) for q in qids]
        cosines = [np.array([h.cosine for h in candidates[q]], dtype=np.float64) for q in qids]
        out: dict[str, Any] = dict(FilterReport(relevance, labels, threshold).summary())
        out["baselines"] = {name: FilterReport(baseline_scores(name, spec, cosines), labels, spec["threshold"],
                                               probabilistic=name == "platt").summary()
                            for name, spec in calibrator.extra.get("baselines", {}).items()}
        return out
