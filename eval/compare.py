"""Compare TREC runs over the same queries: per-measure deltas against a baseline run, paired tests
(t-test and randomisation), Holm-corrected over the comparisons of each measure (in the spirit of
ranx's ``compare``). Definitions of the tests live in :mod:`retrieval.measures`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from retrieval.data import Run
from retrieval.measures import MetricSuite, paired_test


class RunComparison:
    """Every run against the first (the baseline), measure by measure."""

    def __init__(self, suite: MetricSuite, runs: Mapping[str, Run], permutations: int = 10_000) -> None:
        if len(runs) < 2:
            raise ValueError("a comparison needs at least two runs")
        self.suite, self.runs, self.permutations = suite, dict(runs), permutations

    def table(self) -> dict[str, Any]:
        """``{"baseline", "means": {run: {measure: v}}, "tests": {measure: {run: {delta, p..., holm...}}}}``."""
        from statsmodels.stats.multitest import multipletests

        names = list(self.runs)
        per_query = {name: self.suite.per_query(run) for name, run in self.runs.items()}
        means = {name: self.suite.evaluate(run) for name, run in self.runs.items()}
        tests: dict[str, dict[str, dict[str, float]]] = {}
        for measure in self.suite.names:
            rows = {other: paired_test(per_query[names[0]][measure], per_query[other][measure], self.permutations)
                    for other in names[1:]}
            for key in ("t_test_p", "randomisation_p"):
                corrected = multipletests([rows[o][key] for o in names[1:]], method="holm")[1]
                for other, value in zip(names[1:], corrected):
                    rows[other][f"{key}_holm"] = float(value)
            tests[measure] = rows
        return {"baseline": names[0], "means": means, "tests": tests}

    @staticmethod
    def rows(table: Mapping[str, Any], alpha: float = 0.05) -> dict[str, dict[str, Any]]:
        """One printable row per (run, measure): mean, delta, Holm-corrected p-values, significant or not."""
        out: dict[str, dict[str, Any]] = {}
        for measure, tests in table["tests"].items():
            out[f"{table['baseline']} · {measure}"] = {"mean": table["means"][table["baseline"]][measure]}
            for run, test in tests.items():
                out[f"{run} · {measure}"] = {
                    "mean": table["means"][run][measure], "delta": test["delta"], "t-test p (Holm)": test["t_test_p_holm"],
                    "randomisation p (Holm)": test["randomisation_p_holm"],
                    "significant": "yes" if max(test["t_test_p_holm"], test["randomisation_p_holm"]) < alpha else "no"}
        return out


def measure_names(names: Sequence[str]) -> list[str]:
    """``-m`` names in ir_measures' spelling: an ir_measures name (``nDCG@10``) or a trec_eval one (``ndcg_cut_10``,
    ``map``, ``P_5``, ``recip_rank``; a family such as ``P`` gives trec_eval's cut-offs). An unknown one is one error."""
    import ir_measures

    from retrieval.errors import SiftrankError

    out: list[str] = []
    for name in names:
        try:
            parsed = [ir_measures.parse_measure(name)]
        except (ValueError, NameError, TypeError, SyntaxError, KeyError):
            try:
                parsed = list(ir_measures.parse_trec_measure(name))
            except (ValueError, NameError, TypeError, SyntaxError, KeyError, AttributeError) as exc:
                raise SiftrankError(f"-m {name}: neither an ir_measures measure (nDCG@10, AP, P@5) nor a trec_eval one "
                                    f"(ndcg_cut_10, map, P_5) ({exc})") from None
        out += [str(m) for m in parsed if str(m) not in out]
    return out
