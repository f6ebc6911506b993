"""LLM full-ranker stage: the top ``depth`` candidates in one prompt (or windows), re-ordered by the LLM;
the rest follow in their previous order, below them."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from retrieval.docstore import DocStore
from retrieval.hits import Hit
from retrieval.rerank import ListwiseRanker
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def resolve(self, base: Path) -> LLMParams:
        if self.adapter is None or self.adapter.is_absolute():
            return self
        return self.model_copy(update={"adapter": base / self.adapter})

    def build(self) -> ListwiseRanker:
        """The :class:`~retrieval.rerank.ListwiseRanker` these parameters describe (weights load lazily)."""
        from retrieval.causal_lm import CausalLM

        llm = CausalLM(self.model, adapter=self.adapter, device=self.device, precision=self.precision)
        return ListwiseRanker(llm, mode=self.mode, window=self.window, stride=self.stride,
                              max_passage_tokens=self.max_passage_tokens)


class LLMReranker(Reranker):
    """Listwise LLM re-ranking of the top ``depth`` hits, passages read from the document store."""

    kind = "llm"
    Params = LLMParams

    def __init__(self, ranker: ListwiseRanker, store: DocStore, depth: int = 20) -> None:
        self.ranker, self.store, self.depth = ranker, store, depth

    @classmethod
    def from_config(cls, params: LLMParams, context: StageContext) -> LLMReranker:
        return cls(params.build(), context.store, params.depth)

    def rerank(self, query: str, hits: list[Hit]) -> tuple[list[Hit], dict[str, float]]:
        top, rest = hits[:self.depth], hits[self.depth:]
        ranked, stats = self.ranker.rerank(query, top, self.store.texts([h.id for h in top]))
        # scores stay ordered across the two parts: the reranked block above everything after it
        tail = [replace(h, rank=len(ranked) + r, score=-float(r)) for r, h in enumerate(rest, 1)]
        return ranked + tail, {k: float(v) for k, v in asdict(stats).items()}

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
        return {"kind": self.kind, "depth": self.depth, **self.ranker.config()}
