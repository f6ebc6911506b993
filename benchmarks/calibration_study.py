"""The Cosine Adapter study: SciFact train -> test over seeds, DL19 by 5-fold query cross-validation.

For each K (first-stage depth) and seed, one calibrator per map family is trained on the training
queries (input normalisation, query features and shrinkage chosen by query-level cross-validation on
them), its threshold chosen for 95% recall on their out-of-fold scores, and everything measured on test
queries beside the baselines fitted on the same training data (raw cosine, Platt, min-max, z-score,
top-k). DL19's PR curves are drawn per held-out fold: pooling folds whose maps differ would mix scales. Tables (mean ± std over seeds or folds), the family and feature ablations,
and PR / reliability plots go to docs/calibration/. Reproduce: `make calibration-study`.
"""

from __future__ import annotations

import time

import numpy as np
from common import arguments, machine, save

from eval.report import FILTER_COLUMNS, markdown_table
from retrieval.calibration import FAMILIES
from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.filter_measures import FilterReport, reliability
from retrieval.indexer import Indexer
from retrieval.stages.dense import DenseRetriever
from training.calibrate import CalibratorTrainer, CandidateSet
from training.calibration_cv import CalibrationCV, aggregate, filter_reports

MAIN_ROWS = ("adapter", "raw_cosine", "platt", "minmax", "zscore", "top_k")


def held_out_recall(reports: list[dict[str, FilterReport]]) -> dict[str, dict[str, float | None]]:
    """Recall kept over every held-out query of every fold, each at its own fold's threshold (pooled
    positives), with a query-bootstrap interval: scores are shifted by their fold's threshold."""
    out = {}
    for name in reports[0]:
        shifted = FilterReport([s - r[name].threshold for r in reports for s in r[name].scores],
                               [y for r in reports for y in r[name].labels], 0.0)
        kept = sum(float(y[s >= 0].sum()) for s, y in zip(shifted.scores, shifted.labels))
        total = sum(float(y.sum()) for y in shifted.labels)
        out[name] = {"recall": kept / total if total else None, **shifted.recall_interval()}
    return out


def fold_curves(out, name: str, curves: dict[int, list[dict[str, FilterReport]]]) -> None:
    """PR curves of every held-out fold (one panel per fold and K): adapter vs baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(curves)
    folds = len(curves[ks[0]])
    fig, axes = plt.subplots(len(ks), folds, figsize=(3.6 * folds, 3.4 * len(ks)), squeeze=False)
    for row, k in enumerate(ks):
        for fold, reports in enumerate(curves[k]):
            ax = axes[row][fold]
            for label in MAIN_ROWS:
                if label in reports and label != "top_k":
                    recall, precision = reports[label].pr_curve()
                    ax.plot(recall, precision, label=label, lw=1.8 if label == "adapter" else 0.9)
            ax.axvline(0.95, color="grey", ls=":", lw=0.8)
            ax.set(title=f"{name} K={k}, fold {fold}", ylim=(0, 1), xlabel="recall", ylabel="precision" if fold == 0 else None)
            if row == 0 and fold == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{name.lower()}_folds.png", dpi=100)
    plt.close(fig)


def plots(out, name: str, curves: dict[int, dict[str, FilterReport]]) -> None:
    """PR curves (adapter vs baselines) and a reliability diagram (adapter vs global Platt), one column per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(curves), figsize=(5.5 * len(curves), 9), squeeze=False)
    for col, (k, reports) in enumerate(sorted(curves.items())):
        ax = axes[0][col]
        for label in MAIN_ROWS:
            if label in reports:
                recall, precision = reports[label].pr_curve()
                ax.plot(recall, precision, label=label, lw=1.6 if label == "adapter" else 1.0)
        ax.axvline(0.95, color="grey", ls=":", lw=0.8)
        ax.set(xlabel="recall (pairs)", ylabel="precision", title=f"{name}, K={k}: precision-recall", ylim=(0, 1))
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
        for label in ("adapter", "platt"):
            report = reports[label]
            mean_p, rate, _ = reliability(np.concatenate(report.scores), np.concatenate(report.labels))
            ax.plot(mean_p, rate, marker="o", label=label)
        ax.set(xlabel="predicted relevance", ylabel="observed share relevant", title=f"{name}, K={k}: reliability",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name.lower()}.png", dpi=110)
    plt.close(fig)


