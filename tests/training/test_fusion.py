"""Choosing the fusion weight by query-level cross-validation: a useful ranker gets weight, a harmful one none."""

from __future__ import annotations

import random

from training.fusion import choose_fusion


def lists(seed: int, ranker_quality: float) -> tuple[dict, dict, dict]:
    """30 queries of 10 candidates, 2 relevant each; the first stage ranks them 3rd and 6th, the ranker's
    score is ``ranker_quality`` times relevance plus noise (negative: it prefers the irrelevant ones)."""
    rng = random.Random(seed)
    first, ranker, qrels = {}, {}, {}
    for q in range(30):
        qid = f"q{q}"
        docs = [f"{qid}-d{i}" for i in range(10)]
        qrels[qid] = {docs[2]: 1, docs[5]: 1}
        first[qid] = {d: 10.0 - i for i, d in enumerate(docs)}
        ranker[qid] = {d: ranker_quality * qrels[qid].get(d, 0) + rng.random() for d in docs}
    return first, ranker, qrels


def test_an_informative_ranker_gets_weight_and_beats_the_first_stage_on_held_out_folds() -> None:
    choice = choose_fusion(*lists(0, ranker_quality=2.0))
    assert choice.fusion.weight > 0 and choice.cv_fused > choice.cv_first and choice.cv_p < 0.05
    assert len(choice.folds) == 5 and sum(len(f["queries"]) for f in choice.folds) == 30
    assert set(choice.grid) == {"interpolate", "rrf"} and "0.0" in choice.grid["rrf"]


def test_a_ranker_that_prefers_irrelevant_passages_is_switched_off() -> None:
    choice = choose_fusion(*lists(1, ranker_quality=-2.0))
    assert choice.fusion.weight == 0.0 and choice.cv_fused <= choice.cv_first
    assert choice.cv_ranker < choice.cv_first


def test_a_gain_that_is_not_significant_on_the_validation_queries_keeps_the_ranker_off() -> None:
    first, ranker, qrels = lists(2, ranker_quality=2.0)
    helpful = choose_fusion(first, ranker, qrels)
    strict = choose_fusion(first, ranker, qrels, alpha=helpful.cv_p / 2)  # the same gain, a stricter test
    assert helpful.fusion.weight > 0 and strict.fusion.weight == 0.0 and strict.cv_fused == helpful.cv_fused
