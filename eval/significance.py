"""Paired significance of a difference between two systems over the same queries.

Both tests take per-query scores: Student's paired t-test (scipy) and a two-sided paired randomisation
test (random sign flips of the per-query differences, Smucker et al. 2007's recommendation for IR).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def paired_test(a: Mapping[str, float], b: Mapping[str, float], permutations: int = 10_000,
                seed: int = 0) -> dict[str, float]:
    """``b - a`` over the queries both score: mean delta, its std, the t-test and randomisation p-values."""
    from scipy.stats import ttest_rel

    qids = sorted(set(a) & set(b))
    if not qids:
        raise ValueError("no query is scored by both systems")
    x = np.array([a[q] for q in qids], dtype=np.float64)
    y = np.array([b[q] for q in qids], dtype=np.float64)
    diff = y - x
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(permutations, diff.size))
    randomised = float((np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12).mean())
    t_p = float(ttest_rel(y, x).pvalue) if np.any(diff != 0) else 1.0
    return {"delta": float(diff.mean()), "delta_std": float(diff.std(ddof=1)) if diff.size > 1 else 0.0,
            "t_test_p": t_p, "randomisation_p": randomised, "queries": len(qids)}
