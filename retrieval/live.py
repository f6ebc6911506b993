"""A corpus that changes while it is searched: a base (the last snapshot) plus the changes since.

Like a search engine's segments: the base index is immutable; upserts go to a small *delta* (searched
exactly), and deletes (and the old versions of upserted documents) become *tombstones* masked out of the base
search. Every consumer of the corpus (the dense index, BM25) keeps its own part of each state: its base
structure and its delta structure, aligned with the delta's rows. A :class:`LiveCorpus` publishes one
immutable state per write, in one assignment, so a search always sees one consistent version and never
waits for a writer; writes (and compaction, which folds the delta into a new base) are serialised by a lock.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.corpus import METADATA_TYPES, RESERVED, dtype_kind, value_type
from retrieval.docstore import DocStore
from retrieval.errors import SiftrankError

SNAPSHOT_KIND, SNAPSHOT_DOCS = "live-corpus", "docs.parquet"


def documents_frame(documents: Sequence[Mapping[str, Any]], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """A documents table of written documents (``id``, ``text``, ``title``, ``metadata``), their metadata checked
    against the corpus's columns (a new field takes its value's type); a mismatch is an error naming the document."""
    kinds = {name: dtype_kind(dtype) for name, dtype in schema.items() if name not in RESERVED}
    rows: list[dict[str, Any]] = []
    for doc in documents:
        row = {"id": str(doc["id"]), "title": str(doc.get("title") or ""), "text": str(doc["text"])}
        for name, value in (doc.get("metadata") or {}).items():
            if name in RESERVED:
                raise SiftrankError(f"document '{row['id']}': metadata field '{name}' is reserved")
            try:
                kind = value_type(value)
            except ValueError as exc:
                raise SiftrankError(f"document '{row['id']}': metadata '{name}': {exc}") from None
            known = kinds.setdefault(name, kind) if kind is not None else None
            if kind is not None and known != kind and {known, kind} != {"integer", "float"}:
                raise SiftrankError(f"document '{row['id']}': metadata '{name}' is {kind}, but the corpus holds {known} values")
            row[name] = value
        rows.append(row)
    columns = ["id", "title", "text", *dict.fromkeys(n for r in rows for n in r if n not in RESERVED)]
    types = {n: schema.get(n) or METADATA_TYPES[kinds[n]] for n in columns if n not in RESERVED}
    return pl.DataFrame([{c: r.get(c) for c in columns} for r in rows],
                        schema={"id": pl.String(), "title": pl.String(), "text": pl.String(), **types}, orient="row")


class CorpusState:
    """One version of the corpus: the base documents (with deleted ids), the delta, and each consumer's parts."""

    def __init__(self, version: int, base: pl.DataFrame, deleted: frozenset[str], delta: pl.DataFrame,
                 parts: Mapping[str, tuple[Any, Any]]) -> None:
        self.version, self.base, self.deleted, self.delta, self.parts = version, base, deleted, delta, dict(parts)

    @functools.cached_property
    def delta_rows(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.delta["id"].to_list())}

    @functools.cached_property
    def base_store(self) -> DocStore:
        return DocStore(self.base, "live corpus")

    @functools.cached_property
    def delta_store(self) -> DocStore:
        return DocStore(self.delta, "live corpus delta")

    def __len__(self) -> int:
        return self.base.height - len(self.deleted) + self.delta.height

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.delta_rows or (doc_id in self.base_store and doc_id not in self.deleted)

    def base_mask(self, ids: np.ndarray) -> np.ndarray | None:
        """Which of ``ids`` (a consumer's base rows) are still live (None: all of them)."""
        if not self.deleted:
            return None
        return ~np.isin(ids, np.fromiter(self.deleted, dtype=object, count=len(self.deleted)))

    def docs(self) -> pl.DataFrame:
        """The whole current documents table (base rows still live, then the delta)."""
        live = self.base.filter(~pl.col("id").is_in(list(self.deleted))) if self.deleted else self.base
        return pl.concat([live, self.delta], how="diagonal_relaxed") if self.delta.height else live


class Consumer(Protocol):
    """A structure built over the corpus (an index, BM25): its part of each state."""

    key: str

    def save(self, base: Any, folder: Path) -> None:
        """Write this consumer's base structure into a snapshot folder (nothing: it is rebuilt from the documents)."""

    def extend(self, part: Any, keep: np.ndarray, added: pl.DataFrame) -> Any:
        """The delta part after a write: ``part``'s rows where ``keep``, then ``added``'s documents."""

    def rebase(self, state: CorpusState) -> Any:
        """A new base structure over ``state.docs()`` (compaction)."""

    def empty(self) -> Any:
        """The delta part of an empty delta."""


