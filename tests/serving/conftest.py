"""A warmed variant pool over the tiny collection, built once per module (dense and BM25 variants)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.experiment import ExperimentConfig
from tests.conftest import add_metadata, write_dataset

EXPERIMENT = """
[service]
data = "tiny"
event_log = "events.db"
max_query_chars = 200
max_k = 20
max_body_bytes = 4096
event_flush_ms = 5

[variants.dense]
[variants.bm25]
pipeline = "bm25.toml"

[experiment]
name = "test"
primary = "dense"
ab = {{ dense = 0.5, bm25 = 0.5 }}
interleave = ["dense", "bm25"]
interleave_share = {share}
shadows = [{{ variant = "bm25", sample_rate = 1.0, timeout_ms = 5000 }}]
"""


def write_experiment(folder: Path, share: float = 0.5) -> Path:
    add_metadata(write_dataset(folder / "tiny"))
    path = folder / "experiment.toml"
    path.write_text(EXPERIMENT.format(share=share))
    (folder / "bm25.toml").write_text('[first_stage]\nkind = "bm25"\n')
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """(experiment file, pool): the pool is reused by every app of the module (it is immutable)."""
    from serving.variants import VariantPool

    folder = tmp_path_factory.mktemp("service")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIFTRANK_CACHE", str(folder / "cache"))
        path = write_experiment(folder)
        pool = VariantPool.build(ExperimentConfig.load(path))
    return path, pool
