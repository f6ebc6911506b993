"""Dense first stage: the encoder's query vectors searched in a FAISS index (inner product = cosine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.live import LiveCorpus
from retrieval.searchable import SearchIndex
from retrieval.stages.base import FirstStage, QueryBatch, StageParams
from retrieval.stages.context import StageContext


class DenseRetriever(FirstStage):
    """Top-k cosine neighbours of each query vector; ``Hit.cosine`` is the score."""

    kind = "dense"
    gives_cosine = True
    filters = True
    encoder: Encoder

    def __init__(self, encoder: Encoder, index: SearchIndex) -> None:
        index.check_encoder(encoder.identity())
        self.encoder, self.index = encoder, index

    @classmethod
    def from_config(cls, params: StageParams, context: StageContext) -> DenseRetriever:
        return cls(context.encoder, context.index)

    def warm(self) -> None:
        self.index.warm()

    def go_live(self, corpus: LiveCorpus, snapshot: Path | None = None) -> None:
        from retrieval.index import Index
        from retrieval.live_index import LiveIndex

        if not isinstance(self.index, Index):
            raise SiftrankError(f"a live corpus needs a single FAISS index, not a {self.index.kind} one")
        self.index = LiveIndex(LiveIndex.restore(snapshot, self.index, corpus.state.base, self.encoder)
                               if snapshot is not None else self.index, corpus, self.encoder)

    def retrieve(self, queries: QueryBatch, depth: int) -> list[list[Hit]]:
        scores, ids = self.index.search(queries.vectors, depth, queries.where)
        return [[Hit(d, r, float(s), float(s)) for r, (d, s) in enumerate(zip(row, srow), 1)]
                for row, srow in zip(ids, scores)]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index.kind, "encoder": self.encoder.identity()}
