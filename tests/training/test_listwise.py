"""Listwise labels, the importance-aware loss and LoRA training of the ranker (tiny random Llama)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from retrieval.causal_lm import CausalLM
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from retrieval.rerank import ListwiseRanker
from tests.conftest import write_tiny_llm
from training.listwise import (
    ListwiseExample,
    ListwiseTrainer,
    build_lists,
    collate,
    fuse_runs,
    label_order,
    lists_from_hard_negatives,
    training_qids,
    weighted_loss,
)


def test_labels_put_grades_first_then_the_teacher_order() -> None:
    judged = {"a": 1, "b": 3, "c": 0, "d": 1}
    teacher = {"a": 0.1, "d": 0.9, "e": 0.5, "c": 0.95}
    assert label_order(judged, ["a", "b", "c", "d", "e", "f"], teacher) == ["b", "d", "a", "c", "e", "f"]


def test_reciprocal_rank_fusion() -> None:
    fused = fuse_runs([{"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 5.0}}], k=60)
    assert fused["q"]["b"] == pytest.approx(1 / 62 + 1 / 61) and fused["q"]["a"] == pytest.approx(1 / 61)


@pytest.fixture(scope="module")
def trainer(tiny_llm: Path) -> ListwiseTrainer:
    return ListwiseTrainer(str(tiny_llm), steps=2, accumulation=1, bf16=False)


def test_answer_tokens_carry_the_paper_weights(trainer: ListwiseTrainer) -> None:
    example = ListwiseExample("q", ["alpha", "beta", "gamma"], [2, 0, 1])
    row = trainer.tokens(example)
    answer = trainer.llm.tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
    assert answer.startswith("[3] > [1] > [2]")
    weights = [w for w, lab in zip(row["weights"], row["labels"]) if lab != -100]
    assert weights[0] == pytest.approx(2.0) and 1.0 in weights and pytest.approx(1 + 1 / 2) in weights
    assert all(w == 0 for w, lab in zip(row["weights"], row["labels"]) if lab == -100)
    trainer.loss = "ce"
    try:
        assert {w for w, lab in zip(trainer.tokens(example)["weights"], row["labels"]) if lab != -100} == {1.0}
    finally:
        trainer.loss = "importance"


def test_weighted_loss_is_padding_invariant_and_matches_its_definition() -> None:
    import torch

    torch.manual_seed(0)
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "weights": [0, 0, 2.0, 1.0]},
            {"input_ids": [5, 9], "labels": [-100, 9], "weights": [0, 1.5]}]
    batch = collate(rows)
    assert batch["input_ids"].tolist()[1] == [0, 0, 5, 9] and batch["position_ids"].tolist()[1] == [0, 0, 0, 1]
    logits = torch.randn(2, 4, 12)
    loss = weighted_loss(logits, batch["labels"], batch["weights"])
    logp = torch.log_softmax(logits, -1)
    first = (2.0 * -logp[0, 1, 7] + 1.0 * -logp[0, 2, 8]) / 2
    second = 1.5 * -logp[1, 2, 9]
    assert float(loss) == pytest.approx(float((first + second) / 2), rel=1e-5)


def test_folds_are_disjoint_and_cover_the_judged_queries(tiny: Path) -> None:
    data = Dataset.load(tiny)
    held = []
    for fold in range(3):
        train, test = training_qids(data, folds=3, fold=fold)
        assert not set(train) & set(test) and set(train) | set(test) == {"q1", "q2", "q3"}
        held += test
    assert sorted(held) == ["q1", "q2", "q3"]
    with pytest.raises(SiftrankError, match="fold must be between 0 and 2"):
        training_qids(data, folds=3, fold=3)
    with pytest.raises(SiftrankError, match="folds must be between 2"):
        training_qids(data, folds=9)


def test_lists_cover_shown_candidates_with_the_label_order(tiny: Path, tmp_path: Path) -> None:
    data = Dataset.load(tiny)
    lists, used = build_lists(data, None, [], depth=4, pool=6, samples=3, folds=3, fold=0)
    assert len(lists) == 3 * used["train_queries"] and used["held_out"]
    held_queries = {data.queries[q] for q in used["held_out"]}
    assert not held_queries & {e.query for e in lists}
    for example in lists:
        assert sorted(example.order) == list(range(len(example.passages)))
    # a judged relevant passage that is shown always comes first in the target
    photosynthesis = [e for e in lists if e.query == data.queries["q1"] and any("Plants turn" in p for p in e.passages)]
    for example in photosynthesis:
        assert "Plants turn" in example.passages[example.order[0]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["a"]}\n')
    with pytest.raises(SiftrankError, match="bad.jsonl:1"):
        lists_from_hard_negatives(bad, 4, random.Random(0))


def test_training_lowers_the_loss_and_saves_an_adapter_bound_to_its_base(tiny: Path, tiny_llm: Path, tmp_path: Path) -> None:
    data = Dataset.load(tiny)
    lists, used = build_lists(data, None, [], depth=4, pool=4, samples=1)
    lists = lists[:1]  # learn one list by heart
    trainer = ListwiseTrainer(str(tiny_llm), steps=40, accumulation=1, learning_rate=2e-2, lora_rank=8, bf16=False)
    report = trainer.train(lists * 4, progress=False)
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    assert report["steps"] == 40 and 0 < report["trainable"] < report["parameters"]
    assert losses[-1] < 0.5 * losses[0]
    trainer.save(tmp_path / "ranker", report, data=used)
    manifest = json.loads((tmp_path / "ranker" / "manifest.json").read_text())
    assert manifest["kind"] == "ranker-adapter" and manifest["parameters"]["loss"] == "importance"
    tuned = ListwiseRanker(CausalLM(str(tiny_llm), adapter=tmp_path / "ranker", precision="fp32"), mode="generate")
    order, stats = tuned.rank(lists[0].query, lists[0].passages)
    assert stats.parse_failures == 0 and order == lists[0].order  # the memorised list comes back
    other = write_tiny_llm(tmp_path / "other", seed=1, hidden=48)
    with pytest.raises(SiftrankError, match="belongs to base model"):
        CausalLM(str(other), adapter=tmp_path / "ranker")
    with pytest.raises(SiftrankError, match="exists"):
        trainer.save(tmp_path / "ranker", report)
