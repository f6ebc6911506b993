"""A live corpus: writes visible at once in dense, BM25 and hybrid search; deletes never come back; compaction,
snapshots and the durable document log."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.doclog import DocumentLog
from retrieval.errors import SiftrankError
from retrieval.index import Index
from retrieval.live import LiveCorpus, documents_frame
from retrieval.live_index import LiveIndex
from retrieval.pipeline import Pipeline
from retrieval.where import Where
from tests.conftest import DOCS, add_metadata, write_dataset


class HashEncoder:
    """Bag-of-words vectors (hashed words, normalised): fast, deterministic, and a shared word means similar."""

    fingerprint = "hash-encoder"

    def identity(self) -> dict:
        return {"model": "hash", "fingerprint": self.fingerprint, "dim": 64}

    def encode_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), 64), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(",", " ").split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    encode_queries = encode_documents


def _docs(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "title": [DOCS[d][0] for d in ids], "text": [DOCS[d][1] for d in ids],
                         "year": [2000 + int(d[1:]) for d in ids]})


def _live(ids: list[str], kind: str = "flat") -> tuple[LiveCorpus, LiveIndex, HashEncoder]:
    encoder = HashEncoder()
    docs = _docs(ids)
    index = Index.build(encoder.encode_documents(DocumentsText(docs)), docs, encoder.identity(), kind=kind, device="cpu",
                        empty=True)
    corpus = LiveCorpus(docs)
    return corpus, LiveIndex(index, corpus, encoder), encoder  # type: ignore[arg-type]


def DocumentsText(docs: pl.DataFrame) -> list[str]:  # noqa: N802 - reads like the texts it returns
    return [f"{t} {x}" if t else x for t, x in zip(docs["title"], docs["text"])]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_writes_are_searchable_at_once_and_deletes_never_return(kind: str) -> None:
    corpus, index, encoder = _live([f"d{i}" for i in range(1, 9)], kind)
    query = encoder.encode_queries(["moon tides gravity"])
    assert not {"d11", "d12"} & set(index.search(query, 3)[1][0])
    corpus.apply(1, _docs(["d11", "d12"]), [])
    assert set(index.search(query, 2)[1][0]) == {"d11", "d12"} and len(index) == 10
    corpus.apply(2, _docs(["d3"]).with_columns(pl.lit("The Moon and the tides of the ocean.").alias("text")), ["d12"])
    top = index.search(query, 10)[1][0]
    assert "d12" not in top and top[0] in {"d11", "d3"} and top.count("d3") == 1 and len(index) == 9
    assert "tides" in corpus.store.texts(["d3"])[0] and "d12" not in corpus.store
    with pytest.raises(SiftrankError, match="not in the corpus"):
        corpus.store.texts(["d12"])
    where = Where({"year": {"gte": 2003}}, corpus.store.schema)
    filtered = index.search(query, 10, where)[1][0]
    assert set(filtered) == {"d3", "d4", "d5", "d6", "d7", "d8", "d11"}  # base and delta, deleted excluded
    before = index.search(query, 10)
    corpus.compact()
    after = index.search(query, 10)
    assert {(d, round(float(x), 5)) for d, x in zip(after[1][0], after[0][0])} == \
        {(d, round(float(x), 5)) for d, x in zip(before[1][0], before[0][0])}  # the same hits (ties at 0 in any order)
    assert len(index.base) == 9 and corpus.state.delta.height == 0
    corpus.apply(2, _docs(["d12"]), [])  # an old version (a replayed batch) changes nothing
    assert "d12" not in index.search(query, 10)[1][0]


def test_streaming_into_an_empty_index_matches_a_built_one() -> None:
    ids = list(DOCS)
    encoder = HashEncoder()
    built = Index.build(encoder.encode_documents(DocumentsText(_docs(ids))), _docs(ids), encoder.identity(), device="cpu")
    corpus, live, _ = _live([])
    for version, lo in enumerate(range(0, len(ids), 5), 1):
        corpus.apply(version, _docs(ids[lo:lo + 5]), [])
        if version == 2:
            corpus.compact()
    queries = encoder.encode_queries(["bread yeast", "football rules", "python packages", "volcano magma"])
    def matched(result) -> list[list[str]]:  # the hits sharing a word with the query (the rest tie at 0)
        return [[d for d, x in zip(ids, scores) if x > 1e-6] for ids, scores in zip(result[1], result[0])]

    assert matched(live.search(queries, 10)) == matched(built.search(queries, 10))
    assert all(matched(built.search(queries, 10)))


def test_snapshot_and_replay_restore_the_same_corpus(tmp_path: Path) -> None:
    data = Dataset.load(add_metadata(write_dataset(tmp_path / "tiny")))
    config = PipelineConfig.model_validate({"first_stage": {"kind": "hybrid"}})
    log = DocumentLog(tmp_path / "documents.db")
    pipe = Pipeline.from_config(config, data, progress=False)
    corpus = pipe.go_live(tmp_path / "snap")
    new = [{"id": "n1", "text": "Penguins live in Antarctica and cannot fly.", "metadata": {"topic": "bio", "year": 2020}},
           {"id": "d1", "text": "Photosynthesis replaced by a text about glaciers.", "metadata": {"topic": "geo"}}]
    corpus.apply(log.append(new, []), documents_frame(new, pipe.store.schema), [])
    corpus.apply(log.append([], ["d5"]), documents_frame([], pipe.store.schema), ["d5"])
    hits = pipe.search("penguins antarctica", k=3)
    assert hits[0].id == "n1" and hits[0].metadata == {"topic": "bio", "year": 2020}
    assert [h.id for h in pipe.search("penguins", k=3, where={"topic": "bio"})][0] == "n1"
    assert "d5" not in {h.id for h in pipe.search("bake bread yeast", k=12)}
    corpus.save(tmp_path / "snap")  # compacts, then snapshots version 2
    after = [{"id": "n2", "text": "Glaciers carve valleys.", "metadata": {"year": 2021}}]
    corpus.apply(log.append(after, []), documents_frame(after, pipe.store.schema), [])
    expected = [h.id for h in pipe.search("glaciers valleys", k=5)]
    restarted = Pipeline.from_config(config, data, progress=False)
    again = restarted.go_live(tmp_path / "snap")
    assert again.state.version == 2
    for version, upserts, deletes in log.since(again.state.version):
        again.apply(version, documents_frame(upserts, restarted.store.schema), deletes)
    assert [h.id for h in restarted.search("glaciers valleys", k=5)] == expected
    assert "d5" not in {h.id for h in restarted.search("bake bread yeast", k=12)}
    assert log.truncate(2) == 3 and [v for v, _, _ in log.since(2)] == [3]
    with pytest.raises(SiftrankError, match="compacted away"):
        list(log.since(1))


def test_document_log_survives_reopening(tmp_path: Path) -> None:
    log = DocumentLog(tmp_path / "d.db")
    assert log.version == 0 and log.append([{"id": "a", "text": "x"}], []) == 1 and log.append([], ["a"]) == 2
    log.close()
    again = DocumentLog(tmp_path / "d.db")
    assert list(again.since(0)) == [(1, [{"id": "a", "text": "x"}], []), (2, [], ["a"])] and again.version == 2
    (tmp_path / "junk.db").write_text("not a database at all, not even close" * 10)
    with pytest.raises(SiftrankError, match="not a document log"):
        DocumentLog(tmp_path / "junk.db")


def test_documents_frame_checks_metadata_types() -> None:
    schema = _docs(["d1"]).schema
    frame = documents_frame([{"id": "x", "text": "t", "metadata": {"year": 2001, "tags": ["a"]}}], schema)
    assert frame.schema["year"] == pl.Int64 and frame.schema["tags"] == pl.List(pl.String)
    with pytest.raises(SiftrankError, match="document 'x': metadata 'year' is string, but the corpus holds integer"):
        documents_frame([{"id": "x", "text": "t", "metadata": {"year": "2001"}}], schema)
    with pytest.raises(SiftrankError, match="metadata field 'text' is reserved"):
        documents_frame([{"id": "x", "text": "t", "metadata": {"text": "y"}}], schema)


def test_bm25_statistics_follow_every_write(tmp_path: Path) -> None:
    """BM25 over the delta counts its collection statistics once per corpus version, never stale: a corpus
    searched between writes scores exactly as one that took the same writes unsearched."""
    data = Dataset.load(add_metadata(write_dataset(tmp_path / "tiny")))
    config = PipelineConfig.model_validate({"first_stage": {"kind": "bm25"}})
    writes = [[{"id": "n1", "text": "Penguins live in Antarctica.", "metadata": {}}],
              [{"id": "n2", "text": "Penguins and more penguins swim in cold seas.", "metadata": {}}]]
    searched, quiet = (Pipeline.from_config(config, data, progress=False) for _ in range(2))
    for pipe in (searched, quiet):
        corpus = pipe.go_live()
        for version, docs in enumerate(writes, start=1):
            corpus.apply(version, documents_frame(docs, pipe.store.schema), [])
            if pipe is searched and version == 1:
                first = {h.id: h.score for h in pipe.search("penguins antarctica", k=3)}
    final = {h.id: h.score for h in searched.search("penguins antarctica", k=3)}
    assert final == {h.id: h.score for h in quiet.search("penguins antarctica", k=3)}
    assert final["n1"] < first["n1"]  # n2 made "penguins" commoner: n1's score fell with the new statistics
