from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from retrieval.indexer import Indexer
from retrieval.pipeline import Pipeline
from retrieval.stages.bm25 import BM25Retriever
from retrieval.stages.cosine_filter import CosineAdapterFilter
from retrieval.stages.dense import DenseRetriever
from retrieval.stages.runfile import RunFileRetriever


def _config(tmp_path: Path, text: str) -> PipelineConfig:
    path = tmp_path / "pipe.toml"
    path.write_text(text)
    return PipelineConfig.load(path)


def test_dense_pipeline_ranks_the_relevant_passage_first(tiny: Path) -> None:
    data = Dataset.load(tiny)
    pipe = Pipeline.from_config(PipelineConfig(), data, progress=False)
    result = pipe.run(data.queries)
    assert list(result.stages) == ["dense"] and result.final == "dense"
    hits = result.hits
    assert hits["q1"][0].id in {"d1", "d2"} and hits["q2"][0].id in {"d3", "d4"} and hits["q3"][0].id in {"d5", "d6"}
    assert [h.rank for h in hits["q1"]] == list(range(1, 13))
    assert all(h.cosine == h.score for h in hits["q1"])
    assert [len(h) for h in pipe.run(data.queries, depth=3).hits.values()] == [3, 3, 3]  # depth is an argument
    top = pipe.search("magma and eruptions", k=2)
    assert len(top) == 2 and top[0].id in {"d3", "d4"} and top[0].text and "volcan" in top[0].text.lower()
    with pytest.raises(SiftrankError, match="the query is empty"):
        pipe.search("   ")
    with pytest.raises(SiftrankError, match="depth must be at least 1"):
        pipe.run(data.queries, depth=0)


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


def test_bm25_run_and_hybrid_first_stages_come_from_the_config(tiny: Path, tmp_path: Path) -> None:
    data = Dataset.load(tiny)
    bm25 = Pipeline.from_config(_config(tmp_path, '[first_stage]\nkind = "bm25"\n'), data)
    assert isinstance(bm25.first_stage, BM25Retriever) and bm25.encoder is None  # no encoder loaded for BM25
    hits = bm25.run(data.queries).hits
    assert hits["q2"][0].id in {"d3", "d4"} and hits["q2"][0].cosine is None
    (tmp_path / "run.trec").write_text("q1 Q0 d9 1 1.0 x\nq1 Q0 d1 2 3.0 x\nq1 Q0 d2 3 2.0 x\n")
    run = Pipeline.from_config(_config(tmp_path, '[first_stage]\nkind = "run"\npath = "run.trec"\ndepth = 2\n'))
    assert isinstance(run.first_stage, RunFileRetriever) and run.stages == ["run"]
    result = run.run(data.queries)
    assert [h.id for h in result.hits["q1"]] == ["d1", "d2"] and result.hits["q2"] == []
    hybrid = Pipeline.from_config(_config(tmp_path, '[first_stage]\nkind = "hybrid"\nrrf_k = 1\n'), data)
    fused = hybrid.run(data.queries, depth=5)
    dense = Pipeline.from_config(PipelineConfig(), data).run(data.queries, depth=5).hits
    lexical = bm25.run(data.queries, depth=5).hits
    for q in data.queries:
        ids = [h.id for h in fused.hits[q]]
        assert set(ids) <= {h.id for h in dense[q]} | {h.id for h in lexical[q]} and len(ids) == 5
        # rrf_k = 1: a document first in both rankings scores 1/2 + 1/2 and leads
        if dense[q][0].id == lexical[q][0].id:
            assert ids[0] == dense[q][0].id and fused.hits[q][0].score == pytest.approx(1.0)
        by_id = {h.id: h for h in dense[q]}
        assert all(h.cosine == (by_id[h.id].cosine if h.id in by_id else None) for h in fused.hits[q])
    interp = Pipeline.from_config(_config(tmp_path, '[first_stage]\nkind = "hybrid"\nfusion = "interpolate"\nweight = 1.0\n'),
                                  data).run(data.queries, depth=3).hits
    # weight 1: the dense order (its last hit normalises to 0 and may tie with BM25-only hits)
    assert {q: [h.id for h in v[:2]] for q, v in interp.items()} == {q: [h.id for h in v[:2]] for q, v in dense.items()}


def test_config_validation(tmp_path: Path) -> None:
    config = _config(tmp_path, '[encoder]\nmodel = "bundled:all-MiniLM-L6-v2"\n[index]\nkind = "hnsw"\npath = "idx"\n')
    assert config.index.kind == "hnsw" and config.index.path == tmp_path / "idx"  # relative to the config file
    assert config.stages() == ["dense"]
    cases = {'[index]\nkind = "annoy"\n': "index.kind",
             '[encoder]\nmodle = "x"\n': "encoder.modle: Extra inputs are not permitted",
             '[first_stage]\nkind = "splade"\n': "kind must be one of dense, bm25, run, hybrid, not 'splade'",
             '[first_stage]\nkind = "hybrid"\nfusion = "max"\n': "first_stage: .*fusion",
             '[first_stage]\nkind = "bm25"\nk3 = 1\n': "k3: Extra inputs are not permitted",
             '[first_stage]\nkind = "run"\n': "path: Field required",
             '[rerank]\nmodle = "x"\n': "rerank: .*modle",
             '[filter]\nthreshold = 0.5\n': "calibrator: Field required",
             '[index]\ndepth = 10\n': "index.depth: Extra inputs",
             "[encoder\n": "invalid TOML"}
    for text, message in cases.items():
        with pytest.raises(SiftrankError, match=message):
            _config(tmp_path, text)
    with pytest.raises(SiftrankError, match="pipeline config not found"):
        PipelineConfig.load(tmp_path / "missing.toml")
    with pytest.raises(SiftrankError, match="no index"):
        Pipeline.from_config(PipelineConfig())
    with pytest.raises(SiftrankError, match="run file not found"):
        Pipeline.from_config(_config(tmp_path, '[first_stage]\nkind = "run"\npath = "nope.trec"\n'))


