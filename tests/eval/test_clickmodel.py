from __future__ import annotations

import random

import numpy as np
import pytest

from eval.clickmodel import ClickModel
from retrieval.errors import SiftrankError


def test_click_rates_follow_position_bias_and_grade() -> None:
    model = ClickModel.preset("noisy")
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(1, 6)]
    judged = {"d1": 1, "d3": 1}  # binary qrels: grade 1 is the top grade
    counts = np.zeros(5)
    users = 40_000
    for _ in range(users):
        for rank in model.clicks(docs, judged, top_grade=1, rng=rng):
            counts[rank - 1] += 1
    expected = np.array([(1 / r) ** 2 * (0.8 if f"d{r}" in judged else 0.2) for r in range(1, 6)])
    assert np.allclose(counts / users, expected, atol=0.01)


def test_graded_attractiveness_interpolates_between_the_epsilons() -> None:
    model = ClickModel()
    assert model.attractiveness(0, 3) == pytest.approx(0.1)
    assert model.attractiveness(3, 3) == pytest.approx(1.0)
    assert model.attractiveness(1, 3) == pytest.approx(0.1 + 0.9 / 7)
    assert model.examination(4) == pytest.approx(0.25)


def test_bad_parameters_and_unknown_presets_are_refused() -> None:
    with pytest.raises(SiftrankError, match="eps_minus <= eps_plus"):
        ClickModel(eps_plus=0.1, eps_minus=0.5)
    with pytest.raises(SiftrankError, match="unknown click model 'shy'"):
        ClickModel.preset("shy")


def test_traffic_never_sends_a_test_query_and_its_two_parts_are_disjoint() -> None:
    from eval.clickmodel import traffic_split

    train = {f"t{i}": f"claim number {i}" for i in range(40)} | {"dup": "Claim  Number 7 ", "same": "a test claim"}
    test = {"x1": "A TEST claim", "x2": "something else"}
    learn, judge = traffic_split(train, test, share=0.25, seed=3)
    assert not set(learn) & set(judge)
    assert "same" not in learn + judge  # its text is a test query's (case and spacing ignored)
    assert len(learn) + len(judge) == 41 and len(judge) == 10
    assert traffic_split(train, test, 0.25, seed=3) == (learn, judge)  # seeded
    with pytest.raises(SiftrankError, match="too few"):
        traffic_split({"a": "a test claim"}, test, 0.5)
