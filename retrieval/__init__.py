"""siftrank's retrieval core: data, encoder, index, lexical baseline and the pipeline.

Imports are lazy (as in ir_measures) so that ``import retrieval`` and the CLI start fast; the
heavy libraries (torch, faiss, sentence-transformers) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SiftrankError": "retrieval.errors",
    "Dataset": "retrieval.data",
    "Manifest": "retrieval.artifacts",
    "Encoder": "retrieval.encoder",
    "Index": "retrieval.index",
    "BM25": "retrieval.lexical",
    "Hit": "retrieval.hits",
    "PipelineConfig": "retrieval.config",
    "Pipeline": "retrieval.pipeline",
    "DocStore": "retrieval.docstore",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
