"""Reading a team's corpus: JSONL, CSV/TSV or Parquet, with every other column kept as metadata.

A corpus row needs an id and a text (a title is optional); the field names default to the BEIR and MS MARCO
ones (``_id``/``id``/``docid``/``pid``, ``text``/``contents``/``body``/``passage``, ``title``) and can be
named. Every other field is metadata, typed per column: string, integer, float, boolean, or a list of
strings (mixed types within one column are a bad row, since a filter could not compare them); nested objects
are flattened to dotted names. A bad row
(no id or text, a duplicate id, a wrong type) is reported with its file and line; ``on_error="fail"`` stops
at the first, ``"skip"`` leaves them out and lists them (:attr:`CorpusTable.skipped`). MS MARCO's
headerless ``id<TAB>text`` collection is recognised by its first line not naming the id field.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from retrieval.errors import SiftrankError

ID_FIELDS = ("_id", "id", "docid", "doc_id", "pid")
TEXT_FIELDS = ("text", "contents", "body", "passage")
RESERVED = ("id", "title", "text")  # the documents table's own columns
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
OnError = Literal["fail", "skip"]
#: metadata column types a filter can compare (polars dtypes of the documents table)
METADATA_TYPES: dict[str, pl.DataType] = {"string": pl.String(), "integer": pl.Int64(), "float": pl.Float64(),
                                          "boolean": pl.Boolean(), "list of strings": pl.List(pl.String)}


def corpus_format(path: Path) -> str:
    """``jsonl``, ``csv``, ``tsv`` or ``parquet`` from the file name (a ``.gz`` ending is looked through)."""
    name = path.name.lower().removesuffix(".gz")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return "jsonl" if suffix == ".json" else suffix[1:]
    raise SiftrankError(f"{path}: unknown corpus format (expected a file ending in {', '.join(SUFFIXES)}, optionally .gz)")


def value_type(value: Any) -> str | None:
    """The metadata type of one value (None for a missing one); anything else is an error."""
    if value is None:
        return None
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "string"  # kept as ISO text, which orders like the dates (range filters work)
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "list of strings"
    raise ValueError(f"{type(value).__name__} values are not supported (strings, numbers, booleans, lists of strings)")


def dtype_kind(dtype: pl.DataType) -> str:
    """The metadata type a documents-table column holds (the names :func:`value_type` gives values)."""
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if dtype == pl.List(pl.String):
        return "list of strings"
    return "string"


def _typed(text: str) -> Any:
    """A CSV cell as the value it spells: integer, float, boolean, else the string (empty: missing)."""
    if text == "":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _flat(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Fields of a record, nested objects flattened to dotted names (BEIR's ``metadata: {"url": ...}``)."""
    for name, value in record.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


@dataclass
class CorpusTable:
    """What a read gave: the documents table (id, title, text, metadata...) and the rows left out."""

    docs: pl.DataFrame
    skipped: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, pl.DataType]:
        return {name: dtype for name, dtype in self.docs.schema.items() if name not in RESERVED}


