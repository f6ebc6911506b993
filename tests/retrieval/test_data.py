from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from retrieval.data import Dataset, format_run, read_corpus, read_qrels, read_queries, read_run
from retrieval.errors import SiftrankError
from tests.conftest import DOCS, write_dataset


def test_beir_dataset_loads_judged_queries_only(tiny: Path) -> None:
    (tiny / "queries.jsonl").write_text((tiny / "queries.jsonl").read_text() + json.dumps({"_id": "q9", "text": "unjudged"}) + "\n")
    data = Dataset.load(tiny)
    assert len(data.corpus) == len(DOCS)
    assert set(data.queries) == {"q1", "q2", "q3"}
    assert data.qrels["q1"] == {"d1": 3, "d2": 2, "d5": 0}
    assert data.doc_texts()[0].startswith("Photosynthesis Plants turn")  # title + text
    assert data.doc_texts()[1].startswith("The chloroplast")  # no title, no leading space


def test_gzipped_corpus_and_flat_qrels_name(tiny: Path) -> None:
    raw = (tiny / "corpus.jsonl").read_bytes()
    (tiny / "corpus.jsonl").unlink()
    with gzip.open(tiny / "corpus.jsonl.gz", "wb") as handle:
        handle.write(raw)
    (tiny / "qrels.custom.tsv").write_text("q2\td4\t1\n")
    data = Dataset.load(tiny, qrels="qrels.custom.tsv")
    assert len(data.corpus) == len(DOCS) and data.qrels == {"q2": {"d4": 1}} and list(data.queries) == ["q2"]


def test_msmarco_tsv_layout(tmp_path: Path) -> None:
    (tmp_path / "collection.tsv").write_text("0\tfirst passage\n1\tsecond passage\n")
    (tmp_path / "queries.dev.tsv").write_text("100\ta question\n")
    (tmp_path / "qrels.dev.tsv").write_text("100\t0\t1\t1\n")
    data = Dataset.load(tmp_path, split="dev")
    assert data.corpus["id"].to_list() == ["0", "1"] and data.queries == {"100": "a question"} and data.qrels == {"100": {"1": 1}}


def test_missing_dataset_files(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(SiftrankError, match="dataset directory not found"):
        Dataset.load(tmp_path / "nope")
    (tiny / "queries.jsonl").unlink()
    with pytest.raises(SiftrankError, match="no queries.jsonl"):
        Dataset.load(tiny)
    write_dataset(tiny)
    with pytest.raises(SiftrankError, match="no qrels/dev.tsv"):
        Dataset.load(tiny, split="dev")
    with pytest.raises(SiftrankError, match="qrels file 'missing.tsv' not found"):
        Dataset.load(tiny, qrels="missing.tsv")
    (tiny / "corpus.jsonl").unlink()
    with pytest.raises(SiftrankError, match="no corpus.jsonl"):
        Dataset.load(tiny)


MALFORMED = [
    (read_corpus, "corpus.jsonl", '{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": \n', r"corpus.jsonl:3: malformed JSON"),
    (read_corpus, "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n',
     r"corpus.jsonl:2: no document id \('_id'\)"),
    (read_corpus, "corpus.jsonl", "\n", "the corpus is empty"),
    (read_corpus, "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n',
     r"corpus.jsonl:3: duplicate document id 'a' \(first at line 1\)"),
    (read_corpus, "collection.tsv", "1\tok\n2\n", r"collection.tsv:2: 1 fields, the header has 2"),
    (read_qrels, "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"qrels.tsv:2: grade 'high' is not a number"),
    (read_qrels, "qrels.tsv", "q1 d1\n", r"qrels.tsv:1: expected"),
    (read_queries, "queries.tsv", "1\tone\n1\tagain\n", r"queries.tsv:2: duplicate query id '1'"),
    (read_queries, "queries.jsonl", "", "no queries"),
]


@pytest.mark.parametrize(("reader", "name", "content", "message"), MALFORMED)
def test_malformed_files_report_file_and_line(reader, name: str, content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SiftrankError, match=message):
        reader(path)


def test_qrels_naming_unknown_queries(tiny: Path) -> None:
    with open(tiny / "qrels" / "test.tsv", "a") as handle:
        handle.write("q404\td1\t1\n")
    with pytest.raises(SiftrankError, match=r"1 judged queries are not in queries.jsonl: q404"):
        Dataset.load(tiny)


def test_run_round_trip_and_tie_breaks(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    path.write_text(format_run({"q": {"b": 1.0, "a": 1.0, "c": 2.0}}, "t"))
    assert path.read_text().splitlines()[1] == "q Q0 a 2 1.000000 t"  # ties written by ascending id
    assert read_run(path) == {"q": {"a": 1.0, "b": 1.0, "c": 2.0}}
    by_id = read_run(path, ties="docid")
    assert sorted(by_id["q"], key=lambda d: -by_id["q"][d]) == ["c", "a", "b"]
    path.write_text("q Q0 b 1 1.0 t\nq Q0 a 2 1.0 t\n")
    by_rank = read_run(path, ties="rank")
    assert by_rank["q"]["b"] > by_rank["q"]["a"]
    path.write_text("q Q0 a 1 1.0\n")
    with pytest.raises(SiftrankError, match=r"run.trec:1: expected 6 columns"):
        read_run(path)
    with pytest.raises(SiftrankError, match="tie-break"):
        read_run(path, ties="random")
