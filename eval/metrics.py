"""Which measures siftrank reports, and their computation through ir_measures (trec_eval).

nDCG@10 uses the graded labels. Binary measures (RR, R, AP) count grade >= 2 as relevant when the
qrels are graded beyond 1 (the TREC DL passage convention), and grade >= 1 for binary qrels such as
BEIR's, where ``rel=2`` would silently score zero; the measure names say which was used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ir_measures

from retrieval.data import Qrels, relevant_grade


class MetricSuite:
    """The standard measures for one set of qrels: aggregate and per-query scores of runs."""

    def __init__(self, qrels: Qrels, extra: Sequence[str] = ()) -> None:
        self.qrels = qrels
        self.rel = relevant_grade(qrels)
        suffix = f"(rel={self.rel})" if self.rel != 1 else ""
        self.names = ["nDCG@10", f"RR{suffix}@10", f"R{suffix}@100", f"R{suffix}@1000", f"AP{suffix}"]
        self.names += [name for name in extra if name not in self.names]  # any ir_measures name (``-m``)
        self.measures = [ir_measures.parse_measure(name) for name in self.names]
        self.keys = {str(m): name for m, name in zip(self.measures, self.names)}  # ir_measures' spelling → ours

    def evaluate(self, run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Mean of each measure over the judged queries (queries missing from the run score 0)."""
        scores = {self.keys[str(m)]: v for m, v in ir_measures.calc_aggregate(self.measures, self.qrels, _complete(run, self.qrels)).items()}
        return {name: float(scores[name]) for name in self.names}

    def per_query(self, run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
        """``{measure: {qid: value}}`` for significance tests and per-query plots."""
        out: dict[str, dict[str, float]] = {name: {} for name in self.names}
        for metric in ir_measures.iter_calc(self.measures, self.qrels, _complete(run, self.qrels)):
            out[self.keys[str(metric.measure)]][metric.query_id] = float(metric.value)
        return out


def _complete(run: Mapping[str, Mapping[str, float]], qrels: Qrels) -> dict[str, dict[str, float]]:
    """trec_eval averages only over queries present in the run; an empty ranking must count as 0,
    so queries with no results get one unjudged placeholder document."""
    full = {q: dict(run[q]) for q in run if q in qrels and run[q]}
    for qid in qrels:
        full.setdefault(qid, {"__siftrank_no_results__": 0.0})
    return full
