"""Relevance labels from the service's event log: clicks with their shown rank, weighted by inverse propensity.

Every logged search with at least one click is read with the list the user saw (``results`` rows with role
``shown``: the interleaved list for interleaved searches, so a hit's rank is where it was shown, not where
its team ranked it). A clicked hit is a positive; its weight is the inverse-propensity estimate of how often
an examining user clicks it, ``sum(1 / theta(rank)) / searches of the query``, with ``theta(r) = r^-eta``
clipped at ``1 / clip`` (Joachims, Swaminathan & Schnabel, WSDM 2017). Hits shown above a click and never
clicked are negatives (grade 0). Searches without a click say nothing.

``eta`` is not known to a real deployment, so it is estimated from the log: searches whose top hit the
service swapped with a random rank ``k`` (``experiment.explore_swaps``) compare the click rate of the same
top documents at rank ``k`` with their click rate at rank 1 (the swap intervention of Joachims et al.);
``log(theta_k / theta_1) = -eta log k`` is fitted by least squares weighted by the swapped searches.

With ``rule = "posterior"`` a clicked hit is a positive only where the log makes it more likely relevant
than not (``rule = "soft"``: wherever its posterior is at least 0.05, each weighing it): a position-based
click model with binary relevance (click = examined at ``theta(rank)`` and then clicked with ``eps+`` if
relevant, ``eps-`` if not; the prior of relevance by the best rank a hit was shown at) is fitted to every search of the log by EM, the classical click-model estimation (Chuklin, Markov &
de Rijke, *Click Models for Web Search*, 2015), and each positive weighs its posterior. A noisy click (one
of five users clicking a hit at rank 1, where a relevant hit is clicked by nearly all) is then no positive.

The labels are written as a BEIR folder (``queries.jsonl``, ``qrels/train.tsv`` with the weights beside it,
the corpus linked), so every stage that trains on judgments trains on clicks unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from retrieval.artifacts import atomic_dir
from retrieval.data import CLICK_LABELS_FILE, Dataset, Qrels, normalised_query, relevant_grade, weights_path
from retrieval.errors import SiftrankError

TABLES = ("queries", "results", "feedback")
LabelRule = Literal["ipw", "posterior", "soft"]
LABEL_RULES: tuple[LabelRule, ...] = ("ipw", "posterior", "soft")
#: the posterior a clicked hit needs to be a positive: ``posterior`` keeps the likely relevant, ``soft`` every click
#: that is not almost surely noise, each weighing its posterior (more queries and passages, noise at low weight)
POSTERIOR_FLOOR: dict[str, float] = {"posterior": 0.5, "soft": 0.05}
SWAP_FLAG = re.compile(r"^swap:(\d+)$")


def log_query_id(text: str) -> str:
    """A stable id for a query text as users typed it (case and spacing normalised)."""
    return "log-" + hashlib.sha1(normalised_query(text).encode()).hexdigest()[:12]


@dataclass
class ClickLabels:
    """Click-derived training labels: queries, weighted positives, skipped negatives, and what they came from."""

    queries: dict[str, str]
    positives: dict[str, dict[str, float]]
    negatives: dict[str, set[str]]
    propensity: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    judged: Qrels = field(default_factory=dict)  # qrels trained on beside the clicks (``with_judgments``)

    @classmethod
    def from_log(cls, path: Path, corpus_ids: set[str], eta: float | None = None, clip: float = 10.0,
                 exclude: Collection[str] = (), rule: LabelRule = "ipw") -> ClickLabels:
        """Read the event log at ``path``; ``corpus_ids``: the documents of the domain (a log of another corpus
        is refused); ``eta``: a known position bias (default: estimated from the log's swaps); ``exclude``:
        query texts that must never be trained on (held-out evaluation queries), dropped and counted;
        ``rule``: every clicked hit a positive weighing its inverse-propensity click rate (``ipw``), or only
        those the fitted click model finds more likely relevant than not, weighing that probability."""
        searches = read_log(Path(path))
        shown_ids = {d for s in searches.values() for d in s["shown"]}
        foreign = shown_ids - corpus_ids
        if len(foreign) > 0.05 * len(shown_ids):
            raise SiftrankError(f"{path}: {len(foreign)} of the {len(shown_ids)} documents shown are not in the corpus "
                                f"(e.g. {sorted(foreign)[0]}): is this the log of another corpus?")
        propensity = estimate_eta(searches)
        used = eta if eta is not None else propensity.get("eta")
        if used is None:
            raise SiftrankError(f"{path}: the position bias cannot be estimated (no swapped search has a click at "
                                "rank 1 and at a swapped rank): serve with experiment.explore_swaps > 0, or give eta")
        propensity = {**propensity, "eta_used": used, "clip": clip, "rule": rule}
        excluded = {normalised_query(t) for t in exclude}
        by_query: dict[str, list[dict[str, Any]]] = defaultdict(list)
        texts: dict[str, str] = {}
        dropped = 0
        for search in searches.values():
            if normalised_query(search["query"]) in excluded:
                dropped += 1
                continue
            qid = log_query_id(search["query"])
            texts.setdefault(qid, search["query"])
            by_query[qid].append(search)
        posterior: dict[str, dict[str, float]] = {}
        if rule in POSTERIOR_FLOOR:
            posterior, fit = relevance_posterior(by_query, used)
            propensity |= fit
        positives: dict[str, dict[str, float]] = {}
        negatives: dict[str, set[str]] = {}
        for qid, group in by_query.items():
            mass: Counter[str] = Counter()
            skipped: set[str] = set()
            for search in group:
                clicked = search["clicked"]
                if not clicked:
                    continue
                last = max(search["shown"].index(d) for d in clicked)
                for rank, doc in enumerate(search["shown"][:last + 1], 1):
                    if doc in clicked:
                        mass[doc] += min(clip, float(rank) ** used)
                    else:
                        skipped.add(doc)
            if mass:
                if rule in POSTERIOR_FLOOR:
                    positives[qid] = {d: round(posterior[qid][d], 6) for d in mass
                                      if d in corpus_ids and posterior[qid][d] >= POSTERIOR_FLOOR[rule]}
                else:
                    positives[qid] = {d: m / len(group) for d, m in mass.items() if d in corpus_ids}
                negatives[qid] = {d for d in skipped - set(mass) if d in corpus_ids}
        positives = {q: docs for q, docs in positives.items() if docs}
        if not positives:
            raise SiftrankError(f"{path}: no search in the log has a click on a corpus document: nothing to learn from")
        counts = {"searches": len(searches), "searches_with_clicks": sum(1 for s in searches.values() if s["clicked"]),
                  "clicks": sum(len(s["clicked"]) for s in searches.values()), "queries": len(positives),
                  "positives": sum(len(d) for d in positives.values()),
                  "negatives": sum(len(negatives[q]) for q in positives), "excluded_searches": dropped}
        return cls({q: texts[q] for q in positives}, positives, {q: negatives[q] for q in positives}, propensity, counts)

    def with_judgments(self, judged: Dataset) -> ClickLabels:
        """These labels and a dataset's training qrels together (its queries keep their grades and weigh 1);
        click positives take the grade at which the qrels count a passage relevant."""
        return replace(self, queries={**judged.queries, **self.queries}, judged=judged.qrels)

    def qrels(self) -> Qrels:
        """The labels as qrels: judged queries with their grades, click positives at the grade the judgments
        count relevant (1 without judgments), skipped hits at 0."""
        level = relevant_grade(self.judged) if self.judged else 1
        qrels: Qrels = {q: dict(docs) for q, docs in self.judged.items()}
        for q in self.positives:
            qrels.setdefault(q, {}).update({d: 0 for d in sorted(self.negatives[q])} | {d: level for d in sorted(self.positives[q])})
        return qrels

    def dataset(self, folder: Path, corpus: Dataset) -> Dataset:
        """These labels over ``corpus`` as the dataset :meth:`write` puts at ``folder`` (paths there), already read."""
        folder = Path(folder)
        return Dataset(folder, folder / corpus.corpus_path.name, corpus.corpus, dict(self.queries), self.qrels(),
                       folder / "qrels" / "train.tsv", weights={q: dict(d) for q, d in self.positives.items()}, condensed=True)

    def write(self, folder: Path, corpus_path: Path, overwrite: bool = True) -> Path:
        """A BEIR folder of these labels (corpus linked, split ``train``) with ``clicks.json`` (counts, propensity)."""
        with atomic_dir(Path(folder), overwrite=overwrite) as tmp:
            (tmp / corpus_path.name).symlink_to(Path(corpus_path).resolve())
            (tmp / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in self.queries.items()))
            (tmp / "qrels").mkdir()
            rows = [(q, d, g) for q, docs in self.qrels().items() for d, g in docs.items()]
            (tmp / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows))
            weights_path(tmp / "qrels" / "train.tsv").write_text(
                "query-id\tcorpus-id\tweight\n" + "".join(f"{q}\t{d}\t{w:.6g}\n" for q in self.positives
                                                          for d, w in sorted(self.positives[q].items())))
            (tmp / CLICK_LABELS_FILE).write_text(json.dumps({"counts": self.counts, "propensity": self.propensity}, indent=2) + "\n")
        return Path(folder)


def read_log(path: Path) -> dict[str, dict[str, Any]]:
    """Every logged search: its text, flags, shown list (doc ids by rank) and clicked doc ids; refuses a file that
    is not an event log, an empty one, and clicks on searches the log does not hold."""
    if not path.is_file():
        raise SiftrankError(f"{path}: event log not found")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [t for t in TABLES if t not in tables]
            if missing:
                raise SiftrankError(f"{path}: not a siftrank event log (no {', '.join(missing)} table)")
            queries = db.execute("SELECT query_id, query, flags, mode FROM queries").fetchall()
            shown = db.execute("SELECT query_id, rank, doc_id FROM results WHERE role = 'shown' ORDER BY query_id, rank").fetchall()
            clicks = db.execute("SELECT query_id, doc_id FROM feedback WHERE event = 'click'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise SiftrankError(f"{path}: not a readable event log ({exc})") from None
    if not queries:
        raise SiftrankError(f"{path}: the event log holds no searches")
    if not clicks:
        raise SiftrankError(f"{path}: the event log holds {len(queries)} searches and no clicks: nothing to learn from")
    searches = {q: {"query": text, "flags": json.loads(flags or "[]"), "mode": mode, "shown": [], "clicked": set()}
                for q, text, flags, mode in queries}
    for qid, _, doc in shown:
        if qid in searches:
            searches[qid]["shown"].append(doc)
    unknown = 0
    for qid, doc in clicks:
        search = searches.get(qid)
        if search is None or doc not in search["shown"]:
            unknown += 1
        else:
            search["clicked"].add(doc)
    if unknown > 0.05 * len(clicks):
        raise SiftrankError(f"{path}: {unknown} of {len(clicks)} clicks name a search or a hit the log does not hold "
                            "(clicks on unknown query ids): refusing to train on them")
    return searches


def relevance_posterior(by_query: dict[str, list[dict[str, Any]]], eta: float, iterations: int = 30,
                        max_rank: int = 10) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """P(relevant | the log) of every hit shown for every query, under a position-based model fitted by EM:
    a search shows hit d at rank r, the user examines it with ``r^-eta`` and clicks it with ``eps+`` when it
    is relevant, ``eps-`` when not; d's prior of relevance depends on the best rank it was shown at (ranks
    past ``max_rank`` pooled). EM alternates the posteriors with the priors and the two click rates
    (each the maximum of its expected log-likelihood on a grid). Returns ``{query: {doc: posterior}}`` and
    the fitted ``eps_plus``, ``eps_minus`` and priors."""
    import numpy as np

    keys: dict[tuple[str, str], int] = {}
    pair: list[int] = []
    theta: list[float] = []
    click: list[bool] = []
    best: list[int] = []
    for qid, group in by_query.items():
        for search in group:
            for rank, doc in enumerate(search["shown"], 1):
                index = keys.setdefault((qid, doc), len(keys))
                if index == len(best):
                    best.append(rank)
                best[index] = min(best[index], rank)
                pair.append(index)
                theta.append(float(rank) ** -eta)
                click.append(doc in search["clicked"])
    pairs, th, c = np.array(pair), np.clip(np.array(theta), 1e-6, 1.0), np.array(click, dtype=float)
    bucket = np.minimum(np.array(best), max_rank) - 1
    grid = np.linspace(0.01, 0.99, 99)
    # log-likelihood of each pair's observations for each click rate on the grid: (grid, pairs)
    loglik = np.stack([np.bincount(pairs, c * np.log(th * e) + (1 - c) * np.log1p(-th * e), minlength=len(keys)) for e in grid])
    prior = np.full(max_rank, 0.3)
    hi, lo = int(np.searchsorted(grid, 0.8)), int(np.searchsorted(grid, 0.2))

    def posterior() -> Any:
        p = prior[bucket]
        return 1.0 / (1.0 + np.exp(np.clip(loglik[lo] - loglik[hi], -50, 50)) * (1 - p) / p)

    for _ in range(iterations):
        post = posterior()
        counts = np.bincount(bucket, minlength=max_rank)
        prior = np.clip(np.bincount(bucket, post, minlength=max_rank) / np.maximum(counts, 1), 1e-3, 1 - 1e-3)
        hi, lo = int(np.argmax(loglik @ post)), int(np.argmax(loglik @ (1 - post)))
        if hi < lo:  # relevance is the state clicked more often
            hi, lo = lo, hi
    post = posterior()
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (qid, doc), index in keys.items():
        out[qid][doc] = float(post[index])
    return dict(out), {"eps_plus": round(float(grid[hi]), 2), "eps_minus": round(float(grid[lo]), 2),
                       "prior_by_rank": [round(float(x), 4) for x in prior]}


def estimate_eta(searches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The position bias from swap interventions (not-interleaved searches only): the documents that ranked
    first are clicked at rate ``base`` at rank 1 in unswapped searches and at ``base * k^-eta`` when swapped to
    rank ``k``; ``eta`` maximises the binomial likelihood of the swapped searches' clicks (ranks without a
    click count too). ``eta`` is None without a click at rank 1 or without swapped searches."""
    import numpy as np

    top_clicks = top_shown = 0
    at: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # k -> [clicks at k, swapped searches]
    for search in searches.values():
        shown = search["shown"]
        if search["mode"] == "interleave" or not shown:
            continue
        swaps = [int(m.group(1)) for f in search["flags"] if (m := SWAP_FLAG.match(str(f)))]
        if swaps and 1 < swaps[0] <= len(shown):
            at[swaps[0]][0] += shown[swaps[0] - 1] in search["clicked"]
            at[swaps[0]][1] += 1
        elif not swaps:
            top_shown += 1
            top_clicks += shown[0] in search["clicked"]
    out: dict[str, Any] = {"unswapped_searches": top_shown, "swapped_searches": sum(n for _, n in at.values()),
                           "swapped_clicks": sum(c for c, _ in at.values()),
                           "click_rate_by_swapped_rank": {str(k): round(c / n, 4) for k, (c, n) in sorted(at.items())}}
    if not top_clicks or not at:
        return {**out, "eta": None}
    ks = np.array(sorted(at), dtype=float)
    clicks = np.array([at[int(k)][0] for k in ks], dtype=float)
    shown_n = np.array([at[int(k)][1] for k in ks], dtype=float)
    grid = np.linspace(0.0, 5.0, 1001)

    def fit(top: float, swapped: np.ndarray) -> float:
        base = min(max(top, 1e-6) / top_shown, 1 - 1e-6)
        p = np.clip(base * ks[None, :] ** -grid[:, None], 1e-9, 1 - 1e-9)
        return float(grid[int(np.argmax((swapped * np.log(p) + (shown_n - swapped) * np.log1p(-p)).sum(axis=1)))])

    # 95% interval: parametric bootstrap of the rank-1 and swapped click counts (seeded: the same log, the same interval)
    rng = np.random.default_rng(0)
    rates = clicks / shown_n
    draws = sorted(fit(rng.binomial(top_shown, top_clicks / top_shown), rng.binomial(shown_n.astype(int), rates).astype(float))
                   for _ in range(200))
    return {**out, "top_click_rate": round(min(top_clicks / top_shown, 1 - 1e-6), 4), "eta": fit(top_clicks, clicks),
            "eta_ci": [draws[4], draws[194]]}
