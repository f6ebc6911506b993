from __future__ import annotations

import numpy as np
import pytest

from retrieval.measures import paired_test


def test_a_consistent_gain_is_significant_and_noise_is_not() -> None:
    rng = np.random.default_rng(1)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0.2, 0.8, 60))}
    better = {q: v + 0.05 + rng.normal(0, 0.01) for q, v in base.items()}
    result = paired_test(base, better)
    assert result["delta"] == pytest.approx(0.05, abs=0.01) and result["queries"] == 60
    assert result["t_test_p"] < 1e-6 and result["randomisation_p"] < 1e-3
    noise = {q: v + rng.normal(0, 0.05) for q, v in base.items()}
    assert paired_test(base, noise)["randomisation_p"] > 0.05
    assert paired_test(base, base) == {"delta": 0.0, "delta_std": 0.0, "t_test_p": 1.0, "randomisation_p": 1.0, "queries": 60}
    with pytest.raises(ValueError, match="no query"):
        paired_test(base, {"other": 1.0})
