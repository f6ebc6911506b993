"""Does the LLM full-ranker improve its first stage? Training at the scale we have, fusion, depth, cost.

1. **Train** the ranker (LoRA, SmolLM2-135M by default) on SciFact train: dense top-``depth`` lists
   (pool ``pool``) labelled by qrels grade, ties and unjudged ordered by the fusion of dense and BM25;
   augmented with shuffled subsets of 5..depth candidates; plus the MS MARCO sample lists. ``--val``
   training queries never enter the lists: they are scored every ``--every`` steps (first-token nDCG@10)
   for early stopping, and the best step's scores choose the fusion method and weight by query-level CV
   (stored in the artifact). Once with the importance-aware loss, once with plain cross-entropy.
2. **SciFact test**, dense top-``depth``: first stage, the ranker's own order, and the fused order with
   the artifact's weight; paired difference to the first stage over the 300 queries (t-test and
   randomisation p).
3. **DL19**, BM25 (published run) and dense top-``depth``: zero-shot and both trained rankers (never
   trained on DL19); the fusion weight chosen by 5-fold CV over DL19 queries (each fold's weight from
   the other four); held-out fused vs first stage per fold.
4. **Adaptive depth**: with the SciFact Cosine Adapter filter, only the kept candidates (up to depth)
   are ranked; tokens and seconds saved against the nDCG@10 change.
5. **Cost**: tokens and seconds per query at depth 20 and 50 for first-token, generate and the sliding
   window (DL19 BM25 candidates, ``--cost-queries`` queries).

Every record is kept in benchmarks/records/ranking-study-records.json as it is measured, so an interrupted study resumes.
Writes docs/ranking/study.{md,json} and training.png, fusion.png. Reproduce: `make rerank-study`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from common import ResultStore, arguments, machine, save

from eval.report import markdown_table
from retrieval.artifacts import cache_dir
from retrieval.causal_lm import CausalLM
from retrieval.config import PipelineConfig
from retrieval.data import Dataset, Run, query_folds, read_run
from retrieval.fusion import ScoreFusion
from retrieval.measures import paired_test, per_query
from retrieval.pipeline import Pipeline
from retrieval.rerank import ListwiseRanker
from training.fusion import choose_fusion
from training.listwise import ListwiseTrainer, build_lists
from training.validation import RankerValidation

SHOW = ("nDCG@10", "seconds_per_query")


def first_stage(data: Dataset, raw: dict, depth: int) -> Run:
    """One first stage (a pipeline config section) over all the dataset's queries."""
    hits = Pipeline.from_config(PipelineConfig.model_validate(raw), data).run(data.queries, depth=depth).hits
    return {q: {h.id: h.score for h in ranked} for q, ranked in hits.items()}


def top(run: Run, q: str, depth: int) -> list[str]:
    return sorted(run.get(q, {}), key=lambda d: (-run[q][d], d))[:depth]


def score_run(ranker: ListwiseRanker, data: Dataset, run: Run, qids: list[str], depth: int,
              keep: dict[str, set[str]] | None = None, reuse: dict | None = None) -> dict:
    """The ranker's score of each query's top ``depth`` (only the ``keep`` ones, when given) and the cost.
    A query whose shown candidates are those of ``reuse`` (a full run's record) takes its scores and cost
    from there: the same prompt gives the same scores."""
    started, scores, cost = time.perf_counter(), {}, {}
    for q in qids:
        docs = [d for d in top(run, q, depth) if keep is None or d in keep[q]]
        if reuse is not None and list(reuse["scores"][q]) == docs:
            scores[q], cost[q] = reuse["scores"][q], reuse["cost"][q]
            continue
        values, stats = ranker.score(data.queries[q], data.store.texts(docs))
        scores[q] = dict(zip(docs, values))
        cost[q] = [stats.input_tokens, stats.output_tokens, stats.calls, stats.seconds, stats.parse_failures]
    n = max(1, len(qids))
    total = np.sum([cost[q] for q in qids], axis=0) if qids else np.zeros(5)
    return {"scores": scores, "cost": cost, "input_tokens_per_query": total[0] / n, "output_tokens_per_query": total[1] / n,
            "calls_per_query": total[2] / n, "seconds_per_query": total[3] / n,
            "parse_failure_rate": total[4] / max(1, total[2]), "wall_seconds": time.perf_counter() - started}


