"""Choosing how much the LLM ranker counts: the fusion method and weight, by query-level cross-validation.

Input: for a set of queries the ranker did not learn from (the trainer's validation split), the first
stage's scores and the ranker's scores of the same top-``depth`` candidates. Every (method, weight)
of the grid is scored per query once (nDCG@10 via ir_measures); each fold's choice is the best mean on
the other folds and is measured on its own. The final weight is the best on all queries, unless the
cross-validated estimate of that procedure does not beat the first stage: then the weight is 0 (the
ranker is off), which is a legal and reported outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.data import query_folds
from retrieval.errors import SiftrankError
from retrieval.fusion import METHODS, ScoreFusion
from retrieval.measures import paired_p, per_query

Scores = Mapping[str, Mapping[str, float]]  # qid -> doc id -> score
WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))


@dataclass
class FusionChoice:
    """The chosen fusion, the cross-validated estimate behind it and the whole grid."""

    fusion: ScoreFusion
    cv_fused: float  # mean held-out nDCG@10 of the selection procedure
    cv_first: float  # the first stage on the same queries
    cv_ranker: float  # the ranker's own order on the same queries
    cv_p: float = 1.0  # paired t-test p of the held-out fused against the first stage
    alpha: float = 0.05
    best_weight: float = 0.0  # the best weight on all validation queries, before the guard
    folds: list[dict[str, Any]] = field(default_factory=list)
    grid: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> weight -> mean nDCG@10

    def to_dict(self) -> dict[str, Any]:
        return {**self.fusion.to_dict(), "cv_fused": self.cv_fused, "cv_first": self.cv_first,
                "cv_ranker": self.cv_ranker, "cv_p": self.cv_p, "alpha": self.alpha,
                "best_weight": self.best_weight, "queries": sum(len(f["queries"]) for f in self.folds),
                "folds": [{k: v for k, v in f.items() if k != "queries"} for f in self.folds], "grid": self.grid}


def choose_fusion(first: Scores, ranker: Scores, qrels: Mapping[str, Mapping[str, int]], folds: int = 5,
                  methods: tuple[str, ...] = METHODS, weights: tuple[float, ...] = WEIGHTS, k: int = 60,
                  seed: int = 0, alpha: float = 0.05) -> FusionChoice:
    """The (method, weight) for fusing ``ranker`` into ``first`` (see the module doc)."""
    qids = sorted(q for q in first if q in ranker and qrels.get(q))
    if len(qids) < folds or folds < 2:
        raise SiftrankError(f"choosing the fusion weight needs at least {max(folds, 2)} judged validation queries, "
                            f"got {len(qids)}")
    values: dict[tuple[str, float], dict[str, float]] = {}
    for method in methods:
        for weight in weights:
            fusion = ScoreFusion(method, weight, k)  # type: ignore[arg-type]
            values[(method, weight)] = per_query({q: fusion.fuse(first[q], ranker[q]) for q in qids}, qrels)
    first_only = per_query({q: dict(first[q]) for q in qids}, qrels)
    ranker_only = per_query({q: dict(ranker[q]) for q in qids}, qrels)

    def best(on: list[str]) -> tuple[str, float]:
        return max(values, key=lambda key: (float(np.mean([values[key][q] for q in on])), -key[1]))

    records: list[dict[str, Any]] = []
    held_out: list[float] = []  # every query's nDCG@10 under the choice made without it
    baseline: list[float] = []
    for i, held in enumerate(query_folds(qids, folds, seed)):
        train = [q for q in qids if q not in set(held)]
        method, weight = best(train)
        held_out += [values[(method, weight)][q] for q in held]
        baseline += [first_only[q] for q in held]
        records.append({"fold": i, "method": method, "weight": weight, "queries": held,
                        "fused": float(np.mean([values[(method, weight)][q] for q in held])),
                        "first_stage": float(np.mean([first_only[q] for q in held]))})
    cv_fused = float(np.mean(held_out))
    cv_first = float(np.mean(list(first_only.values())))
    p = paired_p(held_out, baseline)
    method, best_weight = best(qids)
    weight = 0.0 if cv_fused <= cv_first or p >= alpha else best_weight
    grid = {m: {str(w): float(np.mean(list(values[(m, w)].values()))) for w in weights} for m in methods}
    return FusionChoice(ScoreFusion(method, weight, k), cv_fused, cv_first,  # type: ignore[arg-type]
                        float(np.mean(list(ranker_only.values()))), p, alpha, best_weight, records, grid)
