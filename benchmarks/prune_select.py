"""Choose GAPrune's Fisher normalisation and β on held-out SciFact *training* queries (never the test set).

Gradients come from the usual calibration sets (256 SciFact-train triplets, the MS MARCO toy triplets);
every candidate prunes 50% of the FFN weights (global budget) from the same dense weights and is scored
by nDCG@10 on the SciFact-train queries that are *not* in the calibration set, over the full corpus.
Grid: per-tensor normalisation (mean, rms) x β (0, 0.25, 0.5, 1), the paper's raw scale, magnitude.
Results: docs/pruning/selection.{md,json}. Reproduce: `make prune-select` (~10 minutes on 2 cores).
"""

from __future__ import annotations

import copy
import tempfile
import time

from common import arguments, machine, save
from prune_study import MODEL, evaluate

from eval.report import markdown_table
from retrieval.data import Dataset
from training.prune import Pruner, calibration_sets

GRID = [(norm, beta) for norm in ("mean", "rms") for beta in (0.0, 0.25, 0.5, 1.0)] + [("raw", 1.0)]


def held_out(data: Dataset, calibration_queries: set[str]) -> Dataset:
    """The training queries with a relevant passage that the calibration triplets did not use."""
    qids = [q for q, text in data.queries.items()
            if text not in calibration_queries and any(g > 0 for g in data.qrels[q].values())]
    return Dataset(data.root, data.corpus_path, data.corpus, {q: data.queries[q] for q in qids},
                   {q: data.qrels[q] for q in qids})


def main() -> None:
    args = arguments(__doc__, triplets=(int, 256, "calibration triplets per set"))
    args.out = args.out.parent / "pruning" if args.out.name == "benchmarks" else args.out
    started = time.time()
    domain_set, general_set = calibration_sets(MODEL, args.data / "scifact", "train", args.data / "msmarco-train-toy",
                                               args.triplets)
    heldout = {"SciFact-train held-out": held_out(Dataset.load(args.data / "scifact", split="train"),
                                                  {t[0] for t in domain_set})}
    pruner = Pruner(MODEL)
    pruner.gradients("domain", domain_set)
    pruner.gradients("general", general_set)
    dense_state = copy.deepcopy(pruner.model.state_dict())
    work = tempfile.mkdtemp(prefix="siftrank-select-")

    def score(label: str, method: str, **options) -> float:
        pruner.model.load_state_dict(dense_state)
        pruner.apply(pruner.masks(pruner.scores(method, **options), 0.5))
        folder = f"{work}/{len(results)}"
        pruner.model.save(folder)
        value = evaluate(folder, heldout)["SciFact-train held-out"]
        print(f"{label}: {value:.4f} [{time.time() - started:.0f}s]", flush=True)
        return value

    results: dict[str, float] = {}
    results["dense"] = evaluate(pruner.path.as_posix(), heldout)["SciFact-train held-out"]
    results["magnitude 50%"] = score("magnitude 50%", "magnitude")
    for norm, beta in GRID:
        label = f"GAPrune 50%, {norm}, β={beta:g}"
        results[label] = score(label, "gaprune", normalise=norm, beta=beta)
    best = max((k for k in results if k.startswith("GAPrune")), key=results.__getitem__)
    rows = {k: {"nDCG@10": v, "vs dense": v / results["dense"] - 1} for k, v in results.items()}
    queries = len(heldout["SciFact-train held-out"].queries)
    lines = ["# GAPrune: choosing the Fisher normalisation and β on held-out SciFact-train queries", "",
             f"{queries} SciFact-train queries not used for calibration; 50% of the FFN weights, global budget; "
             f"α = 0.2, γ = 0.5.", "", markdown_table(rows, "variant"), "", f"Best: **{best}**.", "",
             f"Total {time.time() - started:.0f} s on {machine()['cpus']} CPUs. Reproduce: `make prune-select`.", ""]
    save(args.out, "selection", {"machine": machine(), "queries": queries, "ndcg10": results, "best": best},
         "\n".join(lines))


if __name__ == "__main__":
    main()
