"""Measures and significance, in one place for eval, training and benchmarks: which measures siftrank
reports, computed through ir_measures (trec_eval), and the paired tests between two systems.

nDCG@10 uses the graded labels. Binary measures (RR, R, AP) count grade >= 2 as relevant when the
qrels are graded beyond 1 (the TREC DL passage convention), and grade >= 1 for binary qrels such as
BEIR's, where ``rel=2`` would silently score zero; the measure names say which was used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ir_measures
import numpy as np

from retrieval.data import Qrels, relevant_grade


class MetricSuite:
    """The standard measures for one set of qrels: aggregate and per-query scores of runs."""

    def __init__(self, qrels: Qrels, extra: Sequence[str] = (), only: bool = False) -> None:
        """``extra``: more ir_measures names after the five defaults, or with ``only`` instead of them (``-m``)."""
        self.qrels = qrels
        self.rel = relevant_grade(qrels)
        suffix = f"(rel={self.rel})" if self.rel != 1 else ""
        defaults = ["nDCG@10", f"RR{suffix}@10", f"R{suffix}@100", f"R{suffix}@1000", f"AP{suffix}"]
        self.names = [] if only and extra else defaults
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


def per_query(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
              measure: str = "nDCG@10", judged_only: bool = False) -> dict[str, float]:
    """One measure per query of ``run``; a query of the run with no ranked document counts 0 (queries the
    run does not name are left out, so a subset of queries is scored on its own). ``judged_only``: each
    ranking condensed to its judged documents first (Sakai, SIGIR 2007), for labels that judge only what
    one system showed (clicks): otherwise every document that system never showed counts as not relevant,
    and the system that logged the labels wins every comparison."""
    parsed = ir_measures.parse_measure(measure)
    qrels_rows = [ir_measures.Qrel(q, d, int(g)) for q in run for d, g in qrels.get(q, {}).items()]
    run_rows = [ir_measures.ScoredDoc(q, d, float(s)) for q, docs in run.items() for d, s in docs.items()
                if not judged_only or d in qrels.get(q, {})]
    values = dict.fromkeys(run, 0.0)
    for metric in ir_measures.iter_calc([parsed], qrels_rows, run_rows):
        values[metric.query_id] = float(metric.value)
    return values


def paired_test(a: Mapping[str, float], b: Mapping[str, float], permutations: int = 10_000,
                seed: int = 0) -> dict[str, float]:
    """``b - a`` over the queries both score: mean delta, its std, the t-test and randomisation p-values."""
    from scipy.stats import ttest_rel

    qids = sorted(set(a) & set(b))
    if not qids:
        raise ValueError("no query is scored by both systems")
    x = np.array([a[q] for q in qids], dtype=np.float64)
    y = np.array([b[q] for q in qids], dtype=np.float64)
    diff = y - x
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(permutations, diff.size))
    randomised = float((np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12).mean())
    t_p = float(ttest_rel(y, x).pvalue) if np.any(diff != 0) else 1.0
    return {"delta": float(diff.mean()), "delta_std": float(diff.std(ddof=1)) if diff.size > 1 else 0.0,
            "t_test_p": t_p, "randomisation_p": randomised, "queries": len(qids)}


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p of two aligned score lists (1.0 when they never differ)."""
    return paired_test({str(i): x for i, x in enumerate(a)}, {str(i): x for i, x in enumerate(b)}, permutations=1)["t_test_p"]


def one_standard_error(per_query_scores: Mapping[str, Mapping[str, float]], simplest_first: Sequence[str]) -> str:
    """The one-standard-error rule over systems scored on the same queries: the first system of
    ``simplest_first`` whose mean is within one standard error of the paired difference to the best mean."""
    means = {name: float(np.mean(list(v.values()))) for name, v in per_query_scores.items()}
    best = max(means, key=lambda name: means[name])
    for name in simplest_first:
        qids = sorted(set(per_query_scores[name]) & set(per_query_scores[best]))
        diff = np.array([per_query_scores[best][q] - per_query_scores[name][q] for q in qids])
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        if means[name] >= means[best] - se:
            return name
    return best


def default_unless_beaten(per_query_scores: Mapping[str, Mapping[str, float]], preference: Sequence[str],
                          alpha: float = 0.05) -> str:
    """A choice made on few queries: the first of ``preference`` (the default) stays unless another system
    beats it by a paired t-test at ``alpha``; among the systems that do, the one-standard-error rule (in
    preference order). On tens of queries the one-standard-error rule alone follows noise: the best mean
    among several options is optimistic, and the default it leaves is what holds across domains."""
    default = preference[0]
    base = per_query_scores[default]
    mean = {name: float(np.mean(list(per_query_scores[name].values()))) for name in preference}
    better = [name for name in preference[1:] if mean[name] > mean[default]
              and paired_test(base, per_query_scores[name], permutations=1)["t_test_p"] < alpha]
    return one_standard_error({name: per_query_scores[name] for name in better}, better) if better else default


def _complete(run: Mapping[str, Mapping[str, float]], qrels: Qrels) -> dict[str, dict[str, float]]:
    """trec_eval averages only over queries present in the run; an empty ranking must count as 0,
    so queries with no results get one unjudged placeholder document."""
    full = {q: dict(run[q]) for q in run if q in qrels and run[q]}
    for qid in qrels:
        full.setdefault(qid, {"__siftrank_no_results__": 0.0})
    return full
