"""LLM full-ranker stage: the top ``depth`` candidates in one prompt (or windows), re-ordered by the LLM;
the rest follow in their previous order, below them.

With fusion (:mod:`retrieval.fusion`) the stage shows two rankings: ``rerank`` (the LLM's own order)
and ``fused`` (its per-candidate score combined with the previous stage's). ``fusion = "auto"`` takes
the method and weight stored in the ranker artifact by ``train-ranker`` (chosen there by query-level
cross-validation), and the LLM's own order when there is none. A weight of 0 turns the LLM off: the
stage then passes its input on unchanged, without a model call.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from retrieval.artifacts import resolve_path
from retrieval.docstore import DocStore
from retrieval.errors import SiftrankError
from retrieval.fusion import ScoreFusion
from retrieval.hits import Hit
from retrieval.rerank import ListwiseRanker, RankStats
from retrieval.stages.base import Reranker, StageParams
from retrieval.stages.context import StageContext


class LLMParams(StageParams):
    model: str = "bundled:SmolLM2-135M-Instruct"  # or a local Hugging Face causal-LM folder
    adapter: Path | None = None  # a LoRA artifact from `siftrank train-ranker` (for this base model only)
    depth: int = Field(20, ge=1)  # candidates from the previous stage that the LLM orders
    mode: Literal["generate", "sliding-window", "first-token"] = "generate"
    window: int = Field(20, ge=2)
    stride: int = Field(10, ge=1)
    max_passage_tokens: int = Field(100, ge=8)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"  # int8: dynamic int8 Linear layers (CPU)
    fusion: Literal["auto", "none", "interpolate", "rrf"] = "auto"  # auto: what the adapter artifact stores
    fusion_weight: float | None = Field(None, ge=0.0, le=1.0)  # the ranker's share (default: the artifact's)
    fusion_k: int = Field(60, ge=1)  # rrf: 1 / (k + rank)

    def resolve(self, base: Path) -> LLMParams:
        return self if self.adapter is None else self.model_copy(update={"adapter": resolve_path(base, self.adapter)})

    def build(self) -> ListwiseRanker:
        """The :class:`~retrieval.rerank.ListwiseRanker` these parameters describe (weights load lazily)."""
        from retrieval.causal_lm import CausalLM

        llm = CausalLM(self.model, adapter=self.adapter, device=self.device, precision=self.precision)
        return ListwiseRanker(llm, mode=self.mode, window=self.window, stride=self.stride,
                              max_passage_tokens=self.max_passage_tokens)

    def score_fusion(self) -> ScoreFusion | None:
        """The fusion these parameters ask for (None: the LLM's own order), filling what ``auto`` or a
        missing weight leave open from the adapter artifact."""
        stored = self.stored_fusion()
        method = self.fusion if self.fusion != "auto" else (stored or {}).get("method", "none")
        if method == "none":
            return None
        weight = self.fusion_weight
        if weight is None:
            if not stored or stored.get("method") != method:
                raise SiftrankError(f"fusion = '{method}' needs fusion_weight: the ranker artifact stores no weight "
                                    "for that method (train-ranker chooses one)")
            weight = float(stored["weight"])
        k = self.fusion_k if stored is None or "fusion_k" in self.model_fields_set else int(stored.get("k", self.fusion_k))
        return ScoreFusion(method, weight, k)  # type: ignore[arg-type]

    def stored_fusion(self) -> dict[str, Any] | None:
        """The fusion ``train-ranker`` chose, from the adapter's manifest (None without one)."""
        if self.adapter is None:
            return None
        from retrieval.artifacts import Manifest
        from retrieval.causal_lm import ADAPTER_KIND

        return Manifest.read(self.adapter, kind=ADAPTER_KIND).parameters.get("fusion")


class LLMReranker(Reranker):
    """Listwise LLM re-ranking of the top ``depth`` hits, passages read from the document store."""

    kind = "llm"
    Params = LLMParams

    def __init__(self, ranker: ListwiseRanker, store: DocStore, depth: int = 20, fusion: ScoreFusion | None = None) -> None:
        self.ranker, self.store, self.depth, self.fusion = ranker, store, depth, fusion

    @classmethod
    def from_config(cls, params: LLMParams, context: StageContext) -> LLMReranker:
        return cls(params.build(), context.store, params.depth, params.score_fusion())

    def bind_store(self, store: DocStore) -> None:
        self.store = store

    @property
    def off(self) -> bool:
        """Fusion weight 0: the stage passes its input on without calling the LLM."""
        return self.fusion is not None and self.fusion.weight == 0.0

    @property
    def stage_names(self) -> list[str]:
        if self.fusion is None:
            return ["rerank"]
        return ["fused"] if self.off else ["rerank", "fused"]

    def rerank(self, query: str, hits: list[Hit]) -> tuple[list[Hit], dict[str, float]]:
        rankings, stats = self.rerank_stages(query, hits)
        return rankings[-1], stats

    def rerank_stages(self, query: str, hits: list[Hit]) -> tuple[list[list[Hit]], dict[str, float]]:
        """The LLM's order of the top ``depth`` (scores: its per-candidate scores) and, with fusion, the
        fused order (scores: fused); the rest follow below in their previous order."""
        top, rest = hits[:self.depth], hits[self.depth:]
        if self.off:
            return [list(hits)], {k: float(v) for k, v in asdict(RankStats()).items()}
        scores, stats = self.ranker.score(query, self.store.texts([h.id for h in top]))
        record = {k: float(v) for k, v in asdict(stats).items()}
        own = _ranked(top, scores, rest)
        if self.fusion is None:
            return [own], record
        fused = self.fusion.fuse({h.id: h.score for h in top}, {h.id: s for h, s in zip(top, scores)})
        return [own, _ranked(top, [fused[h.id] for h in top], rest)], record

    @staticmethod
    def summarise(stats: list[dict[str, float]]) -> dict[str, float]:
        """Tokens in and out, seconds and calls per query, and how often the answer could not be read
        (parse failures: no usable identifier; repaired: ids missing or repeated)."""
        out = Reranker.summarise(stats)
        failures, calls = sum(s["parse_failures"] for s in stats), sum(s["calls"] for s in stats)
        out.pop("parse_failures_per_query", None)
        out.pop("repaired_per_query", None)
        out["llm_calls_per_query"] = out.pop("calls_per_query", 0.0)
        out["truncated_passages_per_query"] = out.pop("truncated_passages_per_query", 0.0)
        return {**out, "parse_failures": int(failures), "parse_failure_rate": round(failures / max(1, calls), 4),
                "repaired_answers": int(sum(s["repaired"] for s in stats))}

    def describe(self) -> dict[str, Any]:
        fusion = self.fusion.to_dict() if self.fusion is not None else None
        return {"kind": self.kind, "depth": self.depth, "fusion": fusion, "llm_off": self.off, **self.ranker.config()}


def _ranked(top: list[Hit], scores: list[float], rest: list[Hit]) -> list[Hit]:
    """``top`` by descending score (ties keep their order), then ``rest`` below in its order, every score
    below the lowest of ``top`` (scores stay ordered across the two parts)."""
    order = sorted(range(len(top)), key=lambda i: (-scores[i], i))
    ranked = [replace(top[i], rank=r, score=float(scores[i])) for r, i in enumerate(order, 1)]
    floor = min(scores, default=0.0)
    return ranked + [replace(h, rank=len(ranked) + r, score=floor - float(r)) for r, h in enumerate(rest, 1)]
