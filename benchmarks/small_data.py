"""The domain recipe with few judged queries: `make small-data-study` (docs/small-data/).

SciFact with its training queries subsampled to 20, 60 and 200 (three seeds each): the shipped recipe
(configs/recipes/scifact.toml, every choice on ``auto``) is built on each sample and scored on the 300 SciFact
test queries beside the zero-shot first stages (MiniLM dense, BM25, their RRF hybrid). Then DL19 as a domain:
its 43 queries in 5 folds, the recipe built on four and scored on the fifth.

Each sample is a dataset folder under ``--work`` whose corpus and queries are links to the shared data (never
copies) and whose ``qrels/train.tsv`` holds the sampled queries. Per run: test nDCG@10 per query of the built
pipeline, the paired test against the best zero-shot first stage, the filter's recall at its threshold with
its query-bootstrap interval, the build's wall time and the decisions it printed. Records are kept one run at a
time in ``benchmarks/records/small-data-small-data-records.json`` (resumable: ``--sizes`` / ``--seeds`` / ``--dl19-folds`` pick what runs).
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ResultStore, arguments, machine, save, save_figure
from domain_study import evaluate

from eval.report import markdown_table
from retrieval.data import Dataset, query_folds
from retrieval.measures import paired_test
from training.build import REPORT_FILE, PipelineBuilder
from training.recipe import Recipe
from training.triplets import judged_queries

ROOT = Path(__file__).resolve().parents[1]
ZERO_SHOT = {"dense": None, "bm25": ROOT / "configs" / "bm25.toml", "hybrid": ROOT / "configs" / "hybrid.toml"}
PROMISE_POINTS = 0.015  # the filter's recall at its threshold within 1.5 points of its target


def sample_folder(source: Path, folder: Path, train: dict[str, dict[str, int]], test: dict[str, dict[str, int]] | None) -> Path:
    """A BEIR folder whose corpus and queries link to ``source`` and whose qrels are ``train`` (and ``test``)."""
    if folder.is_dir():
        shutil.rmtree(folder)
    (folder / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl.gz", "corpus.jsonl", "queries.jsonl"):
        if (source / name).exists():
            (folder / name).symlink_to((source / name).resolve())
    for split, qrels in (("train", train), ("test", test)):
        if qrels is not None:
            rows = "".join(f"{q}\t{d}\t{g}\n" for q in sorted(qrels) for d, g in sorted(qrels[q].items()))
            (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def build_and_score(recipe: Recipe, dataset: Path, out: Path, test: Dataset, zero: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Build the recipe on ``dataset`` into ``out``, score its pipeline on ``test`` against the zero-shot stages."""
    import json

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    PipelineBuilder(recipe.with_overrides([f'data.dataset="{dataset}"']), out, echo=lambda line: print(f"  {line}", flush=True),
                    progress=False).build()
    wall = time.perf_counter() - start
    report = json.loads((out / REPORT_FILE).read_text())
    scored = evaluate(out / "pipeline.toml", test, out / "eval")
    final = scored["final"]
    built = scored["per_query"][final]
    best = max(zero, key=lambda name: np.mean(list(zero[name]["per_query"].values())))
    test_vs_best = paired_test(zero[best]["per_query"], built)
    record: dict[str, Any] = {
        "ndcg@10": float(np.mean(list(built.values()))), "first_stage_ndcg@10": scored["stages"][next(iter(scored["stages"]))]["nDCG@10"],
        "best_zero_shot": best, "best_zero_shot_ndcg@10": float(np.mean(list(zero[best]["per_query"].values()))),
        "delta_vs_best": test_vs_best["delta"], "p_vs_best": test_vs_best["t_test_p"],
        "per_query": built, "stages": list(scored["stages"]), "wall_seconds": round(wall, 1),
        "stage_seconds": {s["name"]: s["seconds"] for s in report["stages"]},
        "decisions": {s["name"]: s["decision"] for s in report["stages"] if s.get("decision")}, "cpu": report["cpu"]}
    if "filter" in scored["stages"]:
        measured = scored["stages"]["filter"]
        record["filter"] = {k: measured.get(k) for k in ("filter_rate", "recall_at_threshold", "recall_ci_low", "recall_ci_high")}
    shutil.rmtree(out / "eval", ignore_errors=True)
    return record


