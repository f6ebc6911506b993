"""Build stage ``rank``: the LLM full-ranker (docs/ranking.md), LoRA-trained on the domain's training
queries over the pipeline's first-stage candidates; off by default (it lowers nDCG@10 with the 135M model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from retrieval.artifacts import Manifest
from retrieval.errors import SiftrankError
from training.stages.base import BuildStage, OptionalParams

if TYPE_CHECKING:
    from training.stages.context import BuildContext

POOL = 50  # first-stage candidates per training query the lists are drawn from
MAX_PASSAGE_TOKENS = 48


class RankParams(OptionalParams):
    path_keys: ClassVar[tuple[str, ...]] = ("artifact", "model")
    model: str = "bundled:SmolLM2-135M-Instruct"
    depth: int = Field(20, ge=2)
    steps: int = Field(60, ge=1)
    mode: Literal["first-token", "generate", "sliding-window"] = "first-token"
    validation: int = Field(40, ge=0)  # training queries kept out for early stopping and the fusion weight (0: none)
    seed: int = 0


class RankStage(BuildStage):
    name = "rank"
    Params = RankParams
    params: RankParams
    inputs: ClassVar[tuple[str, ...]] = ("first_stage",)
    kinds: ClassVar[tuple[str, ...]] = ("ranker-adapter",)
    off_by_default = True

    def check(self, ctx: BuildContext) -> None:
        model = self.params.model
        if model.startswith("bundled:"):
            from retrieval.causal_lm import bundled_gguf

            try:
                bundled_gguf(model.removeprefix("bundled:"))
            except SiftrankError as exc:
                raise SiftrankError(f"recipe [rank] model: {exc}") from None
        elif not (Path(model) / "config.json").is_file():
            raise SiftrankError(f"recipe [rank] model '{model}' is not a local Hugging Face folder with a config.json")
        if self.params.artifact:
            manifest = Manifest.read(Path(self.params.artifact), kind="ranker-adapter")
            built_on = (getattr(manifest, "base", None) or {}).get("model", manifest.source_model)
            if built_on != model:
                raise SiftrankError(f"recipe [rank] artifact {self.params.artifact}: trained on {built_on}, not on the "
                                    f"recipe's rank model {model}")

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        from training.listwise import ListwiseTrainer

        rank = self.params
        qids = list(ctx.dataset.queries)
        _, hits = ctx.candidates(qids, POOL)
        run = {q: {h.id: h.score for h in ranked} for q, ranked in zip(qids, hits)}
        trainer = ListwiseTrainer(rank.model, depth=rank.depth, learning_rate=5e-4, steps=rank.steps, seed=rank.seed,
                                  max_passage_tokens=MAX_PASSAGE_TOKENS)
        report, fusion, _ = trainer.fit(ctx.dataset, run, [], validation=rank.validation)
        trainer.save(target, overwrite=True)
        decision = (f"ranker: {fusion.fusion.method}, weight {fusion.fusion.weight} (cross-validated nDCG@10 {fusion.cv_fused:.4f} "
                    f"fused vs {fusion.cv_first:.4f} first stage; weight 0 = ranker off)") if fusion else None
        return {"fusion": fusion.fusion.to_dict() if fusion else None, "steps": report.get("steps"), "decision": decision}

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        p = self.params
        ctx.sections["rerank"] = {"kind": "llm", "model": p.model, "adapter": Path(path), "depth": p.depth, "mode": p.mode,
                                  "max_passage_tokens": MAX_PASSAGE_TOKENS, "fusion": "auto"}
