"""The Pipeline: first-stage retrieval (dense, BM25, or a given run), then the later stages, in order.

``run`` returns every stage's ranking so that evaluation can score each stage on its own;
``search`` answers one query with the last stage's hits. Stages so far: the first stage, then the
relevance filter (a Cosine Adapter calibrator: every candidate gets a relevance probability, those
below one global threshold are dropped, the order is kept), then the LLM ranker (the top ``depth`` kept
candidates in one prompt, re-ordered; the rest follow in their previous order).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

from retrieval.artifacts import Manifest
from retrieval.calibration import Calibrator, check_threshold
from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.index import SHARDED_KIND, Index
from retrieval.indexer import Indexer
from retrieval.lexical import BM25
from retrieval.rerank import ListwiseRanker, RankStats

StageHits = dict[str, list[Hit]]  # qid -> ranked hits
DEFAULT_DEPTH = 1000


class Pipeline:
    """Stages over an index (or BM25, or candidates from a run file), returning typed hits."""

    def __init__(self, encoder: Encoder | None = None, index: Index | None = None, depth: int | None = None,
                 lexical: BM25 | None = None, calibrator: Calibrator | None = None, threshold: float | None = None,
                 ranker: ListwiseRanker | None = None, rerank_depth: int = 20,
                 texts: Callable[[list[str]], list[str]] | None = None) -> None:
        if index is not None and encoder is not None:
            index.check_encoder(encoder.identity())
        if lexical is None and (index is None) != (encoder is None):
            raise SiftrankError("a dense first stage needs both an encoder and an index")
        if calibrator is not None:
            if encoder is None or index is None:
                raise SiftrankError("the relevance filter needs the encoder and index its calibrator was trained with")
            calibrator.check_encoder(encoder.identity())
            if depth is not None and depth != calibrator.k:
                raise SiftrankError(f"the calibrator was trained on top-{calibrator.k} candidates but the first stage "
                                    f"depth is {depth}: set [index].depth = {calibrator.k} or retrain with --k {depth}")
            depth = calibrator.k
        self.encoder, self.index, self.lexical = encoder, index, lexical
        self.depth = depth or DEFAULT_DEPTH
        self.calibrator = calibrator
        self.threshold = check_threshold(threshold if threshold is not None else calibrator.threshold) if calibrator else None
        if ranker is not None and texts is None and index is None:
            raise SiftrankError("the LLM ranker reads passages: give the pipeline an index or the dataset's texts")
        if rerank_depth < 1:
            raise SiftrankError(f"rerank depth must be at least 1, got {rerank_depth}")
        self.ranker, self.rerank_depth = ranker, rerank_depth
        self.texts = texts or (index.texts if index is not None else None)
        self.rank_stats: dict[str, RankStats] = {}
        self.timings: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: PipelineConfig, dataset: Dataset | None = None, first_stage: str = "dense",
                    progress: bool = True) -> Pipeline:
        """Build the pipeline a config describes; the index comes from ``[index].path`` or the dataset cache."""
        if first_stage not in ("dense", "bm25"):
            raise SiftrankError(f"first stage must be 'dense' or 'bm25', not '{first_stage}'")
        calibrator = Calibrator.load(config.filter.calibrator) if config.filter is not None else None
        threshold = config.filter.threshold if config.filter is not None else None
        later = cls.later_stages(config, dataset)
        lexical = None
        if first_stage == "bm25":
            if dataset is None:
                raise SiftrankError("a BM25 first stage needs a dataset")
            lexical = BM25(dataset.corpus)
            if calibrator is None:
                return cls(lexical=lexical, depth=config.index.depth, **later)
        encoder = config.encoder.build()
        index = open_index(config, encoder, dataset, progress)
        return cls(encoder, index, depth=config.index.depth, lexical=lexical, calibrator=calibrator, threshold=threshold,
                   **later)

    @staticmethod
    def later_stages(config: PipelineConfig, dataset: Dataset | None = None) -> dict:
        """Keyword arguments for the stages after retrieval that a config names (the LLM ranker)."""
        if config.rerank is None:
            return {}
        return {"ranker": config.rerank.build(), "rerank_depth": config.rerank.depth,
                "texts": dataset.texts if dataset is not None and dataset.corpus.height else None}

    @property
    def first_stage(self) -> str:
        """``dense``, ``bm25``, or ``run`` for a pipeline that only re-ranks given candidates."""
        if self.lexical is not None:
            return "bm25"
        return "dense" if self.index is not None else "run"

    @property
    def stages(self) -> list[str]:
        return ([self.first_stage] + (["filter"] if self.calibrator is not None else [])
                + (["rerank"] if self.ranker is not None else []))

    def run(self, queries: Mapping[str, str], candidates: Mapping[str, Mapping[str, float]] | None = None,
            batch_size: int = 128, progress: bool = False) -> dict[str, StageHits]:
        """Rankings of every stage for ``queries``; with ``candidates`` (a run) the first stage is that run."""
        qids = list(queries)
        name = "run" if candidates is not None else self.first_stage
        stages: dict[str, StageHits] = {name: {}}
        if self.calibrator is not None:
            stages["filter"] = {}
        if self.ranker is not None:
            stages["rerank"] = {}
            self.rank_stats = {}
        spent = dict.fromkeys(stages, 0.0)
        for lo in tqdm(range(0, len(qids), batch_size), desc="queries", disable=not progress, unit="batch"):
            batch = qids[lo:lo + batch_size]
            texts = [queries[q] for q in batch]
            start = time.perf_counter()
            # Query vectors are encoded once per batch, for the dense stage and the filter alike.
            dense = candidates is None and self.lexical is None
            vectors = self.encoder.encode_queries(texts) if self.encoder is not None and (dense or self.calibrator) else None
            if candidates is not None:
                first = {q: _ranked(candidates.get(q, {}), self.depth) for q in batch}
            else:
                first = self._retrieve(batch, texts, vectors)
            spent[name] += time.perf_counter() - start
            stages[name].update(first)
            if self.calibrator is not None:
                start = time.perf_counter()
                scored = self._calibrate(batch, vectors, first)
                stages[name].update(scored)
                stages["filter"].update({q: _renumber([h for h in hits if h.relevance >= self.threshold])  # type: ignore[operator]
                                         for q, hits in scored.items()})
                spent["filter"] += time.perf_counter() - start
            if self.ranker is not None:
                start = time.perf_counter()
                previous = stages["filter" if self.calibrator is not None else name]
                for q, text in zip(batch, texts):
                    stages["rerank"][q], self.rank_stats[q] = self._rerank(text, previous[q])
                spent["rerank"] += time.perf_counter() - start
        self.timings = spent
        return stages

    def _retrieve(self, qids: list[str], texts: list[str], vectors: np.ndarray | None) -> StageHits:
        if self.lexical is not None:
            scores, ids = self.lexical.search(texts, self.depth)
            return {q: [Hit(id=d, rank=r, score=float(s)) for r, (d, s) in enumerate(zip(row, srow), 1)]
                    for q, row, srow in zip(qids, ids, scores)}
        if vectors is None or self.index is None:
            raise SiftrankError("this pipeline has no first stage: give it candidates (a run file)")
        scores, ids = self.index.search(vectors, self.depth)
        return {q: [Hit(id=d, rank=r, score=float(s), cosine=float(s)) for r, (d, s) in enumerate(zip(row, srow), 1)]
                for q, row, srow in zip(qids, ids, scores)}

    def _calibrate(self, qids: list[str], vectors: np.ndarray | None, first: StageHits) -> StageHits:
        """Relevance for every candidate; cosines are computed for candidates that lack one (BM25, runs)."""
        assert self.calibrator is not None and self.encoder is not None and self.index is not None and vectors is not None
        cosines = []
        for q, vector in zip(qids, vectors):
            hits = first[q]
            if hits and any(h.cosine is None for h in hits):
                docs = self.encoder.encode_documents(self.index.texts([h.id for h in hits]))
                hits = first[q] = [h.model_copy(update={"cosine": float(c)}) for h, c in zip(hits, docs @ vector)]
            cosines.append(np.array([h.cosine for h in hits], dtype=np.float32))
        relevance = self.calibrator.relevance(vectors, cosines)
        return {q: [h.model_copy(update={"relevance": float(s)}) for h, s in zip(first[q], rel)]
                for q, rel in zip(qids, relevance)}

    def _rerank(self, query: str, hits: list[Hit]) -> tuple[list[Hit], RankStats]:
        """The LLM's order of the top ``rerank_depth`` hits, then the rest in their previous order."""
        assert self.ranker is not None and self.texts is not None
        top, rest = hits[:self.rerank_depth], hits[self.rerank_depth:]
        ranked, stats = self.ranker.rerank(query, top, self.texts([h.id for h in top]))
        # scores stay ordered across the two parts: the reranked block above everything after it
        tail = [h.model_copy(update={"rank": len(ranked) + r, "score": -float(r)}) for r, h in enumerate(rest, 1)]
        return ranked + tail, stats

    def search(self, query: str, k: int = 10, with_text: bool = True, min_relevance: float | None = None) -> list[Hit]:
        """The final stage's top-``k`` hits for one query (optionally a stricter relevance cut)."""
        if not query.strip():
            raise SiftrankError("the query is empty")
        stages = self.run({"q": query})
        return self.finish(list(stages.values())[-1]["q"], k, with_text, min_relevance)

    def finish(self, hits: list[Hit], k: int = 10, with_text: bool = True, min_relevance: float | None = None) -> list[Hit]:
        """The top-``k`` of a final-stage ranking, after an optional stricter relevance cut, with texts."""
        if min_relevance is not None:
            check_threshold(min_relevance)
            if self.calibrator is None:
                raise SiftrankError("min_relevance needs a relevance filter stage in the pipeline")
            hits = _renumber([h for h in hits if h.relevance is not None and h.relevance >= min_relevance])
        hits = hits[:k]
        if with_text and self.texts is not None:
            texts = self.texts([h.id for h in hits])
            hits = [h.model_copy(update={"text": t}) for h, t in zip(hits, texts)]
        return hits


def open_index(config: PipelineConfig, encoder: Encoder, dataset: Dataset | None, progress: bool = True) -> Index:
    """The config's prebuilt index (``[index].path``), else the dataset's cached one (built if missing)."""
    if config.index.path is not None:
        if (config.index.path / "manifest.json").is_file() and Manifest.read(config.index.path).kind == SHARDED_KIND:
            from retrieval.sharded import ShardedIndex

            return ShardedIndex.load(config.index.path, address=config.index.ray)  # type: ignore[return-value]
        return Index.load(config.index.path, device=config.index.device)
    if dataset is None:
        raise SiftrankError("no index: set [index].path in the pipeline config or give a dataset")
    return Indexer(encoder, config.index.kind, config.index.params, config.index.device, progress).cached(dataset)


def _ranked(scores: Mapping[str, float], depth: int) -> list[Hit]:
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:depth]
    return [Hit(id=d, rank=r, score=float(s)) for r, (d, s) in enumerate(ordered, 1)]


def _renumber(hits: list[Hit]) -> list[Hit]:
    return [h.model_copy(update={"rank": r}) for r, h in enumerate(hits, 1)]