def from_adapter(folder: Path, train: Dataset, dense_train: Run, args) -> dict:  # noqa: ANN001
    """A training record rebuilt from a saved adapter (its manifest keeps the training report): the
    validation scores are measured again with the saved (best-step) weights."""
    import json

    from retrieval.artifacts import Manifest
    from retrieval.causal_lm import ADAPTER_KIND

    manifest = Manifest.read(folder, kind=ADAPTER_KIND)
    report = dict(manifest.data["training"])
    qids = manifest.data["validation_queries"]
    validation = RankerValidation.of(train, qids, dense_train, args.depth)
    scores = validation.score(CausalLM(args.model, adapter=folder, device=args.device), args.max_passage_tokens)
    return {**report, "fusion": manifest.data["fusion_cv"], "history": json.loads((folder / "training_log.json").read_text()),
            "validation_scores": scores, "validation_zero_shot": report["validation"][0], "rebuilt_from": str(folder)}


def ordered(first: dict[str, float], scores: dict[str, float], depth: int) -> dict[str, float]:
    """A ranking of the first stage's top ``depth``: ``scores``'d candidates first (by score), then the
    rest of the top in first-stage order (as the pipeline's rerank stage does)."""
    head = sorted(first, key=lambda d: (-first[d], d))[:depth]
    ranked = sorted([d for d in head if d in scores], key=lambda d: -scores[d]) + [d for d in head if d not in scores]
    return {d: float(len(ranked) - i) for i, d in enumerate(ranked)}


def compare(base: dict[str, float], other: dict[str, float]) -> dict:
    test = paired_test(base, other)
    return {"nDCG@10": float(np.mean(list(other.values()))), "Δ": test["delta"], "t-test p": test["t_test_p"],
            "randomisation p": test["randomisation_p"]}


