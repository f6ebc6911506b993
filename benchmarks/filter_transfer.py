"""The relevance filter across query populations: trained on one collection, applied to another.

Calibrators are trained (zero-shot MiniLM, top-100, 95% recall target, the recipe's trainer) on DL19 (all 43
queries) and on SciFact train (809), then applied to SciFact test and to DL19: PR-AUC over (query, candidate)
pairs beside the simple baselines (raw cosine, Platt, per-query min-max, z-score), the share of the top-100
each removes at 95% recall (threshold set on the target for that recall: where it sits, not how it was
placed) and the recall the calibrator's own threshold keeps. Two input rules: ``argmax`` (the input with the
best cross-validated PR-AUC, the rule before) and ``prior`` (min-max unless another input beats it by a
query-bootstrap test, ``CalibratorTrainer.choose_input``). Results: docs/calibration/transfer.{md,json}.
Reproduce: ``make filter-transfer``.
"""

from __future__ import annotations

import time
from typing import Any

from common import arguments, machine, save

from eval.report import markdown_table
from retrieval.calibration import baseline_scores
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
    save(args.out, "transfer", {"machine": machine(), "k": args.k, "rows": rows, "results": results,
                                "seconds": round(time.perf_counter() - started, 1)}, text)


if __name__ == "__main__":
    main()
