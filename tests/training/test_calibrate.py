from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from retrieval.calibration import Calibrator
from retrieval.errors import SiftrankError
from training.calibrate import CalibratorTrainer, CandidateSet, fit_intercept


def synthetic(n_queries: int = 160, k: int = 40, shift: float = 0.3, seed: int = 0) -> CandidateSet:
    """Each query has its own cosine level (as real queries do); relevant candidates sit above it.
    Raw cosine pooled over queries mixes the levels; a query-aware map can undo them."""
    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        level = rng.uniform(0.1, 0.6) if shift else 0.35
        y = (rng.random(k) < 0.1).astype(np.float32)
        return y, level + 0.12 * y + rng.normal(0, 0.04, k)

    return candidate_set(draw, n_queries, k, seed)


def candidate_set(draw, n_queries: int, k: int, seed: int) -> CandidateSet:
    """``n_queries`` queries of ``k`` candidates, each query's labels and cosines from ``draw(rng)``, ranked by cosine."""
    rng = np.random.default_rng(seed)
    vectors, cosines, labels, ids = [], [], [], []
    for q in range(n_queries):
        y, c = draw(rng)
        order = np.argsort(-c)
        cosines.append(c[order].astype(np.float32))
        labels.append(y[order])
        ids.append([f"{q}-{i}" for i in order])
        vectors.append(rng.normal(size=8))
    v = np.array(vectors, dtype=np.float32)
    return CandidateSet([f"q{i}" for i in range(n_queries)], v / np.linalg.norm(v, axis=1, keepdims=True), cosines, ids, labels, k)


def _pooled_ap(scores, labels) -> float:
    return float(average_precision_score(np.concatenate(labels), np.concatenate(scores)))


FAST = {"hidden_grid": (0,), "decay_grid": (1e-3,), "max_epochs": 300}


def _recall(calibrator, test: CandidateSet) -> float:
    kept = [(s >= calibrator.threshold) for s in calibrator.relevance(test.query_vectors, test.cosines)]
    return sum(float(y[m].sum()) for y, m in zip(test.labels, kept)) / test.positives


def test_stats_features_learn_query_levels_and_beat_raw_cosine() -> None:
    train, test = synthetic(seed=0), synthetic(seed=1)
    trainer = CalibratorTrainer(family="linear", use_embedding=False, use_stats=True, inputs=("cosine",), **FAST)
    calibrator = trainer.fit(train)
    assert calibrator.extra["chosen"]["features"] == "stats"
    adapter = _pooled_ap(calibrator.relevance(test.query_vectors, test.cosines), test.labels)
    raw = _pooled_ap(test.cosines, test.labels)
    assert adapter > raw + 0.1
    assert 0.9 < _recall(calibrator, test) <= 1.0  # the cross-fitted threshold for 95% recall transfers
    assert set(calibrator.extra["baselines"]) == {"raw_cosine", "platt", "minmax", "zscore", "top_k"}


def test_a_per_query_input_undoes_query_levels_without_learned_query_parameters() -> None:
    train, test = synthetic(seed=0), synthetic(seed=1)
    calibrator = CalibratorTrainer(family="power", use_embedding=False, use_stats=False, **FAST).fit(train)
    chosen = calibrator.extra["chosen"]
    assert chosen["features"] == "global" and chosen["input"] in ("minmax", "zscore", "gap", "rank", "joint")
    assert calibrator.feature_dim == 0  # no learned query part, yet the map differs per query
    by_input = {r["input"]: r["cv_pr_auc"] for r in calibrator.extra["selection"] if r["features"] == "global"}
    assert by_input[chosen["input"]] > by_input["cosine"] + 0.1
    adapter = _pooled_ap(calibrator.relevance(test.query_vectors, test.cosines), test.labels)
    assert adapter > _pooled_ap(test.cosines, test.labels) + 0.1
    assert abs(_recall(calibrator, test) - 0.95) < 0.05


def test_without_query_signal_the_choice_shrinks_to_the_global_map() -> None:
    train = synthetic(n_queries=40, shift=0.0, seed=2)  # every query alike: a query part can only overfit
    calibrator = CalibratorTrainer(family="power", **FAST).fit(train)
    assert calibrator.extra["chosen"]["features"] == "global"
    assert calibrator.feature_dim == 0


def test_intercept_correction_restores_the_base_rate() -> None:
    data = synthetic(seed=3)
    calibrator = CalibratorTrainer(family="linear", use_embedding=False, use_stats=False, balance=True, **FAST).fit(data)
    fit_intercept(calibrator, data)
    predicted = np.concatenate(calibrator.relevance(data.query_vectors, data.cosines)).mean()
    assert abs(predicted - np.concatenate(data.labels).mean()) < 0.01  # balanced training would give ~0.5


