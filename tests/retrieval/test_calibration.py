from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.calibration import (
    FAMILIES,
    INPUTS,
    Calibrator,
    baseline_scores,
    check_threshold,
    threshold_for_precision,
    threshold_for_recall,
)
from retrieval.errors import SiftrankError

ENCODER = {"model": "m", "fingerprint": "f1", "dim": 8}


def _random_calibrator(family: str, seed: int = 0, input: str = "cosine") -> Calibrator:
    calibrator = Calibrator(family, embedding_dim=8, use_embedding=True, use_stats=True, hidden=4, encoder=ENCODER,
                            input=input)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in calibrator.net.parameters():
            parameter.normal_(0, 1.0)  # far from the zero-initialised start: any map the training could reach
    return calibrator


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_increasing_in_cosine_so_rankings_never_change(family: str, input: str) -> None:
    rng = np.random.default_rng(1)
    calibrator = _random_calibrator(family, input=input)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    cosines = [np.sort(rng.uniform(-0.5, 1.0, size=30))[::-1].astype(np.float32) for _ in range(20)]
    for scores in calibrator.relevance(queries, cosines):
        assert np.all(np.diff(scores) <= 0)  # cosines descend, so relevance must not rise
        assert np.all((scores >= 0) & (scores <= 1))
    params = calibrator.map_parameters(queries, cosines)
    assert np.all(params[:, 0] > 0) and np.all(params[:, 2] > 0)  # slope and exponent positive


def test_query_dependence_changes_scores_across_queries() -> None:
    calibrator = _random_calibrator("power")
    same = np.array([0.5, 0.4, 0.3], dtype=np.float32)
    a, b = calibrator.relevance(np.eye(8, dtype=np.float32)[:2], [same, same])
    assert not np.allclose(a, b)


def test_thresholds_for_recall_and_precision() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 0, 1, 0, 1, 0], dtype=np.float32)
    assert threshold_for_recall(scores, labels, 0.5) == 0.7  # 2 of 3 positives (ceil of 1.5)
    assert threshold_for_recall(scores, labels, 1.0) == 0.5
    assert threshold_for_precision(scores, labels, 0.6) == 0.5  # 3/5 at 0.5; lowest threshold with >= 0.6
    assert threshold_for_precision(scores, labels, 1.0) == 0.9
    with pytest.raises(SiftrankError, match="no relevant pairs"):
        threshold_for_recall(scores, np.zeros(6), 0.95)


def test_baselines() -> None:
    cosines = [np.array([0.8, 0.6, 0.2]), np.array([0.5, 0.5])]
    top_k = baseline_scores("top_k", {}, cosines)
    assert [int((s >= 1 / 2).sum()) for s in top_k] == [2, 2]  # threshold 1/k keeps exactly the top k
    minmax = baseline_scores("minmax", {}, cosines)
    assert np.allclose(minmax[0], [1.0, 0.6666667, 0.0]) and np.allclose(minmax[1], [1.0, 1.0])
    platt = baseline_scores("platt", {"a": 10.0, "b": -5.0}, cosines)
    assert np.isclose(platt[0][0], 1 / (1 + np.exp(-3.0)))
    zscore = baseline_scores("zscore", {}, cosines)
    assert np.allclose(zscore[0], (cosines[0] - cosines[0].mean()) / cosines[0].std()) and np.allclose(zscore[1], 0)
    with pytest.raises(SiftrankError, match="calibrator input must be one of cosine, minmax"):
        Calibrator("power", input="log")
    with pytest.raises(SiftrankError, match="unknown baseline"):
        baseline_scores("oracle", {}, cosines)


def test_artifact_round_trip_and_refusals(tmp_path: Path) -> None:
    calibrator = _random_calibrator("sqrt")
    calibrator.threshold = 0.3
    calibrator.extra = {"baselines": {"raw_cosine": {"threshold": 0.4}}}
    calibrator.save(tmp_path / "cal")
    loaded = Calibrator.load(tmp_path / "cal")
    queries, cosines = np.ones((1, 8), np.float32), [np.array([0.7, 0.2], np.float32)]
    assert np.allclose(loaded.relevance(queries, cosines)[0], calibrator.relevance(queries, cosines)[0])
    assert loaded.threshold == 0.3 and loaded.extra["baselines"]["raw_cosine"]["threshold"] == 0.4
    loaded.check_encoder(ENCODER)
    with pytest.raises(SiftrankError, match="trained for encoder 'm'.*retrain"):
        loaded.check_encoder({"model": "other", "fingerprint": "f2", "dim": 8})
    with pytest.raises(SiftrankError, match="NaN"):
        loaded.relevance(np.full((1, 8), np.nan, np.float32), cosines)
    with pytest.raises(SiftrankError, match="NaN"):
        loaded.relevance(queries, [np.array([np.nan], np.float32)])
    with pytest.raises(SiftrankError, match="within \\[0, 1\\]"):
        check_threshold(1.5)
    with pytest.raises(SiftrankError, match="within \\[0, 1\\]"):
        Calibrator(threshold=-0.1)
    with pytest.raises(SiftrankError, match="family must be one of"):
        Calibrator("cubic")
    with pytest.raises(SiftrankError, match="calibrator directory not found"):
        Calibrator.load(tmp_path / "missing")
