"""The Pipeline: first-stage retrieval (dense, BM25, or a given run), then the later stages, in order.

``run`` returns every stage's ranking so that evaluation can score each stage on its own;
``search`` answers one query with the last stage's hits. Later stages (relevance filter, LLM
ranker) plug in after the first one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from tqdm.auto import tqdm

from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.index import Index
from retrieval.indexer import Indexer
from retrieval.lexical import BM25

StageHits = dict[str, list[Hit]]  # qid -> ranked hits


class Pipeline:
    """Stages over an index (or BM25, or candidates from a run file), returning typed hits."""

    def __init__(self, encoder: Encoder | None = None, index: Index | None = None, depth: int = 1000,
                 lexical: BM25 | None = None) -> None:
        if index is not None and encoder is not None:
            index.check_encoder(encoder.identity())
        if lexical is None and (index is None) != (encoder is None):
            raise SiftrankError("a dense first stage needs both an encoder and an index")
        self.encoder, self.index, self.depth, self.lexical = encoder, index, depth, lexical
        self.timings: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: PipelineConfig, dataset: Dataset | None = None, first_stage: str = "dense",
                    progress: bool = True) -> Pipeline:
        """Build the pipeline a config describes; the index comes from ``[index].path`` or the dataset cache."""
        if first_stage == "bm25":
            if dataset is None:
                raise SiftrankError("a BM25 first stage needs a dataset")
            return cls(lexical=BM25(dataset.corpus), depth=config.index.depth)
        if first_stage != "dense":
            raise SiftrankError(f"first stage must be 'dense' or 'bm25', not '{first_stage}'")
        encoder = config.encoder.build()
        if config.index.path is not None:
            index = Index.load(config.index.path, device=config.index.device)
        elif dataset is not None:
            indexer = Indexer(encoder, config.index.kind, config.index.params, config.index.device, progress)
            index = indexer.cached(dataset)
        else:
            raise SiftrankError("no index: set [index].path in the pipeline config or give a dataset")
        return cls(encoder, index, depth=config.index.depth)

    @property
    def first_stage(self) -> str:
        """``dense``, ``bm25``, or ``run`` for a pipeline that only re-ranks given candidates."""
        if self.lexical is not None:
            return "bm25"
        return "dense" if self.index is not None else "run"

    def run(self, queries: Mapping[str, str], candidates: Mapping[str, Mapping[str, float]] | None = None,
            batch_size: int = 128, progress: bool = False) -> dict[str, StageHits]:
        """Rankings of every stage for ``queries``; with ``candidates`` (a run) the first stage is that run."""
        qids = list(queries)
        if candidates is not None:
            start = time.perf_counter()
            stage = {q: _ranked(candidates.get(q, {}), self.depth) for q in qids}
            self.timings["run"] = time.perf_counter() - start
            return {"run": stage}
        first: StageHits = {}
        start = time.perf_counter()
        for lo in tqdm(range(0, len(qids), batch_size), desc=self.first_stage, disable=not progress, unit="batch"):
            batch = qids[lo:lo + batch_size]
            first.update(self._retrieve(batch, [queries[q] for q in batch]))
        self.timings[self.first_stage] = time.perf_counter() - start
        return {self.first_stage: first}

    def _retrieve(self, qids: list[str], texts: list[str]) -> StageHits:
        if self.lexical is not None:
            scores, ids = self.lexical.search(texts, self.depth)
            return {q: [Hit(id=d, rank=r, score=float(s)) for r, (d, s) in enumerate(zip(row, srow), 1)]
                    for q, row, srow in zip(qids, ids, scores)}
        if self.encoder is None or self.index is None:
            raise SiftrankError("this pipeline has no first stage: give it candidates (a run file)")
        scores, ids = self.index.search(self.encoder.encode_queries(texts), self.depth)
        return {q: [Hit(id=d, rank=r, score=float(s), cosine=float(s)) for r, (d, s) in enumerate(zip(row, srow), 1)]
                for q, row, srow in zip(qids, ids, scores)}

    def search(self, query: str, k: int = 10, with_text: bool = True) -> list[Hit]:
        """The final stage's top-``k`` hits for one query."""
        if not query.strip():
            raise SiftrankError("the query is empty")
        stages = self.run({"q": query})
        hits = list(stages.values())[-1]["q"][:k]
        if with_text and self.index is not None:
            texts = self.index.texts([h.id for h in hits])
            hits = [h.model_copy(update={"text": t}) for h, t in zip(hits, texts)]
        return hits


def _ranked(scores: Mapping[str, float], depth: int) -> list[Hit]:
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:depth]
    return [Hit(id=d, rank=r, score=float(s)) for r, (d, s) in enumerate(ordered, 1)]
