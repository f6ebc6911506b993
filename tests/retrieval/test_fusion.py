"""Score fusion: weighted RRF and min-max interpolation, and the ranker fusion's edge cases."""

from __future__ import annotations

import pytest

from retrieval.errors import SiftrankError
from retrieval.fusion import ScoreFusion, fuse_scores, minmax

FIRST = {"a": 3.0, "b": 2.0, "c": 1.0}
RANKER = {"a": -5.0, "b": -1.0, "c": -3.0}  # log-probabilities: b, c, a


def test_rrf_sums_weighted_reciprocal_ranks_and_missing_candidates_get_nothing() -> None:
    fused = fuse_scores([(FIRST, 1.0), ({"b": 1.0, "d": 0.5}, 0.5)], "rrf", k=60)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 0.5 / 61)
    assert fused["d"] == pytest.approx(0.5 / 62) and fused["c"] == pytest.approx(1 / 63)


def test_interpolation_uses_per_query_minmax() -> None:
    assert list(minmax([2.0, 4.0, 3.0])) == [0.0, 1.0, 0.5]
    assert list(minmax([7.0, 7.0])) == [1.0, 1.0]  # a constant list carries no order
    fused = fuse_scores([(FIRST, 0.5), (RANKER, 0.5)], "interpolate")
    assert fused == pytest.approx({"a": 0.5, "b": 0.75, "c": 0.25})


@pytest.mark.parametrize("method", ["interpolate", "rrf"])
def test_the_weight_moves_the_order_from_the_first_stage_to_the_ranker(method: str) -> None:
    assert ScoreFusion(method, 0.0).order(FIRST, RANKER) == ["a", "b", "c"]  # type: ignore[arg-type]
    assert ScoreFusion(method, 1.0).order(FIRST, RANKER) == ["b", "c", "a"]  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, message", [({"method": "borda"}, "fusion must be one of"),
                                             ({"weight": 1.5}, "between 0 and 1"), ({"k": 0}, "at least 1")])
def test_bad_fusion_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(SiftrankError, match=message):
        ScoreFusion(**kwargs)
