"""The learning loop on SciFact: serve zero-shot, log simulated clicks, build from the log, interleave, promote, score.

1. ``siftrank serve`` the zero-shot pipeline (MiniLM dense) over the SciFact corpus, with a share of searches
   exploring (top hit swapped with a random rank: the intervention the build estimates position bias from).
2. Simulated users (``eval.clickmodel``, position-based, ``--click-model default|noisy``) send real HTTP
   searches and ``/feedback`` for SciFact **train** queries only, ``--users`` users per query.
3. ``siftrank build`` the recipe with ``[data] events`` = that log and no qrels (``judgments = false``; the
   SciFact test queries named as ``held_out``): every learned stage trains on click labels.
4. Serve the click-trained pipeline interleaved (team draft) with the zero-shot one to simulated users on a
   disjoint set of train queries; the binomial test of interleaving wins decides promote or keep.
5. Score zero-shot, the click-trained pipeline and (with ``--qrels-build``) the qrels-trained recipe on
   SciFact test with its qrels: nDCG@10 with paired t-tests.

Records per click model in ``benchmarks/records/loop-loop-records.json`` (resumable); table, plot: ``docs/loop/``.
Reproduce: ``make loop-scifact CLICKS=default`` (and ``CLICKS=noisy``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from common import ResultStore, arguments, machine, save, save_figure
from domain_study import evaluate
from load import free_port, start

from eval.abreport import ABReport
from eval.clickmodel import ClickModel, traffic_split
from eval.report import markdown_table
from retrieval.data import Dataset
from retrieval.measures import paired_test
from training.clicks import LABEL_RULES

ROOT = Path(__file__).resolve().parents[1]
SIFTRANK = str(Path(sys.executable).with_name("siftrank"))


def experiment(path: Path, corpus: Path, log: Path, variants: dict[str, Path | None], interleave: list[str],
               explore: float) -> Path:
    """An experiment file: the variants (None: the default pipeline), the first as primary, interleaving."""
    import tomli_w

    spec: dict[str, Any] = {"service": {"data": str(corpus), "event_log": str(log)},
                            "variants": {name: {"pipeline": str(p)} if p else {} for name, p in variants.items()},
                            "experiment": {"name": "loop", "primary": next(iter(variants)), "explore_swaps": explore}}
    if interleave:
        spec["experiment"] |= {"interleave": interleave, "interleave_share": 1.0}
    path.write_text(tomli_w.dumps(spec))
    return path


def traffic(config: Path, work: Path, queries: dict[str, str], qrels: dict[str, dict[str, int]], model: ClickModel,
            users: int, seed: int) -> dict[str, int]:
    """Serve ``config`` and replay ``users`` simulated users per query over real HTTP; the server is stopped
    (flushing its log) before returning the counts."""
    import httpx

    from serving.replay import Replayer

    port = free_port()
    # a fresh cache encodes the corpus before /readyz: SciFact's 5,183 abstracts take over 10 minutes on 2 cores
    server = start([SIFTRANK, "serve", "--experiment", str(config), "--port", str(port)], port, work / f"{config.stem}.log", 3600)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            counts = Replayer(client, queries, qrels, k=10, click_model=model, seed=seed).run(users)
    finally:
        server.terminate()
        server.wait(120)
    return dict(counts)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], work=(Path, ROOT / "artifacts" / "loop", "logs and builds"),
                     click_model=(str, "default", "simulated users: default or noisy"),
                     users=(int, 5, "simulated users per training query"),
                     explore=(float, 0.1, "share of zero-shot searches whose top hit is swapped (propensity estimation)"),
                     interleave_share=(float, 0.25, "share of the train queries kept for the interleaving test"),
                     recipe=(Path, ROOT / "configs" / "recipes" / "scifact.toml", "the recipe built from clicks"),
                     qrels_build=(Path, ROOT / "artifacts" / "scifact-domain", "the qrels-trained build to compare (make domain)"),
                     seed=(int, 0, "seed of the query split and the users"),
                     dataset=(str, "scifact", "the collection under --data (train and test qrels; the recipe's dataset)"),
                     labels=(str, "ipw", "the click-label rule of the build: ipw, posterior or soft ([data] click_labels)"),
                     build_set=(str, "", "more recipe overrides for the build, ';'-separated (e.g. finetune.steps=4)"),
                     tag=(str, "", "a name for a run with overrides (its record and work folder)"),
                     oracle=(int, 0, "1: the upper bound instead: build on the full train qrels of exactly the queries "
                                     "that got a click (the most any click labels of this traffic could give)"))
    args.out = args.out if args.out != ROOT / "docs" / "benchmarks" else ROOT / "docs" / "loop"
    model = ClickModel.preset(args.click_model)
    collection = (args.data / args.dataset).resolve()
    train = Dataset.load(collection, split="train", with_corpus=False)
    test = Dataset.load(collection, split="test")
    learn, judge = traffic_split(train.queries, test.queries, args.interleave_share, args.seed)
    print(f"machine: {machine()['cpu']}; {len(learn)} train queries to learn from, {len(judge)} to interleave on, "
          f"{len(train.queries) - len(learn) - len(judge)} train queries left out (same text as a test query)", flush=True)
    store = ResultStore("loop-loop-records")
    if args.labels not in LABEL_RULES:
        raise SystemExit(f"error: --labels must be one of {', '.join(LABEL_RULES)}")
    name = (f"qrels of the clicked queries ({args.click_model} users)" if args.oracle else
            f"clicks-{args.click_model}" + ("" if args.labels == "ipw" else f", {args.labels} labels")) + (f", {args.tag}" if args.tag else "")
    folder = (f"oracle-{args.click_model}" if args.oracle else args.click_model + ("" if args.labels == "ipw" else f"-{args.labels}")) \
        + (f"-{args.tag}" if args.tag else "")
    work = (args.work / "".join(c if c.isalnum() or c in "-_" else "-" for c in folder)).resolve()

    def first_round() -> tuple[Path, dict[str, int]]:
        """A fresh work folder and the zero-shot service's log of the learning queries' simulated users."""
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log = work / "round1.db"
        zero = experiment(work / "zero-shot.toml", collection, log, {"zero": None}, [], args.explore)
        return log, traffic(zero, work, {q: train.queries[q] for q in learn}, train.qrels, model, args.users, args.seed)

    def build_recipe(*overrides: str) -> tuple[Path, float]:
        """``siftrank build`` the recipe with ``overrides`` and then --build-set's; the folder and its seconds."""
        out = work / "build"
        begin = time.perf_counter()
        subprocess.run([SIFTRANK, "build", str(args.recipe), "--out", str(out), "--data", str(args.data.resolve()),
                        *[a for item in overrides for a in ("--set", item)],
                        *[a for item in args.build_set.split(";") if item for a in ("--set", item)]], check=True)
        return out, time.perf_counter() - begin

    def loop() -> dict[str, Any]:
        start_time = time.perf_counter()
        log, logged = first_round()
        build, build_s = build_recipe(f'data.dataset="{collection}"', f'data.events="{log}"', "data.judgments=false",
                               f'data.held_out="{collection / "qrels" / "test.tsv"}"', f'data.click_labels="{args.labels}"')
        ab_log = work / "interleave.db"
        pair = experiment(work / "interleave.toml", collection, ab_log, {"zero": None, "clicks": build / "pipeline.toml"},
                          ["zero", "clicks"], 0.0)
        judged = traffic(pair, work, {q: train.queries[q] for q in judge}, train.qrels, model, args.users, args.seed + 1)
        verdict = ABReport(ab_log).interleaving()["zero+clicks"]
        clicks_json = json.loads((build / "clicks" / "clicks.json").read_text())
        scored = evaluate(build / "pipeline.toml", test, work / "eval")
        report = json.loads((build / "build.json").read_text())
        quality = label_quality(log, collection, train, test)
        power = interleaving_power(ab_log, train, model)
        trained = trained_filter(build, report)  # a filter the build trained on the clicks but does not serve
        filtered = evaluate(trained, test, work / "eval-filter") if trained else scored
        return {"click_model": args.click_model, "label_rule": args.labels, "eta_true": model.eta, "eps_plus": model.eps_plus, "eps_minus": model.eps_minus,
                "users_per_query": args.users, "learn_queries": len(learn), "judge_queries": len(judge),
                "logged": logged, "labels": clicks_json, "label_quality": quality, "interleaving": verdict, "interleaving_power": power, "interleaving_traffic": judged,
                "per_query": scored["per_query"][scored["final"]], "stages": list(scored["stages"]),
                "filter": filtered["stages"].get("filter"), "filter_served": trained is None and "filter" in scored["stages"],
                **({"nDCG@10 with its filter": float(np.mean(list(filtered["per_query"][filtered["final"]].values())))}
                   if trained else {}),
                "decisions": {s["name"]: s["decision"] for s in report["stages"] if s.get("decision")},
                "build_seconds": round(build_s, 1), "wall_seconds": round(time.perf_counter() - start_time, 1),
                "cpu": report["cpu"]}

    def zero_shot() -> dict[str, Any]:
        pipeline = work.parent / "zero-shot.toml"
        pipeline.parent.mkdir(parents=True, exist_ok=True)
        pipeline.write_text("")
        scored = evaluate(pipeline, test, work.parent / "eval-zero")
        return {"per_query": scored["per_query"][scored["final"]]}

    def oracle() -> dict[str, Any]:
        """The upper bound of this traffic: the same users' log, then the recipe built on the complete train
        qrels of exactly the queries that got a click (queries without one contribute nothing to click labels)."""
        from retrieval.data import normalised_query
        from training.clicks import ClickLabels

        start_time = time.perf_counter()
        log, logged = first_round()
        corpus_ids = set(Dataset.corpus_only(collection).corpus["id"].to_list())
        labels = ClickLabels.from_log(log, corpus_ids, exclude=set(test.queries.values()))  # every clicked query
        clicked = {normalised_query(t) for t in labels.queries.values()}
        qids = {q for q, text in train.queries.items() if normalised_query(text) in clicked}
        folder = restricted_dataset(collection, work / "data", qids)
        build, build_s = build_recipe(f'data.dataset="{folder}"')
        scored = evaluate(build / "pipeline.toml", test, work / "eval")
        report = json.loads((build / "build.json").read_text())
        return {"click_model": args.click_model, "users_per_query": args.users, "learn_queries": len(learn),
                "searched": logged, "clicked_queries": len(qids),
                "relevant_passages": sum(1 for q in qids for g in train.qrels.get(q, {}).values() if g > 0),
                "per_query": scored["per_query"][scored["final"]], "stages": list(scored["stages"]),
                "decisions": {s["name"]: s["decision"] for s in report["stages"] if s.get("decision")},
                "build_seconds": round(build_s, 1), "wall_seconds": round(time.perf_counter() - start_time, 1),
                "cpu": report["cpu"]}

    store.run("zero-shot", zero_shot)
    if (args.qrels_build / "pipeline.toml").is_file():
        store.run("qrels-trained", lambda: {"per_query": (s := evaluate(args.qrels_build / "pipeline.toml", test,
                                                                         work.parent / "eval-qrels"))["per_query"][s["final"]],
                                            "filter": s["stages"].get("filter")})
    elif "qrels-trained" not in store.runs:
        print(f"no qrels-trained pipeline to compare: {args.qrels_build}/pipeline.toml not found (make domain)", flush=True)
    record = store.run(name, oracle if args.oracle else loop, show=("wall_seconds",))
    if "labels" in record and "eta_ci" not in record["labels"]["propensity"] and (work / "interleave.db").is_file():  # a record from before the diagnostics
        from training.clicks import estimate_eta, read_log

        propensity = {**record["labels"]["propensity"], "eta_ci": estimate_eta(read_log(work / "round1.db"))["eta_ci"]}
        store.keep(name, {**record, "labels": {**record["labels"], "propensity": propensity},
                          "label_quality": label_quality(work / "round1.db", collection, train, test),
                          "interleaving_power": interleaving_power(work / "interleave.db", train, model)})
    write_report(store, args.out)


