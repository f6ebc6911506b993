"""BM25 over a live corpus: the base bm25s index with deleted rows masked, plus the delta scored term by term.

The delta's documents are scored with the same Lucene BM25 formula as bm25s's, with collection statistics
(documents, document frequencies, average length) of the base and the delta together, so their scores
merge with the base's; the base's own scores keep the statistics they were indexed with until compaction
re-indexes everything (what segment-based engines do between merges).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from retrieval.docstore import DocStore
from retrieval.lexical import BM25, terms
from retrieval.live import CorpusState, LiveCorpus
from retrieval.where import Where

Part = tuple[list[Counter[str]], list[int]]  # the delta's term counts and lengths, in delta row order


class LiveBM25:
    """BM25 search over a :class:`~retrieval.live.LiveCorpus` (the BM25 stage's index when the corpus is live)."""

    def __init__(self, bm25: BM25 | None, corpus: LiveCorpus, k1: float = 0.9, b: float = 0.4) -> None:
        """``bm25``: the base index (None for an empty base)."""
        self.corpus, self.k1, self.b, self.key = corpus, k1, b, f"bm25:{id(self)}"
        self._alive: tuple[int, int, np.ndarray | None] = (-1, -1, None)
        self._stats: tuple[tuple[int, int, int], Any] = ((-1, -1, -1), None)  # one corpus version's statistics
        corpus.attach(self, bm25)

    def search(self, queries: list[str], k: int, where: Where | None = None) -> tuple[list[list[float]], list[list[str]]]:
        state = self.corpus.state
        base, (counts, lengths) = state.parts[self.key]
        if base is not None:
            if self._alive[:2] != (state.version, id(base)):
                self._alive = (state.version, id(base), state.base_mask(np.asarray(base.ids, dtype=object)))
            scores, ids = base.search(queries, k, where, self._alive[2])
            base_hits = [[(float(s), d) for s, d in zip(srow, row)] for srow, row in zip(scores, ids)]
        else:
            base_hits = [[] for _ in queries]
        if not counts:
            return [[s for s, _ in hits] for hits in base_hits], [[d for _, d in hits] for hits in base_hits]
        rows = range(len(counts)) if where is None else np.flatnonzero(where.mask(state.delta))
        delta_ids = state.delta["id"].to_list()
        if self._stats[0] != (state.version, id(base), id(counts)):  # counted once per version, not per search
            self._stats = ((state.version, id(base), id(counts)), self._statistics(base, counts, lengths))
        n, avgdl, df = self._stats[1]
        out_scores, out_ids = [], []
        for query, hits in zip(terms(queries), base_hits):
            weights = [(t, math.log(1 + (n - df(t) + 0.5) / (df(t) + 0.5))) for t in set(query)]
            for r in rows:
                norm = self.k1 * (1 - self.b + self.b * lengths[r] / avgdl)
                score = sum(idf * counts[r][t] / (counts[r][t] + norm) for t, idf in weights if counts[r][t])
                if score > 0:
                    hits.append((score, delta_ids[r]))
            top = sorted(hits, key=lambda item: (-item[0], item[1]))[:k]
            out_scores.append([s for s, _ in top])
            out_ids.append([d for _, d in top])
        return out_scores, out_ids

    def _statistics(self, base: BM25 | None, counts: list[Counter[str]], lengths: list[int]):
        """Documents, average length and document frequency over the base and the delta together."""
        delta_df: Counter[str] = Counter(t for c in counts for t in c)
        base_n = len(base.ids) if base is not None else 0
        n = base_n + len(counts)
        avgdl = ((base.avgdl * base_n if base is not None else 0.0) + sum(lengths)) / max(n, 1)
        return n, max(avgdl, 1e-9), lambda t: delta_df[t] + (base.document_frequency(t) if base is not None else 0)

    # ---- the Consumer protocol ------------------------------------------------------------------------
    def save(self, base: BM25 | None, folder: Path) -> None:
        """Nothing: BM25 is re-indexed from the snapshot's documents on start (seconds, no model)."""

    def empty(self) -> Part:
        return [], []

    def extend(self, part: Part, keep: np.ndarray, added: pl.DataFrame) -> Part:
        counts = [c for c, k in zip(part[0], keep) if k]
        lengths = [n for n, k in zip(part[1], keep) if k]
        if added.height:
            tokens = terms(DocStore(added, "upsert").all_texts())
            counts += [Counter(t) for t in tokens]
            lengths += [len(t) for t in tokens]
        return counts, lengths

    def rebase(self, state: CorpusState) -> Any:
        docs = state.docs()
        return BM25(docs, self.k1, self.b) if docs.height else None