class LiveStore(DocStore):
    """The document store of the current state (texts and metadata by id), for results and rankers."""

    def __init__(self, corpus: LiveCorpus) -> None:  # noqa: D107 - the table is the corpus's current state
        self.corpus, self.source = corpus, "live corpus"

    @property
    def docs(self) -> pl.DataFrame:
        return self.corpus.state.docs()

    @property
    def schema(self) -> dict[str, pl.DataType]:
        s = self.corpus.state
        return {n: t for frame in (s.base, s.delta) for n, t in frame.schema.items()}

    def __len__(self) -> int:
        return len(self.corpus.state)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.corpus.state

    def _split(self, doc_ids: list[str], read) -> list[Any]:
        state = self.corpus.state
        missing = [d for d in doc_ids if d not in state]
        if missing:
            raise SiftrankError(f"live corpus: {len(missing)} documents are not in the corpus (first: {missing[0]})")
        return [read(state.delta_store, d) if d in state.delta_rows else read(state.base_store, d) for d in doc_ids]

    def texts(self, doc_ids: list[str]) -> list[str]:
        return self._split(doc_ids, lambda store, d: store.texts([d])[0])

    def metadata(self, doc_ids: list[str]) -> list[dict[str, object]]:
        return self._split(doc_ids, lambda store, d: store.metadata([d])[0])

    def all_texts(self) -> list[str]:
        return DocStore(self.docs, self.source).all_texts()


class LiveCorpus:
    """The current corpus of one pipeline: apply writes, publish states, compact."""

    def __init__(self, base: pl.DataFrame, version: int = 0) -> None:
        self.consumers: dict[str, Consumer] = {}
        self._bases: dict[str, Any] = {}
        self.lock = threading.RLock()  # writers and compaction; searches read ``state`` without it
        self.state = CorpusState(version, base, frozenset(), base.clear(), {})
        self.store = LiveStore(self)

    def attach(self, consumer: Consumer, base: Any) -> None:
        """Register a consumer with its current base structure (before the first write)."""
        with self.lock:
            self.consumers[consumer.key] = consumer
            parts = {**self.state.parts, consumer.key: (base, consumer.empty())}
            s = self.state
            self.state = CorpusState(s.version, s.base, s.deleted, s.delta, parts)

    def apply(self, version: int, upserts: pl.DataFrame, deletes: list[str]) -> None:
        """Publish ``version``: ``upserts`` (a documents table) added or replacing, ``deletes`` removed."""
        with self.lock:
            s = self.state
            if version <= s.version:
                return  # already applied (a replayed log entry)
            changed = set(upserts["id"].to_list()) | set(deletes)
            in_base = {d for d in changed if d in s.base_store}
            keep = ~s.delta["id"].is_in(list(changed)).to_numpy() if s.delta.height else np.zeros(0, bool)
            delta = pl.concat([s.delta.filter(pl.Series(keep, dtype=pl.Boolean)), upserts], how="diagonal_relaxed")
            parts = {key: (base, self.consumers[key].extend(part, keep, upserts)) for key, (base, part) in s.parts.items()}
            self.state = CorpusState(version, s.base, s.deleted | in_base, delta, parts)

    def document(self, doc_id: str) -> dict[str, Any] | None:
        """One current document: id, title, text and its metadata (None when the corpus does not hold it)."""
        s = self.state
        if doc_id not in s:
            return None
        table = s.delta if doc_id in s.delta_rows else s.base
        row = table.row(s.delta_rows[doc_id] if table is s.delta else s.base_store.row(doc_id), named=True)
        metadata = {k: v for k, v in row.items() if k not in RESERVED and v is not None}
        return {"id": row["id"], "title": row["title"], "text": row["text"], "metadata": metadata}

    def save(self, path: Path) -> int:
        """Write a snapshot of the last compacted state (documents and each consumer's base) atomically, replacing
        the previous one; returns its version. Searches and writes go on (states are immutable)."""
        with self.lock:
            state = self.compact() if self.state.deleted or self.state.delta.height else self.state
        with atomic_dir(Path(path), overwrite=True) as tmp:
            state.base.write_parquet(tmp / SNAPSHOT_DOCS)
            for key, (base, _) in state.parts.items():
                self.consumers[key].save(base, tmp)
            Manifest(kind=SNAPSHOT_KIND, parameters={"version": state.version, "documents": state.base.height}).write(tmp)
        return state.version

    @staticmethod
    def snapshot(path: Path) -> tuple[int, pl.DataFrame] | None:
        """The version and documents of the snapshot at ``path`` (None when there is none yet)."""
        if not (Path(path) / SNAPSHOT_DOCS).is_file():
            return None
        manifest = Manifest.read(Path(path), kind=SNAPSHOT_KIND)
        return int(manifest.parameters["version"]), pl.read_parquet(Path(path) / SNAPSHOT_DOCS)

    def compact(self) -> CorpusState:
        """Fold the delta into new bases (every consumer's), in place; returns the new state. Searches go on."""
        with self.lock:
            s = self.state
            docs = s.docs()
            parts = {key: (self.consumers[key].rebase(s), self.consumers[key].empty()) for key in s.parts}
            self.state = CorpusState(s.version, docs, frozenset(), docs.clear(), parts)
            return self.state
