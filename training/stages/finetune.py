"""Build stage ``finetune``: contrastive fine-tuning of the current encoder (docs/finetuning.md), hard
negatives from the pipeline's first stage; with several seeds the best on the validation queries is kept.
Its validation queries are never trained on: later stages calibrate on them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from retrieval.artifacts import Manifest
from retrieval.errors import SiftrankError
from training.stages.base import BuildStage, OptionalParams
from training.stages.lineage import read_lineage
from training.stages.registry import build_stage

if TYPE_CHECKING:
    from training.stages.context import BuildContext


class FinetuneParams(OptionalParams):
    method: str = "full"  # a name of training.adapters.METHODS
    steps: int = Field(100, ge=1)
    learning_rate: float | None = Field(None, gt=0)  # default per method (training.adapters.METHODS)
    batch_size: int = Field(32, ge=2)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # several: the best on validation is kept
    general: int = Field(0, ge=0)  # general triplets mixed into the domain ones (0: none)

    @field_validator("method")
    @classmethod
    def _known(cls, value: str) -> str:
        from training.adapters import METHODS

        if value not in METHODS:
            raise ValueError(f"must be one of {', '.join(METHODS)}, not '{value}'")
        return value


class FinetuneStage(BuildStage):
    name = "finetune"
    Params = FinetuneParams
    params: FinetuneParams
    inputs: ClassVar[tuple[str, ...]] = ("encoder",)
    kinds: ClassVar[tuple[str, ...]] = ("finetuned-encoder", "adapter")

    def check(self, ctx: BuildContext) -> None:
        p = self.params
        if p.artifact:
            path = Path(p.artifact)
            manifest = Manifest.read(path)
            if manifest.kind not in self.kinds:
                raise SiftrankError(f"recipe [finetune] artifact {path}: a '{manifest.kind}' artifact, expected a "
                                    "fine-tuned encoder or an adapter")
            if (manifest.encoder or {}).get("fingerprint") != self._upstream(ctx):
                raise SiftrankError(f"recipe [finetune] artifact {path}: built from another base model "
                                    f"({(manifest.encoder or {}).get('model', '?')}) than the one this recipe gives it")
        elif p.general:
            ctx.require_general(f"finetune.general = {p.general}")

    @staticmethod
    def _upstream(ctx: BuildContext) -> str:
        """The fingerprint of the model a prebuilt artifact must sit on, known before any work."""
        from retrieval.encoder import model_fingerprint

        prune = ctx.recipe.stage("prune")
        if not prune.active:
            return ctx.keys["encoder"]  # the base model's fingerprint
        if prune.artifact:
            return model_fingerprint(Path(prune.artifact))
        path = ctx.out / "prune"
        if read_lineage(path).get("key") == build_stage("prune")(prune).key(ctx):
            return model_fingerprint(path)
        raise SiftrankError("recipe [finetune] artifact: its base is the pruned model, which this build has not made "
                            "yet: build without the prebuilt artifact first, or give [prune] artifact too")

    def data(self, ctx: BuildContext) -> list[Any]:
        # the hard negatives come from the first stage: another first stage mines other triplets
        return [ctx.digest("data"), ctx.digest("general") if self.params.general else None, ctx.first_stage_section]

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        from training.finetune import FineTuner
        from training.triplets import general_triplets

        p, general_dir = self.params, ctx.recipe.data.general
        general = general_triplets(Path(general_dir), p.general) if p.general and general_dir else []
        best: tuple[float, FineTuner, dict[str, Any]] | None = None
        for seed in p.seeds:
            tuner = FineTuner(ctx.encoder, p.method, seed=seed, learning_rate=p.learning_rate, batch_size=p.batch_size)
            report = tuner.train(ctx.dataset, ctx.ranked_ids, steps=p.steps, progress=ctx.progress, general=general)
            score = tuner.validation_score()
            ctx.echo(f"      seed {seed}: validation nDCG@10 {score:.4f}")
            if best is None or score > best[0]:
                best = (score, tuner, report)
        assert best is not None
        score, tuner, report = best
        tuner.save(target, overwrite=True)
        decision = f"encoder: {p.method} fine-tuning, seed {tuner.seed} of {p.seeds}: validation nDCG@10 {score:.4f}"
        return {"seed": tuner.seed, "validation_ndcg@10": score, "seeds": p.seeds, "general_triplets": len(general),
                "decision": decision}

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        from training.finetune import validation_split

        if Manifest.read(path).kind == "adapter":
            ctx.set_encoder(ctx.model, str(path), key)
        else:
            ctx.set_encoder(str(path), None, key)
        ctx.held_out = validation_split(ctx.judgments)[1]
