"""Cosine Adapter relevance filter: calibrated relevance for every candidate, one global threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from retrieval.artifacts import resolve_path
from retrieval.calibration import Calibrator, check_threshold
from retrieval.docstore import DocStore
from retrieval.encoder import Encoder
from retrieval.hits import Hit, renumber
from retrieval.stages.base import Filter, QueryBatch, StageParams
from retrieval.stages.context import StageContext


def fill_cosines(hits: list[list[Hit]], vectors: np.ndarray, encoder: Encoder, store: DocStore | None) -> list[np.ndarray]:
    """Each query's candidate cosines in hit order; hits without one (BM25, hybrid, run files) get theirs
    from their passages encoded now (set on the hits)."""
    cosines = []
    for vector, ranked in zip(vectors, hits):
        missing = [h for h in ranked if h.cosine is None]
        if missing:
            if store is None:
                raise RuntimeError("the filter needs passage texts to score candidates without a cosine")
            docs = encoder.encode_documents(store.texts([h.id for h in missing]))
            for h, c in zip(missing, docs @ vector):
                h.cosine = float(c)
        cosines.append(np.array([h.cosine for h in ranked], dtype=np.float32))
    return cosines


class CosineFilterParams(StageParams):
    calibrator: Path  # a calibrator artifact from `siftrank calibrate`
    threshold: float | None = Field(None, ge=0.0, le=1.0)  # override the artifact's global threshold

    def resolve(self, base: Path) -> CosineFilterParams:
        return self.model_copy(update={"calibrator": resolve_path(base, self.calibrator)})


class CosineAdapterFilter(Filter):
    """Relevance = the calibrator's monotone map of each candidate's cosine; candidates without a cosine
    (BM25, run files) are encoded from the document store first."""

    kind = "cosine-adapter"
    Params = CosineFilterParams
    encoder: Encoder

    def __init__(self, calibrator: Calibrator, encoder: Encoder, store: DocStore | None = None,
                 threshold: float | None = None) -> None:
        calibrator.check_encoder(encoder.identity())
        self.calibrator, self.encoder, self.store = calibrator, encoder, store
        self.threshold = check_threshold(threshold if threshold is not None else calibrator.threshold)
        self.depth = calibrator.k

    @classmethod
    def from_config(cls, params: CosineFilterParams, context: StageContext) -> CosineAdapterFilter:
        calibrator = Calibrator.load(params.calibrator)
        return cls(calibrator, context.encoder, None, params.threshold)

    def bind_store(self, store: DocStore) -> None:
        self.store = store

    def filter(self, queries: QueryBatch, hits: list[list[Hit]], threshold: float | None = None) -> list[list[Hit]]:
        cut = self.threshold if threshold is None else check_threshold(threshold)
        vectors = queries.vectors
        cosines = fill_cosines(hits, vectors, self.encoder, self.store)
        for ranked, relevance in zip(hits, self.calibrator.relevance(vectors, cosines)):
            for h, s in zip(ranked, relevance):
                h.relevance = float(s)
        return [renumber([h for h in ranked if h.relevance is not None and h.relevance >= cut]) for ranked in hits]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold, **self.calibrator.config()}
