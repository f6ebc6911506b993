"""What the stages of one build share, each loaded once: the dataset (corpus included), the encoder the
build has reached, its index and the pipeline's first stage; the lineage keys of what has been built; and
the pipeline config the build is writing. Training draws its candidates from :meth:`BuildContext.candidates`:
the pipeline's own first stage, whatever its kind (dense, BM25, hybrid)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from retrieval.config import PipelineConfig
from retrieval.data import Dataset, file_digest, weights_path
from retrieval.encoder import Encoder, model_fingerprint, resolve_model_path
from retrieval.errors import SiftrankError
from retrieval.hits import Hit
from retrieval.stages.base import FirstStage, QueryBatch
from retrieval.stages.context import StageContext
from training.stages.lineage import lineage_key

if TYPE_CHECKING:
    from retrieval.searchable import SearchIndex
    from training.recipe import Recipe

QUERY_BATCH = 256


@dataclass(frozen=True)
class Fold:
    """Validation queries and the encoder that never trained on them (``model`` with ``adapter``;
    None: the build's current encoder)."""

    qids: list[str]
    model: str | None = None
    adapter: str | None = None


@dataclass(frozen=True)
class Validation:
    """The queries later stages choose and calibrate on: the fine-tuning's held-out split (one fold, the
    build's encoder), or every training query out of fold (each fold with the encoder trained without it)."""

    source: str
    folds: list[Fold] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "split" if len(self.folds) == 1 and self.folds[0].model is None else f"{len(self.folds)}-fold"


class BuildContext:
    """Shared state of one build (see the module doc). ``keys`` maps ``encoder``, ``index`` and
    ``first_stage`` to the lineage key of what the build holds now; stages name them as their inputs."""

    def __init__(self, recipe: Recipe, out: Path, echo: Callable[[str], None] = print, progress: bool = True,
                 dataset: Dataset | None = None, judgments: Dataset | None = None) -> None:
        """``dataset`` / ``judgments``: the recipe's dataset, or its queries and qrels alone, already read."""
        self.recipe, self.out, self.echo, self.progress = recipe, Path(out), echo, progress
        if dataset is not None:
            self.__dict__["dataset"] = dataset
        if judgments is not None:
            self.__dict__["judgments"] = judgments
        self.base_path = resolve_model_path(recipe.encoder.base)
        self.keys: dict[str, str] = {"encoder": model_fingerprint(self.base_path)}
        self.model: str = recipe.encoder.base
        self.adapter: str | None = None
        self.index_path: Path | None = None
        self.first_stage_section: dict[str, Any] = recipe.stage("first_stage").section()
        self.sections: dict[str, dict[str, Any]] = {}  # the pipeline's filter and rerank sections
        #: the validation queries of an earlier stage that trained on queries (the fine-tuning), if one did
        self.validation: Validation | None = None
        self._digests: dict[str, str | None] = {}
        self._reset()

    @classmethod
    def plain(cls, model: str, dataset: Path, split: str = "train", progress: bool = True,
              loaded: Dataset | None = None) -> BuildContext:
        """A context over ``model`` and a dataset with the default (dense) first stage, for one stage run
        outside a recipe (the training commands, the studies); ``loaded``: that dataset already in memory."""
        from training.recipe import Recipe

        recipe = Recipe.model_validate({"data": {"dataset": str(dataset), "split": split}, "encoder": {"base": model}})
        return cls(recipe, Path("."), progress=progress, dataset=loaded)

    # ---- data, loaded once ------------------------------------------------------------------------
    @functools.cached_property
    def dataset(self) -> Dataset:
        return Dataset.load(Path(self.recipe.data.dataset), split=self.recipe.data.split)

    @functools.cached_property
    def judgments(self) -> Dataset:
        """The dataset's queries and training qrels without its corpus: what lineage keys and query splits need,
        so a build whose stages are all reused never reads the corpus."""
        if "dataset" in self.__dict__:
            return self.dataset
        return Dataset.load(Path(self.recipe.data.dataset), split=self.recipe.data.split, with_corpus=False)

    def digest(self, name: str) -> str | None:
        """Digest of ``data`` (corpus and training qrels), ``corpus`` or ``general`` (None: no general data)."""
        if name not in self._digests:
            data = self.judgments
            if name == "corpus":
                value: str | None = file_digest(data.corpus_path)
            elif name == "data":
                assert data.qrels_path is not None
                weights = weights_path(data.qrels_path)  # click labels' inverse-propensity weights
                value = lineage_key(file_digest(data.corpus_path), file_digest(data.qrels_path),
                                    *([file_digest(weights)] if weights.is_file() else []))
            elif name == "general":
                folder = self.recipe.data.general
                files = sorted(p for p in Path(folder).iterdir() if p.is_file()) if folder else []
                value = lineage_key([(p.name, file_digest(p)) for p in files]) if folder else None
            else:
                raise KeyError(name)
            self._digests[name] = value
        return self._digests[name]

    def require_general(self, why: str) -> None:
        """Refuse a recipe without usable general data where a stage needs it."""
        folder = self.recipe.data.general
        if folder is None:
            raise SiftrankError(f"recipe: [data] general is needed ({why})")
        from training.triplets import general_triplets

        general_triplets(Path(folder), 1)  # the folder exists and holds triplets

    # ---- what the build holds now -------------------------------------------------------------------
    def _reset(self) -> None:
        self._encoder: Encoder | None = None
        self._index: SearchIndex | None = None
        self._first: FirstStage | None = None

    def set_encoder(self, model: str, adapter: str | None, key: str) -> None:
        """The encoder later stages use (a pruned or fine-tuned model, or an adapter on one)."""
        self.model, self.adapter, self.keys["encoder"] = model, adapter, key
        self.index_path = None
        self._reset()

    def with_encoder(self, model: str, adapter: str | None) -> BuildContext:
        """This context over another encoder (a fold's model): the same data, its own index and first stage."""
        view = copy.copy(self)
        view.keys, view.sections = dict(self.keys), dict(self.sections)
        view.model, view.adapter, view.index_path = model, adapter, None
        view._reset()
        return view

    def validation_views(self) -> tuple[str, list[tuple[BuildContext, list[str]]]]:
        """Where the validation queries come from, and each fold's queries with the context whose encoder
        never trained on them; without an earlier training stage, every training query on this context."""
        from training.triplets import judged_queries

        if self.validation is None:
            return "all training queries", [(self, judged_queries(self.dataset))]
        views = [(self if f.model is None else self.with_encoder(f.model, f.adapter), f.qids) for f in self.validation.folds]
        return self.validation.source, views

    def set_index(self, path: Path, key: str, index: SearchIndex | None = None) -> None:
        """The built index (``index``: the object just built, so it is not read back)."""
        self.index_path, self.keys["index"] = Path(path), key
        self._index, self._first = index, None

    def set_first_stage(self, section: dict[str, Any], key: str) -> None:
        self.first_stage_section, self.keys["first_stage"] = dict(section), key
        self._first = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self.model, adapter=self.adapter)
        return self._encoder

    def config(self, first_stage: dict[str, Any] | None = None) -> PipelineConfig:
        """The pipeline the build has reached (absolute paths); ``first_stage``: another first-stage section."""
        raw: dict[str, Any] = {"encoder": {"model": self.model, "adapter": self.adapter},
                               "index": {"kind": self.recipe.stage("index").kind, "params": self.recipe.stage("index").params,
                                         "path": self.index_path},
                               "first_stage": first_stage or self.first_stage_section, **self.sections}
        raw["encoder"] = {k: v for k, v in raw["encoder"].items() if v is not None}
        raw["index"] = {k: v for k, v in raw["index"].items() if v is not None}
        return PipelineConfig.model_validate(raw)

    @property
    def first_stage(self) -> FirstStage:
        """The pipeline's first stage over the current encoder, built once (its index too: the built one, or
        before the index stage the dataset's cached index of the current encoder)."""
        if self._first is None:
            self._first = self.first_stage_of(self.first_stage_section)
        return self._first

    def first_stage_of(self, section: dict[str, Any]) -> FirstStage:
        """A first stage of another ``section`` over the same encoder and index (e.g. to compare fusions)."""
        context = StageContext(self.config(section), self.dataset, self.progress, encoder=self.encoder, index=self._index)
        stage = context.config.first_stage.build(context)
        if "index" in context.__dict__:  # loaded for this stage: kept for the next
            self._index = context.__dict__["index"]
        return stage

    def candidates(self, qids: Sequence[str], depth: int) -> tuple[QueryBatch, list[list[Hit]]]:
        """The first stage's top ``depth`` for each of ``qids`` (training queries), with their query batch
        (whose vectors are encoded once)."""
        if not qids:
            raise SiftrankError(f"{self.dataset.root}: no training queries to draw candidates for")
        batch = QueryBatch(list(qids), [self.dataset.queries[q] for q in qids], self.encoder)
        hits: list[list[Hit]] = []
        stage = self.first_stage
        for lo in tqdm(range(0, len(batch), QUERY_BATCH), desc=f"candidates ({stage.name})", unit="batch",
                       disable=not self.progress or len(batch) <= QUERY_BATCH, leave=False):
            part = QueryBatch(batch.qids[lo:lo + QUERY_BATCH], batch.texts[lo:lo + QUERY_BATCH], self.encoder)
            part.__dict__["vectors"] = batch.vectors[lo:lo + QUERY_BATCH]
            hits += stage.retrieve(part, depth)
        return batch, hits

    def dense_ndcg(self, qids: list[str]) -> dict[str, float]:
        """Per-query nDCG@10 of dense retrieval over the whole corpus with this context's encoder (on labels
        from clicks: the top 100 condensed to the judged documents)."""
        from retrieval.measures import per_query

        stage = self.first_stage_of({"kind": "dense"})
        depth = 100 if self.dataset.condensed else 10
        hits = stage.retrieve(QueryBatch(qids, [self.dataset.queries[q] for q in qids], self.encoder), depth)
        return per_query({q: {h.id: h.score for h in ranked} for q, ranked in zip(qids, hits)}, self.dataset.qrels,
                         judged_only=self.dataset.condensed)

    def ranked_ids(self, qids: Sequence[str], depth: int) -> dict[str, list[str]]:
        """Each query's candidate ids in first-stage order (for mining hard negatives)."""
        _, hits = self.candidates(qids, depth)
        return {q: [h.id for h in ranked] for q, ranked in zip(qids, hits)}
