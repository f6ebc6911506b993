"""Reading a team's corpus (JSONL, CSV/TSV, Parquet) with metadata, and its bad rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from retrieval.corpus import CorpusReader
from retrieval.data import Dataset
from retrieval.errors import SiftrankError

ROWS = [
    {"doc": "a", "body": "Photosynthesis in plants.", "headline": "Plants", "year": 2021, "source": "pubmed", "open": True,
     "tags": ["bio", "plants"], "meta": {"lang": "en"}},
    {"doc": "b", "body": "Volcanoes erupt.", "headline": "", "year": 2019, "source": "arxiv", "open": False,
     "tags": ["geo"], "meta": {"lang": "de"}},
    {"doc": "c", "body": "Bread rises with yeast.", "year": 2024, "source": "pubmed", "tags": []},
]
READER = CorpusReader(id_field="doc", text_field="body", title_field="headline")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_keeps_typed_metadata_and_flattens_objects(tmp_path: Path) -> None:
    table = READER.read(_jsonl(tmp_path / "docs.jsonl", ROWS))
    docs = table.docs
    assert docs["id"].to_list() == ["a", "b", "c"]
    assert docs["title"].to_list() == ["Plants", "", ""]
    assert table.metadata == {"year": pl.Int64, "source": pl.String, "open": pl.Boolean, "tags": pl.List(pl.String),
                              "meta.lang": pl.String}
    assert docs["open"].to_list() == [True, False, None]
    assert docs["tags"].to_list() == [["bio", "plants"], ["geo"], []]


def test_csv_tsv_and_parquet_read_the_same_table(tmp_path: Path) -> None:
    flat = [{k: v for k, v in r.items() if k not in ("tags", "meta")} for r in ROWS]
    frame = pl.DataFrame(flat)
    frame.write_csv(tmp_path / "docs.csv")
    frame.write_csv(tmp_path / "docs.tsv", separator="\t")
    frame.write_parquet(tmp_path / "docs.parquet")
    with gzip.open(tmp_path / "docs.csv.gz", "wt", encoding="utf-8") as f:
        f.write((tmp_path / "docs.csv").read_text())
    tables = [READER.read(tmp_path / name).docs for name in ("docs.csv", "docs.tsv", "docs.parquet", "docs.csv.gz")]
    for table in tables[1:]:
        assert table.equals(tables[0])
    assert tables[0].schema["year"] == pl.Int64 and tables[0].schema["open"] == pl.Boolean


def test_default_field_names_and_msmarco_tsv(tmp_path: Path) -> None:
    (tmp_path / "collection.tsv").write_text("0\tfirst passage\n1\tsecond passage\n")
    docs = CorpusReader().read(tmp_path / "collection.tsv").docs
    assert docs["id"].to_list() == ["0", "1"] and docs["text"].to_list() == ["first passage", "second passage"]
    _jsonl(tmp_path / "c.jsonl", [{"docid": 7, "contents": "x", "n": 1}, {"docid": 8, "contents": "y", "n": 2.5}])
    docs = CorpusReader().read(tmp_path / "c.jsonl").docs
    assert docs["id"].to_list() == ["7", "8"] and docs.schema["n"] == pl.Float64  # integers and floats: floats


@pytest.mark.parametrize(("rows", "message"), [
    ([{"doc": "a", "body": "x"}, {"doc": "a", "body": "y"}], r"docs.jsonl:2: duplicate document id 'a' \(first at line 1\)"),
    ([{"doc": "a", "body": "x"}, {"body": "y"}], r"docs.jsonl:2: no document id \('doc'\)"),
    ([{"doc": "a", "body": "x"}, {"doc": "b", "body": " "}], r"docs.jsonl:2: no text \('body'\) for document 'b'"),
    ([{"doc": "a", "body": "x", "year": 1}, {"doc": "b", "body": "y", "year": "new"}],
     r"docs.jsonl:2: field 'year' is string, but integer at line 1"),
    ([{"doc": "a", "body": "x", "tags": [1, 2]}], r"docs.jsonl:1: list values are not supported"),
    ([{"doc": "a", "body": "x", "id": "clash"}], r"docs.jsonl:1: field 'id' is reserved"),
])
def test_bad_rows_fail_with_file_and_line_or_are_skipped(rows: list[dict], message: str, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "docs.jsonl", rows)
    with pytest.raises(SiftrankError, match=message):
        READER.read(path)
    if len(rows) > 1:  # the good first row survives a skip; the bad one is listed
        table = CorpusReader("doc", "body", "headline", on_error="skip").read(path)
        assert table.docs["id"].to_list() == ["a"] and len(table.skipped) == 1 and "docs.jsonl:2" in table.skipped[0]


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("id,text\n1,ok\n2,caf\xe9\n".encode("latin-1"))
    with pytest.raises(SiftrankError, match=r"latin.csv:3: not UTF-8"):
        CorpusReader().read(tmp_path / "latin.csv")
    pl.DataFrame({"id": ["a"], "abstract": ["x"]}).write_parquet(tmp_path / "notext.parquet")
    with pytest.raises(SiftrankError, match=r"notext.parquet: no text field .*--text-field.*fields: id, abstract"):
        CorpusReader().read(tmp_path / "notext.parquet")
    with pytest.raises(SiftrankError, match="no text field 'body'"):
        CorpusReader(text_field="body").read(tmp_path / "notext.parquet")
    (tmp_path / "short.csv").write_text("id,text,year\n1,ok,2020\n2,missing\n")
    with pytest.raises(SiftrankError, match=r"short.csv:3: 2 fields, the header has 3"):
        CorpusReader().read(tmp_path / "short.csv")
    (tmp_path / "docs.xml").write_text("<docs/>")
    with pytest.raises(SiftrankError, match="unknown corpus format"):
        CorpusReader().read(tmp_path / "docs.xml")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(SiftrankError, match="cannot read as Parquet"):
        CorpusReader().read(tmp_path / "junk.parquet")
    with pytest.raises(SiftrankError, match="on_error must be"):
        CorpusReader(on_error="ignore")  # type: ignore[arg-type]


def test_reader_options_change_the_corpus_digest(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "docs.jsonl", ROWS)
    plain = Dataset.corpus_only(_jsonl(tmp_path / "plain.jsonl", [{"_id": "a", "text": "x"}]))
    named = Dataset.corpus_only(path, READER)
    assert plain.corpus_options == "" and named.corpus_options
    assert named.corpus_digest() != Dataset.corpus_only(path, CorpusReader("doc", "body", None)).corpus_digest()
