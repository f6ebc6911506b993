"""Build stage ``first_stage``: which first stage the pipeline uses (dense, BM25 or hybrid; always on).

For a hybrid first stage with ``fusion = "auto"`` the fusion is chosen on validation queries of the
domain: the fine-tuning's held-out queries when the build fine-tuned (never trained on), else all training
queries (nothing in the build trained on them). Every candidate fusion (reciprocal rank fusion, and
min-max interpolation at dense weights 0.1..0.9) is scored by nDCG@10 over the top ``depth``; the best mean
wins (ties to the simpler RRF). The artifact records the chosen section and the evidence (each option's
mean, dense and BM25 alone, paired p of the choice against each)."""

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


class FirstStageParams(BuildParams):
    kind: Literal["dense", "bm25", "hybrid"] = "dense"
    fusion: Literal["auto", "rrf", "interpolate"] = "auto"  # hybrid: auto = chosen on validation queries
    weight: float = Field(0.5, ge=0.0, le=1.0)  # interpolate: the dense score's weight
    rrf_k: int = Field(60, ge=1)
    pool: int | None = Field(None, ge=1)  # candidates taken from each ranking (default: the depth)
    depth: int = Field(100, ge=10)  # candidates scored when choosing the fusion

    def section(self, fusion: str | None = None, weight: float | None = None) -> dict[str, Any]:
        """The pipeline config's ``[first_stage]`` (an ``auto`` fusion stands as RRF until it is chosen)."""
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

    def data(self, ctx: BuildContext) -> list[Any]:
        needs_queries = self.params.kind == "hybrid" and self.params.fusion == "auto"
        return [ctx.digest("data") if needs_queries else None, ctx.held_out is not None]

    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        p = self.params
        evidence: dict[str, Any] = {}
        section = p.section()
        if p.kind == "hybrid" and p.fusion == "auto":
            section, evidence = self.choose(ctx)
            ctx.echo(f"      fusion chosen on {evidence['queries']} validation queries: {section} "
                     f"(nDCG@10 {evidence['chosen']:.4f}; dense {evidence['dense']:.4f}, bm25 {evidence['bm25']:.4f})")
        with atomic_dir(target, overwrite=True) as tmp:
            Manifest(kind="first-stage", parameters={"section": section}, metrics=evidence,
                     data={"queries": evidence.get("query_source")}).write(tmp)
        return {"section": section}

    def choose(self, ctx: BuildContext) -> tuple[dict[str, Any], dict[str, Any]]:
        """The best fusion on the validation queries, and the evidence (see the module doc)."""
        from retrieval.measures import paired_test, per_query
        from retrieval.stages.base import QueryBatch
        from retrieval.stages.hybrid import HybridParams, HybridRetriever
        from training.triplets import judged_queries

        p = self.params
        data = ctx.dataset
        qids = ctx.held_out if ctx.held_out is not None else judged_queries(data)
        source = "the fine-tuning's validation queries" if ctx.held_out is not None else "all training queries"
        if len(qids) < MIN_QUERIES:
            raise SiftrankError(f"choosing the hybrid fusion needs at least {MIN_QUERIES} validation queries, got {len(qids)}: "
                                "set [first_stage] fusion to rrf or interpolate")
        hybrid = ctx.first_stage_of(p.section())
        assert isinstance(hybrid, HybridRetriever)
        batch = QueryBatch(qids, [data.queries[q] for q in qids], ctx.encoder)
        pool = p.pool or p.depth
        dense, lexical = hybrid.dense.retrieve(batch, pool), hybrid.lexical.retrieve(batch, pool)

        def scores(hits: list[list[Any]]) -> dict[str, float]:
            run = {q: {h.id: h.score for h in ranked[:p.depth]} for q, ranked in zip(qids, hits)}
            return per_query(run, data.qrels)

        options: dict[str, dict[str, Any]] = {"rrf": p.section("rrf")}
        options.update({f"interpolate {w}": p.section("interpolate", w) for w in WEIGHTS})
        values = {}
        for name, section in options.items():
            fused = HybridRetriever(hybrid.dense, hybrid.lexical, HybridParams(**{k: v for k, v in section.items() if k != "kind"}))
            values[name] = scores([fused.fuse(d, b, p.depth) for d, b in zip(dense, lexical)])
        means = {name: float(np.mean(list(v.values()))) for name, v in values.items()}
        best = max(means, key=lambda name: (means[name], name == "rrf"))
        alone = {"dense": scores(dense), "bm25": scores(lexical)}
        evidence = {"queries": len(qids), "query_source": source, "options": means, "choice": best, "chosen": means[best],
                    **{name: float(np.mean(list(v.values()))) for name, v in alone.items()},
                    **{f"p_vs_{name}": paired_test(v, values[best])["t_test_p"] for name, v in alone.items()}}
        return options[best], evidence

    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        ctx.set_first_stage(Manifest.read(path, kind="first-stage").parameters["section"], key)
