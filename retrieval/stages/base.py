"""The three stage bases a Pipeline chains, and the query batch they share.

Each concrete stage declares its config keys as a pydantic ``Params`` model (unknown keys are
errors) and builds itself from them and a :class:`~retrieval.stages.context.StageContext`, which owns
the resources stages share (encoder, index, document store) so that each is built at most once.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.stages.params import StageParams

if TYPE_CHECKING:
    from retrieval.docstore import DocStore
    from retrieval.encoder import Encoder
    from retrieval.live import LiveCorpus
    from retrieval.stages.context import StageContext
    from retrieval.where import Where


class QueryBatch:
    """Queries answered together, under one metadata filter (``where``, or none); their vectors are encoded
    once, on first use, for every stage."""

    def __init__(self, qids: Sequence[str], texts: Sequence[str], encoder: Encoder | None = None,
                 where: Where | None = None) -> None:
        self.qids, self.texts, self.encoder, self.where = list(qids), list(texts), encoder, where

    def __len__(self) -> int:
        return len(self.qids)

    @functools.cached_property
    def vectors(self) -> np.ndarray:
        if self.encoder is None:
            raise RuntimeError("no encoder in this pipeline: query vectors are unavailable")
        return self.encoder.encode_queries(self.texts)


class _Stage(ABC):
    kind: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    #: the encoder whose query vectors the stage reads (None: it reads none)
    encoder: Encoder | None = None

    @classmethod
    @abstractmethod
    def from_config(cls, params: Any, context: StageContext) -> _Stage:
        """Build the stage from its validated ``Params`` and the shared resources."""

    def describe(self) -> dict[str, Any]:
        """What produced a ranking (for metrics.json and /variants)."""
        return {"kind": self.kind}

    def bind_store(self, store: DocStore) -> None:
        """Read passage texts from ``store`` from now on (a filter's candidates without a cosine, a ranker's
        passages; a live corpus's store once it goes live). A stage that reads none ignores it."""
        return None


class FirstStage(_Stage):
    """Candidates for each query from the whole collection (or a given run)."""

    #: the first stage fills ``Hit.cosine`` itself (a filter then needs no extra encoding)
    gives_cosine: ClassVar[bool] = False
    #: the first stage applies a batch's metadata filter while searching (else a filtered search is refused)
    filters: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The stage's name in results and run files: its kind."""
        return self.kind

    def warm(self) -> None:
        """Load what the first query would otherwise wait for (a service's readiness)."""

    @abstractmethod
    def retrieve(self, queries: QueryBatch, depth: int) -> list[list[Hit]]:
        """The top ``depth`` hits of each query, ranked 1..n."""

    def go_live(self, corpus: LiveCorpus, snapshot: Path | None = None) -> None:
        """Search ``corpus`` from now on, with its writes (see :mod:`retrieval.live`); ``snapshot``: the corpus was
        restored from this snapshot folder, whose structures replace the stage's own."""
        raise SiftrankError(f"the '{self.kind}' first stage cannot search a live corpus (dense, bm25 and hybrid can)")


class Filter(_Stage):
    """Gives every candidate a relevance and keeps those at or over a threshold, order unchanged."""

    name: ClassVar[str] = "filter"
    #: the first-stage depth the filter was trained for (None: any)
    depth: int | None = None

    @abstractmethod
    def filter(self, queries: QueryBatch, hits: list[list[Hit]], threshold: float | None = None) -> list[list[Hit]]:
        """Kept hits per query, renumbered; sets ``relevance`` (and ``cosine`` where missing) on the input hits."""


class Reranker(_Stage):
    """Re-orders one query's candidates; returns the new order and what it cost."""

    name: ClassVar[str] = "rerank"

    @abstractmethod
    def rerank(self, query: str, hits: list[Hit]) -> tuple[list[Hit], dict[str, float]]:
        """``hits`` in a new order (ranks 1..n, scores descending) and a stats dict (numbers per call)."""

    @property
    def stage_names(self) -> list[str]:
        """The rankings this stage produces, in order (the last is what it passes on; stats go with the first)."""
        return [self.name]

    def rerank_stages(self, query: str, hits: list[Hit]) -> tuple[list[list[Hit]], dict[str, float]]:
        """One ranking per name of :attr:`stage_names` (a reranker that also fuses shows both orders)."""
        ranked, stats = self.rerank(query, hits)
        return [ranked], stats

    @staticmethod
    def summarise(stats: list[dict[str, float]]) -> dict[str, float]:
        """Per-query means of every stat (for metrics.json)."""
        n = max(1, len(stats))
        keys = sorted({k for s in stats for k in s})
        return {f"{k}_per_query": round(sum(s.get(k, 0.0) for s in stats) / n, 3) for k in keys}
