"""Compare the variants of an experiment from the service's event log (polars over SQLite).

Per A/B arm: users, queries, clicks, CTR with a Wilson interval and a sample-ratio-mismatch test.
Per variant and role: latency p50/p95/p99 (served: end to end; shadow: pipeline time). Primary vs each
shadow on the same queries: overlap@10, rank-biased overlap (p = 0.9) and Kendall's tau over the shared
documents. Interleaving: per query, the team with more clicks wins; wins/losses/ties and a two-sided
binomial test. With a dataset (queries and qrels): nDCG@10 of each variant's own rankings on judged queries.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from retrieval.errors import SiftrankError


def rbo(a: list[str], b: list[str], p: float = 0.9) -> float:
    """Rank-biased overlap (Webber et al. 2010), truncated at the shorter list and normalised to [0, 1]."""
    depth = min(len(a), len(b))
    if depth == 0:
        return 0.0
    total = sum(p ** (d - 1) * len(set(a[:d]) & set(b[:d])) / d for d in range(1, depth + 1))
    return total / sum(p ** (d - 1) for d in range(1, depth + 1))


def kendall(a: list[str], b: list[str]) -> float | None:
    """Kendall's tau between the two orders of the documents both lists share (None under 2 shared)."""
    from scipy.stats import kendalltau

    shared = [d for d in a if d in set(b)]
    if len(shared) < 2:
        return None
    position = {d: i for i, d in enumerate(b)}
    return float(kendalltau(range(len(shared)), [position[d] for d in shared]).statistic)


