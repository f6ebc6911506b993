"""Build stage ``finetune``: contrastive fine-tuning of the current encoder (docs/finetuning.md), hard
negatives from the pipeline's first stage; with several seeds the best on the validation queries is kept.
Its validation queries are never trained on: later stages calibrate on them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.errors import SiftrankError
from training.stages.base import BuildStage, OptionalParams
from training.stages.context import Fold, Validation
from training.stages.lineage import read_lineage
from training.stages.registry import build_stage

if TYPE_CHECKING:
    from training.finetune import FineTuner
    from training.stages.context import BuildContext


class FinetuneParams(OptionalParams):
    decides = True  # enabled = "auto": kept only where it beats the zero-shot encoder on validation (paired p < 0.05)
    method: str = "full"  # a name of training.adapters.METHODS
    steps: int = Field(100, ge=1)  # at most; a small domain stops after `epochs` passes over its triplets
    epochs: float = Field(4, gt=0)
    learning_rate: float | None = Field(None, gt=0)  # default per method (training.adapters.METHODS)
    batch_size: int = Field(32, ge=2)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # several: the best on validation is kept
    general: int = Field(0, ge=0)  # general triplets mixed into the domain ones (0: none; at most as many)
    validation_share: float = Field(0.1, gt=0, lt=1)  # training queries held out for validation
    # fewer held-out queries than this: cross-fit over `folds` instead (the filter's 95% threshold needs about 40
    # relevant passages among the validation candidates: 20 SciFact queries hold about 22)
    min_held_out: int = Field(50, ge=1)
    folds: int = Field(3, ge=2)  # cross-fitting: each fold is one more fine-tuning run


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
        """Fine-tune on a held-out split, or (too few held-out queries) cross-fit: one model per fold trained
        without it, and the final model on every query. The fold models stay in ``folds/`` so later stages
        choose and calibrate on scores of queries their encoder never saw. With ``enabled = "auto"`` the
        fine-tuned encoder is kept only if it beats the zero-shot one on the validation queries (paired t-test,
        p < 0.05: :func:`retrieval.measures.default_unless_beaten`)."""
        from retrieval.data import query_folds
        from training.finetune import validation_split
        from training.triplets import general_triplets

        p, general_dir = self.params, ctx.recipe.data.general
        general = general_triplets(Path(general_dir), p.general) if p.general and general_dir else []
        train_q, val_q = validation_split(ctx.judgments, p.validation_share)
        details: dict[str, Any] = {"general_triplets": len(general), "seeds": p.seeds}
        work = ctx.out / ".finetune-folds.tmp"
        if len(val_q) >= p.min_held_out:
            tuner, score = self._best_seed(ctx, (train_q, val_q), general)
            folds: list[dict[str, Any]] = [{"qids": val_q, "path": None}]
            details.update(validation="split", seed=tuner.seed, validation_ndcg=score)
            how = f"seed {tuner.seed} of {p.seeds}: validation nDCG@10 {score:.4f} on {len(val_q)} held-out queries"
        else:
            every = train_q + val_q
            parts = query_folds(every, min(p.folds, len(every)), seed=0)
            ctx.echo(f"      {len(val_q)} held-out queries (< {p.min_held_out}): cross-fitting over {len(parts)} folds of "
                     f"{len(every)} queries, then the final model on all of them")
            shutil.rmtree(work, ignore_errors=True)
            folds = []
            for number, part in enumerate(parts):
                fold = self._tuner(ctx, p.seeds[0])
                fold.train(ctx.dataset, ctx.ranked_ids, steps=p.steps, progress=ctx.progress, general=general,
                           queries=([q for q in every if q not in set(part)], []))
                fold.save(work / str(number), overwrite=True)
                folds.append({"qids": part, "path": f"folds/{number}"})
            tuner = self._tuner(ctx, p.seeds[0])
            tuner.train(ctx.dataset, ctx.ranked_ids, steps=p.steps, progress=ctx.progress, general=general, queries=(every, []))
            details.update(validation=f"{len(parts)}-fold", seed=tuner.seed)
            how = f"seed {tuner.seed}, cross-fitted over {len(parts)} folds"
        tuner.save(target, overwrite=True)
        if work.is_dir():
            work.rename(target / "folds")
        details["folds"] = folds
        evidence = self._against_zero_shot(ctx, target, folds, tuner.artifact_kind == "adapter")
        details["evidence"] = evidence
        kept = p.enabled != "auto" or evidence["choice"] == "fine-tuned"
        details["kept"] = kept
        versus = (f"dense nDCG@10 {evidence['fine-tuned']:.4f} vs zero-shot {evidence['zero-shot']:.4f} "
                  f"(paired p {evidence['p']:.3g}) on {evidence['queries']} {evidence['source']}")
        if kept:
            details["decision"] = f"encoder: {p.method} fine-tuning, {how}; {versus}"
        else:
            details["decision"] = (f"encoder: zero-shot kept, {p.method} fine-tuning does not beat it (paired t-test, "
                                   f"p < 0.05): {versus}")
            with atomic_dir(target, overwrite=True) as tmp:  # the fine-tuned model is not kept: only the decision
                Manifest(kind="finetune-decision", parameters={"method": p.method}, metrics=evidence).write(tmp)
        ctx.echo(f"      {details['decision']}")
        return details

    def _tuner(self, ctx: BuildContext, seed: int) -> FineTuner:
        from training.finetune import FineTuner

        p = self.params
        return FineTuner(ctx.encoder, p.method, seed=seed, learning_rate=p.learning_rate, batch_size=p.batch_size,
                         epochs=p.epochs)

    def _best_seed(self, ctx: BuildContext, queries: tuple[list[str], list[str]],
                   general: list[Any]) -> tuple[FineTuner, float]:
        """One run per seed on the training split; the best on the validation split is kept."""
        best: tuple[float, FineTuner] | None = None
        for seed in self.params.seeds:
            tuner = self._tuner(ctx, seed)
            tuner.train(ctx.dataset, ctx.ranked_ids, steps=self.params.steps, progress=ctx.progress, general=general,
                        queries=queries)
            score = tuner.validation_score()
            ctx.echo(f"      seed {seed}: validation nDCG@10 {score:.4f}")
            if best is None or score > best[0]:
                best = (score, tuner)
        assert best is not None
        return best[1], best[0]

    @staticmethod
    def _against_zero_shot(ctx: BuildContext, target: Path, folds: list[dict[str, Any]], adapter: bool) -> dict[str, Any]:
        """Per-query dense nDCG@10 (full corpus) of the fine-tuned encoders on their validation queries
        against the encoder the stage started from on the same queries, and the choice between them."""
        from retrieval.measures import default_unless_beaten, paired_test

        tuned: dict[str, float] = {}
        for fold in folds:
            view = ctx.with_encoder(*_encoder_at(ctx, target / (fold["path"] or ""), adapter))
            tuned.update(view.dense_ndcg(fold["qids"]))
        zero = ctx.dense_ndcg(list(tuned))
        scores = {"zero-shot": zero, "fine-tuned": tuned}
        choice = default_unless_beaten(scores, ("zero-shot", "fine-tuned"))
        source = "held-out queries" if len(folds) == 1 else f"queries, each scored out of fold ({len(folds)} folds)"
        return {"zero-shot": float(np.mean(list(zero.values()))), "fine-tuned": float(np.mean(list(tuned.values()))),
                "p": paired_test(zero, tuned)["t_test_p"], "queries": len(tuned), "source": source, "choice": choice}

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        from training.finetune import validation_split

        kind = Manifest.read(path).kind
        details = read_lineage(path).get("details") or {}
        if kind == "finetune-decision":  # the zero-shot encoder stays; nothing trained on any query
            ctx.keys["encoder"] = key
            return
        adapter = kind == "adapter"
        ctx.set_encoder(*_encoder_at(ctx, path, adapter), key)
        if details.get("validation", "split") == "split":  # a prebuilt artifact: the split a build of it held out
            held = details["folds"][0]["qids"] if "folds" in details else validation_split(ctx.judgments)[1]
            ctx.validation = Validation("the fine-tuning's validation queries", [Fold(held)])
        else:
            folds = [Fold(f["qids"], *_encoder_at(ctx, path / f["path"], adapter)) for f in details["folds"]]
            ctx.validation = Validation(f"out-of-fold queries ({len(folds)} folds, each scored by the model trained "
                                        "without it)", folds)


def _encoder_at(ctx: BuildContext, path: Path, adapter: bool) -> tuple[str, str | None]:
    """(model, adapter) of a fine-tuned artifact at ``path``: an adapter sits on the build's current model."""
    return (ctx.model, str(path)) if adapter else (str(path), None)