def main() -> None:
    args = arguments(__doc__ or "", model=(str, "bundled:SmolLM2-135M-Instruct", "causal LM"),
                     depth=(int, 20, "re-ranking depth"), pool=(int, 50, "training candidates per query"),
                     samples=(int, 2, "lists per training query"), steps=(int, 60, "most optimiser steps"),
                     accumulation=(int, 4, "lists per step"), lr=(float, 5e-4, "learning rate"),
                     lora_rank=(int, 16, "LoRA rank"), max_passage_tokens=(int, 48, "passage truncation"),
                     val=(int, 40, "validation queries drawn from SciFact train"), every=(int, 20, "steps between validations"),
                     patience=(int, 2, "validations without a gain before stopping"), losses=(str, "importance,ce", "losses"),
                     ablation_steps=(int, 0, "most steps of the other losses (0: --steps)"),
                     cost_queries=(int, 3, "queries of the cost table"), device=(str, "auto", "auto, cpu, cuda"),
                     extra=(str, "msmarco-train-toy/flagembedding_msmarco_10q_25hardneg.jsonl", "extra training lists"),
                     calibrator=(str, "artifacts/scifact-calibrator", "SciFact filter for adaptive depth ('' to skip)"),
                     thresholds=(str, "artifact,0.3", "filter thresholds of the adaptive-depth rows"),
                     queries=(int, 0, "smoke runs: only the first N queries of each set"))
    out = args.out.parent / "ranking" if args.out.name == "benchmarks" else args.out
    store = ResultStore("ranking-study-records")  # the records; the report is study.{md,json}
    store.data["settings"] = {k: str(v) for k, v in vars(args).items() if k not in ("data", "out")}
    train = Dataset.load(args.data / "scifact", split="train")
    test = Dataset.load(args.data / "scifact", split="test")
    dl19 = Dataset.load(args.data / "msmarco-dl19")  # qrels.test.tsv: the standard re-ranking setup
    if args.queries:
        for data, n in ((train, 4 * args.queries), (test, args.queries), (dl19, args.queries)):
            keep = sorted(q for q in data.queries if data.qrels.get(q))[:n]
            data.queries, data.qrels = {q: data.queries[q] for q in keep}, {q: data.qrels[q] for q in keep}
    print("first stages ...", flush=True)
    dense_train = first_stage(train, {}, args.pool)
    dense_test = first_stage(test, {}, args.depth)
    dl19_runs = {"bm25": read_run(dl19.root / "runs" / "run.BM25.trec"), "dense": first_stage(dl19, {}, args.depth)}

    # 1. training, once per loss (adapters cached by the whole recipe); the main loss first, so that its
    # evaluations exist before the ablation's training starts
    recipe_keys = ("model", "depth", "pool", "samples", "steps", "accumulation", "lr", "lora_rank", "max_passage_tokens",
                   "val", "every", "patience", "extra", "queries")
    recipe = hashlib.sha1(repr([store.data["settings"][k] for k in recipe_keys]).encode()).hexdigest()[:8]
    adapters: dict[str, Path] = {}
    extra = [str(args.data / e) for e in args.extra.split(",") if e]

    def trained(loss: str, steps: int) -> None:
        folder = cache_dir("rerank-study") / (f"{loss}-{recipe}" if steps == args.steps else f"{loss}-s{steps}-{recipe}")
        adapters[loss] = folder

        def fit() -> dict:
            started = time.perf_counter()
            lists, used, validation = build_lists(train, dense_train, extra, args.depth, args.pool, args.samples,
                                                  validation=args.val, every=args.every, patience=args.patience)
            trainer = ListwiseTrainer(args.model, loss=loss, depth=args.depth, max_passage_tokens=args.max_passage_tokens,  # type: ignore[arg-type]
                                      lora_rank=args.lora_rank, learning_rate=args.lr, steps=steps, accumulation=args.accumulation)
            report = trainer.train(lists, validation)
            choice = trainer.choose_fusion()
            trainer.save(folder, overwrite=True)
            return {**report, "fusion": choice.to_dict(), "history": trainer.history,
                    "wall_seconds": time.perf_counter() - started, "validation_scores": validation.best_scores,  # type: ignore[union-attr]
                    "validation_zero_shot": validation.history[0]}  # type: ignore[union-attr]
        if f"train/{loss}" not in store.runs and (folder / "manifest.json").is_file():
            store.keep(f"train/{loss}", from_adapter(folder, train, dense_train, args), ("best_step",))
        record = store.run(f"train/{loss}", fit, ("best_step", "seconds_per_step"))
        if not (folder / "manifest.json").is_file():
            raise SystemExit(f"{folder}: the adapter of a recorded training run is missing: delete train/{loss} from {store.path}")
        print(f"{loss}: fusion {record['fusion']['method']} weight {record['fusion']['weight']} "
              f"(CV fused {record['fusion']['cv_fused']:.4f} vs first stage {record['fusion']['cv_first']:.4f})", flush=True)

    def ranker(name: str, mode: str = "first-token") -> ListwiseRanker:
        llm = CausalLM(args.model, adapter=adapters.get(name), device=args.device)
        return ListwiseRanker(llm, mode=mode, max_passage_tokens=args.max_passage_tokens, window=10, stride=5)

    # 2. SciFact test with the default (first) loss's adapter
    losses = args.losses.split(",")
    main_loss = losses[0]
    trained(main_loss, args.steps)
    test_qids = sorted(test.queries)
    store.run(f"score/scifact/dense/{main_loss}", lambda: score_run(ranker(main_loss), test, dense_test, test_qids, args.depth), SHOW)

    # 3. DL19 with the zero-shot and the main ranker (the other losses' after their training, below)
    dl_qids = sorted(dl19.queries)

    def on_dl19(name: str) -> None:
        # early stopping at step 0 keeps the zero-shot weights: the same scores, not measured twice
        same = name != "zero-shot" and store.runs.get(f"train/{name}", {}).get("best_step") == 0
        for first, run in dl19_runs.items():
            store.run(f"score/dl19/{first}/{name}", lambda run=run, first=first: dict(store.runs[f"score/dl19/{first}/zero-shot"])
                      if same else score_run(ranker(name), dl19, run, dl_qids, args.depth), SHOW)
    on_dl19("zero-shot")
    on_dl19(main_loss)

    # 4. adaptive depth: only what the SciFact filter keeps
    if args.calibrator and Path(args.calibrator).is_dir():
        for threshold in args.thresholds.split(","):  # "artifact": the calibrator's own (95% recall on validation)
            suffix = "" if threshold == "artifact" else f"/t{threshold}"

            def kept(threshold: str = threshold) -> dict:
                section = {"kind": "cosine-adapter", "calibrator": str(Path(args.calibrator).resolve())}
                if threshold != "artifact":
                    section["threshold"] = threshold
                result = Pipeline.from_config(PipelineConfig.model_validate({"filter": section}), test).run(test.queries)
                return {"kept": {q: [h.id for h in hits] for q, hits in result.stages["filter"].items()}}
            keep = {q: set(v) for q, v in store.run(f"filter/scifact{suffix}", kept)["kept"].items()}
            full = store.runs[f"score/scifact/dense/{main_loss}"]
            store.run(f"score/scifact/dense-kept{suffix}/{main_loss}",
                      lambda keep=keep, full=full: score_run(ranker(main_loss), test, dense_test, test_qids, args.depth, keep, reuse=full), SHOW)

    # 5. cost at depth 20 and 50
    cost_q = dl_qids[:args.cost_queries]
    deep = {q: dict(list(sorted(dl19_runs["bm25"][q].items(), key=lambda x: -x[1]))[:50]) for q in cost_q}
    for depth in (20, 50):
        for mode in ("first-token", "generate", "sliding-window"):
            store.run(f"cost/{mode}/d{depth}", lambda mode=mode, depth=depth: score_run(ranker(main_loss, mode), dl19, deep, cost_q, depth), SHOW)
    report(out, store, test, dl19, dense_test, dl19_runs, args.depth, main_loss, dense_train, train.qrels)

    # 6. the other losses (the ablation): trained the same way, measured on DL19
    for loss in losses[1:]:
        trained(loss, args.ablation_steps or args.steps)
        on_dl19(loss)
    report(out, store, test, dl19, dense_test, dl19_runs, args.depth, main_loss, dense_train, train.qrels)


