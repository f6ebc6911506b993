"""Pipeline stages behind three small bases (after rerankers' ``BaseRanker``), found by config name.

- :class:`FirstStage` — ``retrieve(queries, depth)``: dense, bm25, hybrid, run (a TREC run file)
- :class:`Filter` — scores every candidate and keeps those over a threshold: cosine-adapter
- :class:`Reranker` — ``rerank(query, hits) -> (hits, stats)``: llm

A new stage is a module with a class built by ``from_config(params, context)`` plus one line in
:mod:`retrieval.stages.registry`.
"""

from retrieval.stages.base import Filter, FirstStage, QueryBatch, Reranker, StageParams
from retrieval.stages.context import StageContext

__all__ = ["Filter", "FirstStage", "QueryBatch", "Reranker", "StageContext", "StageParams"]