def section(title: str, results: dict, k: int) -> list[str]:
    rows = results[k]
    lines = [f"### {title}, K={k}", "", markdown_table({r: rows["power"][r] for r in MAIN_ROWS if r in rows["power"]},
                                                        "filter (power family)", FILTER_COLUMNS), ""]
    lines += ["Map families (adapter chosen on validation):", "",
              markdown_table({f: rows[f]["adapter"] for f in rows}, "family", FILTER_COLUMNS), ""]
    picks = {f: ", ".join(f"{c['input']}/{c['features']}" for c in rows[f]["_chosen"]) for f in rows}
    lines += ["Input / feature set chosen by cross-validation on the training queries (per seed or fold): "
              + "; ".join(f"{f}: {p}" for f, p in picks.items()), ""]
    best = max((r for r in MAIN_ROWS[1:] if r in rows["power"]), key=lambda r: rows["power"][r]["PR-AUC"]["mean"])
    adapter = rows["power"]["adapter"]
    lines += [f"Adapter PR-AUC {adapter['PR-AUC']['mean']:.4f} vs the best baseline ({best}) "
              f"{rows['power'][best]['PR-AUC']['mean']:.4f}; recall at the threshold {adapter['recall_at_threshold']['mean']:.4f} "
              f"(target 0.95).", ""]
    gaps = {f: rows[f]["_pr_auc_minus_platt_per_fold"] for f in rows if "_pr_auc_minus_platt_per_fold" in rows[f]}
    if gaps:
        lines += ["Adapter PR-AUC minus global Platt PR-AUC per held-out fold: " + "; ".join(
            f"{f}: " + ", ".join(f"{g:+.4f}" for g in v) for f, v in gaps.items()), ""]
    if "_held_out_recall" in rows["power"]:
        pooled = rows["power"]["_held_out_recall"]
        lines += ["Recall at the threshold over all held-out queries (pooled positives, each fold's own threshold; "
                  "95% query-bootstrap interval): " + "; ".join(
                      f"{r} {pooled[r]['recall']:.4f} [{pooled[r]['recall_ci_low']:.3f}, {pooled[r]['recall_ci_high']:.3f}]"
                      for r in MAIN_ROWS if r in pooled), ""]
    variants = {r: v for r, v in rows["power"].items() if r.startswith("adapter[")}
    lines += ["Feature ablation (power family; best of each feature set on validation):", "",
              markdown_table(variants, "features", FILTER_COLUMNS), ""]
    return lines