def report(out: Path, store: ResultStore, test: Dataset, dl19: Dataset, dense_test: Run, dl19_runs: dict[str, Run],
           depth: int, main_loss: str, dense_train: Run, train_qrels: dict) -> None:
    """Tables, plots and the markdown report from the stored records."""
    runs = store.runs
    cpu = machine()["cpu"]
    lines = ["# LLM full-ranker: does it improve its first stage?", "",
             f"Measured on {cpu}. Settings: `{store.data['settings']}`. Reproduce: `make rerank-study`.", ""]
    # training
    rows = {}
    for loss in store.data["settings"]["losses"].split(","):
        t = runs.get(f"train/{loss}")
        if t:
            f = t["fusion"]
            rows[loss] = {"lists seen": t["steps"] * int(store.data["settings"]["accumulation"]), "best step": t["best_step"],
                          "s/step": t["seconds_per_step"], "bf16": t["bf16"], "train min": t["wall_seconds"] / 60,
                          "val first stage": t["validation_first_stage"], "val zero-shot": t["validation_zero_shot"]["val_ndcg@10"],
                          "val ranker": max(h["val_ndcg@10"] for h in t["validation"]),
                          "fusion": f"{f['method']} w={f['weight']}", "val CV fused": f["cv_fused"]}
    lines += ["## Training (SciFact train; validation = training queries kept out of the lists)", "",
              markdown_table(rows, "loss"), "", "![training](training.png)", ""]
    plot_training(out / "training.png", {k: runs[f"train/{k}"] for k in rows})

    # SciFact test
    key = f"score/scifact/dense/{main_loss}"
    if key in runs and f"train/{main_loss}" in runs:
        trained = runs[f"train/{main_loss}"]
        validation = trained["validation_scores"]
        val_first = {q: {d: dense_train[q][d] for d in docs} for q, docs in validation.items()}
        guarded = choose_fusion(val_first, validation, train_qrels)  # the shipped rule (significance guard)
        fusion = ScoreFusion(guarded.fusion.method, guarded.best_weight)
        scores = runs[key]["scores"]
        qrels = test.qrels
        first = per_query({q: dict(list(dense_test[q].items())) for q in scores}, qrels)
        firsts = {q: {d: dense_test[q][d] for d in top(dense_test, q, depth)} for q in scores}
        own = per_query({q: ordered(firsts[q], scores[q], depth) for q in scores}, qrels)
        fused = per_query({q: fusion.fuse(firsts[q], scores[q]) for q in scores}, qrels)
        table = {"dense (first stage)": {"nDCG@10": float(np.mean(list(first.values())))},
                 f"ranker alone ({main_loss}, best step {trained['best_step']})": compare(first, own),
                 f"fused, best on validation ({fusion.method}, w={fusion.weight})": compare(first, fused),
                 f"shipped rule: w={guarded.fusion.weight}" + (" (ranker off)" if guarded.fusion.weight == 0 else ""):
                     compare(first, fused if guarded.fusion.weight > 0 else first)}
        lines += [f"## SciFact test, dense top-{depth} ({len(scores)} queries)", "",
                  f"Ranker trained on SciFact train with the {main_loss} loss. Fusion chosen on its {len(validation)} validation "
                  f"queries by 5-fold CV: held-out fused {guarded.cv_fused:.4f} vs dense {guarded.cv_first:.4f} "
                  f"(paired t-test p {guarded.cv_p:.3f}); the shipped rule keeps the ranker only when p < {guarded.alpha}.",
                  "", markdown_table(table, "ranking", ["nDCG@10", "Δ", "t-test p", "randomisation p"]), ""]
        store.data["scifact_test"] = table
        adaptive_rows: dict[str, dict] = {f"all top-{depth}": {"nDCG@10": float(np.mean(list(fused.values()))),
                                                            "input tokens/query": runs[key]["input_tokens_per_query"],
                                                            "s/query": runs[key]["seconds_per_query"]}}
        for kept_key in sorted(k for k in runs if k.startswith("score/scifact/dense-kept")):
            adaptive = runs[kept_key]
            label = kept_key.split("/")[3] if kept_key.count("/") == 4 else "artifact"
            fused_kept = per_query({q: ordered(firsts[q], fusion.fuse({d: firsts[q][d] for d in adaptive["scores"][q]},
                                                                       adaptive["scores"][q]) if len(adaptive["scores"][q]) else {}, depth)
                                    for q in scores}, qrels)
            row = compare(fused, fused_kept)
            row.update({"input tokens/query": adaptive["input_tokens_per_query"], "s/query": adaptive["seconds_per_query"],
                        "tokens saved": 1 - adaptive["input_tokens_per_query"] / runs[key]["input_tokens_per_query"],
                        "seconds saved": 1 - adaptive["seconds_per_query"] / runs[key]["seconds_per_query"],
                        "queries with drops": sum(1 for q in scores if len(adaptive["scores"][q]) < len(scores[q]))})
            adaptive_rows[f"kept only (threshold {label.lstrip('t')})"] = row
        if len(adaptive_rows) > 1:
            lines += ["## Adaptive depth (SciFact test): rank only what the relevance filter keeps", "",
                      "Δ and p: fused order of the kept candidates (the rest of the top below in dense order) against "
                      f"the fused order of the whole top-{depth} (fusion as in the row 'best on validation' above). "
                      "Threshold 'artifact' is the calibrator's own (95% recall on its validation queries).", "",
                      markdown_table(adaptive_rows, "ranked", ["nDCG@10", "Δ", "randomisation p", "input tokens/query", "s/query",
                                                               "tokens saved", "seconds saved", "queries with drops"]), ""]
            store.data["adaptive"] = adaptive_rows

    # DL19: fusion weight by 5-fold CV over queries
    dl_rows, fold_rows = {}, {}
    for first_name, run in dl19_runs.items():
        for name in ["zero-shot", *store.data["settings"]["losses"].split(",")]:
            key = f"score/dl19/{first_name}/{name}"
            if key not in runs:
                continue
            scores = runs[key]["scores"]
            firsts = {q: {d: run[q][d] for d in top(run, q, depth)} for q in scores}
            choice = choose_fusion(firsts, scores, dl19.qrels, folds=5)
            diffs, chosen = [], []
            for held in query_folds(sorted(scores), 5, 0):  # each fold's fusion by the shipped rule on the other four
                inner = [q for q in scores if q not in set(held)]
                rule = choose_fusion({q: firsts[q] for q in inner}, {q: scores[q] for q in inner}, dl19.qrels, folds=5).fusion
                chosen.append(f"{rule.method[0]}{rule.weight}")
                fused_held = per_query({q: rule.fuse(firsts[q], scores[q]) for q in held}, dl19.qrels)
                first_held = per_query({q: firsts[q] for q in held}, dl19.qrels)
                diffs.append(float(np.mean(list(fused_held.values())) - np.mean(list(first_held.values()))))
            own = per_query({q: ordered(firsts[q], scores[q], depth) for q in scores}, dl19.qrels)
            dl_rows[f"{first_name} → {name}"] = {
                "first stage": choice.cv_first, "ranker alone": float(np.mean(list(own.values()))),
                "fused, best on other folds": choice.cv_fused, "shipped rule Δ mean": float(np.mean(diffs)),
                "Δ std": float(np.std(diffs)), "worst fold Δ": float(min(diffs)), "weights": ",".join(chosen),
                "s/query": runs[key]["seconds_per_query"]}
            fold_rows[f"{first_name} → {name}"] = diffs
    if dl_rows:
        lines += [f"## DL19 (43 queries), top-{depth}: fusion weight by 5-fold CV over queries", "",
                  "The rankers never saw DL19. 'fused, best on other folds': each fold's best method and weight on the "
                  "other four, no guard. 'shipped rule': each fold's fusion chosen on the other four by the rule "
                  "train-ranker applies (inner 5-fold CV, ranker off unless p < 0.05); Δ = held-out fused minus first "
                  "stage per fold (i: interpolate, r: RRF, weight 0 = off).", "",
                  markdown_table(dl_rows, "first stage → ranker"), "", "![fusion](fusion.png)", ""]
        store.data["dl19"] = dl_rows
        plot_folds(out / "fusion.png", fold_rows)

    # cost
    cost = {k.split("/", 1)[1]: runs[k] for k in runs if k.startswith("cost/")}
    if cost:
        columns = ["input_tokens_per_query", "output_tokens_per_query", "calls_per_query", "seconds_per_query"]
        lines += ["## Cost per query (DL19 BM25 candidates)", "", markdown_table(cost, "mode / depth", columns), ""]
        for d in (20, 50):
            g, s = cost.get(f"generate/d{d}"), cost.get(f"sliding-window/d{d}")
            if g and s:
                lines.append(f"- depth {d}: full ranking reads {g['input_tokens_per_query'] / s['input_tokens_per_query']:.2f}x "
                             "the sliding window's input tokens.")
        lines.append("")
    save(out, "study", {k: v for k, v in store.data.items() if k != "runs"} | {"machine": machine()}, "\n".join(lines))


