from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from retrieval.indexer import Indexer
from retrieval.pipeline import Pipeline


def test_dense_pipeline_ranks_the_relevant_passage_first(tiny: Path) -> None:
    data = Dataset.load(tiny)
    pipe = Pipeline.from_config(PipelineConfig(), data, progress=False)
    stages = pipe.run(data.queries)
    assert list(stages) == ["dense"]
    hits = stages["dense"]
    assert hits["q1"][0].id in {"d1", "d2"} and hits["q2"][0].id in {"d3", "d4"} and hits["q3"][0].id in {"d5", "d6"}
    assert [h.rank for h in hits["q1"]] == list(range(1, 13))
    assert all(h.cosine == h.score for h in hits["q1"])
    top = pipe.search("magma and eruptions", k=2)
    assert len(top) == 2 and top[0].id in {"d3", "d4"} and top[0].text and "volcan" in top[0].text.lower()
    with pytest.raises(SiftrankError, match="the query is empty"):
        pipe.search("   ")


def test_index_cache_is_keyed_by_corpus_and_reused(tiny: Path, tmp_path: Path) -> None:
    data = Dataset.load(tiny)
    indexer = Indexer(PipelineConfig().encoder.build(), progress=False)
    first = indexer.cached(data, root=tmp_path / "c")
    again = indexer.cached(data, root=tmp_path / "c")
    assert again.path == first.path and again._cpu_index is None  # loaded from disk, not rebuilt
    with open(tiny / "corpus.jsonl", "a") as handle:
        handle.write('{"_id": "d13", "text": "a new passage"}\n')
    changed = indexer.cached(Dataset.load(tiny), root=tmp_path / "c")
    assert changed.path != first.path and len(changed) == 13


def test_bm25_and_run_first_stages(tiny: Path) -> None:
    data = Dataset.load(tiny)
    bm25 = Pipeline.from_config(PipelineConfig(), data, first_stage="bm25")
    hits = bm25.run(data.queries)["bm25"]
    assert hits["q2"][0].id in {"d3", "d4"} and hits["q2"][0].cosine is None
    rerank_only = Pipeline(depth=2)
    stages = rerank_only.run(data.queries, candidates={"q1": {"d9": 1.0, "d1": 3.0, "d2": 2.0}})
    assert [h.id for h in stages["run"]["q1"]] == ["d1", "d2"] and stages["run"]["q2"] == []
    with pytest.raises(SiftrankError, match="no first stage"):
        rerank_only.run({"q": "text"})


def test_config_validation(tmp_path: Path) -> None:
    path = tmp_path / "pipe.toml"
    path.write_text('[encoder]\nmodel = "bundled:all-MiniLM-L6-v2"\n[index]\nkind = "hnsw"\npath = "idx"\n')
    config = PipelineConfig.load(path)
    assert config.index.kind == "hnsw" and config.index.path == tmp_path / "idx"  # relative to the config file
    path.write_text('[index]\nkind = "annoy"\n')
    with pytest.raises(SiftrankError, match="index.kind"):
        PipelineConfig.load(path)
    path.write_text('[encoder]\nmodle = "x"\n')
    with pytest.raises(SiftrankError, match="encoder.modle: Extra inputs are not permitted"):
        PipelineConfig.load(path)
    path.write_text("[encoder\n")
    with pytest.raises(SiftrankError, match="invalid TOML"):
        PipelineConfig.load(path)
    with pytest.raises(SiftrankError, match="pipeline config not found"):
        PipelineConfig.load(tmp_path / "missing.toml")
    with pytest.raises(SiftrankError, match="no index"):
        Pipeline.from_config(PipelineConfig())


def test_filter_keeps_order_and_refuses_a_calibrator_from_another_encoder(tiny: Path) -> None:
    from retrieval.calibration import Calibrator

    data = Dataset.load(tiny)
    encoder = PipelineConfig().encoder.build()
    index = Indexer(encoder, progress=False).cached(data)
    calibrator = Calibrator("linear", use_embedding=False, k=12, threshold=0.5, encoder=encoder.identity())
    pipe = Pipeline(encoder, index, calibrator=calibrator)
    stages = pipe.run(data.queries)
    assert list(stages) == ["dense", "filter"]
    for q in data.queries:
        dense, kept = stages["dense"][q], stages["filter"][q]
        assert all(h.relevance is not None for h in dense)
        assert [h.id for h in kept] == [h.id for h in dense if h.relevance >= 0.5]
        assert [h.rank for h in kept] == list(range(1, len(kept) + 1))
    bm25 = Pipeline(encoder, index, lexical=__import__("retrieval.lexical", fromlist=["BM25"]).BM25(data.corpus),
                    calibrator=calibrator)
    hits = bm25.run(data.queries)["bm25"]["q1"]
    assert all(h.cosine is not None and h.relevance is not None for h in hits)  # cosines computed for BM25 hits
    with pytest.raises(SiftrankError, match="retrain it with `siftrank calibrate`"):
        Pipeline(encoder, index, calibrator=Calibrator("linear", use_embedding=False, k=12, encoder={"model": "x", "fingerprint": "y"}))
    with pytest.raises(SiftrankError, match="min_relevance needs a relevance filter"):
        Pipeline(encoder, index).search("volcano", min_relevance=0.5)


def test_rerank_stage_reorders_only_the_top_of_the_previous_stage(tiny: Path, tiny_llm: Path, tmp_path: Path) -> None:
    data = Dataset.load(tiny)
    config_file = tmp_path / "p.toml"
    config_file.write_text(f'[index]\ndepth = 6\n[rerank]\nmodel = "{tiny_llm}"\ndepth = 4\nmode = "first-token"\n')
    config = PipelineConfig.load(config_file)
    pipe = Pipeline.from_config(config, data, first_stage="bm25", progress=False)
    assert pipe.stages == ["bm25", "rerank"]
    stages = pipe.run(data.queries)
    for q in data.queries:
        before, after = stages["bm25"][q], stages["rerank"][q]
        assert {h.id for h in after[:4]} == {h.id for h in before[:4]} and after[4:] == [
            h.model_copy(update={"rank": h.rank, "score": -float(h.rank - 4)}) for h in before[4:]]
        assert [h.rank for h in after] == list(range(1, len(after) + 1))
        assert [h.score for h in after] == sorted((h.score for h in after), reverse=True)
        assert pipe.rank_stats[q].calls == 1 and pipe.rank_stats[q].input_tokens > 0
    assert "rerank" in pipe.timings
    top = pipe.search("the moon and the tides of the ocean and the python language", k=3)
    assert len(top) == 3 and all(h.text for h in top)  # texts come from the dataset (no index here)
    with pytest.raises(SiftrankError, match="reads passages"):
        Pipeline(lexical=pipe.lexical, ranker=pipe.ranker)
