"""Fine-tuning study on SciFact: zero-shot, full, BitFit, LoRA and connected adapters over seeds, and the
domain chain GAPrune 50% -> connected adapters.

Every method trains on the same triplets (SciFact train minus a fixed 10% validation split; hard
negatives mined by the starting model) for the same number of epochs and batch size; each method keeps
its own learning rate (training/finetune.py). Test: SciFact test nDCG@10 and R@100 over the full corpus.
Runs are stored one by one in results.json and skipped when present, so the study can be run in parts
(`--methods`, `--seeds`) and resumed. Results: docs/finetuning/results.{md,json}, convergence.png,
curves.png. Reproduce: `make finetune-study` (~2 hours on 2 CPU cores).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ResultStore, arguments, save

from eval.report import markdown_table
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.indexer import Indexer
from retrieval.measures import MetricSuite
from retrieval.pipeline import Pipeline
from retrieval.stages.dense import DenseRetriever
from training.finetune import FineTuner

MODEL = "bundled:all-MiniLM-L6-v2"
METRICS = ("nDCG@10", "R@100")


def test_scores(encoder: Encoder, data: Dataset) -> dict[str, float]:
    index = Indexer(encoder, progress=False).build(data)
    hits = Pipeline(DenseRetriever(encoder, index)).run(data.queries, depth=100).hits
    scores = MetricSuite(data.qrels).evaluate({q: {h.id: h.score for h in hs} for q, hs in hits.items()})
    return {m: scores[m] for m in METRICS}


def run_one(model: str, method: str, seed: int, args, train: Dataset, test: Dataset, work: Path) -> dict:
    from training.stages.context import BuildContext

    ctx = BuildContext.plain(model, train.root, "train", loaded=train)  # hard negatives from the dense first stage
    tuner = FineTuner(ctx.encoder, method, seed=seed, epochs=args.epochs, batch_size=args.batch_size, eval_steps=args.eval_steps)
    report = tuner.train(ctx.dataset, ctx.ranked_ids, steps=args.steps or None)
    folder = work / f"{method}-{seed}"
    tuner.save(folder, overwrite=True)
    encoder = Encoder(model, adapter=folder) if tuner.setup.adapters is not None else Encoder(str(folder))
    return {"method": method, "seed": seed, "model": model, **test_scores(encoder, test), **report,
            "history": tuner.history}


def main() -> None:
    args = arguments(__doc__, methods=(str, "full,bitfit,lora,connected", "methods to run"),
                     seeds=(str, "0,1,2", "seeds"), epochs=(float, 4.0, "epochs"), batch_size=(int, 32, "batch size"),
                     eval_steps=(int, 13, "validation every N steps"), steps=(int, 0, "stop after N steps (smoke runs)"),
                     chain=(int, 1, "1: also GAPrune 50% -> connected (seed 0)"))
    args.out = args.out.parent / "finetuning" if args.out.name == "benchmarks" else args.out
    args.out.mkdir(parents=True, exist_ok=True)
    store = ResultStore("finetuning-results")
    train = Dataset.load(args.data / "scifact", split="train")
    test = Dataset.load(args.data / "scifact", split="test")
    work = Path(tempfile.mkdtemp(prefix="siftrank-finetune-study-"))

    store.run("zero-shot", lambda: {"method": "zero-shot", "seed": 0, **test_scores(Encoder(MODEL), test),
                                    "trainable_fraction": 0.0, "wall_seconds": 0.0}, METRICS)
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in args.methods.split(","):
            store.run(f"{method}/seed{seed}", lambda method=method, seed=seed: run_one(MODEL, method, seed, args, train, test, work), METRICS)
    if args.chain and "gaprune50+connected/seed0" not in store.runs:
        from training.prune import Pruner, calibration_sets

        pruned = work / "gaprune50"
        domain_set, general_set = calibration_sets(MODEL, args.data / "scifact", "train",
                                                   args.data / "msmarco-train-toy", 256)
        pruner = Pruner(MODEL)
        pruner.prune("gaprune", 0.5, domain_set, general_set)
        pruner.save(pruned, overwrite=True)
        store.run("gaprune50/zero-shot", lambda: {"method": "gaprune50", "seed": 0, **test_scores(Encoder(str(pruned)), test),
                                                  "trainable_fraction": 0.0, "wall_seconds": 0.0}, METRICS)
        store.keep("gaprune50+connected/seed0", run_one(str(pruned), "connected", 0, args, train, test, work), METRICS)
    shutil.rmtree(work, ignore_errors=True)
    report(args.out, store.data)


def report(out: Path, results: dict) -> None:
    """Mean ± std over seeds per method, the convergence plot and per-method curves."""
    runs = results["runs"]
    by_method: dict[str, list[dict]] = {}
    for key, record in runs.items():
        by_method.setdefault(key.split("/")[0], []).append(record)
    rows = {}
    for method, records in by_method.items():
        row: dict[str, object] = {"seeds": len(records)}
        for m in METRICS:
            values = np.array([r[m] for r in records])
            row[m] = {"mean": float(values.mean()), "std": float(values.std())}
        row["trainable %"] = 100 * records[0].get("trainable_fraction", 0.0)
        row["median wall s"] = float(np.median([r.get("wall_seconds", 0.0) for r in records]))
        rows[method] = row
    lines = ["# Fine-tuning all-MiniLM-L6-v2 on SciFact", "",
             "SciFact train (minus a fixed 10% validation split) → SciFact test, full corpus. Mean ± std over seeds "
             "(population std). Same triplets, epochs and batch size for every method. Wall time is the median over seeds: "
             "some runs shared the 2 CPU cores with other work, which inflates their time (e.g. BitFit seed 0).", "",
             markdown_table(rows, "method", ["seeds", *METRICS, "trainable %", "median wall s"]), "", "![convergence](convergence.png)", "", "![curves](curves.png)", "",
             "Reproduce: `make finetune-study`.", ""]
    save(out, "results", results, "\n".join(lines))
    plot(out, by_method)


def plot(out: Path, by_method: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(record: dict, key: str) -> tuple[list[int], list[float]]:
        points = [(h["step"], h[key]) for h in record.get("history", []) if key in h and h[key] is not None]
        return [p[0] for p in points], [p[1] for p in points]

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("lora", "connected"):
        for i, record in enumerate(by_method.get(method, [])):
            steps, values = series(record, "eval_val_cosine_ndcg@10")
            ax.plot(steps, values, color="#2a6fb0" if method == "connected" else "#d0622a", alpha=0.8,
                    label=method if i == 0 else None)
    ax.set(xlabel="step", ylabel="validation nDCG@10", title="Convergence: LoRA vs connected (each line a seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=110)
    plt.close(fig)
    methods = [m for m in by_method if any(r.get("history") for r in by_method[m])]
    if not methods:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in methods:
        record = by_method[method][0]
        for ax, key in zip(axes, ("loss", "eval_val_cosine_ndcg@10")):
            steps, values = series(record, key)
            ax.plot(steps, values, label=method)
    axes[0].set(xlabel="step", ylabel="training loss", title="Loss (seed 0)")
    axes[1].set(xlabel="step", ylabel="validation nDCG@10", title="Validation (seed 0)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"total {time.time() - started:.0f} s")