class ABReport:
    """Tables computed from one event log."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise SiftrankError(f"{path}: event log not found")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            try:
                self.queries, self.results, self.stages, self.feedback = (
                    pl.read_database(f"SELECT * FROM {t}", db, infer_schema_length=None)
                    for t in ("queries", "results", "stages", "feedback"))
            except Exception as exc:  # noqa: BLE001 - not a siftrank log
                raise SiftrankError(f"{path}: not a siftrank event log ({exc})") from None
        if self.queries.is_empty():
            raise SiftrankError(f"{path}: the event log holds no searches")
        # an empty table reads with null dtypes, which no join accepts: give it text columns
        self.results, self.stages, self.feedback = (
            frame if not frame.is_empty() else pl.DataFrame(schema=dict.fromkeys(frame.columns, pl.Utf8))
            for frame in (self.results, self.stages, self.feedback))

    def latency(self) -> dict[str, dict[str, float]]:
        """p50/p95/p99 milliseconds per variant: served end to end, shadows by summed stage time."""
        out: dict[str, dict[str, float]] = {}
        for (variant,), group in self.queries.group_by("variant"):
            out[f"{variant} (served)"] = _percentiles(group["latency_ms"])
        shadow = (self.stages.filter(pl.col("role") == "shadow").group_by("query_id", "variant").agg(pl.col("ms").sum()))
        for (variant,), group in shadow.group_by("variant"):
            out[f"{variant} (shadow)"] = _percentiles(group["ms"])
        return dict(sorted(out.items()))

    def _lists(self, role: str) -> pl.DataFrame:
        return (self.results.filter(pl.col("role") == role).sort("rank")
                .group_by("query_id", "variant").agg(pl.col("doc_id")))

    def shadow_agreement(self, depth: int = 10) -> dict[str, dict[str, float]]:
        """Primary (served) vs each shadow on the queries both answered."""
        served, shadow = self._lists("served"), self._lists("shadow")
        joined = served.join(shadow, on="query_id", suffix="_shadow")
        out = {}
        for (primary, candidate), group in joined.group_by("variant", "variant_shadow"):
            pairs = list(zip(group["doc_id"].to_list(), group["doc_id_shadow"].to_list()))
            taus = [t for a, b in pairs if (t := kendall(a[:depth], b[:depth])) is not None]
            out[f"{primary} vs {candidate}"] = {
                "queries": len(pairs),
                f"overlap@{depth}": float(np.mean([len(set(a[:depth]) & set(b[:depth])) / depth for a, b in pairs])),
                "RBO(p=0.9)": float(np.mean([rbo(a[:depth], b[:depth]) for a, b in pairs])),
                "Kendall tau": float(np.mean(taus)) if taus else float("nan")}
        return out

    def arms(self, weights: dict[str, float] | None = None, srm_alpha: float = 0.001) -> dict[str, dict[str, Any]]:
        """Per A/B arm: users, queries, clicks, CTR (share of queries with a click) with a 95% Wilson
        interval, and a sample-ratio-mismatch check: a chi-square test of the users per arm against the
        configured split (``weights``; equal without one), flagged when p < ``srm_alpha`` (the usual SRM
        threshold: a mismatch means the assignment, not the treatment, differs between arms)."""
        from scipy.stats import chisquare
        from statsmodels.stats.proportion import proportion_confint

        ab = self.queries.filter(pl.col("mode") == "ab")
        if ab.is_empty():
            return {}
        clicked = self.feedback.filter(pl.col("event") == "click").group_by("query_id").agg(pl.len().alias("clicks"))
        per_query = ab.join(clicked, on="query_id", how="left").with_columns(pl.col("clicks").fill_null(0))
        names = sorted(set(per_query["variant"].to_list()) | set(weights or {}))
        share = {n: (weights or {}).get(n, 0.0 if weights else 1.0) for n in names}
        total_share = sum(share.values()) or 1.0
        users = {n: per_query.filter(pl.col("variant") == n)["user_id"].n_unique() for n in names}
        expected = [sum(users.values()) * share[n] / total_share for n in names]
        srm_p = float(chisquare([users[n] for n in names], expected).pvalue) if len(names) > 1 and all(expected) else float("nan")
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            group = per_query.filter(pl.col("variant") == name)
            queries, with_click = len(group), int((group["clicks"] > 0).sum())
            low, high = proportion_confint(with_click, queries, method="wilson") if queries else (float("nan"),) * 2
            out[name] = {"users": users[name], "expected share": share[name] / total_share, "queries": queries,
                         "clicks": int(group["clicks"].sum()), "CTR": with_click / queries if queries else float("nan"),
                         "CTR 95% low": float(low), "CTR 95% high": float(high), "SRM p": srm_p,
                         "SRM": "MISMATCH" if srm_p < srm_alpha else "ok"}
        return out

    def interleaving(self, alpha: float = 0.05) -> dict[str, Any]:
        """Wins, losses and ties per interleaved pair, with a two-sided binomial test on wins vs losses and
        the decision it supports: the pair's second variant (the candidate) is promoted when it wins
        significantly (p < ``alpha``); otherwise the first (the incumbent) is kept."""
        from scipy.stats import binomtest

        shown = self.results.filter((pl.col("role") == "shown") & pl.col("team").is_not_null())
        clicks = self.feedback.filter(pl.col("event") == "click").select("query_id", "doc_id").unique()
        credited = clicks.join(shown.select("query_id", "doc_id", "team", "variant"), on=["query_id", "doc_id"])
        out: dict[str, Any] = {}
        interleaved = self.queries.filter(pl.col("mode") == "interleave")
        for (pair,), group in interleaved.group_by("variant"):
            a, b = str(pair).split("+")
            per_query = credited.filter(pl.col("variant") == pair).group_by("query_id").agg(
                (pl.col("team") == a).sum().alias("a"), (pl.col("team") == b).sum().alias("b"))
            wins, losses = int((per_query["a"] > per_query["b"]).sum()), int((per_query["b"] > per_query["a"]).sum())
            ties = len(group) - wins - losses  # queries without clicks are ties too
            test = binomtest(wins, wins + losses, 0.5) if wins + losses else None
            p = float(test.pvalue) if test else float("nan")
            promote = bool(test) and p < alpha and losses > wins
            out[pair] = {f"{a} wins": wins, f"{b} wins": losses, "ties": int(ties), "p-value": p,
                         "decision": f"promote {b}" if promote else f"keep {a}"}
        return out

    def ndcg(self, queries: dict[str, str], qrels: dict[str, dict[str, int]], depth: int = 10) -> dict[str, dict[str, float]]:
        """nDCG@10 of every variant's own rankings (served or shadow) on the judged queries it answered."""
        from retrieval.measures import MetricSuite

        qid_of = {text: qid for qid, text in queries.items()}
        texts = dict(zip(self.queries["query_id"].to_list(), self.queries["query"].to_list()))
        lists = pl.concat([self._lists("served"), self._lists("shadow")])
        runs: dict[str, dict[str, dict[str, float]]] = {}
        for query_id, variant, docs in lists.iter_rows():
            qid = qid_of.get(texts.get(query_id, ""))
            if qid is None or qid not in qrels:
                continue
            runs.setdefault(variant, {}).setdefault(qid, {d: -float(r) for r, d in enumerate(docs)})
        suite = MetricSuite(qrels)
        return {v: {"queries": len(run), "nDCG@10": suite.evaluate(run)["nDCG@10"]} for v, run in sorted(runs.items())}

    def plot(self, path: Path, latency: dict[str, dict[str, float]], wins: dict[str, Any],
             ndcg: dict[str, dict[str, float]] | None) -> None:
        """Latency percentiles, interleaving outcomes and nDCG@10 side by side (PNG, written atomically)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 + bool(ndcg)
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
        names = list(latency)
        x = np.arange(len(names))
        for i, pct in enumerate(("p50", "p95", "p99")):
            axes[0].bar(x + (i - 1) * 0.27, [latency[n][pct] for n in names], 0.27, label=pct)
        axes[0].set_xticks(x, names, rotation=20, ha="right", fontsize=7)
        axes[0].set(ylabel="ms", title="latency per variant")
        axes[0].legend(fontsize=7)
        labels, values = [], []
        for pair, row in wins.items():
            for key in (k for k in row if k.endswith("wins") or k == "ties"):
                labels.append(f"{pair}\n{key}")
                values.append(row[key])
        axes[1].bar(range(len(values)), values, color="#2a6fb0")
        axes[1].set_xticks(range(len(values)), labels, fontsize=6)
        axes[1].set(ylabel="queries", title="interleaving outcomes")
        if ndcg:
            axes[2].bar(list(ndcg), [r["nDCG@10"] for r in ndcg.values()], color="#888888")
            axes[2].set(ylabel="nDCG@10", title="nDCG@10 on judged queries")
            axes[2].tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        tmp.replace(path)


def _percentiles(values: pl.Series) -> dict[str, float]:
    array = values.drop_nulls().to_numpy()
    return {"n": len(array), **{f"p{p}": float(np.percentile(array, p)) for p in (50, 95, 99)}}