def write_report(store: ResultStore, out: Path) -> None:
    """loop.md/.json: test nDCG@10 of every pipeline with paired p against zero-shot and qrels-trained, the
    traffic each click model took, the propensity estimate, the interleaving decision; loop.png."""
    runs = store.runs
    mean = {k: float(np.mean(list(r["per_query"].values()))) for k, r in runs.items()}
    rows: dict[str, dict[str, Any]] = {}
    for key, r in runs.items():
        row: dict[str, Any] = {"nDCG@10": mean[key]}
        for base in ("zero-shot", "qrels-trained"):
            if base in runs and base != key:
                t = paired_test(runs[base]["per_query"], r["per_query"])
                row[f"Δ vs {base}"], row[f"p vs {base}"] = t["delta"], t["t_test_p"]
        if "clicked_queries" in r:  # the upper bound: complete qrels of the queries that got a click
            row |= {"searches": r["searched"]["searches"], "clicks": r["searched"]["clicks"],
                    "queries trained on": r["clicked_queries"], "relevant passages trained on": r["relevant_passages"],
                    "build s": r["build_seconds"]}
        if "logged" in r:
            prop = r["labels"]["propensity"]
            row |= {"searches": r["logged"]["searches"], "clicks": r["logged"]["clicks"],
                    "eta true / estimated": (f"{r['eta_true']:g} / {prop['eta']:.2f}"
                                             + (" [{:.2f}, {:.2f}]".format(*prop["eta_ci"]) if "eta_ci" in prop else "")
                                             if prop.get("eta") is not None else f"{r['eta_true']:g} / -"),
                    "interleaving": f"{r['interleaving']['decision']} (p {r['interleaving']['p-value']:.2g})",
                    # the decision agrees with the qrels when it promotes exactly where test nDCG@10 is significantly higher
                    "agrees with qrels": (r["interleaving"]["decision"].startswith("promote")
                                          == (row.get("Δ vs zero-shot", 0) > 0 and row.get("p vs zero-shot", 1) < 0.05)),
                    "build s": r["build_seconds"]}
            if "interleaving_power" in r:
                row["interleaving clicks / needed"] = f"{r['interleaving_power']['clicks']} / {r['interleaving_power']['clicks needed']}"
            if "label_quality" in r:
                row |= {f"positives relevant ({rule})": q["relevant share"] for rule, q in r["label_quality"].items()}
        rows[key] = row
    cpu = next((r["cpu"] for r in runs.values() if "cpu" in r), machine()["cpu"])
    filters = {key: filter_row(r["filter"]) for key, r in runs.items() if r.get("filter")}
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    text = (f"# Learning from clicks on SciFact\n\nCPU: {cpu}. SciFact test (300 queries), nDCG@10; paired t-tests.\n\n"
            + markdown_table(rows, "pipeline", columns) + "\n")
    if filters:
        text += ("\n## The filter on SciFact test (target recall 0.95)\n\nEach pipeline's filter over its own first stage's "
                 "top-100: PR-AUC, the recall its threshold (chosen on its training labels) keeps with the query-bootstrap "
                 "95% interval, the share it removes there, and the share a threshold for 95% recall would remove (set on "
                 "test: where the filter's scores sit) beside the simple baselines' over the same candidates.\n\n"
                 + markdown_table(filters, "pipeline", list(dict.fromkeys(c for row in filters.values() for c in row))) + "\n")
    save(out, "loop", {"machine": machine(), "runs": rows, "filters": filters, "records": {k: {x: v for x, v in r.items() if x != "per_query"}
                                                                         for k, r in runs.items()}}, text)
    plot(mean, out / "loop.png")


