"""The relevance filter across query populations: trained on one collection, applied to another.

Calibrators are trained (zero-shot MiniLM, top-100, 95% recall target, the recipe's trainer) on DL19 (all 43
queries) and on SciFact train (809), then applied to SciFact test and to DL19: PR-AUC over (query, candidate)
pairs beside the simple baselines (raw cosine, Platt, per-query min-max, z-score), the share of the top-100
each removes at 95% recall (threshold set on the target for that recall: where it sits, not how it was
placed) and the recall the calibrator's own threshold keeps. Two input rules: ``argmax`` (the input with the
best cross-validated PR-AUC, the rule before) and ``prior`` (min-max unless another input beats it by a
query-bootstrap test, ``CalibratorTrainer.choose_input``; the inputs include ``joint``, a learned mix of raw and
normalised cosine). Then every fixed mix ``(1 - w) raw + w zscore`` (w in steps of 0.05) on both targets: whether any
one scoring, learned or not, comes within 0.005 of the best simple baseline on both collections at once (plot
transfer-mix.png). Results: docs/calibration/transfer.{md,json}.
Reproduce: ``make filter-transfer``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from common import arguments, machine, save, save_figure

from eval.report import markdown_table
from retrieval.calibration import baseline_scores, map_input
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.filter_measures import FilterReport
from retrieval.indexer import Indexer
from retrieval.stages.dense import DenseRetriever
from training.calibrate import CalibratorTrainer, CandidateSet

RULES = {"argmax": {"input_alpha": 1.0}, "prior": {}}  # alpha 1: any higher CV PR-AUC wins, i.e. the argmax
SIMPLE = ("raw_cosine", "platt", "minmax", "zscore")
TARGET = 0.95


def measure(calibrator, test: CandidateSet) -> dict[str, dict[str, Any]]:
    """PR-AUC, share removed at 95% recall, and (the calibrator) the recall its threshold keeps."""
    scorers = {"filter": calibrator.relevance(test.query_vectors, test.cosines)}
    for name in SIMPLE:
        scorers[name] = baseline_scores(name, calibrator.extra["baselines"].get(name, {}), test.cosines)
    out: dict[str, dict[str, Any]] = {}
    for name, scores in scorers.items():
        report = FilterReport(scores, test.labels, calibrator.threshold if name == "filter" else float("-inf"), name == "filter")
        summary = report.summary(TARGET)
        out[name] = {"PR-AUC": summary["PR-AUC"], "removed@R95": summary["removed_at_target_recall"]}
        if name == "filter":
            out[name] |= {"recall at its threshold": summary["recall_at_threshold"], "removed at its threshold": summary["filter_rate"],
                          "recall 95% CI": f"[{summary['recall_ci_low']:.3f}, {summary['recall_ci_high']:.3f}]"}
    return out


def main() -> None:
    args = arguments(__doc__.splitlines()[0], k=(int, 100, "first-stage depth"))
    args.out = args.out.parent / "calibration" if args.out.name == "benchmarks" else args.out
    encoder = Encoder()
    started = time.perf_counter()
    sets = {"DL19": Dataset.load(args.data / "msmarco-dl19", qrels="qrels.test.in_corpus.tsv"),
            "SciFact train": Dataset.load(args.data / "scifact", split="train"),
            "SciFact test": Dataset.load(args.data / "scifact", split="test")}
    candidates = {}
    for name, data in sets.items():
        index = Indexer(encoder, progress=False).cached(data)
        candidates[name] = CandidateSet.retrieve(data, DenseRetriever(encoder, index), encoder, args.k)
    print(f"machine: {machine()['cpu']}; candidates ready [{time.perf_counter() - started:.0f}s]", flush=True)
    pairs = {"DL19 → SciFact test": ("DL19", "SciFact test"), "SciFact train → DL19": ("SciFact train", "DL19"),
             "SciFact train → SciFact test": ("SciFact train", "SciFact test")}
    results: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    for rule, options in RULES.items():
        trained = {}
        for source in sorted({s for s, _ in pairs.values()}):
            trainer = CalibratorTrainer(family="power", seed=0, **options)
            trained[source] = trainer.fit(candidates[source], encoder.identity())
            print(f"{rule}: trained on {source}: input {trained[source].extra['chosen']['input']}, "
                  f"features {trained[source].extra['chosen']['features']} [{time.perf_counter() - started:.0f}s]", flush=True)
        for label, (source, target) in pairs.items():
            calibrator = trained[source]
            measured = measure(calibrator, candidates[target])
            best_simple = max(SIMPLE, key=lambda n: measured[n]["PR-AUC"])
            most_removed = max(measured[n]["removed@R95"] for n in SIMPLE)
            results[f"{rule}: {label}"] = {"chosen": calibrator.extra["chosen"], "input_choice": calibrator.extra.get("input_choice"),
                                           "measured": measured}
            f = measured["filter"]
            rows[f"{rule}: {label}"] = {
                "input / features": f"{calibrator.extra['chosen']['input']} / {calibrator.extra['chosen']['features']}",
                "PR-AUC": f["PR-AUC"], "best simple": f"{best_simple} {measured[best_simple]['PR-AUC']:.4f}",
                "Δ vs best simple": f["PR-AUC"] - measured[best_simple]["PR-AUC"],
                "removed@R95": f["removed@R95"], "most removed by a simple one": most_removed,
                "recall at its threshold": f["recall at its threshold"], "recall 95% CI": f["recall 95% CI"],
                "removed at its threshold": f["removed at its threshold"],
                "input weights": ", ".join(f"{k} {v:.2f}" for k, v in calibrator.extra.get("input_weights", {}).items()) or "-"}
    text = (f"# The filter across query populations\n\nCPU: {machine()['cpu']}. Zero-shot MiniLM, top-{args.k}, target "
            f"recall {TARGET}. PR-AUC over (query, candidate) pairs; removed@R95: share of the top-{args.k} removed at "
            "95% recall on the target (threshold set there); recall at its threshold: what the calibrator's own "
            "threshold (chosen on its training collection) keeps on the target.\n\n"
            + markdown_table(rows, "rule: trained → applied", list(next(iter(rows.values()))))
            + "\n\nEvery simple baseline on each target:\n\n"
            + markdown_table({f"{label} · {n}": results[f"prior: {label}"]["measured"][n] for label in pairs for n in SIMPLE},
                             "target · scorer", ["PR-AUC", "removed@R95"]) + "\n")
    mixes = mix_sweep({name: candidates[name] for name in ("DL19", "SciFact test")})
    both = [w for w, by in mixes["by_weight"].items() if all(v >= mixes["best_simple"][n] - 0.005 for n, v in by.items())]
    text += ("\n\nEvery fixed mix `(1 - w) raw + w z-score` of the two map inputs, PR-AUC on each collection (best "
             f"simple: DL19 {mixes['best_simple']['DL19']:.4f}, SciFact test {mixes['best_simple']['SciFact test']:.4f}); "
             f"weights within 0.005 of the best simple baseline on both: {', '.join(both) if both else 'none'} "
             "(transfer-mix.png):\n\n"
             + markdown_table(mixes["by_weight"], "w (z-score share)", ["DL19", "SciFact test"]) + "\n")
    plot_mix(mixes, args.out / "transfer-mix.png")
    save(args.out, "transfer", {"machine": machine(), "k": args.k, "rows": rows, "results": results, "mixes": mixes,
                                "seconds": round(time.perf_counter() - started, 1)}, text)


def mix_sweep(targets: dict[str, CandidateSet]) -> dict[str, Any]:
    """PR-AUC of ``(1 - w) x_raw + w x_zscore`` (the map inputs, both in [0, 1]) for w = 0, 0.05, ..., 1 on each
    target, and each target's best simple baseline: no scoring of this family can beat that frontier."""
    by_weight: dict[str, dict[str, float]] = {}
    for w in np.round(np.linspace(0, 1, 21), 2):
        by_weight[f"{w:.2f}"] = {}
        for name, data in targets.items():
            mixed = [(1 - w) * r + w * z for r, z in zip(map_input("cosine", data.cosines), map_input("zscore", data.cosines))]
            by_weight[f"{w:.2f}"][name] = pooled_ap(mixed, data.labels)
    best = {name: max(pooled_ap(baseline_scores(b, {"a": 1.0, "b": 0.0}, data.cosines), data.labels) for b in SIMPLE)
            for name, data in targets.items()}
    return {"by_weight": by_weight, "best_simple": best}


def pooled_ap(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """PR-AUC over the (query, candidate) pairs of every query: what one global threshold sees."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.concatenate(labels), np.concatenate(scores)))


def plot_mix(mixes: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    weights = [float(w) for w in mixes["by_weight"]]
    for name, color in (("DL19", "#c0392b"), ("SciFact test", "#2a6fb0")):
        ax.plot(weights, [v[name] for v in mixes["by_weight"].values()], color=color, label=name)
        ax.axhline(mixes["best_simple"][name] - 0.005, color=color, ls="--", lw=0.8)
    ax.set_xlabel("w: share of z-score in the map input (1 - w: raw cosine)")
    ax.set_ylabel("PR-AUC (top-100)")
    ax.set_title("One fixed scoring for both collections? (dashed: best simple - 0.005)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
