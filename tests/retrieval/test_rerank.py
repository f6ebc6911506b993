"""The listwise ranker on a tiny random Llama: prompts, budgets, parsing, the three modes, adapters."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from retrieval.causal_lm import CausalLM
from retrieval.docstore import DocStore
from retrieval.errors import SiftrankError
from retrieval.fusion import ScoreFusion
from retrieval.hits import Hit
from retrieval.rerank import ListwiseRanker, importance_weight, parse_order
from retrieval.stages.llm import LLMReranker

PASSAGES = ["Plants make glucose from sunlight in chloroplasts.", "A volcano erupts when magma rises.",
            "Knead flour, water and yeast, then bake the bread.", "The Moon causes the ocean tides."] * 3


@pytest.fixture(scope="module")
def llm(tiny_llm: Path) -> CausalLM:
    return CausalLM(str(tiny_llm), precision="fp32")


@pytest.mark.parametrize("text, order, failed, repaired", [
    ("[2] > [1] > [3]", [1, 0, 2], False, False),
    ("[2] > [2] > [9] > [1]", [1, 0, 2], False, True),   # duplicate and out of range dropped, 3 appended
    ("3 then 1", [2, 0, 1], False, True),                  # bare digits are identifiers too
    ("I cannot rank these.", [0, 1, 2], True, True),       # no identifier at all: input order, a failure
    ("[0] > [4]", [0, 1, 2], True, True),
])
def test_parse_order(text: str, order: list[int], failed: bool, repaired: bool) -> None:
    assert parse_order(text, 3) == (order, failed, repaired)


def test_importance_weights_follow_the_paper() -> None:
    assert importance_weight(1) == pytest.approx(2.0)
    assert importance_weight(10) == pytest.approx(1.289, abs=1e-3)
    assert importance_weight(100) == pytest.approx(1.150, abs=1e-3)


def test_prompt_numbers_every_passage_and_fits_the_context(llm: CausalLM) -> None:
    ranker = ListwiseRanker(llm, max_passage_tokens=100, context_size=600)
    long = ["word " * 400] + PASSAGES[:7]  # one candidate longer than the whole context
    prompt = ranker.prompt("why do volcanoes erupt", long)
    text = llm.tokenizer.decode(prompt.ids)
    assert all(f"[{i}]" in text for i in range(1, 9)) and "[9]" not in text
    assert "why do volcanoes erupt" in text and text.rstrip().endswith("assistant")
    assert len(prompt.ids) + ranker.answer_room(8) <= 600
    assert prompt.truncated >= 1 and prompt.passage_tokens < 100


def test_too_many_candidates_for_the_context_is_a_clear_error(llm: CausalLM) -> None:
    ranker = ListwiseRanker(llm, context_size=400)
    with pytest.raises(SiftrankError, match="do not fit the ranker's 400-token context"):
        ranker.prompt("q", PASSAGES * 4)


def test_empty_and_single_candidate_lists_need_no_model_call(llm: CausalLM) -> None:
    ranker = ListwiseRanker(llm)
    assert ranker.rank("q", []) == ([], ranker.rank("q", [])[1])
    order, stats = ranker.rank("q", ["only one"])
    assert order == [0] and stats.calls == 0 and stats.input_tokens == 0


def test_first_token_scores_equal_the_identifier_log_probabilities(llm: CausalLM) -> None:
    """The trie over digit tokens must give exactly log p("[i]" | prompt) computed by brute force."""
    import torch

    ranker = ListwiseRanker(llm, mode="first-token")
    query = "how do plants make food"
    scores = ranker.first_token_scores(query, PASSAGES)
    prompt = ranker.prompt(query, PASSAGES).ids
    model = llm.model
    for i in (0, 1, 9, 11):  # one-digit and two-digit identifiers
        answer = ranker._ids(f"[{i + 1}]")
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + answer])).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
        # the "[" token is shared by every identifier; the scores start after it
        expected = sum(float(logp[t, tok]) for t, tok in enumerate(answer) if t > 0)
        assert scores[i] == pytest.approx(expected, abs=1e-4)
    order, stats = ranker.rank(query, PASSAGES)
    assert order == sorted(range(len(PASSAGES)), key=lambda i: (-scores[i], i))
    assert stats.calls == 1 and stats.output_tokens == 0


def test_the_shared_prompt_prefix_is_reused_and_changes_no_score(llm: CausalLM) -> None:
    from retrieval.rerank import MIN_SHARED_TOKENS

    ranker = ListwiseRanker(llm, mode="first-token")
    ranker.first_token_scores("why do volcanoes erupt", PASSAGES)
    kept = ranker._prefix
    assert kept is not None and len(kept[1]) == kept[2].get_seq_length()  # the prompt's cache, tree step cut off
    full = ranker.prompt("how do plants make food", PASSAGES).ids + ranker._ids("[")
    shared = next(i for i, (a, b) in enumerate(zip(kept[1], full)) if a != b)
    assert shared >= MIN_SHARED_TOKENS  # the chat template and the instruction before the query
    reused = ranker.first_token_scores("how do plants make food", PASSAGES)
    fresh = ListwiseRanker(llm, mode="first-token")
    fresh.reuse_prefix = False
    assert reused == pytest.approx(fresh.first_token_scores("how do plants make food", PASSAGES), abs=1e-4)
    assert fresh._prefix is None
    # the same prompt again: everything but its last token comes from the kept cache
    assert ranker.first_token_scores("how do plants make food", PASSAGES) == pytest.approx(reused, abs=1e-4)


def test_generate_returns_a_permutation_and_counts_its_cost(llm: CausalLM) -> None:
    ranker = ListwiseRanker(llm, mode="generate")
    order, stats = ranker.rank("why do volcanoes erupt", PASSAGES[:5])
    assert sorted(order) == list(range(5))
    assert stats.calls == 1 and stats.input_tokens > 0 and 0 < stats.output_tokens <= ranker.answer_room(5)
    assert stats.parse_failures in (0, 1) and stats.seconds > 0


def test_sliding_window_walks_from_the_bottom_up(llm: CausalLM) -> None:
    ranker = ListwiseRanker(llm, mode="sliding-window", window=4, stride=2)
    order, stats = ranker.rank("why do volcanoes erupt", PASSAGES[:10])
    assert sorted(order) == list(range(10))
    assert stats.calls == 4  # windows start at 6, 4, 2, 0


def store_of(passages: list[str]) -> DocStore:
    return DocStore(pl.DataFrame({"id": [f"d{i}" for i in range(len(passages))], "text": passages}), "test")


@pytest.mark.parametrize("mode", ["first-token", "generate"])
def test_scores_agree_with_the_order(llm: CausalLM, mode: str) -> None:
    ranker = ListwiseRanker(llm, mode=mode)  # type: ignore[arg-type]
    scores, _ = ranker.score("why do volcanoes erupt", PASSAGES[:5])
    order, _ = ranker.rank("why do volcanoes erupt", PASSAGES[:5])
    assert order == sorted(range(5), key=lambda i: (-scores[i], i))
    if mode == "generate":
        assert sorted(scores) == [1.0, 2.0, 3.0, 4.0, 5.0]  # n - position


def test_the_stage_shows_the_llm_order_and_the_fused_order(llm: CausalLM) -> None:
    hits = [Hit(id=f"d{i}", rank=i + 1, score=1.0 - i / 10, cosine=0.5) for i in range(6)]
    ranker = ListwiseRanker(llm, mode="first-token")
    own_only = LLMReranker(ranker, store_of(PASSAGES[:6]), depth=4)
    assert own_only.stage_names == ["rerank"]
    (ranked,), stats = own_only.rerank_stages("q", hits)
    assert stats["calls"] == 1 and [h.rank for h in ranked] == list(range(1, 7))
    assert {h.id for h in ranked[:4]} == {"d0", "d1", "d2", "d3"} and [h.id for h in ranked[4:]] == ["d4", "d5"]
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)  # the tail stays below
    assert all(h.cosine == 0.5 for h in ranked)
    scores = {h.id: h.score for h in ranked[:4]}
    for weight, expected in ((1.0, [h.id for h in ranked]), (1e-9, [h.id for h in hits])):
        fused_stage = LLMReranker(ranker, store_of(PASSAGES[:6]), depth=4, fusion=ScoreFusion("interpolate", weight))
        assert fused_stage.stage_names == ["rerank", "fused"]
        (own, fused), _ = fused_stage.rerank_stages("q", hits)
        assert {h.id: h.score for h in own[:4]} == pytest.approx(scores)
        assert [h.id for h in fused] == expected  # all ranker, or (almost) all first stage
    off = LLMReranker(ranker, store_of(PASSAGES[:6]), depth=4, fusion=ScoreFusion("rrf", 0.0))
    assert off.stage_names == ["fused"] and off.describe()["llm_off"]
    (passed,), stats = off.rerank_stages("q", hits)
    assert passed == hits and stats["calls"] == 0  # weight 0: no model call


@pytest.mark.parametrize("kwargs, message", [({"mode": "listwise"}, "rerank mode"), ({"window": 4, "stride": 4}, "stride"),
                                             ({"max_passage_tokens": 2}, "max_passage_tokens")])
def test_bad_ranker_settings(llm: CausalLM, kwargs: dict, message: str) -> None:
    with pytest.raises(SiftrankError, match=message):
        ListwiseRanker(llm, **kwargs)


def test_model_paths_that_are_not_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SiftrankError, match="not a local Hugging Face folder"):
        CausalLM(str(tmp_path))
    with pytest.raises(SiftrankError, match="unknown bundled ranker"):
        CausalLM("bundled:Llama-70B")


def test_close_drops_the_model_and_returns_its_memory(tiny_llm: Path) -> None:
    import weakref

    llm = CausalLM(str(tiny_llm), precision="fp32")
    ref = weakref.ref(llm.model)
    llm.close()
    assert ref() is None and "model" not in llm.__dict__
    assert llm.model is not None  # loads again on the next use


def test_auto_precision_on_a_cpu_is_measured_once(tiny_llm: Path) -> None:
    from retrieval.probe import SpeedProbe

    llm = CausalLM(str(tiny_llm), device="cpu")
    assert llm.precision in ("fp32", "bf16")
    stored = SpeedProbe("llm-precision")._read()
    assert any(llm.fingerprint in key for key in stored)
    assert CausalLM(str(tiny_llm), device="cpu").precision == llm.precision  # from the cache


def test_int8_precision_quantises_the_decoder_and_keeps_the_head(tiny_llm: Path) -> None:
    import math

    import torch

    quantised = CausalLM(str(tiny_llm), precision="int8")
    assert quantised.precision == "int8"
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    modules = list(quantised.model.base_model.modules())
    assert any(isinstance(m, DynamicInt8Linear) for m in modules) and not any(isinstance(m, torch.nn.Linear) for m in modules)
    assert isinstance(quantised.model.lm_head, torch.nn.Linear)  # log-probabilities at full resolution
    scores = ListwiseRanker(quantised, mode="first-token").first_token_scores("why do volcanoes erupt", PASSAGES[:5])
    exact = ListwiseRanker(CausalLM(str(tiny_llm), precision="fp32"), mode="first-token").first_token_scores(
        "why do volcanoes erupt", PASSAGES[:5])
    assert all(math.isfinite(s) for s in scores) and max(abs(a - b) for a, b in zip(scores, exact)) < 0.5
