"""Config names → stage classes. Entries are import paths, loaded on first use (as in ir_measures), so
reading a config never imports torch or faiss. Adding a stage kind is one line here."""

from __future__ import annotations

import importlib
from typing import Any

from retrieval.errors import SiftrankError

FIRST_STAGES = {
    "dense": "retrieval.stages.dense:DenseRetriever",
    "bm25": "retrieval.stages.bm25:BM25Retriever",
    "run": "retrieval.stages.runfile:RunFileRetriever",
    "hybrid": "retrieval.stages.hybrid:HybridRetriever",
}
FILTERS = {
    "cosine-adapter": "retrieval.stages.cosine_filter:CosineAdapterFilter",
}
RERANKERS = {
    "llm": "retrieval.stages.llm:LLMReranker",
}
GROUPS = {"first_stage": FIRST_STAGES, "filter": FILTERS, "rerank": RERANKERS}


def stage_class(group: str, kind: str) -> Any:
    """The class registered as ``kind`` in ``group`` (first_stage, filter, rerank); unknown is one error."""
    table = GROUPS[group]
    if kind not in table:
        raise SiftrankError(f"[{group}] kind must be one of {', '.join(table)}, not '{kind}'")
    module, name = table[kind].split(":")
    return getattr(importlib.import_module(module), name)