def restricted_dataset(collection: Path, folder: Path, qids: set[str]) -> Path:
    """A BEIR folder beside the run: ``collection``'s corpus, queries and test qrels (links) and its train
    qrels of only ``qids``."""
    import polars as pl

    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for source in [*collection.iterdir(), *(collection / "qrels").iterdir()]:
        link = folder / source.relative_to(collection)
        if source.name not in ("qrels", "train.tsv") and not link.exists():
            link.symlink_to(source.resolve())
    qrels = pl.read_csv(collection / "qrels" / "train.tsv", separator="\t", schema_overrides={"query-id": pl.Utf8, "corpus-id": pl.Utf8})
    qrels.filter(pl.col("query-id").is_in(sorted(qids))).write_csv(folder / "qrels" / "train.tsv", separator="\t")
    return folder


def label_quality(log: Path, collection: Path, train: Dataset, test: Dataset) -> dict[str, dict[str, Any]]:
    """How the labels each click rule draws from ``log`` compare with the training qrels the simulated users
    clicked by (a diagnostic of the simulation only; no build reads those qrels): the share of positives that
    are relevant, the same weighted by their weights, and the share of the learned queries' relevant passages
    that became positives."""
    from retrieval.data import normalised_query
    from training.clicks import ClickLabels
    from training.triplets import relevant_docs

    corpus_ids = set(Dataset.corpus_only(collection).corpus["id"].to_list())
    by_text = {normalised_query(t): q for q, t in train.queries.items()}
    rules = {rule: ClickLabels.from_log(log, corpus_ids, exclude=set(test.queries.values()), rule=rule) for rule in LABEL_RULES}
    # every query with a click (the ipw labels hold them all): its relevant passages, by the train qrels
    relevant = {q: set(relevant_docs(train.qrels, by_text.get(normalised_query(t), ""))) for q, t in rules["ipw"].queries.items()}
    relevant_total = sum(len(r) for r in relevant.values())
    out: dict[str, dict[str, Any]] = {}
    for rule, labels in rules.items():
        hit = weight = weight_hit = 0.0
        found = 0
        for qid, docs in labels.positives.items():
            found += len(relevant[qid] & set(docs))
            hit += sum(d in relevant[qid] for d in docs)
            weight += sum(docs.values())
            weight_hit += sum(w for d, w in docs.items() if d in relevant[qid])
        positives = labels.counts["positives"]
        out[rule] = {"positives": positives, "relevant share": round(hit / max(positives, 1), 4),
                     "relevant share, weighted": round(weight_hit / max(weight, 1e-12), 4),
                     "relevant passages labelled positive": round(found / max(relevant_total, 1), 4),
                     **{k: labels.propensity[k] for k in ("eps_plus", "eps_minus") if k in labels.propensity}}
    return out


