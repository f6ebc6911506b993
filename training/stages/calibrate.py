"""Build stage ``calibrate``: the Cosine Adapter relevance filter over the pipeline's first stage
(docs/calibration.md), with its threshold for a target recall.

Calibrated on queries the encoder has not seen: a fine-tuned encoder scores its own training queries'
positives higher than new queries', so a threshold chosen on them keeps less recall than it promises
(measured: 84% instead of 95% on SciFact test). With a finetune stage the calibration uses its
validation queries (never trained on); otherwise all training queries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from retrieval.artifacts import Manifest
from training.stages.base import BuildStage, OptionalParams

if TYPE_CHECKING:
    from training.stages.context import BuildContext

MIN_HELD_OUT = 20  # fewer held-out queries than this: calibrate on all training queries instead


class CalibrateParams(OptionalParams):
    k: int = Field(100, ge=1)
    target_recall: float = Field(0.95, gt=0, le=1)
    family: Literal["linear", "sqrt", "quadratic", "power"] = "power"
    features: Literal["auto", "global", "embedding", "stats", "embedding+stats"] = "auto"
    seed: int = 0


class CalibrateStage(BuildStage):
    name = "calibrate"
    Params = CalibrateParams
    params: CalibrateParams
    inputs: ClassVar[tuple[str, ...]] = ("first_stage",)
    kinds: ClassVar[tuple[str, ...]] = ("calibrator",)

    def check(self, ctx: BuildContext) -> None:
        if self.params.artifact:
            Manifest.read(Path(self.params.artifact), kind="calibrator")  # its encoder is checked when loaded

    def data(self, ctx: BuildContext) -> list[Any]:
        return [ctx.digest("data"), {"held_out": ctx.held_out is not None}]

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        from training.calibrate import CalibratorTrainer, CandidateSet
        from training.triplets import judged_queries

        cal, data = self.params, ctx.dataset
        qids = ctx.held_out
        if qids is not None and len(qids) < MIN_HELD_OUT:
            ctx.echo(f"      only {len(qids)} held-out queries: calibrating on all training queries (recall may fall short)")
            qids = None
        held_out = qids is not None
        CandidateSet.check_judgments(data)
        batch, hits = ctx.candidates(qids if qids is not None else judged_queries(data), cal.k)
        candidates = CandidateSet.from_hits(data, batch, hits, ctx.encoder, cal.k)
        trainer = CalibratorTrainer.named(cal.features, family=cal.family, seed=cal.seed, target_recall=cal.target_recall)
        calibrator = trainer.fit(candidates, ctx.encoder.identity())
        calibrator.data = {"dataset": str(data.root), "qrels": str(data.qrels_path), "queries": len(candidates), "k": cal.k,
                           "first_stage": ctx.first_stage_section,
                           "held_out": "finetune validation queries" if held_out else "all"}
        calibrator.save(target, overwrite=True)
        chosen = calibrator.extra.get("chosen", {})
        decision = (f"filter: {cal.family} map of {chosen.get('input')}, features {chosen.get('features')}, threshold "
                    f"{calibrator.threshold:.4g} for recall {cal.target_recall:g}, calibrated on {len(candidates)} "
                    + ("held-out validation queries" if held_out else "training queries (no held-out set: recall may fall short)"))
        return {"threshold": calibrator.threshold, "chosen": chosen.get("features"), "decision": decision}

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        ctx.sections["filter"] = {"kind": "cosine-adapter", "calibrator": Path(path)}
