"""Build stage ``first_stage``: which first stage the pipeline uses (dense, BM25 or hybrid; always on).

Choices are made on validation queries of the domain: when the build fine-tuned, the fine-tuning's held-out
queries, or with few training queries every query out of fold (scored with the fold model trained without
it); else all training queries (nothing in the build trained on them).

- A hybrid with ``fusion = "auto"``: every candidate fusion (reciprocal rank fusion, and min-max
  interpolation at dense weights 0.1..0.9) is scored by nDCG@10 over the top ``depth``; the best mean wins
  (ties to the simpler RRF).
- ``kind = "auto"``: the untuned hybrid (RRF, or the fusion the recipe fixed), dense, BM25 and the hybrid with
  a tuned fusion compete. The tuned hybrid's estimate is honest about its tuning: each validation query is
  scored with the fusion chosen on the other folds (query-level k-fold). Over the per-query nDCG@10 the
  untuned hybrid stays unless an option beats it by a paired t-test (p < 0.05); among those that do, the
  first of :data:`PREFERENCE` (dense, BM25, tuned hybrid) within one standard error of the best
  (:func:`retrieval.measures.default_unless_beaten`).

The artifact records the chosen section and the evidence (every option's mean, paired p-values); the
build prints the decision."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.errors import SiftrankError
from training.stages.base import BuildParams, BuildStage

if TYPE_CHECKING:
    from training.stages.context import BuildContext

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # dense weights of the interpolation
MIN_QUERIES = 2
TUNED = "hybrid, tuned fusion"
#: kind = auto keeps the first (the default) unless another option beats it on validation (paired t-test, 5%);
#: among those that do, the earliest within one standard error of the best. The untuned hybrid comes first: it
#: was the best zero-shot first stage or level with it on every collection measured (test nDCG@10, SciFact RRF
#: 0.7148 vs dense 0.6444; a held-out physics collection 0.5383 vs BM25 0.4928; DL19 0.6437 vs dense 0.6439),
#: then each ranking alone, then a fusion tuned on the validation queries
PREFERENCE = ("hybrid", "dense", "bm25", TUNED)


class FirstStageParams(BuildParams):
    kind: Literal["auto", "dense", "bm25", "hybrid"] = "dense"  # auto: chosen on validation queries
    fusion: Literal["auto", "rrf", "interpolate"] = "auto"  # hybrid: auto = chosen on validation queries
    folds: int = Field(5, ge=2)  # kind auto: query-level folds for the tuned hybrid's held-out estimate
    weight: float = Field(0.5, ge=0.0, le=1.0)  # interpolate: the dense score's weight
    rrf_k: int = Field(60, ge=1)
    pool: int | None = Field(None, ge=1)  # candidates taken from each ranking (default: the depth)
    depth: int = Field(100, ge=10)  # candidates scored when choosing the fusion

    def section(self, fusion: str | None = None, weight: float | None = None) -> dict[str, Any]:
        """The pipeline config's ``[first_stage]`` (before a choice, an ``auto`` kind stands as dense and an
        ``auto`` fusion as RRF)."""
        if self.kind == "auto":
            return {"kind": "dense"}
        if self.kind != "hybrid":
            return {"kind": self.kind}
        fusion = fusion or ("rrf" if self.fusion == "auto" else self.fusion)
        out: dict[str, Any] = {"kind": "hybrid", "fusion": fusion, "rrf_k": self.rrf_k}
        if fusion == "interpolate":
            out["weight"] = self.weight if weight is None else weight
        if self.pool is not None:
            out["pool"] = self.pool
        return out


class FirstStageStage(BuildStage):
    name = "first_stage"
    Params = FirstStageParams
    params: FirstStageParams
    inputs: ClassVar[tuple[str, ...]] = ("index",)

    @property
    def chooses(self) -> bool:
        return self.params.kind == "auto" or (self.params.kind == "hybrid" and self.params.fusion == "auto")

    def data(self, ctx: BuildContext) -> list[Any]:
        return [ctx.digest("data") if self.chooses else None, ctx.validation.mode if ctx.validation else None]

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        evidence: dict[str, Any] = {}
        section, decision = self.params.section(), None
        if self.chooses:
            section, evidence = self.choose(ctx)
            decision = describe(section, evidence)
            ctx.echo(f"      {decision}")
        with atomic_dir(target, overwrite=True) as tmp:
            Manifest(kind="first-stage", parameters={"section": section}, metrics=evidence,
                     data={"queries": evidence.get("query_source")}).write(tmp)
        return {"section": section, "decision": decision}

    def choose(self, ctx: BuildContext) -> tuple[dict[str, Any], dict[str, Any]]:
        """The chosen section on the validation queries, and the evidence (see the module doc)."""
        from retrieval.data import query_folds
        from retrieval.measures import default_unless_beaten, paired_test, per_query
        from retrieval.stages.base import QueryBatch
        from retrieval.stages.hybrid import HybridParams, HybridRetriever

        p = self.params
        source, views = ctx.validation_views()
        qids = [q for _, part in views for q in part]
        if len(qids) < MIN_QUERIES:
            raise SiftrankError(f"choosing the first stage needs at least {MIN_QUERIES} validation queries, got {len(qids)}: "
                                "set [first_stage] kind and fusion explicitly")
        as_hybrid = p.model_copy(update={"kind": "hybrid"})
        options: dict[str, dict[str, Any]] = {"rrf": as_hybrid.section("rrf")}
        options.update({f"interpolate {w}": as_hybrid.section("interpolate", w) for w in WEIGHTS})
        if p.fusion != "auto":  # a fusion the recipe fixed is the only one the hybrid competes with
            options = {p.fusion: as_hybrid.section()}
        pool = p.pool or p.depth
        values: dict[str, dict[str, float]] = {name: {} for name in options}
        alone: dict[str, dict[str, float]] = {"dense": {}, "bm25": {}}
        for view, part in views:  # each fold's queries with the encoder that never trained on them
            hybrid = view.first_stage_of(as_hybrid.section())
            assert isinstance(hybrid, HybridRetriever)
            batch = QueryBatch(part, [view.dataset.queries[q] for q in part], view.encoder)
            dense, lexical = hybrid.dense.retrieve(batch, pool), hybrid.lexical.retrieve(batch, pool)

            def scores(hits: list[list[Any]], part: list[str] = part) -> dict[str, float]:
                run = {q: {h.id: h.score for h in ranked[:p.depth]} for q, ranked in zip(part, hits)}
                return per_query(run, ctx.dataset.qrels, judged_only=ctx.dataset.condensed)

            for name, section in options.items():
                params = HybridParams(**{k: v for k, v in section.items() if k != "kind"})
                fused = HybridRetriever(hybrid.dense, hybrid.lexical, params)
                values[name].update(scores([fused.fuse(d, b, p.depth) for d, b in zip(dense, lexical)]))
            alone["dense"].update(scores(dense))
            alone["bm25"].update(scores(lexical))

        def best(on: list[str]) -> str:
            return max(values, key=lambda name: (float(np.mean([values[name][q] for q in on])), name == "rrf"))

        fusion = best(qids)
        means = {name: float(np.mean(list(v.values()))) for name, v in values.items()}
        evidence: dict[str, Any] = {
            "queries": len(qids), "query_source": source, "options": means, "choice": fusion, "chosen": means[fusion],
            **{name: float(np.mean(list(v.values()))) for name, v in alone.items()},
            **{f"p_vs_{name}": paired_test(v, values[fusion])["t_test_p"] for name, v in alone.items()}}
        if p.kind == "hybrid":
            return options[fusion], evidence
        # kind auto: the untuned hybrid as it stands, dense, BM25, and the tuned hybrid scored on each query with
        # the fusion chosen without it (its estimate is honest about the tuning)
        fixed = next(iter(options))  # RRF, or the fusion the recipe fixed
        kinds = {"hybrid": values[fixed], "dense": alone["dense"], "bm25": alone["bm25"]}
        if len(options) > 1:
            tuned: dict[str, float] = {}
            for part in query_folds(list(qids), min(p.folds, len(qids)), seed=0):
                chosen = best([q for q in qids if q not in set(part)])
                tuned.update({q: values[chosen][q] for q in part})
            kinds[TUNED] = tuned
        kind = default_unless_beaten(kinds, [k for k in PREFERENCE if k in kinds])
        evidence["kinds"] = {name: float(np.mean(list(v.values()))) for name, v in kinds.items()}
        evidence["kinds_p_vs_chosen"] = {name: paired_test(kinds[kind], v)["t_test_p"] for name, v in kinds.items() if name != kind}
        evidence["kind"] = kind
        section = {"hybrid": options[fixed], TUNED: options[fusion]}.get(kind, {"kind": kind})
        return section, evidence

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        ctx.set_first_stage(Manifest.read(path, kind="first-stage").parameters["section"], key)


def describe(section: dict[str, Any], evidence: dict[str, Any]) -> str:
    """One line: what was chosen, on which queries, and the numbers behind it."""
    fusion = f"{section['fusion']}" + (f" {section['weight']}" if "weight" in section else "") if section["kind"] == "hybrid" else ""
    where = f"on {evidence['queries']} validation queries ({evidence['query_source']})"
    if "kinds" in evidence:
        kinds = ", ".join(f"{k} {v:.4f}" for k, v in evidence["kinds"].items())
        ps = ", ".join(f"{k} {v:.3g}" for k, v in evidence["kinds_p_vs_chosen"].items())
        return (f"first stage: {section['kind']}{' (' + fusion + ')' if fusion else ''} chosen {where} by the "
                f"paired test and one-standard-error rule (default {PREFERENCE[0]}, then "
                f"{', '.join(k for k in PREFERENCE[1:] if k in evidence['kinds'])}): "
                f"nDCG@10 {kinds} (tuned: the fusion chosen on the other folds); paired p vs the choice: {ps}")
    return (f"first stage: hybrid fusion {fusion} chosen {where}: nDCG@10 {evidence['chosen']:.4f} "
            f"(dense {evidence['dense']:.4f}, bm25 {evidence['bm25']:.4f})")
