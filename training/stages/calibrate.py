"""Build stage ``calibrate``: the Cosine Adapter relevance filter over the pipeline's first stage
(docs/calibration.md), with its threshold for a target recall.

Calibrated on queries the encoder has not seen: a fine-tuned encoder scores its own training queries'
positives higher than new queries', so a threshold chosen on them keeps less recall than it promises
(measured: 84% instead of 95% on SciFact test). With a finetune stage the calibration uses its
validation queries: its held-out split, or with few training queries every query scored out of fold by
the fold model trained without it; without one, all training queries (nothing trained on them).

``enabled = "auto"`` switches the filter off when the validation candidates hold too few relevant pairs
to place a threshold for the target recall: fewer than ``min_relevant`` (default 2 / (1 - target), 40 for
95%: at least two relevant passages below the threshold), and the build says so.

On labels from clicks ``auto`` trains the filter (kept in ``calibrator/`` beside the decision, to be measured
or switched on with ``enabled = true``) but does not serve it: clicks judge only the top hits users were
shown, so every relevant passage the logging system ranked lower is missing from the labels and a threshold
placed for 95% recall of the clicked ones cuts those (positivity; measured on SciFact test: recall 0.84 at
a promised 0.95, nDCG@10 0.6973 with the filter vs 0.7148 without)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from retrieval.artifacts import Manifest, atomic_dir
from training.stages.base import BuildStage, OptionalParams

if TYPE_CHECKING:
    from retrieval.calibration import Calibrator
    from training.stages.context import BuildContext


TRAINED_DIR = "calibrator"  # inside a decision that switched a trained filter off: the filter itself


class CalibrateParams(OptionalParams):
    decides = True  # enabled = "auto": off when the validation queries cannot place the threshold
    k: int = Field(100, ge=1)
    target_recall: float = Field(0.95, gt=0, lt=1)
    family: Literal["linear", "sqrt", "quadratic", "power"] = "power"
    features: Literal["auto", "global", "embedding", "stats", "embedding+stats"] = "auto"
    seed: int = 0
    min_relevant: int | None = Field(None, ge=1)  # auto: the fewest relevant validation candidates to calibrate on


    @property
    def needed(self) -> int:
        return self.min_relevant or math.ceil(2 / (1 - self.target_recall) - 1e-9)


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
        return [ctx.digest("data"), {"validation": ctx.validation.mode if ctx.validation else None}]

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        from training.calibrate import CalibratorTrainer, CandidateSet

        cal, data = self.params, ctx.dataset
        CandidateSet.check_judgments(data)
        source, views = ctx.validation_views()
        parts = []
        for view, qids in views:  # each fold's queries scored by the encoder that never trained on them
            batch, hits = view.candidates(qids, cal.k)
            parts.append(CandidateSet.from_hits(data, batch, hits, view.encoder, cal.k))
        candidates = CandidateSet.join(parts)
        where = f"{len(candidates)} queries ({source})"
        if cal.enabled == "auto" and candidates.positives < cal.needed:
            decision = (f"filter: off, {candidates.positives} relevant passages in the top {cal.k} of {where}, fewer than "
                        f"the {cal.needed} needed to place a threshold for recall {cal.target_recall:g}")
            _switch_off(ctx, target, decision, {"enabled": False},
                       {"relevant": candidates.positives, "needed": cal.needed, "queries": len(candidates)})
            return {"enabled": False, "decision": decision}
        trainer = CalibratorTrainer.named(cal.features, family=cal.family, seed=cal.seed, target_recall=cal.target_recall)
        calibrator = trainer.fit(candidates, ctx.encoder.identity())
        calibrator.data = {"dataset": str(data.root), "qrels": str(data.qrels_path), "queries": len(candidates), "k": cal.k,
                           "first_stage": ctx.first_stage_section, "held_out": source,
                           "relevant": candidates.positives}
        chosen = calibrator.extra.get("chosen", {})
        decision = (f"{cal.family} map of {chosen.get('input')}, features {chosen.get('features')}, threshold "
                    f"{calibrator.threshold:.4g} for recall {cal.target_recall:g}, calibrated on {where} "
                    f"({candidates.positives} relevant in the top {cal.k})")
        if cal.enabled == "auto" and data.condensed:
            decision = (f"filter: off (trained, not served), the labels come from clicks: they judge only what users were "
                        f"shown, so the recall its threshold keeps over the top {cal.k} cannot be measured on them "
                        f"(enabled = true serves it); {decision}")
            _switch_off(ctx, target, decision, {"enabled": False, "reason": "click labels"},
                       {"relevant": candidates.positives, "queries": len(candidates), "threshold": calibrator.threshold},
                       trained=calibrator)
            return {"enabled": False, "threshold": calibrator.threshold, "chosen": chosen.get("features"), "decision": decision}
        calibrator.save(target, overwrite=True)
        return {"enabled": True, "threshold": calibrator.threshold, "chosen": chosen.get("features"), "decision": f"filter: {decision}"}

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        if Manifest.read(path).kind == "calibrate-decision":
            return  # switched off by the build: no filter in the pipeline
        ctx.sections["filter"] = {"kind": "cosine-adapter", "calibrator": Path(path)}


def _switch_off(ctx: BuildContext, target: Path, decision: str, parameters: dict[str, Any], metrics: dict[str, Any],
               trained: Calibrator | None = None) -> None:
    """Write the decision that switched the filter off (with the filter it ``trained``, kept unserved), and say it."""
    with atomic_dir(target, overwrite=True) as tmp:
        if trained is not None:
            trained.save(tmp / TRAINED_DIR)
        Manifest(kind="calibrate-decision", parameters=parameters, metrics=metrics).write(tmp)
    ctx.echo(f"      {decision}")
