"""BM25 over the same corpus (bm25s, English stopwords, Snowball stemming): the lexical baseline.

A dense stage is only worth its cost if it beats this; ``siftrank eval --first-stage bm25`` reports it.
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl

from retrieval.errors import SiftrankError
from retrieval.where import Masks, Where


@functools.cache
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def terms(texts: list[str]) -> list[list[str]]:
    """The terms BM25 indexes and scores for each text (stopwords out, stemmed; one stemmer, not one per call)."""
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False, return_ids=False)


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
        self.k1, self.b = k1, b
        self.avgdl = float(np.mean([len(doc) for doc in tokens.ids]))
        self.retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
        self.retriever.index(tokens, show_progress=False)

    def document_frequency(self, term: str) -> int:
        """How many documents of this index hold ``term``."""
        column = self.retriever.vocab_dict.get(term)
        indptr = self.retriever.scores["indptr"]
        return 0 if column is None else int(indptr[column + 1] - indptr[column])

    def search(self, queries: list[str], k: int, where: Where | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` BM25 scores and doc ids for each query (documents with score 0 are dropped); documents that
        ``where`` does not match, or not ``allowed`` (a live corpus's deleted rows), score 0."""
        k = min(k, len(self.ids))
        tokens = self._bm25s.tokenize(queries, stopwords="en", stemmer=self._stemmer, show_progress=False)
        if where is not None:
            allowed = self._masks.get(where, self.docs) & (True if allowed is None else allowed)
        mask = None if allowed is None else allowed.astype(np.float32)
        positions, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0, weight_mask=mask)
        ids = [[self.ids[p] for p, s in zip(row, srow) if s > 0] for row, srow in zip(positions, scores)]
        return scores, ids
