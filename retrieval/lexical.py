"""BM25 over the same corpus (bm25s, English stopwords, Snowball stemming): the lexical baseline.

A dense stage is only worth its cost if it beats this; ``siftrank eval --first-stage bm25`` reports it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from retrieval.errors import SiftrankError
from retrieval.where import Masks, Where


class BM25:
    """In-memory BM25 (Lucene variant, k1=0.9, b=0.4 as in Pyserini's MS MARCO defaults)."""

    def __init__(self, docs: pl.DataFrame, k1: float = 0.9, b: float = 0.4) -> None:
        import bm25s
        import Stemmer

        if len(docs) == 0:
            raise SiftrankError("cannot build BM25 over an empty corpus")
        self._bm25s = bm25s
        self._stemmer = Stemmer.Stemmer("english")
        self.ids, self.docs, self._masks = docs["id"].to_list(), docs, Masks()
        texts = [f"{t} {x}" if t else x for t, x in zip(docs["title"].to_list(), docs["text"].to_list())]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)
        self.retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: list[str], k: int, where: Where | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` BM25 scores and doc ids for each query (documents with score 0 are dropped); with ``where``,
        documents it does not match score 0."""
        k = min(k, len(self.ids))
        tokens = self._bm25s.tokenize(queries, stopwords="en", stemmer=self._stemmer, show_progress=False)
        mask = None if where is None else self._masks.get(where, self.docs).astype(np.float32)
        positions, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0, weight_mask=mask)
        ids = [[self.ids[p] for p, s in zip(row, srow) if s > 0] for row, srow in zip(positions, scores)]
        return scores, ids