def plot_training(path: Path, records: dict[str, dict]) -> None:
    """Loss and validation nDCG@10 per optimiser step, per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, record in records.items():
        logged = [h for h in record.get("history", []) if "loss" in h and "step" in h]
        if logged:
            left.plot([h["step"] for h in logged], [h["loss"] for h in logged], label=name)
        right.plot([h["step"] for h in record["validation"]], [h["val_ndcg@10"] for h in record["validation"]], "o-", label=name)
    right.axhline(next(iter(records.values()))["validation_first_stage"], color="#888888", ls="--", label="first stage")
    left.set(xlabel="optimiser step", ylabel="training loss", title="training loss")
    right.set(xlabel="optimiser step", ylabel="nDCG@10", title="validation (ranker alone)")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_folds(path: Path, diffs: dict[str, list[float]]) -> None:
    """Per-fold held-out nDCG@10 change of the fused ranking against its first stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(diffs) + 1.5))
    for i, values in enumerate(diffs.values()):
        ax.scatter(values, [i] * len(values), color="#2a6fb0")
        ax.scatter([np.mean(values)], [i], marker="|", s=300, color="#d0622a")
    ax.axvline(0, color="#888888")
    ax.axvline(-0.01, color="#d0622a", ls=":", label="1 point below")
    ax.set_yticks(range(len(diffs)), list(diffs))
    ax.set(xlabel="Δ nDCG@10, fused − first stage (held-out fold)", title="DL19 5-fold")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