def interleaving_power(ab_log: Path, train: Dataset, model: ClickModel) -> dict[str, Any]:
    """What the simulated users could tell the two teams apart by (a diagnostic of the simulation: it reads
    the train qrels the users click by): each team's expected clicks over the interleaved lists that were
    shown, the candidate's expected share of them, and how many clicks a binomial test of that share
    would need to detect it (two-sided 5%, power 80%), beside the clicks the interleaving got."""
    import math
    import sqlite3

    from retrieval.data import normalised_query

    by_text = {normalised_query(t): q for q, t in train.queries.items()}
    top = max((g for docs in train.qrels.values() for g in docs.values()), default=1)
    expected: dict[str, float] = defaultdict(float)
    with sqlite3.connect(f"file:{ab_log}?mode=ro", uri=True) as db:
        texts = dict(db.execute("SELECT query_id, query FROM queries WHERE mode = 'interleave'").fetchall())
        for qid, rank, doc, team in db.execute("SELECT query_id, rank, doc_id, team FROM results WHERE role = 'shown' "
                                               "AND team IS NOT NULL"):
            if qid in texts:
                grade = train.qrels.get(by_text.get(normalised_query(texts[qid]), ""), {}).get(doc, 0)
                expected[team] += model.examination(rank) * model.attractiveness(grade, top)
        clicks = db.execute("SELECT COUNT(*) FROM feedback WHERE event = 'click'").fetchone()[0]
    a, b = sorted(expected, key=lambda t: expected[t])  # b: the team users should click more
    share = expected[b] / (expected[a] + expected[b])
    needed = ((1.96 * 0.5 + 0.84 * math.sqrt(share * (1 - share))) / (share - 0.5)) ** 2 if share > 0.5 else math.inf
    return {"expected clicks": {t: round(v, 1) for t, v in expected.items()}, "favoured": b,
            "expected share": round(share, 4), "clicks needed": round(needed), "clicks": clicks}


