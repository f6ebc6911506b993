"""BM25 first stage over the document store's passages (the lexical baseline)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from retrieval.hits import Hit
from retrieval.lexical import BM25
from retrieval.live import LiveCorpus
from retrieval.live_bm25 import LiveBM25
from retrieval.stages.base import FirstStage, QueryBatch, StageParams
from retrieval.stages.context import StageContext


class BM25Params(StageParams):
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)


class BM25Retriever(FirstStage):
    """Top-k BM25 (Lucene variant) hits; documents scoring 0 are dropped."""

    kind = "bm25"
    Params = BM25Params
    filters = True

    def __init__(self, bm25: BM25) -> None:
        self.bm25: BM25 | LiveBM25 = bm25

    def go_live(self, corpus: LiveCorpus, snapshot: Path | None = None) -> None:
        assert isinstance(self.bm25, BM25)
        base = corpus.state.base
        restored = (BM25(base, self.bm25.k1, self.bm25.b) if base.height else None) if snapshot is not None else self.bm25
        self.bm25 = LiveBM25(restored, corpus, self.bm25.k1, self.bm25.b)

    @classmethod
    def from_config(cls, params: BM25Params, context: StageContext) -> BM25Retriever:
        return cls(BM25(context.store.docs, k1=params.k1, b=params.b))

    def retrieve(self, queries: QueryBatch, depth: int) -> list[list[Hit]]:
        scores, ids = self.bm25.search(queries.texts, depth, queries.where)
        return [[Hit(d, r, float(s)) for r, (d, s) in enumerate(zip(row, srow), 1)] for row, srow in zip(ids, scores)]