def zero_shot(test: Dataset, work: Path, label: str) -> dict[str, dict[str, Any]]:
    """Per-query test nDCG@10 of the zero-shot first stages (base MiniLM dense, BM25, RRF hybrid)."""
    out = {}
    for name, config in ZERO_SHOT.items():
        pipeline = work / f"zero-shot-{name}.toml"
        pipeline.parent.mkdir(parents=True, exist_ok=True)
        pipeline.write_text(config.read_text() if config else "")
        scored = evaluate(pipeline, test, work / f"zero-shot-{label}-{name}")
        shutil.rmtree(work / f"zero-shot-{label}-{name}", ignore_errors=True)
        out[name] = {"per_query": scored["per_query"][scored["final"]]}
    return out


def main() -> None:
    args = arguments(__doc__.splitlines()[0], work=(Path, ROOT / "artifacts" / "small-data", "samples and builds"),
                     sizes=(str, "20,60,200", "training sizes"), seeds=(str, "0,1,2", "sampling seeds"),
                     dl19_folds=(str, "0,1,2,3,4", "DL19 folds to run (of 5); empty: none"),
                     recipe=(Path, ROOT / "configs" / "recipes" / "scifact.toml", "the recipe"))
    args.out = args.out if args.out != ROOT / "docs" / "benchmarks" else ROOT / "docs" / "small-data"
    store = ResultStore("small-data-small-data-records")
    recipe = Recipe.load(args.recipe, args.data)
    print(f"machine: {machine()['cpu']}", flush=True)

    scifact = args.data / "scifact"
    test = Dataset.load(scifact, split="test")
    zero = store.run("scifact:zero-shot", lambda: zero_shot(test, args.work, "scifact"))
    train = Dataset.load(scifact, split="train", with_corpus=False)
    pool = sorted(judged_queries(train))
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        for size in [int(s) for s in args.sizes.split(",") if s]:
            chosen = random.Random(seed).sample(pool, size)

            def run(size: int = size, seed: int = seed, chosen: list[str] = chosen) -> dict[str, Any]:
                folder = sample_folder(scifact, args.work / f"scifact-{size}-{seed}", {q: train.qrels[q] for q in chosen}, None)
                record = build_and_score(recipe, folder, args.work / f"scifact-{size}-{seed}.build", test, zero)
                return {**record, "size": size, "seed": seed, "train_queries": chosen}

            store.run(f"scifact:{size}:{seed}", run, show=("ndcg@10", "best_zero_shot_ndcg@10", "p_vs_best"))

    dl19_dir = args.data / "msmarco-dl19"
    folds_to_run = [int(f) for f in args.dl19_folds.split(",") if f]
    if folds_to_run:
        full = Dataset.load(dl19_dir, qrels="qrels.test.in_corpus.tsv")
        parts = query_folds(sorted(judged_queries(full)), 5, seed=0)
        for fold in folds_to_run:
            held = set(parts[fold])

            def run_fold(fold: int = fold, held: set[str] = held) -> dict[str, Any]:
                train_qrels = {q: v for q, v in full.qrels.items() if q not in held}
                test_qrels = {q: v for q, v in full.qrels.items() if q in held}
                folder = sample_folder(dl19_dir, args.work / f"dl19-fold{fold}", train_qrels, test_qrels)
                fold_test = Dataset.load(folder, split="test")
                zero_fold = zero_shot(fold_test, args.work, f"dl19-{fold}")
                record = build_and_score(recipe, folder, args.work / f"dl19-fold{fold}.build", fold_test, zero_fold)
                return {**record, "fold": fold, "zero_shot": zero_fold, "test_queries": sorted(held)}

            store.run(f"dl19:{fold}", run_fold, show=("ndcg@10", "best_zero_shot_ndcg@10", "p_vs_best"))
    write_report(store, args.out)


