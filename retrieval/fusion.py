"""Score fusion of two or more rankings of one query: weighted reciprocal-rank fusion (Cormack et al.
2009) or interpolation of per-query min-max normalised scores.

The hybrid first stage fuses dense and BM25 with it; the LLM ranker fuses its own per-candidate score
with the first stage's (:class:`ScoreFusion`, whose weight is chosen by query-level cross-validation
when the ranker is trained and stored in the ranker artifact). A weight of 0 means the ranker is off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from retrieval.errors import SiftrankError

Method = Literal["interpolate", "rrf"]
METHODS = ("interpolate", "rrf")


def minmax(values: Sequence[float]) -> np.ndarray:
    """``values`` scaled to [0, 1] within the list (all ones when they are all equal)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or array.max() == array.min():
        return np.ones_like(array)
    return (array - array.min()) / (array.max() - array.min())


def fuse_scores(rankings: Sequence[tuple[Mapping[str, float], float]], method: Method, k: int = 60) -> dict[str, float]:
    """Σ over (scores, weight) of weight · contribution, where the contribution is 1 / (k + rank) (``rrf``;
    rank by descending score, ties by id) or the min-max normalised score (``interpolate``). A candidate
    missing from a ranking gets nothing from it."""
    if method not in METHODS:
        raise SiftrankError(f"fusion must be one of {', '.join(METHODS)}, not '{method}'")
    fused: dict[str, float] = {}
    for scores, weight in rankings:
        ids = sorted(scores, key=lambda d: (-scores[d], d))
        if method == "rrf":
            parts = [1.0 / (k + rank) for rank in range(1, len(ids) + 1)]
        else:
            parts = list(minmax([scores[d] for d in ids]))
        for d, part in zip(ids, parts):
            fused[d] = fused.get(d, 0.0) + weight * float(part)
    return fused


@dataclass(frozen=True)
class ScoreFusion:
    """The first stage's and the ranker's scores of the same candidates, fused; ``weight`` is the
    ranker's share (the first stage gets 1 - weight)."""

    method: Method = "interpolate"
    weight: float = 0.0
    k: int = 60

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SiftrankError(f"fusion must be one of {', '.join(METHODS)}, not '{self.method}'")
        if not 0.0 <= self.weight <= 1.0:
            raise SiftrankError(f"fusion weight must be between 0 and 1, not {self.weight}")
        if self.k < 1:
            raise SiftrankError(f"fusion k must be at least 1, not {self.k}")

    def fuse(self, first: Mapping[str, float], ranker: Mapping[str, float]) -> dict[str, float]:
        """Fused score of every candidate (higher is better)."""
        return fuse_scores([(first, 1.0 - self.weight), (ranker, self.weight)], self.method, self.k)

    def order(self, first: Mapping[str, float], ranker: Mapping[str, float]) -> list[str]:
        """Candidates by fused score; ties keep the first stage's order."""
        fused = self.fuse(first, ranker)
        position = {d: i for i, d in enumerate(sorted(first, key=lambda d: (-first[d], d)))}
        return sorted(fused, key=lambda d: (-fused[d], position.get(d, len(position)), d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
