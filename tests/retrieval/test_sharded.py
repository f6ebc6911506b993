"""The Ray-sharded index in a local Ray cluster on this machine's CPUs: same results as one index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.indexer import Indexer
from retrieval.pipeline import Pipeline

ray = pytest.importorskip("ray")
ENCODER = {"model": "bundled:all-MiniLM-L6-v2", "precision": "fp32", "query_precision": "fp32"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from retrieval import sharded

    sharded.connect("local")
    yield
    ray.shutdown()


def test_sharded_search_equals_the_single_index_and_a_failed_build_resumes(tiny: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval import sharded

    data = Dataset.load(tiny)
    encoder = Encoder(precision="fp32", query_precision="fp32")
    single = Indexer(encoder, progress=False).build(data)
    queries = encoder.encode_queries(list(data.queries.values()))

    real = sharded._encode_partition
    calls: list[int] = []

    def flaky(ray_module, part, *args, **kwargs):
        calls.append(int(part["_row"][0]))
        if len(calls) == 2:
            raise RuntimeError("worker lost")  # the second partition fails mid-build
        return real(ray_module, part, *args, **kwargs)

    monkeypatch.setattr(sharded, "_encode_partition", flaky)
    out = tmp_path / "sharded"
    with pytest.raises(RuntimeError, match="worker lost"):
        sharded.ShardedIndex.build(data, ENCODER, out, shards=3)
    assert not out.exists()  # nothing visible, the finished shard waits in the hidden staging folder
    staging = tmp_path / ".sharded.partial"
    first = (staging / "shard-0" / "manifest.json").stat().st_mtime_ns
    index = sharded.ShardedIndex.build(data, ENCODER, out, shards=3)
    assert calls == [0, 4, 4, 8]  # shard 0 kept, shards 1 and 2 built on the second run
    assert not staging.exists() and len(index) == 12 and index.manifest.parameters["counts"] == [4, 4, 4]
    assert (out / "shard-0" / "manifest.json").stat().st_mtime_ns == first

    for k in (3, 12):
        scores, ids = index.search(queries, k)
        want_scores, want_ids = single.search(queries, k)
        assert ids == want_ids
        assert np.allclose(scores, want_scores, atol=1e-5)
    assert index.store.texts(["d12", "d1"]) == single.store.texts(["d12", "d1"])
    with pytest.raises(SiftrankError, match="not in the corpus"):
        index.store.texts(["nope"])
    index.close()

    # The pipeline opens it from a config like any index and gives the same ranking.
    config = tmp_path / "p.toml"
    config.write_text(f'[encoder]\nprecision = "fp32"\nquery_precision = "fp32"\n[index]\npath = "{out}"\n')
    stages = Pipeline.from_config(PipelineConfig.load(config), progress=False).run(data.queries).stages
    assert [h.id for h in stages["dense"]["q2"]] == single.search(queries[1:2], 12)[1][0]

    # A shard from another model is refused at load.
    manifest = out / "shard-1" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["encoder"]["fingerprint"] = "0" * 16
    manifest.write_text(json.dumps(record))
    with pytest.raises(SiftrankError, match="mismatched shard"):
        sharded.ShardedIndex.load(out)


def test_unreachable_cluster_and_bad_shard_counts(tiny: Path, tmp_path: Path) -> None:
    from retrieval.sharded import ShardedIndex, _check_reachable

    with pytest.raises(SiftrankError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        _check_reachable("127.0.0.1:1")
    with pytest.raises(SiftrankError, match="not HOST:PORT"):
        _check_reachable("somewhere")
    with pytest.raises(SiftrankError, match="shards must be between 1 and the number of passages"):
        ShardedIndex.build(Dataset.load(tiny), ENCODER, tmp_path / "x", shards=13)
    assert not os.listdir(tmp_path) or not (tmp_path / "x").exists()