def write_report(store: ResultStore, out: Path) -> None:
    """small-data.md/.json (one row per run, one per size with spreads) and small-data.png."""
    runs = store.runs
    zero = {name: float(np.mean(list(v["per_query"].values()))) for name, v in runs["scifact:zero-shot"].items()}
    rows: dict[str, dict[str, Any]] = {}
    for key, r in runs.items():
        if key == "scifact:zero-shot":
            continue
        f = r.get("filter") or {}
        recall = f.get("recall_at_threshold")
        rows[key] = {"train queries": r.get("size", "4 folds"), "nDCG@10": r["ndcg@10"],
                     "best zero-shot": f"{r['best_zero_shot']} {r['best_zero_shot_ndcg@10']:.4f}",
                     "Δ": r["delta_vs_best"], "p": r["p_vs_best"],
                     "filter recall [95% CI]": (f"{recall:.3f} [{f['recall_ci_low']:.3f}, {f['recall_ci_high']:.3f}]"
                                                if recall is not None else "off"),
                     "promise kept": ("yes" if recall is not None and (abs(recall - 0.95) <= PROMISE_POINTS or
                                                                       f["recall_ci_low"] <= 0.95 <= f["recall_ci_high"])
                                      else "no" if recall is not None else "-"),
                     "removed": f.get("filter_rate"), "build s": r["wall_seconds"]}
    sizes: dict[str, dict[str, Any]] = {}
    for size in sorted({r["size"] for r in runs.values() if "size" in r}):
        group = [r for r in runs.values() if r.get("size") == size]
        ndcg = np.array([r["ndcg@10"] for r in group])
        recalls = [r["filter"]["recall_at_threshold"] for r in group if r.get("filter")]
        sizes[str(size)] = {"runs": len(group), "nDCG@10 mean": float(ndcg.mean()), "sd": float(ndcg.std(ddof=1)) if len(group) > 1 else None,
                            "Δ vs best zero-shot (mean)": float(np.mean([r["delta_vs_best"] for r in group])),
                            "filter on": f"{len(recalls)}/{len(group)}",
                            "recall mean": float(np.mean(recalls)) if recalls else None,
                            "build s mean": float(np.mean([r["wall_seconds"] for r in group]))}
    decisions = {key: r["decisions"] for key, r in runs.items() if "decisions" in r}
    cpu = next((r["cpu"] for r in runs.values() if "cpu" in r), machine()["cpu"])
    text = (f"# The recipe on few judged queries\n\nCPU: {cpu}. Recipe: configs/recipes/scifact.toml (choices on `auto`). "
            f"SciFact test (300 queries), zero-shot first stages: " + ", ".join(f"{k} {v:.4f}" for k, v in zero.items())
            + ".\n\n## Every run\n\n" + markdown_table(rows, "run", list(next(iter(rows.values()), {})))
            + "\n\n## By training size (SciFact)\n\n" + markdown_table(sizes, "train queries", list(next(iter(sizes.values()), {}))) + "\n\n## Decisions each build took\n\n"
            + "\n".join(f"- **{key}**\n" + "\n".join(f"  - {name}: {d}" for name, d in ds.items()) for key, ds in decisions.items())
            + "\n")
    save(out, "small-data", {"machine": machine(), "zero_shot": zero, "runs": rows, "sizes": sizes, "decisions": decisions}, text)
    plot(runs, zero, out / "small-data.png")


def plot(runs: dict[str, Any], zero: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    points = [(r["size"], r["ndcg@10"]) for r in runs.values() if "size" in r]
    if points:
        x, y = zip(*points)
        ax.scatter(x, y, color="#2a6fb0", label="built pipeline (each seed)", zorder=3)
        sizes = sorted(set(x))
        ax.plot(sizes, [np.mean([v for s, v in points if s == size]) for size in sizes], color="#2a6fb0")
    for (name, value), style in zip(zero.items(), (":", "--", "-.")):
        ax.axhline(value, color="#888888", linestyle=style, label=f"zero-shot {name}")
    ax.set_xscale("log")
    ax.set_xlabel("judged training queries (SciFact)")
    ax.set_ylabel("test nDCG@10")
    ax.legend(fontsize=8)
    ax.set_title("The recipe on auto vs zero-shot first stages")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
