"""The typed result every stage returns: a ranked hit with the scores that explain it.

A slotted dataclass, not a pydantic model: the query path creates and copies hits at every stage,
and validation belongs at the edges (the API's response models), not inside the pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(slots=True)
class Hit:
    """One ranked document. ``cosine`` is the raw dense score, ``relevance`` the calibrated
    probability (set once a filter stage ran), ``score`` the score of the stage that ranked it."""

    id: str
    rank: int
    score: float
    cosine: float | None = None
    relevance: float | None = None
    text: str | None = None
    metadata: dict[str, object] | None = None  # the document's metadata fields, with its text (results)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def renumber(hits: list[Hit]) -> list[Hit]:
    """Copies of ``hits`` ranked 1..n in their list order (the originals keep their ranks)."""
    return [replace(h, rank=r) for r, h in enumerate(hits, 1)]
