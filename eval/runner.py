"""Run a pipeline over a dataset stage by stage and write the contract files.

``OUT/run.<stage>.trec`` for every stage and ``OUT/metrics.json`` =
``{"stages": {stage: {measure: value}}, "timings": {...}, ...}``, each written atomically.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.artifacts import write_text_atomic
from retrieval.calibration import baseline_scores
from retrieval.data import Dataset, Run, format_run, read_run, relevant_grade
from retrieval.hits import Hit
from retrieval.pipeline import Pipeline

from eval.filtering import FilterReport
from eval.metrics import MetricSuite


class EvalRunner:
    """Evaluates one pipeline on one dataset; ``run`` returns what it wrote to metrics.json."""

    def __init__(self, pipeline: Pipeline, dataset: Dataset, out: Path, progress: bool = True) -> None:
        self.pipeline, self.dataset, self.out, self.progress = pipeline, dataset, Path(out), progress
        self.suite = MetricSuite(dataset.qrels)

    def run(self, first_stage_run: Path | None = None, extra_timings: dict[str, float] | None = None) -> dict[str, Any]:
        candidates = read_run(first_stage_run) if first_stage_run else None
        start = time.perf_counter()
        stages = self.pipeline.run(self.dataset.queries, candidates=candidates, progress=self.progress)
        total = time.perf_counter() - start
        n = max(1, len(self.dataset.queries))
        self.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, float]] = {}
        for stage, hits in stages.items():
            run: Run = {q: {h.id: h.score for h in ranked} for q, ranked in hits.items()}
            write_text_atomic(self.out / f"run.{stage}.trec", format_run(run, f"siftrank-{stage}"))
            results[stage] = self.suite.evaluate(run)
        if "filter" in stages:
            first = next(iter(stages.values()))
            results["filter"].update(self.filter_metrics(first))  # type: ignore[arg-type]
        if "rerank" in stages:
            results["rerank"].update(self.rank_cost())
        timings = {**(extra_timings or {}), "pipeline_seconds": round(total, 3), "ms_per_query": round(1000 * total / n, 2)}
        timings.update({f"{stage}_seconds": round(sec, 3) for stage, sec in self.pipeline.timings.items()})
        metrics = {
            "stages": results,
            "timings": timings,
            "dataset": str(self.dataset.root),
            "qrels": str(self.dataset.qrels_path),
            "queries": len(self.dataset.queries),
            "first_stage_run": str(first_stage_run) if first_stage_run else None,
            "encoder": self.pipeline.encoder.identity() | {"precision": self.pipeline.encoder.precision, "backend": self.pipeline.encoder.backend,
                                                           "query_precision": self.pipeline.encoder.query_precision,
                                                           "device": self.pipeline.encoder.device}
            if self.pipeline.encoder is not None and candidates is None else None,
            "calibrator": self.pipeline.calibrator.config() if self.pipeline.calibrator is not None else None,
            "ranker": self.pipeline.ranker.config() if self.pipeline.ranker is not None else None,
            "index": self.pipeline.index.kind if self.pipeline.index is not None and candidates is None else None,
            "machine": {"python": platform.python_version(), "processor": platform.machine()},
        }
        write_text_atomic(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics

    def rank_cost(self) -> dict[str, float]:
        """What the LLM ranker cost per query (tokens in and out, seconds) and how often its answer
        could not be read (parse failures: no usable identifier; repaired: ids missing or repeated)."""
        stats = list(self.pipeline.rank_stats.values())
        n = max(1, len(stats))
        return {"input_tokens_per_query": round(sum(s.input_tokens for s in stats) / n, 1),
                "output_tokens_per_query": round(sum(s.output_tokens for s in stats) / n, 1),
                "seconds_per_query": round(sum(s.seconds for s in stats) / n, 3),
                "llm_calls_per_query": round(sum(s.calls for s in stats) / n, 2),
                "parse_failures": sum(s.parse_failures for s in stats),
                "parse_failure_rate": round(sum(s.parse_failures for s in stats) / max(1, sum(s.calls for s in stats)), 4),
                "repaired_answers": sum(s.repaired for s in stats),
                "truncated_passages_per_query": round(sum(s.truncated_passages for s in stats) / n, 1)}

    def filter_metrics(self, candidates: dict[str, list[Hit]]) -> dict[str, Any]:
        """Pair-level filter quality over the first stage's candidates, for the calibrator and, in the
        same run, its baselines (thresholds chosen on the calibrator's training data)."""
        calibrator = self.pipeline.calibrator
        assert calibrator is not None and self.pipeline.threshold is not None
        qids = list(self.dataset.queries)
        rel = relevant_grade(self.dataset.qrels)
        labels = [np.array([self.dataset.qrels[q].get(h.id, 0) >= rel for h in candidates[q]], dtype=np.float64) for q in qids]
        relevance = [np.array([h.relevance for h in candidates[q]], dtype=np.float64) for q in qids]
        cosines = [np.array([h.cosine for h in candidates[q]], dtype=np.float64) for q in qids]
        out: dict[str, Any] = dict(FilterReport(relevance, labels, self.pipeline.threshold).summary())
        out["baselines"] = {name: FilterReport(baseline_scores(name, spec, cosines), labels, spec["threshold"],
                                               probabilistic=name == "platt").summary()
                            for name, spec in calibrator.extra.get("baselines", {}).items()}
        return out
