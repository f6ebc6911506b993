"""Hybrid first stage: dense and BM25 rankings fused, by reciprocal rank fusion (Cormack et al. 2009)
or by interpolating per-query min-max normalised scores. Built from the two registered stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from retrieval.fusion import fuse_scores
from retrieval.hits import Hit
from retrieval.live import LiveCorpus
from retrieval.stages.base import FirstStage, QueryBatch, StageParams
from retrieval.stages.context import StageContext
from retrieval.stages.registry import stage_class


class HybridParams(StageParams):
    fusion: Literal["rrf", "interpolate"] = "rrf"
    rrf_k: int = Field(60, ge=1)  # RRF: score = sum over rankings of 1 / (rrf_k + rank)
    weight: float = Field(0.5, ge=0.0, le=1.0)  # interpolate: weight of the dense score (1 - weight: BM25)
    pool: int | None = Field(None, ge=1)  # candidates taken from each ranking (default: the depth)


class HybridRetriever(FirstStage):
    """Dense + BM25, fused; a hit keeps the dense cosine when the dense stage found it."""

    kind = "hybrid"
    Params = HybridParams
    gives_cosine = False  # BM25-only hits have none (a filter computes it)
    filters = True  # both rankings it fuses apply the batch's filter

    def __init__(self, dense: FirstStage, lexical: FirstStage, params: HybridParams) -> None:
        self.dense, self.lexical, self.params = dense, lexical, params
        self.encoder = dense.encoder

    @classmethod
    def from_config(cls, params: HybridParams, context: StageContext) -> HybridRetriever:
        dense, bm25 = (stage_class("first_stage", kind) for kind in ("dense", "bm25"))
        return cls(dense.from_config(dense.Params(), context), bm25.from_config(bm25.Params(), context), params)

    def warm(self) -> None:
        self.dense.warm()

    def go_live(self, corpus: LiveCorpus, snapshot: Path | None = None) -> None:
        self.dense.go_live(corpus, snapshot)
        self.lexical.go_live(corpus, snapshot)

    def retrieve(self, queries: QueryBatch, depth: int) -> list[list[Hit]]:
        pool = self.params.pool or depth
        return [self.fuse(d, b, depth) for d, b in zip(self.dense.retrieve(queries, pool), self.lexical.retrieve(queries, pool))]

    def fuse(self, dense: list[Hit], lexical: list[Hit], depth: int) -> list[Hit]:
        """One query's fused top ``depth`` (ties by doc id, so the order is deterministic)."""
        weights = (1.0, 1.0) if self.params.fusion == "rrf" else (self.params.weight, 1.0 - self.params.weight)
        scores = fuse_scores([({h.id: h.score for h in dense}, weights[0]), ({h.id: h.score for h in lexical}, weights[1])],
                             self.params.fusion, self.params.rrf_k)
        cosine = {h.id: h.cosine for h in dense}
        ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:depth]
        return [Hit(d, r, s, cosine.get(d)) for r, (d, s) in enumerate(ordered, 1)]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params.model_dump(), "dense": self.dense.describe()}

