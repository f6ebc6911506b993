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
from retrieval.stages.llm import LLMParams
from tests.conftest import DOCS, QRELS, QUERIES, write_dataset, write_tiny_llm
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
    lists, used, checks = build_lists(data, None, [], depth=4, pool=6, samples=3, folds=3, fold=0)
    assert checks is None and used["validation_queries"] == []
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
    lists, used, _ = build_lists(data, None, [], depth=4, pool=4, samples=1)
    lists = lists[:1]  # learn one list by heart
    trainer = ListwiseTrainer(str(tiny_llm), steps=40, accumulation=1, learning_rate=2e-2, lora_rank=8, bf16=False)
    report = trainer.train(lists * 4, progress=False)
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    assert report["steps"] == 40 and 0 < report["trainable"] < report["parameters"]
    assert losses[-1] < 0.5 * losses[0]
    trainer.save(tmp_path / "ranker")
    manifest = json.loads((tmp_path / "ranker" / "manifest.json").read_text())
    assert manifest["kind"] == "ranker-adapter" and manifest["parameters"]["loss"] == "importance"
    tuned = ListwiseRanker(CausalLM(str(tiny_llm), adapter=tmp_path / "ranker", precision="fp32"), mode="generate")
    order, stats = tuned.rank(lists[0].query, lists[0].passages)
    assert stats.parse_failures == 0 and order == lists[0].order  # the memorised list comes back
    other = write_tiny_llm(tmp_path / "other", seed=1, hidden=48)
    with pytest.raises(SiftrankError, match="belongs to base model"):
        CausalLM(str(other), adapter=tmp_path / "ranker")
    with pytest.raises(SiftrankError, match="exists"):
        trainer.save(tmp_path / "ranker")


def test_augmented_lists_vary_in_length_and_order(tmp_path: Path) -> None:
    data = Dataset.load(write_dataset(tmp_path / "d"))
    every_doc = {q: {d: float(-i) for i, d in enumerate(DOCS)} for q in data.queries}  # 6 candidates each
    lists, _, _ = build_lists(data, every_doc, [], depth=6, pool=6, samples=30)
    assert {len(e.passages) for e in lists} == {5, 6}  # 5..depth
    assert len({tuple(e.order) for e in lists if len(e.passages) == 6}) > 1  # shuffled, not one copied order


def test_early_stopping_needs_patience_evaluations_without_a_gain() -> None:
    from training.validation import RankerValidation

    checks = RankerValidation({}, {}, {}, {}, {}, every=1, patience=2)
    checks.history = [{"step": 0, "val_ndcg@10": 0.5}, {"step": 1, "val_ndcg@10": 0.6}, {"step": 2, "val_ndcg@10": 0.55}]
    checks.best_step = 1
    assert not checks.exhausted()
    checks.history.append({"step": 3, "val_ndcg@10": 0.6})  # a tie is no gain
    assert checks.exhausted()


def test_validation_keeps_the_best_weights_and_the_artifact_carries_the_fusion(tiny_llm: Path, tmp_path: Path) -> None:
    more = {f"{q}b": text for q, text in QUERIES.items()}
    data = Dataset.load(write_dataset(tmp_path / "d", DOCS, {**QUERIES, **more}, QRELS + [(f"{q}b", d, g) for q, d, g in QRELS]))
    lists, used, checks = build_lists(data, None, [], depth=4, pool=6, samples=2, validation=3, every=2, patience=2)
    assert checks is not None and len(checks.queries) == 3 and set(used["validation_queries"]) == set(checks.queries)
    assert used["train_queries"] == 3  # the other three: never in a training list
    trainer = ListwiseTrainer(str(tiny_llm), steps=8, accumulation=1, learning_rate=5e-2, lora_rank=4, bf16=False)
    report = trainer.train(lists, checks, progress=False)
    assert checks.history[0]["step"] == 0 and report["best_step"] == checks.best_step and report["seconds_per_step"] > 0
    assert report["validation_queries"] == 3 and "cpu" in report
    trainer.llm.use(trainer.model.eval())
    rescored = checks.score(trainer.llm, trainer.ranker.max_passage_tokens)
    assert all(rescored[q] == pytest.approx(checks.best_scores[q], abs=1e-4) for q in checks.queries)  # best weights back
    choice = trainer.choose_fusion()
    trainer.save(tmp_path / "ranker")
    stored = json.loads((tmp_path / "ranker" / "manifest.json").read_text())["parameters"]["fusion"]
    assert stored == choice.fusion.to_dict()
    params = LLMParams(model=str(tiny_llm), adapter=tmp_path / "ranker")
    assert params.score_fusion() == choice.fusion
    assert LLMParams(model=str(tiny_llm), adapter=tmp_path / "ranker", fusion="none").score_fusion() is None
    other = "rrf" if choice.fusion.method == "interpolate" else "interpolate"
    with pytest.raises(SiftrankError, match="needs fusion_weight"):
        LLMParams(model=str(tiny_llm), adapter=tmp_path / "ranker", fusion=other).score_fusion()
    assert LLMParams(model=str(tiny_llm), fusion=other, fusion_weight=0.3).score_fusion().weight == 0.3  # type: ignore[union-attr]
