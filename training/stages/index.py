"""Build stage ``index``: the FAISS index of the corpus with the encoder the build has reached (always on)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from training.stages.base import BuildParams, BuildStage

if TYPE_CHECKING:
    from training.stages.context import BuildContext


class IndexParams(BuildParams):
    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    params: dict[str, int] = Field(default_factory=dict)


class IndexStage(BuildStage):
    name = "index"
    Params = IndexParams
    params: IndexParams
    inputs: ClassVar[tuple[str, ...]] = ("encoder",)

    def data(self, ctx: BuildContext) -> list[Any]:
        return [ctx.digest("corpus")]

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        from retrieval.indexer import Indexer

        indexer = Indexer(ctx.encoder, self.params.kind, self.params.params, progress=ctx.progress)
        # an earlier stage that scored this encoder over the corpus (the fine-tuning's check against the
        # zero-shot encoder) left its index in the cache: the same encoder, corpus and kind, not encoded twice
        index = indexer.cached(ctx.dataset) if indexer.cache_path(ctx.dataset).is_dir() else indexer.build(ctx.dataset)
        index.save(target, overwrite=True)
        self.built = index  # handed to the later stages as is (not read back from disk)
        return dict(index.manifest.metrics)

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        ctx.set_index(path, key, getattr(self, "built", None))
