from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from retrieval.errors import SiftrankError
from retrieval.index import Index, default_params, gpu_count

ENCODER = {"model": "test-model", "fingerprint": "abc", "dim": 16}


def _data(n: int = 400, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = pl.DataFrame({"id": [f"doc-{i}" for i in range(n)], "title": [""] * n, "text": [f"text {i}" for i in range(n)]})
    return vectors, docs


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_kind_finds_exact_neighbours(kind: str) -> None:
    vectors, docs = _data()
    params = {"nprobe": default_params("ivf", len(vectors))["nlist"]} if kind == "ivf" else {}  # probe all lists
    index = Index.build(vectors, docs, ENCODER, kind=kind, device="cpu", params=params)
    scores, ids = index.search(vectors[:5], k=3)
    assert [row[0] for row in ids] == [f"doc-{i}" for i in range(5)]  # each vector is its own nearest neighbour
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # descending


def test_save_load_is_lazy_and_identical(tmp_path: Path) -> None:
    vectors, docs = _data()
    built = Index.build(vectors, docs, ENCODER, kind="flat", device="cpu")
    built.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["docs.parquet", "index.faiss", "manifest.json"]
    loaded = Index.load(tmp_path / "idx", device="cpu")
    assert loaded._cpu_index is None and loaded._docs is None  # nothing heavy read yet
    assert len(loaded) == 400 and loaded.kind == "flat"
    s1, i1 = built.search(vectors[10:20], 10)
    s2, i2 = loaded.search(vectors[10:20], 10)
    assert i1 == i2 and np.allclose(s1, s2)
    assert loaded.store.texts(["doc-7"]) == ["text 7"]
    with pytest.raises(SiftrankError, match="already exists"):
        built.save(tmp_path / "idx")


def test_encoder_mismatch_is_refused() -> None:
    vectors, docs = _data()
    index = Index.build(vectors, docs, ENCODER, device="cpu")
    index.check_encoder(dict(ENCODER))
    with pytest.raises(SiftrankError, match="was built with encoder 'test-model'.*rebuild the index"):
        index.check_encoder({"model": "other", "fingerprint": "zzz", "dim": 16})


def test_bad_builds_and_queries(tmp_path: Path) -> None:
    vectors, docs = _data(50)
    with pytest.raises(SiftrankError, match="empty corpus"):
        Index.build(np.zeros((0, 16), np.float32), docs.head(0), ENCODER)
    with pytest.raises(SiftrankError, match="unique"):
        Index.build(vectors[:2], pl.DataFrame({"id": ["a", "a"], "title": ["", ""], "text": ["", ""]}), ENCODER)
    with pytest.raises(SiftrankError, match="kind must be one of"):
        Index.build(vectors, docs, ENCODER, kind="lsh")
    with pytest.raises(SiftrankError, match="dimensions"):
        Index.build(vectors, docs, {**ENCODER, "dim": 8})
    index = Index.build(vectors, docs, ENCODER, device="cpu")
    with pytest.raises(SiftrankError, match="query vectors have 8 dimensions"):
        index.search(np.ones((1, 8), np.float32), 3)
    with pytest.raises(SiftrankError, match="k must be at least 1"):
        index.search(vectors[:1], 0)
    assert len(index.search(vectors[:1], 500)[1][0]) == 50  # k beyond the corpus returns all documents


def test_incomplete_or_missing_index_dirs(tmp_path: Path) -> None:
    with pytest.raises(SiftrankError, match="index directory not found"):
        Index.load(tmp_path / "nope")
    vectors, docs = _data(50)
    Index.build(vectors, docs, ENCODER, device="cpu").save(tmp_path / "idx")
    (tmp_path / "idx" / "docs.parquet").unlink()
    with pytest.raises(SiftrankError, match="incomplete index"):
        Index.load(tmp_path / "idx")


def test_gpu_fallback_on_cpu_only_machines() -> None:
    vectors, docs = _data(50)
    auto = Index.build(vectors, docs, ENCODER, device="auto")
    assert auto.on_gpu == (gpu_count() > 0)
    if gpu_count() == 0:
        with pytest.raises(SiftrankError, match="FAISS sees no GPU"):
            Index.build(vectors, docs, ENCODER, device="gpu").search(vectors[:1], 1)
    hnsw = Index.build(vectors, docs, ENCODER, kind="hnsw", device="auto")
    assert not hnsw.on_gpu  # FAISS has no GPU HNSW: it stays on CPU