def test_bad_training_sets() -> None:
    data = synthetic(n_queries=10)
    data.labels = [np.zeros_like(y) for y in data.labels]
    with pytest.raises(SiftrankError, match="no relevant pairs"):
        CalibratorTrainer(**FAST).fit(data)
    with pytest.raises(SiftrankError, match="exactly one of"):
        CalibratorTrainer(target_recall=0.9, target_precision=0.5, **FAST).fit(synthetic(n_queries=10))


def test_min_max_stays_unless_another_input_clearly_beats_it() -> None:
    # relevance set by the absolute cosine: half the queries have no relevant candidate, and min-max would
    # put their best (irrelevant) candidate at the top; raw cosine wins by far, and the test says so
    rng = np.random.default_rng(4)
    n, k = 120, 30
    cosines, labels = [], []
    for q in range(n):
        y = (rng.random(k) < 0.15).astype(np.float32) if q % 2 else np.zeros(k, dtype=np.float32)
        c = 0.3 + 0.3 * y + rng.normal(0, 0.03, k)
        order = np.argsort(-c)
        cosines.append(c[order].astype(np.float32))
        labels.append(y[order])
    vectors = np.eye(n, 8, dtype=np.float32) + 1e-3
    scale = CandidateSet([f"q{i}" for i in range(n)], vectors, cosines, [[f"{q}-{i}" for i in range(k)] for q in range(n)],
                         labels, k)
    calibrator = CalibratorTrainer(family="power", use_embedding=False, use_stats=False, **FAST).fit(scale)
    choice = calibrator.extra["input_choice"]
    assert choice["default"] == "minmax" and choice["chosen"] != "minmax" and choice["p_beats_default"][choice["chosen"]] < 0.05
    assert calibrator.extra["chosen"]["input"] == choice["chosen"]
    # a slightly higher out-of-fold PR-AUC is not evidence: min-max stays
    noise = [rng.normal(0, 1, k) for _ in range(n)]
    minmax = [y + e for y, e in zip(labels, noise)]
    cosine = [m + rng.normal(0, 0.05, k) for m in minmax]
    runs = {(name, "global", 0, 0.0): {"oof": oof} for name, oof in (("minmax", minmax), ("cosine", cosine))}
    trainer = CalibratorTrainer(inputs=("cosine", "minmax"))
    chosen, evidence = trainer.choose_input(runs, labels)
    assert chosen == "minmax" and evidence["p_beats_default"]["cosine"] > 0.05


def answered_and_unanswered(n_queries: int = 160, k: int = 40, seed: int = 0) -> CandidateSet:
    """Queries with two relevant candidates above a level of their own, and queries with none at a low level:
    per-query normalisation undoes the levels but crowns the unanswered queries' best; raw cosine tells
    those apart but mixes the levels. Both signals are needed."""
    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        answered = rng.random() < 0.6
        y = np.zeros(k, dtype=np.float32)
        if answered:
            y[rng.choice(k, 2, replace=False)] = 1
        return y, (rng.uniform(0.3, 0.6) if answered else rng.uniform(0.0, 0.2)) + 0.15 * y + rng.normal(0, 0.04, k)

    return candidate_set(draw, n_queries, k, seed)


def test_the_joint_input_mixes_raw_and_normalised_cosine_where_both_carry_signal(tmp_path: Path) -> None:
    calibrator = CalibratorTrainer(family="power", use_embedding=False, use_stats=False, **FAST).fit(answered_and_unanswered())
    by_input = {r["input"]: r["cv_pr_auc"] for r in calibrator.extra["selection"] if r["features"] == "global"}
    assert calibrator.extra["chosen"]["input"] == "joint"
    assert by_input["joint"] > max(v for k, v in by_input.items() if k != "joint") + 0.02
    weights = calibrator.extra["input_weights"]
    assert abs(sum(weights.values()) - 1) < 1e-3 and weights["cosine"] > 0.05 and weights["zscore"] > 0.05
    test = answered_and_unanswered(seed=1)
    calibrator.save(tmp_path / "cal")
    loaded = Calibrator.load(tmp_path / "cal")
    assert loaded.input_weights() == calibrator.input_weights()
    assert np.allclose(np.concatenate(loaded.relevance(test.query_vectors, test.cosines)),
                       np.concatenate(calibrator.relevance(test.query_vectors, test.cosines)))