def test_filter_keeps_order_and_refuses_a_calibrator_from_another_encoder(tiny: Path) -> None:
    from retrieval.calibration import Calibrator

    data = Dataset.load(tiny)
    encoder = PipelineConfig().encoder.build()
    index = Indexer(encoder, progress=False).cached(data)
    calibrator = Calibrator("linear", use_embedding=False, k=12, threshold=0.5, encoder=encoder.identity())
    dense = DenseRetriever(encoder, index)
    pipe = Pipeline(dense, CosineAdapterFilter(calibrator, encoder), encoder=encoder)
    result = pipe.run(data.queries)
    assert list(result.stages) == ["dense", "filter"] and result.final == "filter"
    for q in data.queries:
        first, kept = result.stages["dense"][q], result.stages["filter"][q]
        assert all(h.relevance is not None for h in first)
        assert [h.id for h in kept] == [h.id for h in first if h.relevance >= 0.5]
        assert [h.rank for h in kept] == list(range(1, len(kept) + 1))
        assert [h.rank for h in first] == list(range(1, len(first) + 1))  # the first stage keeps its ranks
    with pytest.raises(SiftrankError, match="trained on top-12 candidates but the first stage depth is 50"):
        Pipeline(dense, CosineAdapterFilter(calibrator, encoder), depth=50, encoder=encoder)
    with pytest.raises(SiftrankError, match="trained on top-12 candidates, not 5"):
        pipe.run(data.queries, depth=5)
    lexical = BM25Retriever.from_config(BM25Retriever.Params(), __import__("retrieval.stages", fromlist=["StageContext"])
                                        .StageContext(PipelineConfig(), data))
    bm25_filter = CosineAdapterFilter(calibrator, encoder, data.store)
    hits = Pipeline(lexical, bm25_filter, encoder=encoder).run(data.queries).stages["bm25"]["q1"]
    assert all(h.cosine is not None and h.relevance is not None for h in hits)  # cosines computed for BM25 hits
    with pytest.raises(SiftrankError, match="retrain it with `siftrank calibrate`"):
        CosineAdapterFilter(Calibrator("linear", use_embedding=False, k=12, encoder={"model": "x", "fingerprint": "y"}), encoder)
    with pytest.raises(SiftrankError, match="min_relevance needs a relevance filter"):
        Pipeline(dense, encoder=encoder).search("volcano", min_relevance=0.5)


def test_rerank_stage_reorders_only_the_top_of_the_previous_stage(tiny: Path, tiny_llm: Path, tmp_path: Path) -> None:
    data = Dataset.load(tiny)
    config = _config(tmp_path, f'[first_stage]\nkind = "bm25"\ndepth = 6\n[rerank]\nmodel = "{tiny_llm}"\ndepth = 4\n'
                               'mode = "first-token"\n')
    pipe = Pipeline.from_config(config, data, progress=False)
    assert pipe.stages == ["bm25", "rerank"]
    result = pipe.run(data.queries)
    for q in data.queries:
        before, after = result.stages["bm25"][q], result.stages["rerank"][q]
        assert {h.id for h in after[:4]} == {h.id for h in before[:4]}
        floor = min(h.score for h in after[:4])  # the tail keeps its order below the ranked block
        assert after[4:] == [replace(h, score=floor - float(h.rank - 4)) for h in before[4:]]
        assert [h.rank for h in after] == list(range(1, len(after) + 1))
        assert [h.score for h in after] == sorted((h.score for h in after), reverse=True)
        assert result.stats["rerank"][q]["calls"] == 1 and result.stats["rerank"][q]["input_tokens"] > 0
    assert "rerank" in result.timings
    summary = pipe.reranker.summarise(list(result.stats["rerank"].values()))  # type: ignore[union-attr]
    assert summary["llm_calls_per_query"] == 1 and summary["parse_failures"] >= 0 and summary["input_tokens_per_query"] > 0
    top = pipe.search("the moon and the tides of the ocean and the python language", k=3)
    assert len(top) == 3 and all(h.text for h in top)  # texts come from the dataset's store (no index here)
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 1.0 x\n")
    with pytest.raises(SiftrankError, match="reads passages"):
        Pipeline.from_config(_config(tmp_path, f'[first_stage]\nkind = "run"\npath = "run.trec"\n[rerank]\nmodel = "{tiny_llm}"\n'))
