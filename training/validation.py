"""Validation of the LLM ranker while it trains: held-out training queries, scored in first-token mode.

A slice of the training queries is kept out of the training lists. Every ``every`` optimiser steps
(and before the first) the model being trained ranks each validation query's first-stage top
``depth``; the nDCG@10 of its own order is logged, the best LoRA weights are kept, and training stops
after ``patience`` evaluations without a gain. The best evaluation's per-candidate scores are what the
fusion weight is then chosen on (:mod:`training.fusion`): queries the ranker never learned from.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.causal_lm import CausalLM
from retrieval.data import Dataset, Run
from retrieval.errors import SiftrankError
from retrieval.measures import per_query
from retrieval.rerank import ListwiseRanker


@dataclass
class RankerValidation:
    """Validation queries with their first-stage candidates, and what each evaluation measured."""

    queries: dict[str, str]
    candidates: dict[str, list[str]]  # first-stage top depth, in order
    texts: dict[str, list[str]]
    first: dict[str, dict[str, float]]  # first-stage scores of those candidates
    qrels: dict[str, dict[str, int]]
    every: int = 25
    patience: int = 2
    history: list[dict[str, Any]] = field(default_factory=list)
    best_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    best_step: int = 0

    @classmethod
    def split(cls, dataset: Dataset, qids: list[str], run: Run, depth: int, size: int, seed: int = 0,
              every: int = 25, patience: int = 2) -> tuple[list[str], RankerValidation]:
        """The training queries left after drawing ``size`` validation queries (seeded), and the validation."""
        held = sorted(random.Random(seed).sample(sorted(qids), min(size, len(qids) // 2)))
        if len(held) < 2:
            raise SiftrankError(f"a validation split needs at least 4 judged training queries (got {len(qids)}): "
                                "pass --validation 0 to train without one (then no fusion weight is chosen)")
        keep = set(held)
        return [q for q in qids if q not in keep], cls.of(dataset, held, run, depth, every, patience)

    @classmethod
    def of(cls, dataset: Dataset, qids: list[str], run: Run, depth: int, every: int = 25, patience: int = 2) -> RankerValidation:
        """The validation of exactly ``qids``: their first-stage top ``depth`` with texts and scores."""
        candidates = {q: sorted(run.get(q, {}), key=lambda d: (-run[q][d], d))[:depth] for q in qids}
        return cls({q: dataset.queries[q] for q in qids}, candidates,
                   {q: dataset.store.texts(c) for q, c in candidates.items()},
                   {q: {d: run[q][d] for d in c} for q, c in candidates.items()},
                   {q: dict(dataset.qrels.get(q, {})) for q in qids}, every, patience)

    def score(self, llm: CausalLM, max_passage_tokens: int) -> dict[str, dict[str, float]]:
        """The ranker's first-token score of every validation candidate."""
        ranker = ListwiseRanker(llm, mode="first-token", max_passage_tokens=max_passage_tokens)
        out: dict[str, dict[str, float]] = {}
        for q, docs in self.candidates.items():
            scores, _ = ranker.score(self.queries[q], self.texts[q])
            out[q] = dict(zip(docs, scores))
        return out

    def evaluate(self, step: int, llm: CausalLM, max_passage_tokens: int) -> bool:
        """Score at ``step``; True when this is the best so far (the caller keeps those weights)."""
        start = time.perf_counter()
        scores = self.score(llm, max_passage_tokens)
        value = float(np.mean(list(per_query(scores, self.qrels).values())))
        best = not self.history or value > max(h["val_ndcg@10"] for h in self.history)
        self.history.append({"step": step, "val_ndcg@10": value, "seconds": round(time.perf_counter() - start, 2)})
        if best:
            self.best_scores, self.best_step = scores, step
        return best

    def first_stage(self) -> float:
        """nDCG@10 of the first stage on the validation queries (the line the ranker is measured against)."""
        return float(np.mean(list(per_query(self.first, self.qrels).values())))

    def exhausted(self) -> bool:
        """``patience`` evaluations in a row without a new best."""
        best = [h["step"] for h in self.history].index(self.best_step)
        return len(self.history) - 1 - best >= self.patience
