"""The document store: the one owner of passage texts by id, for every stage that reads passages.

Built from a corpus or an index's documents table (columns ``id``, ``title``, ``text``); the display
and ranking text is title and body joined (BEIR convention). The id → row map is built on first use.
"""

from __future__ import annotations

import functools

import polars as pl

from retrieval.errors import SiftrankError


class DocStore:
    """Texts of documents by id, read from one documents table (``source`` names it in errors)."""

    def __init__(self, docs: pl.DataFrame, source: str) -> None:
        missing = {"id", "text"} - set(docs.columns)
        if missing:
            raise SiftrankError(f"{source}: documents table lacks column(s) {', '.join(sorted(missing))}")
        self._docs, self.source = docs, source

    @property
    def docs(self) -> pl.DataFrame:
        """The documents table (id, title, text, metadata columns)."""
        return self._docs

    @property
    def schema(self) -> dict[str, pl.DataType]:
        """Column names and types of the documents table (what metadata filters are checked against)."""
        return dict(self._docs.schema)

    def __len__(self) -> int:
        return self.docs.height

    @functools.cached_property
    def _rows(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.docs["id"].to_list())}

    @functools.cached_property
    def _joined(self) -> list[str]:
        bodies = self.docs["text"].to_list()
        titles = self.docs["title"].to_list() if "title" in self.docs.columns else [""] * len(bodies)
        return [f"{t} {x}" if t else x for t, x in zip(titles, bodies)]

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._rows

    def row(self, doc_id: str) -> int:
        """The table row of a document (KeyError when it is not here)."""
        return self._rows[doc_id]

    def texts(self, doc_ids: list[str]) -> list[str]:
        """Title and body of each document, in the order asked; an unknown id is an error."""
        rows, joined = self._rows, self._joined
        missing = [d for d in doc_ids if d not in rows]
        if missing:
            raise SiftrankError(f"{self.source}: {len(missing)} documents are not in the corpus (first: {missing[0]})")
        return [joined[rows[d]] for d in doc_ids]

    @functools.cached_property
    def _metadata_columns(self) -> list[str]:
        return [c for c in self.docs.columns if c not in ("id", "title", "text")]

    def metadata(self, doc_ids: list[str]) -> list[dict[str, object]]:
        """Each document's metadata fields (missing values left out), in the order asked; {} without metadata."""
        columns = self._metadata_columns
        if not columns:
            return [{} for _ in doc_ids]
        rows, table = self._rows, self.docs.select(columns)
        picked = table[[rows[d] for d in doc_ids]].to_dicts()
        return [{k: v for k, v in row.items() if v is not None} for row in picked]

    def all_texts(self) -> list[str]:
        """Every document's text, in table order (what an encoder or BM25 indexes)."""
        return list(self._joined)
