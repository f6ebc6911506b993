"""The typed result every stage returns: a ranked hit with the scores that explain it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Hit(BaseModel):
    """One ranked document. ``cosine`` is the raw dense score, ``relevance`` the calibrated
    probability (set once a filter stage exists), ``score`` the score of the stage that ranked it."""

    id: str
    rank: int = Field(ge=1)
    score: float
    cosine: float | None = None
    relevance: float | None = None
    text: str | None = None