def trained_filter(build: Path, report: dict[str, Any]) -> Path | None:
    """A pipeline file beside ``build``'s with the filter its calibrate stage trained but switched off (labels
    from clicks), so the filter can be measured; None when the build serves its filter or trained none."""
    import tomllib

    import tomli_w

    from retrieval.artifacts import write_text_atomic
    from training.stages.calibrate import TRAINED_DIR

    stage = next((s for s in report["stages"] if s["name"] == "calibrate" and s.get("path")), None)
    if stage is None or not (Path(stage["path"]) / TRAINED_DIR).is_dir():
        return None
    config = tomllib.loads((build / "pipeline.toml").read_text())
    config["filter"] = {"kind": "cosine-adapter", "calibrator": str((Path(stage["path"]) / TRAINED_DIR).resolve())}
    path = build / "pipeline-with-filter.toml"
    write_text_atomic(path, tomli_w.dumps(config))
    return path


def filter_row(measured: dict[str, Any]) -> dict[str, Any]:
    """One pipeline's filter on test beside the z-score and min-max baselines (their thresholds and shares)."""
    base = measured.get("baselines", {})
    row = {"PR-AUC": measured["PR-AUC"], "recall at its threshold": measured["recall_at_threshold"],
           "recall 95% CI": f"[{measured['recall_ci_low']:.3f}, {measured['recall_ci_high']:.3f}]",
           "removed at its threshold": measured["filter_rate"], "removed@R95": measured["removed_at_target_recall"]}
    for name in ("zscore", "minmax", "raw_cosine"):
        if name in base:
            row |= {f"{name} PR-AUC": base[name]["PR-AUC"], f"{name} removed@R95": base[name]["removed_at_target_recall"]}
    return row


def plot(mean: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    names = list(mean)
    ax.barh(names, [mean[n] for n in names], color=["#888888" if n == "zero-shot" else "#2a6fb0" for n in names])
    for i, n in enumerate(names):
        ax.text(mean[n], i, f" {mean[n]:.4f}", va="center", fontsize=8)
    if "zero-shot" in mean and "qrels-trained" in mean:  # the goals: 90% (default) and 75% (noisy) of the gain
        for share, style in ((0.9, "--"), (0.75, ":")):
            goal = mean["zero-shot"] + share * (mean["qrels-trained"] - mean["zero-shot"])
            ax.axvline(goal, color="#c0392b", linestyle=style, linewidth=1, label=f"{share:.0%} of the qrels gain ({goal:.4f})")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=7)
    ax.set_xlabel("SciFact test nDCG@10")
    ax.set_title("One round of the loop: trained from simulated clicks")
    ax.set_xlim(0, max(mean.values()) * 1.15)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
