from __future__ import annotations

import numpy as np
import pytest

from retrieval.filter_measures import FilterReport, expected_calibration_error


def test_summary_by_hand() -> None:
    scores = [np.array([0.9, 0.6, 0.2]), np.array([0.7, 0.1])]
    labels = [np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0])]
    summary = FilterReport(scores, labels, threshold=0.5).summary()
    assert summary["filter_rate"] == pytest.approx(2 / 5)
    assert summary["kept_per_query"] == pytest.approx(1.5)
    assert summary["recall_at_threshold"] == pytest.approx(2 / 3)
    assert summary["precision_at_threshold"] == pytest.approx(2 / 3)
    # pooled order 0.9(+) 0.7(+) 0.6(-) 0.2(+) 0.1(-): AP = (1 + 1 + 3/4) / 3
    assert summary["PR-AUC"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert summary["P@R95"] == pytest.approx(0.75)
    assert FilterReport(scores, labels, 0.5, probabilistic=False).summary()["ECE"] is None
    # query bootstrap: the two queries keep 1/2 and 1/1 of their positives; resamples give 1/2, 2/3 or 1
    assert summary["recall_ci_low"] == pytest.approx(0.5) and summary["recall_ci_high"] == pytest.approx(1.0)


def test_recall_interval_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(0)

    def report(n: int) -> FilterReport:
        labels = [np.ones(4) for _ in range(n)]
        return FilterReport([rng.random(4) for _ in range(n)], labels, threshold=0.2)

    small, large = report(10).recall_interval(), report(400).recall_interval()
    assert large["recall_ci_low"] <= 0.8 <= large["recall_ci_high"]  # the true recall is 0.8
    assert (large["recall_ci_high"] - large["recall_ci_low"]) < (small["recall_ci_high"] - small["recall_ci_low"]) / 3


def test_ece_is_small_for_calibrated_scores_and_large_otherwise() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.01
    assert expected_calibration_error(np.clip(p + 0.3, 0, 1), y) > 0.2
