"""Simulated users: the position-based click model of counterfactual learning to rank.

A user examines the hit at rank ``r`` with probability ``(1/r)^eta`` (Joachims, Swaminathan & Schnabel,
WSDM 2017) and clicks an examined hit with a probability set by its relevance grade: ``eps_plus`` for the
highest grade, ``eps_minus`` for a non-relevant hit, and between them on graded qrels as
``eps_minus + (eps_plus - eps_minus) * (2^g - 1) / (2^g_max - 1)`` (Oosterhuis & de Rijke's simulation).
Examination and attractiveness are independent, so the click log is biased toward the top exactly as
the inverse-propensity estimators assume; the simulator's ``eta`` is what a propensity estimate recovers.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from retrieval.data import normalised_query
from retrieval.errors import SiftrankError


@dataclass(frozen=True)
class ClickModel:
    """Position bias ``eta`` and the click probability of an examined hit at the top and bottom grade."""

    eta: float = 1.0
    eps_plus: float = 1.0
    eps_minus: float = 0.1

    PRESETS: ClassVar[dict[str, tuple[float, float, float]]] = {"default": (1.0, 1.0, 0.1), "noisy": (2.0, 0.8, 0.2)}

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise SiftrankError(f"click model: eta must be >= 0, got {self.eta}")
        if not 0.0 <= self.eps_minus <= self.eps_plus <= 1.0:
            raise SiftrankError(f"click model: need 0 <= eps_minus <= eps_plus <= 1, got {self.eps_minus}, {self.eps_plus}")

    @classmethod
    def preset(cls, name: str) -> ClickModel:
        """``default`` (eta 1, eps+ 1.0, eps- 0.1) or ``noisy`` (eta 2, eps+ 0.8, eps- 0.2)."""
        if name not in cls.PRESETS:
            raise SiftrankError(f"unknown click model '{name}'; known: {', '.join(cls.PRESETS)}")
        return cls(*cls.PRESETS[name])

    def examination(self, rank: int) -> float:
        """Probability that a user looks at the hit shown at ``rank`` (1-based)."""
        return float(rank) ** -self.eta

    def attractiveness(self, grade: int, top_grade: int) -> float:
        """Probability of a click on an examined hit of ``grade`` when the qrels' highest grade is ``top_grade``."""
        if grade <= 0:
            return self.eps_minus
        top = max(top_grade, 1)
        return self.eps_minus + (self.eps_plus - self.eps_minus) * (2 ** min(grade, top) - 1) / (2 ** top - 1)

    def clicks(self, docs: Sequence[str], judged: Mapping[str, int], top_grade: int, rng: random.Random) -> list[int]:
        """Ranks (1-based) one simulated user clicks in the list ``docs``, given the query's ``judged`` grades."""
        return [rank for rank, doc in enumerate(docs, 1)
                if rng.random() < self.examination(rank) and rng.random() < self.attractiveness(judged.get(doc, 0), top_grade)]


def traffic_split(queries: Mapping[str, str], held_out: Mapping[str, str], share: float,
                  seed: int = 0) -> tuple[list[str], list[str]]:
    """Two disjoint sets of query ids simulated users may send: the first (``1 - share``) to learn from, the
    second to judge the learned pipeline by interleaving. A query whose text is a ``held_out`` (test) query's
    is never sent, so no evaluation query enters a log or a training set."""
    banned = {normalised_query(t) for t in held_out.values()}
    pool = sorted(q for q, t in queries.items() if normalised_query(t) not in banned)
    if len(pool) < 2:
        raise SiftrankError(f"{len(pool)} queries outside the held-out set: too few to split into traffic")
    random.Random(seed).shuffle(pool)
    cut = min(len(pool) - 1, max(1, round(share * len(pool))))
    return sorted(pool[cut:]), sorted(pool[:cut])
