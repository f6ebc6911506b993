"""The dense index of a live corpus: the base FAISS index with tombstones masked, plus the delta searched exactly.

Upserted documents are encoded by this index's encoder when the write is applied (so they are searchable the
moment the write is acknowledged); compaction rebuilds a FAISS index of the same kind and parameters over the
base vectors still live and the delta's vectors (no re-encoding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from retrieval.artifacts import Manifest
from retrieval.docstore import DocStore
from retrieval.encoder import Encoder
from retrieval.index import Index
from retrieval.live import CorpusState, LiveCorpus, LiveStore
from retrieval.where import Where


def _folder(snapshot: Path, encoder: Encoder) -> Path:
    """Where an encoder's index lies in a snapshot (one per encoder: the variants of a service may differ)."""
    return Path(snapshot) / f"dense-{encoder.fingerprint}"


class LiveIndex:
    """A :class:`~retrieval.searchable.SearchIndex` over a :class:`~retrieval.live.LiveCorpus` (one encoder)."""

    def __init__(self, index: Index, corpus: LiveCorpus, encoder: Encoder) -> None:
        index.check_encoder(encoder.identity())
        self.encoder, self.corpus, self.key = encoder, corpus, f"dense:{encoder.fingerprint}:{id(self)}"
        self._alive: tuple[int, int, np.ndarray | None] = (-1, -1, None)  # (version, base id, mask) of the last search
        corpus.attach(self, index)

    @classmethod
    def restore(cls, snapshot: Path, index: Index, docs: pl.DataFrame, encoder: Encoder) -> Index:
        """The base index a snapshot holds for ``encoder``; a snapshot written by other variants only (another
        encoder) has the documents but not these vectors: they are encoded now, as ``index`` was built."""
        folder = _folder(snapshot, encoder)
        if folder.is_dir():
            return Index.load(folder, device=index.device)
        vectors = encoder.encode_documents(DocStore(docs, str(snapshot)).all_texts()) if docs.height else np.zeros((0, index.manifest.parameters["dim"]))
        return Index.build(vectors, docs, index.encoder, kind=index.kind, device=index.device, params=index.build_params,
                           empty=True)

    # ---- the SearchIndex protocol -----------------------------------------------------------------
    @property
    def base(self) -> Index:
        return self.corpus.state.parts[self.key][0]

    @property
    def manifest(self) -> Manifest:
        return self.base.manifest

    @property
    def kind(self) -> str:
        return self.base.kind

    def __len__(self) -> int:
        return len(self.corpus.state)

    def check_encoder(self, identity: dict[str, Any]) -> None:
        self.base.check_encoder(identity)

    def warm(self) -> None:
        self.base.warm()

    @property
    def store(self) -> LiveStore:
        return self.corpus.store

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` over the base (deleted rows masked) and the delta (exact), merged by score."""
        state = self.corpus.state
        base, delta_vectors = state.parts[self.key]
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        alive = self._alive_rows(state, base)
        if alive is None:
            scores, ids = base.search(queries, k, where) if len(base) else (np.zeros((len(queries), 0), np.float32), [[] for _ in queries])
        else:
            scores, ids = base.search_rows(queries, k, alive, where)
        if not len(delta_vectors):
            return scores, ids
        rows = np.arange(len(delta_vectors)) if where is None else np.flatnonzero(where.mask(state.delta))
        exact = queries @ delta_vectors[rows].T
        delta_ids = state.delta["id"].to_numpy()[rows]
        if exact.shape[1] > k:  # each query's k best of the delta, before merging with the base's
            best = np.argpartition(-exact, k - 1, axis=1)[:, :k]
        else:
            best = np.tile(np.arange(exact.shape[1]), (len(queries), 1))
        merged_scores = np.full((len(queries), k), -np.inf, np.float32)
        merged_ids = []
        for q in range(len(queries)):
            pool = [(float(s), d) for s, d in zip(scores[q][:len(ids[q])], ids[q])] + \
                   [(float(exact[q, c]), str(delta_ids[c])) for c in best[q]]
            top = sorted(pool, key=lambda item: (-item[0], item[1]))[:k]
            merged_scores[q, :len(top)] = [s for s, _ in top]
            merged_ids.append([d for _, d in top])
        return merged_scores, merged_ids

    def _alive_rows(self, state: CorpusState, base: Index) -> np.ndarray | None:
        version, base_id, mask = self._alive
        if version != state.version or base_id != id(base):
            mask = state.base_mask(base.docs["id"].to_numpy()) if len(base) else None
            self._alive = (state.version, id(base), mask)
        return mask

    # ---- the Consumer protocol ------------------------------------------------------------------------
    def save(self, base: Index, folder: Path) -> None:
        base.save(_folder(folder, self.encoder), overwrite=True)

    def empty(self) -> np.ndarray:
        return np.zeros((0, int(self.encoder.identity()["dim"])), np.float32)

    def extend(self, part: np.ndarray, keep: np.ndarray, added: pl.DataFrame) -> np.ndarray:
        kept = part[keep] if len(part) else part
        if not added.height:
            return kept
        vectors = self.encoder.encode_documents(DocStore(added, "upsert").all_texts(), progress=False)
        return np.vstack([kept, np.asarray(vectors, np.float32)])

    def rebase(self, state: CorpusState) -> Index:
        base, delta_vectors = state.parts[self.key]
        alive = self._alive_rows(state, base)
        rows = np.arange(len(base)) if alive is None else np.flatnonzero(alive)
        vectors = np.vstack([base.vectors(rows) if len(rows) else self.empty(), delta_vectors])
        docs = pl.concat([base.docs[rows], state.delta], how="diagonal_relaxed")  # the vectors' order
        return Index.build(vectors, docs, base.encoder, kind=base.kind, device=base.device, params=base.build_params,
                           data={**base.manifest.data, "corpus_version": state.version}, empty=True)
