"""siftrank's public Python API: retrieval stages, the pipeline and its config, data, evaluation.

    from siftrank import Dataset, Pipeline, PipelineConfig

    data = Dataset.load("../shared/data/msmarco-dl19", qrels="qrels.test.in_corpus.tsv")
    pipeline = Pipeline.from_config(PipelineConfig.load("configs/hybrid.toml"), data)
    for hit in pipeline.search("what is the daily life of thai people", k=3):
        print(hit.rank, hit.id, round(hit.score, 4), hit.text[:60])

Names resolve on first use (as in ir_measures), so ``import siftrank`` loads neither torch nor faiss.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Dataset": "retrieval.data",
    "DocStore": "retrieval.docstore",
    "Encoder": "retrieval.encoder",
    "Index": "retrieval.index",
    "Indexer": "retrieval.indexer",
    "Hit": "retrieval.hits",
    "Calibrator": "retrieval.calibration",
    "ListwiseRanker": "retrieval.rerank",
    "Pipeline": "retrieval.pipeline",
    "PipelineConfig": "retrieval.config",
    "PipelineResult": "retrieval.pipeline",
    "FirstStage": "retrieval.stages.base",
    "Filter": "retrieval.stages.base",
    "Reranker": "retrieval.stages.base",
    "QueryBatch": "retrieval.stages.base",
    "StageContext": "retrieval.stages.context",
    "SiftrankError": "retrieval.errors",
    "EvalRunner": "eval.runner",
    "MetricSuite": "retrieval.measures",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'siftrank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