def main() -> None:
    args = arguments(__doc__, seeds=(int, 3, "seeds for SciFact"), folds=(int, 5, "folds for DL19"),
                     ks=(str, "100,1000", "first-stage depths"), families=(str, "power", f"map families ({', '.join(FAMILIES)})"),
                     sets=(str, "scifact,dl19", "collections to study"))
    args.out = args.out.parent / "calibration" if args.out.name == "benchmarks" else args.out
    args.out.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    families = args.families.split(",")
    encoder = Encoder()
    started = time.time()
    payload: dict = {"machine": machine(), "ks": ks, "families": families}
    lines = ["# Cosine Adapter relevance filter: results", "",
             "Thresholds are chosen for 95% recall on training/validation queries and applied to test queries.",
             "PR-AUC and P@R95 are over (query, candidate) pairs of the top-K; filter_rate is the share of the",
             "top-K removed at the threshold; recall_at_threshold what that threshold kept on test; nDCG@10 that",
             "of the filtered list. Mean ± std over seeds (SciFact) or folds (DL19).", ""]

    sets = args.sets.split(",")
    if "scifact" in sets:
        # SciFact: train on qrels/train.tsv, test on qrels/test.tsv.
        train = Dataset.load(args.data / "scifact", split="train")
        test = Dataset.load(args.data / "scifact", split="test")
        index = Indexer(encoder, progress=False).cached(train)
        scifact: dict = {}
        curves: dict = {}
        for k in ks:
            train_c, test_c = (CandidateSet.retrieve(part, DenseRetriever(encoder, index), encoder, k) for part in (train, test))
            scifact[k] = {}
            for family in families:
                tables, chosen = [], []
                for seed in range(args.seeds):
                    trainer = CalibratorTrainer(family=family, seed=seed)
                    calibrator = trainer.fit(train_c, encoder.identity())
                    table, reports = filter_reports(calibrator, test_c, test.qrels, trainer.best_by_features)
                    tables.append(table)
                    chosen.append(calibrator.extra["chosen"])
                    if family == "power" and seed == 0:
                        curves[k] = reports
                    print(f"scifact K={k} {family} seed={seed}: adapter PR-AUC {table['adapter']['PR-AUC']:.4f} "
                          f"({calibrator.extra['chosen']['input']}/{calibrator.extra['chosen']['features']}), "
                          f"raw {table['raw_cosine']['PR-AUC']:.4f}, recall {table['adapter']['recall_at_threshold']:.4f} "
                          f"[{time.time() - started:.0f}s]", flush=True)
                scifact[k][family] = aggregate(tables)
                scifact[k][family]["_chosen"] = chosen
        plots(args.out, "SciFact", curves)
        payload["scifact"] = scifact
        lines += ["## SciFact (809 training queries, 300 test queries)", ""]
        for k in ks:
            lines += section("SciFact", scifact, k)

    if "dl19" in sets:
        # DL19: 43 queries, 5-fold query-level cross-validation.
        dl19 = Dataset.load(args.data / "msmarco-dl19", qrels="qrels.test.in_corpus.tsv")
        dl_index = Indexer(encoder, progress=False).cached(dl19)
        dl: dict = {}
        curves = {}
        for k in ks:
            cands = CandidateSet.retrieve(dl19, DenseRetriever(encoder, dl_index), encoder, k)
            dl[k] = {}
            for family in families:
                cv = CalibrationCV(lambda seed, family=family: CalibratorTrainer(family=family, seed=seed), args.folds, 0)
                tables, chosen = cv.run(cands, dl19.qrels, encoder.identity())
                dl[k][family] = aggregate(tables)
                dl[k][family]["_chosen"] = chosen
                gaps = [t["adapter"]["PR-AUC"] - t["platt"]["PR-AUC"] for t in tables]  # type: ignore[operator]
                dl[k][family]["_pr_auc_minus_platt_per_fold"] = gaps
                dl[k][family]["_held_out_recall"] = held_out_recall(cv.reports)
                if family == "power":
                    curves[k] = cv.reports
                means = {r: round(dl[k][family][r]["PR-AUC"]["mean"], 4) for r in MAIN_ROWS if r in dl[k][family]}
                print(f"dl19 K={k} {family}: PR-AUC {means}, recall {dl[k][family]['adapter']['recall_at_threshold']['mean']:.4f} "
                      f"(pooled {dl[k][family]['_held_out_recall']['adapter']['recall']:.4f}), "
                      f"chosen {[c['input'] + '/' + c['features'] for c in chosen]} "
                      f"[{time.time() - started:.0f}s]", flush=True)
        fold_curves(args.out, "DL19", curves)
        payload["dl19"] = dl
        lines += [f"## TREC DL19 ({len(dl19.queries)} queries, {args.folds}-fold query cross-validation)", ""]
        for k in ks:
            lines += section("DL19", dl, k)
    lines += ["![SciFact](scifact.png)", "", "![DL19 per fold](dl19_folds.png)", "",
              f"Total time {time.time() - started:.0f} s on {machine()['cpu']}. Reproduce: `make calibration-study`.", ""]
    save(args.out, "results", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
