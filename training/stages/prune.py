"""Build stage ``prune``: GAPrune (or a baseline) on the current encoder, whole FFN neurons by default
(docs/pruning.md). Its calibration triplets' hard negatives come from the pipeline's first stage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from retrieval.artifacts import Manifest
from retrieval.errors import SiftrankError
from training.stages.base import BuildStage, OptionalParams

if TYPE_CHECKING:
    from training.stages.context import BuildContext

NEEDS_GENERAL = ("gaprune", "fisher-general")


class PruneParams(OptionalParams):
    method: Literal["gaprune", "magnitude", "random", "fisher-domain", "fisher-general"] = "gaprune"
    sparsity: float = Field(0.5, gt=0, lt=1)
    structured: bool = True  # remove whole FFN neurons: smaller matrices, bytes and time really saved
    retrain_steps: int = Field(0, ge=0)
    triplets: int = Field(256, ge=1)  # calibration triplets per set (domain, general)
    general_mix: bool = True  # retraining mixes the general triplets with the domain ones
    seed: int = 0


class PruneStage(BuildStage):
    name = "prune"
    Params = PruneParams
    params: PruneParams
    inputs: ClassVar[tuple[str, ...]] = ("encoder",)
    kinds: ClassVar[tuple[str, ...]] = ("pruned-encoder",)

    def check(self, ctx: BuildContext) -> None:
        from retrieval.encoder import model_fingerprint, resolve_model_path

        p = self.params
        if p.artifact:
            source = Manifest.read(Path(p.artifact), kind="pruned-encoder").source_model
            try:
                same = source is not None and model_fingerprint(resolve_model_path(source)) == ctx.keys["encoder"]
            except SiftrankError:
                same = False
            if not same:
                raise SiftrankError(f"recipe [prune] artifact: built from {source}, not from the recipe's [encoder] base "
                                    f"({ctx.recipe.encoder.base})")
        elif p.method in NEEDS_GENERAL:
            ctx.require_general(f"GAPrune's general Fisher (prune.method = {p.method})")

    def data(self, ctx: BuildContext) -> list[Any]:
        return [ctx.digest("data"), ctx.digest("general"), ctx.first_stage_section]  # its negatives: the first stage's

    def prebuilt_key(self, path: Path) -> str:
        from retrieval.encoder import model_fingerprint

        return model_fingerprint(path)

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        from training.prune import Pruner

        p, general = self.params, ctx.recipe.data.general
        report = Pruner(str(ctx.encoder.path), seed=p.seed).build(
            target, ctx, p.method, p.sparsity, p.triplets, Path(general) if general else None, "global", p.structured,
            p.retrain_steps, p.general_mix, overwrite=True)
        return {"parameters": report["metrics"]["parameters"]}

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        ctx.set_encoder(str(path), None, key)
