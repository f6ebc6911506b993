"""Build stage ``compress``: the encoder the build has reached (the fine-tuned one, or the zero-shot one the
fine-tuning kept) is the teacher; whole layers and FFN neurons are removed by a score and the teacher is distilled
back into the student on the domain's passages and training queries (training/compress.py, docs/compression.md).
With ``enabled = "auto"`` the student is kept only where its dense nDCG@10 on the validation queries is within
``tolerance`` of the teacher's. Each cross-fitted fold's model is compressed the same way, so later stages still
choose and calibrate on queries their encoder never trained on."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.errors import SiftrankError
from training.distil import LEARNING_RATE
from training.stages.base import BuildStage, OptionalParams
from training.stages.context import Fold, Validation
from training.stages.lineage import read_lineage

if TYPE_CHECKING:
    from training.stages.context import BuildContext
    from training.triplets import Triplet


class CompressParams(OptionalParams):
    decides = True  # enabled = "auto": kept only where validation nDCG@10 >= the teacher's - tolerance
    score: Literal["gaprune", "magnitude", "activation"] = "gaprune"
    layers: int | None = Field(None, ge=1)  # layers the student keeps (None: all)
    ffn: float = Field(0.0, ge=0, lt=1)  # share of each kept layer's FFN neurons removed
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(LEARNING_RATE, gt=0)
    supervised: float = Field(0.0, ge=0)  # weight of InfoNCE on the training triplets beside the distillation
    passages: int = Field(8000, ge=1)  # corpus passages distilled on (a seeded sample), plus openings of half
    triplets: int = Field(256, ge=1)  # general triplets for GAPrune's general Fisher
    tolerance: float = Field(0.01, ge=0)  # auto: the nDCG@10 the student may lose on validation
    seed: int = 0


class CompressStage(BuildStage):
    name = "compress"
    Params = CompressParams
    params: CompressParams
    inputs: ClassVar[tuple[str, ...]] = ("encoder",)
    kinds: ClassVar[tuple[str, ...]] = ("compressed-encoder",)
    off_by_default: ClassVar[bool] = True

    def check(self, ctx: BuildContext) -> None:
        if self.params.score == "gaprune" and not self.params.artifact:
            ctx.require_general("GAPrune's general Fisher (compress.score = gaprune)")

    def data(self, ctx: BuildContext) -> list[Any]:
        p = self.params
        return [ctx.digest("data"), ctx.digest("general") if p.score == "gaprune" else None,
                ctx.first_stage_section if p.supervised or p.score == "gaprune" else None]  # triplets' negatives

    def prebuilt_key(self, path: Path) -> str:
        from retrieval.encoder import model_fingerprint

        return model_fingerprint(path)

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        """One student per teacher: the build's encoder, and each cross-fitted fold's model; each is scored
        against its teacher on the queries neither trained on."""
        from training.distil import distillation_texts
        from training.triplets import general_triplets, judged_queries

        p = self.params
        if ctx.adapter is not None:
            raise SiftrankError("compress: the encoder is an adapter on a base model; compress needs a full model "
                                "(finetune.method = \"full\")")
        every = judged_queries(ctx.judgments)
        own: list[str] = []  # no earlier stage trained on queries: this one holds its own validation split out
        if ctx.validation is None:
            from training.finetune import validation_split

            own = validation_split(ctx.judgments)[1]
        source, views = ("the compression's validation queries", [(ctx, own)]) if own else ctx.validation_views()
        folded = ctx.validation is not None and ctx.validation.mode != "split"
        folder = ctx.recipe.data.general
        general = general_triplets(Path(folder), p.triplets) if p.score == "gaprune" and folder else []
        # read and ranked once for every student: the corpus sample and each query's first-stage candidates
        passages = distillation_texts(ctx.dataset.doc_texts(), p.passages, p.seed)
        ranked = ctx.ranked_ids(every, 30) if p.supervised or p.score == "gaprune" else None
        work = ctx.out / ".compress-folds.tmp"
        shutil.rmtree(work, ignore_errors=True)
        teacher_scores: dict[str, float] = {}
        student_scores: dict[str, float] = {}
        folds: list[dict[str, Any]] = []
        for number, (view, qids) in enumerate(views if folded else []):
            report = self._compress(ctx, view.model, set(qids), every, passages, ranked, general, work / str(number))
            folds.append({"qids": qids, "path": f"folds/{number}", "wall_seconds": report["metrics"]["wall_seconds"]})
            teacher_scores.update(view.dense_ndcg(qids))
            student_scores.update(ctx.with_encoder(str(work / str(number)), None).dense_ndcg(qids))
        held = set() if folded else {q for _, qids in views for q in qids}  # the final model's folds are its own
        report = self._compress(ctx, ctx.model, held, every, passages, ranked, general, target)
        if work.is_dir():
            work.rename(target / "folds")
        if not folded:
            qids = sorted(held)
            teacher_scores, student_scores = ctx.dense_ndcg(qids), ctx.with_encoder(str(target), None).dense_ndcg(qids)
        evidence = _against_teacher(teacher_scores, student_scores, p.tolerance, source)
        kept = p.enabled != "auto" or evidence["kept"]
        shape = (f"{p.score}: {report['metrics']['kept_layers']} of the teacher's layers kept, FFN "
                 f"{report['metrics']['intermediate_size']} wide, {report['metrics']['parameters'] / 1e6:.1f}M parameters")
        versus = (f"dense nDCG@10 {evidence['student']:.4f} vs teacher {evidence['teacher']:.4f} (paired p {evidence['p']:.3g}) "
                  f"on {evidence['queries']} queries ({source})")
        details = {"folds": folds, "held_out": own, "evidence": evidence, "kept": kept, "metrics": report["metrics"]}
        if kept:
            details["decision"] = f"encoder: compressed ({shape}); {versus}"
        else:
            details["decision"] = f"encoder: teacher kept, the compressed one loses more than {p.tolerance} ({shape}): {versus}"
            with atomic_dir(target, overwrite=True) as tmp:
                Manifest(kind="compress-decision", parameters=p.lineage(), metrics=evidence).write(tmp)
        ctx.echo(f"      {details['decision']}")
        return details

    def _compress(self, ctx: BuildContext, teacher: str, held: set[str], every: list[str], passages: list[str],
                  ranked: dict[str, list[str]] | None, general: list[Triplet], out: Path) -> dict[str, Any]:
        """Compress ``teacher`` into ``out``, distilling on ``passages`` and the training queries not in ``held``
        (triplets, where needed, from ``ranked``: the first stage's candidates of every training query)."""
        from training.compress import Compressor
        from training.triplets import training_examples

        p = self.params
        train = [q for q in every if q not in held]
        texts = passages + [ctx.dataset.queries[q] for q in train]
        domain = training_examples(ctx.dataset, ranked, train)[0] if ranked is not None and train else []
        if ranked is not None and not domain:
            raise SiftrankError("compress: no training queries outside the validation ones to draw triplets from")
        compressor = Compressor(teacher, p.score, p.layers, p.ffn, p.epochs, p.batch_size, p.learning_rate,
                                p.supervised, p.seed)
        report = compressor.run(texts, domain, general, progress=ctx.progress)
        compressor.save(out, overwrite=True)
        return report

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        if Manifest.read(path).kind == "compress-decision":  # the teacher stays
            ctx.keys["encoder"] = key
            return
        validation = ctx.validation
        ctx.set_encoder(str(path), None, key)
        details = read_lineage(path).get("details") or {}
        if validation is not None and details.get("folds"):
            ctx.validation = Validation(validation.source, [Fold(f["qids"], str(path / f["path"])) for f in details["folds"]])
        elif details.get("held_out"):
            ctx.validation = Validation("the compression's validation queries", [Fold(details["held_out"])])


def _against_teacher(teacher: dict[str, float], student: dict[str, float], tolerance: float, source: str) -> dict[str, Any]:
    """Per-query dense nDCG@10 of the student against its teacher: kept when the mean loss is within ``tolerance``."""
    from retrieval.measures import paired_test

    if not teacher:
        raise SiftrankError("compress: no validation queries to compare the student with its teacher on")
    t, s = float(np.mean(list(teacher.values()))), float(np.mean(list(student.values())))
    return {"teacher": t, "student": s, "p": paired_test(teacher, student)["t_test_p"], "queries": len(teacher),
            "source": source, "tolerance": tolerance, "kept": s >= t - tolerance}
