"""The Pipeline: a first stage, then an optional filter and an optional reranker, run in that order.

Each stage is an object behind a small base (:mod:`retrieval.stages`), built from the pipeline config
through the registry, so the pipeline itself knows no stage kind. ``run`` returns every stage's
ranking (evaluation scores each stage on its own) with the final stage named; ``search`` answers one
query with the final stage's hits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrieval.calibration import check_threshold
from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.docstore import DocStore
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.hits import Hit, renumber
from retrieval.live import LiveCorpus
from retrieval.stages.base import Filter, FirstStage, QueryBatch, Reranker
from retrieval.stages.context import StageContext
from retrieval.where import Where

StageHits = dict[str, list[Hit]]  # qid -> ranked hits
DEFAULT_DEPTH = 1000


@dataclass
class PipelineResult:
    """Every stage's rankings in stage order, the final stage's name, reranker stats and seconds per stage."""

    stages: dict[str, StageHits]
    final: str
    stats: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # stage -> qid -> stats
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hits(self) -> StageHits:
        """The final stage's rankings."""
        return self.stages[self.final]

    @property
    def first(self) -> StageHits:
        return next(iter(self.stages.values()))


class Pipeline:
    """First stage → filter → reranker over typed hits; ``depth`` is the first stage's default depth."""

    def __init__(self, first_stage: FirstStage, filter: Filter | None = None, reranker: Reranker | None = None,
                 depth: int | None = None, store: DocStore | None = None, encoder: Encoder | None = None) -> None:
        """``store``: where result texts come from; ``encoder``: the query encoder (default: the stages')."""
        if filter is not None and filter.depth is not None:
            if depth is not None and depth != filter.depth:
                raise SiftrankError(f"the calibrator was trained on top-{filter.depth} candidates but the first stage "
                                    f"depth is {depth}: set [first_stage].depth = {filter.depth} or retrain with --k {depth}")
            depth = filter.depth
        encoders = {id(s.encoder): s.encoder for s in (first_stage, filter, reranker) if s is not None and s.encoder is not None}
        if encoder is None and encoders:
            encoder = next(iter(encoders.values()))
        if any(e.identity() != encoder.identity() for e in encoders.values()):  # type: ignore[union-attr]
            raise SiftrankError("the stages of one pipeline must read the same encoder's query vectors")
        self.first_stage, self.filter, self.reranker, self.store, self.encoder = first_stage, filter, reranker, store, encoder
        self.live: LiveCorpus | None = None  # set by go_live
        self.depth = self.check_depth(depth or DEFAULT_DEPTH)

    @classmethod
    def from_config(cls, config: PipelineConfig, dataset: Dataset | None = None, progress: bool = True) -> Pipeline:
        """Build every stage the config names; shared resources (encoder, index, texts) are built once."""
        context = StageContext(config, dataset, progress)
        first = config.first_stage.build(context)
        filter = config.filter.build(context) if config.filter is not None else None
        if filter is not None and not first.gives_cosine:
            filter.bind_store(context.store)  # candidates without a cosine are encoded from their text
        reranker = config.rerank.build(context) if config.rerank is not None else None
        try:
            store: DocStore | None = context.store
        except SiftrankError:
            store = None  # a run file and no corpus: hits come without text
        return cls(first, filter, reranker, config.first_stage.depth, store)

    @property
    def stages(self) -> list[str]:
        names = [self.first_stage.name] + ([self.filter.name] if self.filter is not None else [])
        return names + (self.reranker.stage_names if self.reranker is not None else [])

    def describe(self) -> dict[str, Any]:
        """Each stage's kind and settings (for metrics.json and /variants)."""
        return {s.name: s.describe() for s in (self.first_stage, self.filter, self.reranker) if s is not None}

    def check_depth(self, depth: int) -> int:
        if depth < 1:
            raise SiftrankError(f"depth must be at least 1, not {depth}")
        if self.filter is not None and self.filter.depth is not None and depth != self.filter.depth:
            raise SiftrankError(f"the filter was trained on top-{self.filter.depth} candidates, not {depth}")
        return depth

    def where(self, spec: Mapping[str, Any] | Where | None) -> Where | None:
        """A metadata filter checked against this pipeline's documents (see :mod:`retrieval.where`)."""
        if spec is None or isinstance(spec, Where):
            return spec
        if not self.first_stage.filters:
            raise SiftrankError(f"filter: the '{self.first_stage.kind}' first stage cannot filter by metadata "
                                "(dense, bm25 and hybrid can)")
        if self.store is None:
            raise SiftrankError("filter: this pipeline has no documents table to filter on")
        return Where(spec, self.store.schema)

    def go_live(self, snapshot: Path | None = None) -> LiveCorpus:
        """Make the corpus writable: documents upserted or deleted through the returned corpus are searched
        (every stage, metadata filters included) from the moment :meth:`LiveCorpus.apply` returns. With a
        ``snapshot`` folder that holds one (:meth:`LiveCorpus.save`), its documents and indexes are the base."""
        if self.store is None:
            raise SiftrankError("a live corpus needs a documents table: give the pipeline a dataset or an [index].path")
        restored = LiveCorpus.snapshot(snapshot) if snapshot is not None else None
        corpus = LiveCorpus(restored[1], restored[0]) if restored else LiveCorpus(self.store.docs)
        self.first_stage.go_live(corpus, snapshot if restored else None)
        for stage in (self.filter, self.reranker):
            if stage is not None:
                stage.bind_store(corpus.store)
        self.store, self.live = corpus.store, corpus
        return corpus

    def run(self, queries: Mapping[str, str], depth: int | None = None, batch_size: int = 128,
            progress: bool = False, where: Mapping[str, Any] | Where | None = None) -> PipelineResult:
        """Rankings of every stage for ``queries`` (qid -> text), the first stage at ``depth`` candidates, among the
        documents that ``where`` (a metadata filter) matches."""
        depth = self.check_depth(depth) if depth is not None else self.depth
        where = self.where(where)
        qids = list(queries)
        names = self.stages
        result = PipelineResult({name: {} for name in names}, names[-1], timings=dict.fromkeys(names, 0.0))
        for lo in tqdm(range(0, len(qids), batch_size), desc="queries", disable=not progress, unit="batch"):
            batch = QueryBatch(qids[lo:lo + batch_size], [queries[q] for q in qids[lo:lo + batch_size]], self.encoder, where)
            start = time.perf_counter()
            hits = self.first_stage.retrieve(batch, depth)
            result.timings[names[0]] += time.perf_counter() - start
            result.stages[names[0]].update(zip(batch.qids, hits))
            if self.filter is not None:
                start = time.perf_counter()
                hits = self.filter.filter(batch, hits)
                result.timings[self.filter.name] += time.perf_counter() - start
                result.stages[self.filter.name].update(zip(batch.qids, hits))
            if self.reranker is not None:
                own = self.reranker.stage_names
                stats = result.stats.setdefault(own[0], {})
                start = time.perf_counter()
                for q, text, ranked in tqdm(list(zip(batch.qids, batch.texts, hits)), desc="rerank", leave=False,
                                            disable=not progress, unit="query"):
                    rankings, stats[q] = self.reranker.rerank_stages(text, ranked)
                    for name, ranking in zip(own, rankings):
                        result.stages[name][q] = ranking
                result.timings[own[0]] += time.perf_counter() - start
        return result

    def search(self, query: str, k: int = 10, depth: int | None = None, with_text: bool = True,
               min_relevance: float | None = None, where: Mapping[str, Any] | Where | None = None) -> list[Hit]:
        """The final stage's top-``k`` hits for one query (optionally a stricter relevance cut, a metadata filter)."""
        if not query.strip():
            raise SiftrankError("the query is empty")
        return self.finish(self.run({"q": query}, depth, where=where).hits["q"], k, with_text, min_relevance)

    def finish(self, hits: list[Hit], k: int = 10, with_text: bool = True, min_relevance: float | None = None) -> list[Hit]:
        """The top-``k`` of a final-stage ranking, after an optional stricter relevance cut, with texts."""
        hits = relevance_cut(hits, min_relevance, self.filter is not None)[:k]
        if with_text and self.store is not None and hits:
            ids = [h.id for h in hits]
            hits = [replace(h, text=t, metadata=m or None)
                    for h, t, m in zip(hits, self.store.texts(ids), self.store.metadata(ids))]
        return hits


def relevance_cut(hits: list[Hit], min_relevance: float | None, has_filter: bool) -> list[Hit]:
    """The hits at or over a stricter per-request relevance, renumbered (unchanged when ``None``)."""
    if min_relevance is None:
        return hits
    check_threshold(min_relevance)
    if not has_filter:
        raise SiftrankError("min_relevance needs a relevance filter stage in the pipeline")
    return renumber([h for h in hits if h.relevance is not None and h.relevance >= min_relevance])
