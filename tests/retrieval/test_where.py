"""Metadata filters: validation, row masks, and filtered search in every index kind, BM25 and a pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from retrieval.index import Index
from retrieval.lexical import BM25
from retrieval.pipeline import Pipeline
from retrieval.where import Where
from tests.conftest import add_metadata, write_dataset

ENCODER = {"model": "test-model", "fingerprint": "abc", "dim": 16}
SOURCES = ("pubmed", "arxiv", "web", "rare")


def _docs(n: int = 600) -> pl.DataFrame:
    """Metadata of every kind; 'rare' is the source of exactly 3 documents."""
    source = ["rare" if i in (5, 250, 590) else SOURCES[i % 3] for i in range(n)]
    return pl.DataFrame({"id": [f"doc-{i}" for i in range(n)], "title": [""] * n,
                         "text": [f"passage {i} about {source[i]} topics" for i in range(n)],
                         "source": source, "year": [2000 + i % 25 for i in range(n)],
                         "score": [i / n for i in range(n)], "open": [i % 2 == 0 for i in range(n)],
                         "tags": [["even"] if i % 2 == 0 else ["odd", "x"] for i in range(n)]},
                        schema_overrides={"tags": pl.List(pl.String)})


FILTERS = [
    {"source": "pubmed"},
    {"source": {"in": ["arxiv", "rare"]}},
    {"year": {"gte": 2020}},
    {"year": {"gt": 2003, "lte": 2005}, "open": True},
    {"score": {"lt": 0.1}},
    {"tags": "odd"},
    {"tags": {"in": ["even", "none"]}},
    {"source": "rare"},  # 3 matches: fewer than k
    {"source": "rare", "year": {"gte": 2100}},  # no match
]


def _expected(docs: pl.DataFrame, spec: dict) -> set[str]:
    """The matching ids, computed row by row in Python (independently of the polars expression)."""
    def holds(value, op, arg) -> bool:
        if isinstance(value, list):
            return arg in value if op == "eq" else bool(set(value) & set(arg))
        return {"eq": value == arg, "in": value in (arg if op == "in" else []), "gt": value > arg if op == "gt" else 0,
                "gte": value >= arg if op == "gte" else 0, "lt": value < arg if op == "lt" else 0,
                "lte": value <= arg if op == "lte" else 0}[op]

    return {row["id"] for row in docs.iter_rows(named=True)
            if all(holds(row[f], op, arg) for f, c in spec.items() for op, arg in (c.items() if isinstance(c, dict) else [("eq", c)]))}


@pytest.mark.parametrize("spec", FILTERS, ids=json.dumps)
def test_mask_matches_every_operator(spec: dict) -> None:
    docs = _docs()
    mask = Where(spec, docs.schema).mask(docs)
    assert set(docs.filter(pl.Series(mask))["id"].to_list()) == _expected(docs, spec)


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "non-empty object"),
    ({"colour": "red"}, r"unknown field 'colour' \(fields: open, score, source, tags, year\)"),
    ({"text": "x"}, "unknown field 'text'"),  # the passage itself is not metadata
    ({"year": {"near": 2020}}, "unknown operator 'near' on 'year'"),
    ({"year": "2020"}, "field 'year' holds integer values, not string"),
    ({"source": {"in": "pubmed"}}, "'in' takes a non-empty list"),
    ({"open": {"gte": True}}, "holds boolean values: no range operator 'gte'"),
    ({"tags": {"in": [1]}}, "holds list of strings values, not integer"),
    ({"year": {}}, "has no condition"),
])
def test_bad_filters_say_why(spec: dict, message: str) -> None:
    with pytest.raises(SiftrankError, match=message):
        Where(spec, _docs(10).schema)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("spec", FILTERS, ids=json.dumps)
def test_filtered_index_search_returns_k_matching_hits(kind: str, spec: dict) -> None:
    docs = _docs()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(docs), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = Index.build(vectors, docs, ENCODER, kind=kind, device="cpu", params={"nprobe": 1} if kind == "ivf" else None)
    where = Where(spec, index.docs.schema)
    expected = _expected(docs, spec)
    k = 10
    scores, ids = index.search(vectors[:8], k, where)
    positions = {d: i for i, d in enumerate(docs["id"].to_list())}
    for q, row in enumerate(ids):
        assert set(row) <= expected and len(row) == min(k, len(expected))  # only matches, and k of them when k match
        if kind == "flat" and expected:  # exact: the true top-k among the matches
            exact = sorted(expected, key=lambda d: -float(vectors[q] @ vectors[positions[d]]))[:k]
            assert row == exact
        np.testing.assert_allclose(scores[q, :len(row)], [vectors[q] @ vectors[positions[d]] for d in row], atol=1e-5)


def test_index_keeps_metadata_through_save_and_load(tmp_path: Path) -> None:
    docs = _docs(50)
    vectors = np.eye(50, 16, dtype=np.float32) + 0.01
    Index.build(vectors, docs, ENCODER, device="cpu").save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx", device="cpu")
    assert loaded.docs.schema == docs.schema
    _, ids = loaded.search(vectors[:1], 5, Where({"source": "arxiv"}, loaded.docs.schema))
    assert all(docs.filter(pl.col("id") == d)["source"].item() == "arxiv" for d in ids[0]) and len(ids[0]) == 5


def test_bm25_scores_only_matching_documents() -> None:
    docs = _docs()
    bm25 = BM25(docs)
    _, plain = bm25.search(["rare topics"], 5)
    assert any(d not in {"doc-5", "doc-250", "doc-590"} for d in plain[0]) or len(plain[0]) == 5
    _, ids = bm25.search(["passage topics"], 10, Where({"source": "rare"}, docs.schema))
    assert set(ids[0]) == {"doc-5", "doc-250", "doc-590"}


@pytest.mark.parametrize("first_stage", ["dense", "bm25", "hybrid"])
def test_pipeline_search_applies_the_filter_in_each_first_stage(first_stage: str, tmp_path: Path) -> None:
    data = Dataset.load(add_metadata(write_dataset(tmp_path / "meta")))
    config = PipelineConfig.model_validate({"first_stage": {"kind": first_stage}})
    pipe = Pipeline.from_config(config, data, progress=False)
    hits = pipe.search("volcano eruptions, bread and plants", k=5, where={"topic": {"in": ["food", "bio"]}})
    assert hits and {h.id for h in hits} <= {"d1", "d2", "d5", "d6"}
    if first_stage != "bm25":  # BM25 returns only documents sharing a term with the query
        assert len(hits) == 4
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert {h.id for h in pipe.search("the moon and tides", k=3, where={"year": {"gte": 2010}})} == {"d11", "d12"}
    with pytest.raises(SiftrankError, match="unknown field 'lang'"):
        pipe.search("volcano", where={"lang": "en"})