@dataclass(frozen=True)
class CorpusReader:
    """How to read a corpus file: which fields hold the id, text and title, and what a bad row does."""

    id_field: str | None = None
    text_field: str | None = None
    title_field: str | None = "title"
    on_error: OnError = "fail"

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise SiftrankError(f"on_error must be 'fail' or 'skip', not '{self.on_error}'")

    @property
    def key(self) -> str:
        """The options as text, for cache keys (empty for the defaults)."""
        return "" if self == CorpusReader() else json.dumps([self.id_field, self.text_field, self.title_field, self.on_error])

    def read(self, path: Path) -> CorpusTable:
        """The documents of ``path`` (a corpus file); bad rows fail or are skipped as configured."""
        path = Path(path)
        if not path.is_file():
            raise SiftrankError(f"{path}: file not found")
        kind = corpus_format(path)
        rows = self._parquet(path) if kind == "parquet" else self._text_rows(path, kind)
        return self._table(path, rows)

    # ---- rows: (line, record) ------------------------------------------------------------------
    def _text_rows(self, path: Path, kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            raw = gzip.open(path, "rb").read() if path.name.lower().endswith(".gz") else path.read_bytes()
        except (OSError, EOFError) as exc:
            raise SiftrankError(f"{path}: cannot read ({exc})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise SiftrankError(f"{path}:{line}: not UTF-8 text (re-encode the file, e.g. iconv -t utf-8)") from None
        return self._jsonl(path, text) if kind == "jsonl" else self._delimited(path, text, "\t" if kind == "tsv" else ",")

    @staticmethod
    def _jsonl(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SiftrankError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise SiftrankError(f"{path}:{number}: expected a JSON object")
            yield number, record

    def _delimited(self, path: Path, text: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
        first = text.split("\n", 1)[0].rstrip("\r").split(delimiter)
        headerless = delimiter == "\t" and not ({c.strip('"') for c in first} & {self.id_field, *ID_FIELDS})
        # MS MARCO's collection.tsv: no header, id<TAB>text, and quotes are text; a headed table quotes as CSV does
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if headerless else csv.QUOTE_MINIMAL)
        header = ["id", "text"] if headerless else next(reader, None)
        if header is None:
            return
        for cells in reader:
            if any(c.strip() for c in cells):
                yield from self._cells(path, reader.line_num, header, cells)

    def _cells(self, path: Path, number: int, header: list[str], cells: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        if header == ["id", "text"] and len(cells) > 2:
            cells = [cells[0], cells[-1]]
        if len(cells) != len(header):
            raise SiftrankError(f"{path}:{number}: {len(cells)} fields, the header has {len(header)}")
        verbatim = {*RESERVED, *ID_FIELDS, *TEXT_FIELDS, self.id_field, self.text_field, self.title_field}
        yield number, {name: (cell if name in verbatim else _typed(cell)) for name, cell in zip(header, cells)}

    @staticmethod
    def _parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises several types for a damaged or foreign file
            raise SiftrankError(f"{path}: cannot read as Parquet ({exc})") from None
        yield from enumerate(frame.iter_rows(named=True), 1)

    # ---- the table ----------------------------------------------------------------------------
    def _fields(self, path: Path, first: dict[str, Any]) -> tuple[str, str]:
        def pick(given: str | None, names: tuple[str, ...], what: str, flag: str) -> str:
            if given is not None:
                if given not in first:
                    raise SiftrankError(f"{path}: no {what} field '{given}' (fields: {', '.join(first)})")
                return given
            found = next((n for n in names if n in first), None)
            if found is None:
                raise SiftrankError(f"{path}: no {what} field (looked for {', '.join(names)}; name it with {flag}); "
                                    f"fields: {', '.join(first)}")
            return found

        return pick(self.id_field, ID_FIELDS, "id", "--id-field"), pick(self.text_field, TEXT_FIELDS, "text", "--text-field")

    def _table(self, path: Path, rows: Iterator[tuple[int, dict[str, Any]]]) -> CorpusTable:
        names: tuple[str, str] | None = None
        columns: dict[str, list[Any]] = {"id": [], "title": [], "text": []}
        types: dict[str, tuple[str, int]] = {}  # metadata column -> (type, first line)
        seen: dict[str, int] = {}
        skipped: list[str] = []
        for number, record in rows:
            if names is None:
                names = self._fields(path, record)
            try:
                doc = self._document(number, record, names, types, seen)
            except ValueError as exc:
                if self.on_error == "fail":
                    raise SiftrankError(f"{path}:{number}: {exc} (skip bad rows with --on-error skip)") from None
                skipped.append(f"{path}:{number}: {exc}")
                continue
            seen[doc["id"]] = number
            for name in [n for n in doc if n not in columns]:  # a new metadata column, in first-seen order
                columns[name] = [None] * len(columns["id"])
            for name, values in columns.items():
                values.append(doc.get(name))
        if not columns["id"]:
            raise SiftrankError(f"{path}: the corpus is empty" + (f" ({len(skipped)} bad rows skipped)" if skipped else ""))
        schema: dict[str, pl.DataType] = {"id": pl.String(), "title": pl.String(), "text": pl.String(),
                                          **{name: METADATA_TYPES[kind] for name, (kind, _) in types.items()}}
        return CorpusTable(pl.DataFrame(columns, schema=schema), skipped)

    def _document(self, number: int, record: dict[str, Any], names: tuple[str, str],
                  types: dict[str, tuple[str, int]], seen: dict[str, int]) -> dict[str, Any]:
        """One row as a document; ValueError says what is wrong with it."""
        id_name, text_name = names
        doc_id, text = record.get(id_name), record.get(text_name)
        if doc_id is None or str(doc_id).strip() == "":
            raise ValueError(f"no document id ('{id_name}')")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"no text ('{text_name}') for document '{doc_id}'")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise ValueError(f"duplicate document id '{doc_id}' (first at line {seen[doc_id]})")
        title = record.get(self.title_field) if self.title_field else None
        doc: dict[str, Any] = {"id": doc_id, "title": "" if title is None else str(title), "text": text}
        for name, value in _flat(record):
            if name in (id_name, text_name, self.title_field):
                continue
            if name in RESERVED:
                raise ValueError(f"field '{name}' is reserved for the documents table (rename it or name it with --{name}-field)")
            kind = value_type(value)
            if kind is None:
                continue
            known = types.setdefault(name, (kind, number))
            if known[0] != kind:
                if {kind, known[0]} == {"integer", "float"}:
                    types[name] = ("float", known[1])
                else:
                    raise ValueError(f"field '{name}' is {kind}, but {known[0]} at line {known[1]}")
            doc[name] = value.isoformat() if isinstance(value, (datetime.date, datetime.datetime)) else value
        return doc
