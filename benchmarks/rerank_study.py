"""LLM full-ranker study on DL19: query-level k-fold training and evaluation, cost of the modes, depth.

For each fold the ranker is LoRA-trained on the other folds' DL19 queries (BM25 top-``pool`` candidates,
labels from the qrels with ties and unjudged ordered by the fused published runs) plus SciFact train and
the MS MARCO toy lists, once with plain cross-entropy and once with the importance-aware loss; then the
held-out queries' top-``depth`` candidates of BM25 (runs/run.BM25.trec) and of our dense first stage are
re-ranked by the zero-shot model and by both trained models, and shuffled (the floor: 20 random orders).
nDCG@10 is over the held-out queries of each fold (mean ± std over folds). Cost: on up to
``--cost-queries`` of fold 0's held-out queries at equal depth, with fold 0's adapter, full ranking
(generate) vs the sliding window, and first-token vs generate: input/output tokens and seconds per
query. Depth: nDCG@10 and seconds per query of first-token ranking at each of ``--depths``, every query
ranked by the adapter of the fold that held it out (so no number here comes from a query the ranker was
trained on).
Records are stored one by one (docs/ranking/results.json) and skipped when present, so the study can
be resumed; trained adapters are kept in the siftrank cache. Results: docs/ranking/results.{md,json},
depth.png. Reproduce: `make rerank-study` (CPU: hours; GPU: `make rerank-study DEVICE=cuda`).
"""

from __future__ import annotations

import functools
import hashlib
import random
import time
from pathlib import Path

import numpy as np
from common import ResultStore, arguments

from eval.metrics import MetricSuite
from eval.report import markdown_table
from retrieval.artifacts import cache_dir
from retrieval.causal_lm import CausalLM
from retrieval.data import Dataset, Run, read_run
from retrieval.rerank import ListwiseRanker, RankStats
from training.listwise import ListwiseTrainer, build_lists, training_qids

SHOW = ("nDCG@10", "first_stage_nDCG@10", "seconds_per_query")


def first_stages(data: Dataset, pool: int) -> dict[str, Run]:
    """BM25 (the published run) and our dense retrieval (bundled MiniLM, flat index) over DL19."""
    from retrieval.config import PipelineConfig
    from retrieval.pipeline import Pipeline

    bm25 = read_run(data.root / "runs" / "run.BM25.trec")
    dense = Pipeline.from_config(PipelineConfig(), data)
    hits = dense.run(data.queries, depth=pool).hits
    return {"bm25": bm25, "dense": {q: {h.id: h.score for h in hs} for q, hs in hits.items()}}


def rerank_run(ranker: ListwiseRanker | RandomOrder, data: Dataset, run: Run, qids: list[str], depth: int) -> tuple[Run, RankStats]:
    """``run`` with each query's top ``depth`` re-ordered by ``ranker``; the rest keep their order below."""
    out: Run = {}
    total = RankStats()
    for q in qids:
        ranked = sorted(run.get(q, {}), key=lambda d: (-run[q][d], d))
        top = ranked[:depth]
        order, stats = ranker.rank(data.queries[q], data.store.texts(top))
        total.add(stats)
        out[q] = {top[i]: float(2 * len(ranked) - r) for r, i in enumerate(order)}
        out[q].update({d: float(len(ranked) - r) for r, d in enumerate(ranked[depth:])})
    return out, total


class RandomOrder:
    """The floor a ranker must beat: the candidates in a random order (seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def rank(self, query: str, passages: list[str]) -> tuple[list[int], RankStats]:
        order = list(range(len(passages)))
        self.rng.shuffle(order)
        return order, RankStats()


def shuffled(data: Dataset, run: Run, qids: list[str], depth: int, seeds: int = 20) -> dict:
    """nDCG@10 of the top ``depth`` in random order, averaged over ``seeds`` shuffles."""
    values = [scored(data, rerank_run(RandomOrder(seed), data, run, qids, depth)[0], qids)["nDCG@10"] for seed in range(seeds)]
    return {"nDCG@10": float(np.mean(values)), "queries": len(qids), "shuffles": seeds}


def scored(data: Dataset, run: Run, qids: list[str], stats: RankStats | None = None, started: float | None = None) -> dict:
    qrels = {q: data.qrels[q] for q in qids}
    record: dict = {"nDCG@10": MetricSuite(qrels).evaluate({q: run[q] for q in qids if q in run})["nDCG@10"], "queries": len(qids)}
    if stats is not None:
        n = max(1, len(qids))
        record.update({"input_tokens_per_query": stats.input_tokens / n, "output_tokens_per_query": stats.output_tokens / n,
                       "seconds_per_query": stats.seconds / n, "calls_per_query": stats.calls / n,
                       "parse_failure_rate": stats.parse_failures / max(1, stats.calls),
                       "repaired_rate": stats.repaired / max(1, stats.calls)})
    if started is not None:
        record["wall_seconds"] = time.perf_counter() - started
    return record


def main() -> None:
    args = arguments(__doc__, model=(str, "bundled:SmolLM2-135M-Instruct", "causal LM"), device=(str, "auto", "auto, cpu, cuda"),
                     folds=(int, 5, "query folds"), depth=(int, 20, "re-ranking depth of the CV study"),
                     depths=(str, "10,20,50", "depths of the depth curve"), pool=(int, 100, "training candidates per query"),
                     samples=(int, 4, "lists per training query"), steps=(int, 300, "optimiser steps"),
                     accumulation=(int, 4, "lists per step"), lr=(float, 3e-4, "learning rate"),
                     max_passage_tokens=(int, 48, "passage truncation"), losses=(str, "ce,importance", "losses"),
                     modes=(str, "first-token,generate", "modes of the CV evaluation on BM25 candidates"),
                     dense_modes=(str, "first-token,generate", "modes of the CV evaluation on dense candidates"),
                     checkpointing=(int, 1, "1: gradient checkpointing (less memory, ~30% more compute)"),
                     extra=(str, "scifact:train,msmarco-train-toy/flagembedding_msmarco_10q_25hardneg.jsonl", "extra training data"),
                     cost_queries=(int, 10, "queries for the cost comparison"), window=(int, 10, "sliding window"),
                     stride=(int, 5, "sliding stride"), queries=(int, 0, "use only the first N queries (smoke runs)"))
    args.out = args.out.parent / "ranking" if args.out.name == "benchmarks" else args.out
    store = ResultStore(args.out / "results.json")
    store.data["settings"] = {k: str(v) for k, v in vars(args).items() if k not in ("data", "out")}
    data = Dataset.load(args.data / "msmarco-dl19")  # qrels.test.tsv: the standard re-ranking setup (BM25 0.5058)
    if args.queries:
        keep = sorted(data.queries)[: args.queries]
        data.queries, data.qrels = {q: data.queries[q] for q in keep}, {q: data.qrels[q] for q in keep}
    qids = sorted(data.queries)
    stages = first_stages(data, args.pool)
    extra = [str(args.data / e) for e in args.extra.split(",") if e]
    zero = CausalLM(args.model, device=args.device)
    recipe = hashlib.sha1(repr((args.lr, args.samples, args.pool, args.max_passage_tokens, args.extra)).encode()).hexdigest()[:8]
    adapters = cache_dir("rerank-study") / f"{Path(args.model).name}-s{args.steps}x{args.accumulation}-d{args.depth}-{recipe}"

    for fold in range(args.folds):
        _, held = training_qids(data, args.folds, fold)
        for first, run in stages.items():
            store.run(f"cv/{first}/first-stage/fold{fold}", lambda run=run, held=held: scored(data, run, held), SHOW)
            store.run(f"cv/{first}/random-order/fold{fold}", lambda run=run, held=held: shuffled(data, run, held, args.depth), SHOW)
        rankers = {"zero-shot": zero}
        for loss in args.losses.split(","):
            folder = adapters / f"{loss}-fold{fold}"
            if not (folder / "manifest.json").is_file():
                started = time.perf_counter()
                trainer = ListwiseTrainer(args.model, loss=loss, depth=args.depth, max_passage_tokens=args.max_passage_tokens,
                                          learning_rate=args.lr, steps=args.steps, accumulation=args.accumulation, seed=fold,
                                          gradient_checkpointing=bool(args.checkpointing))
                lists, used = build_lists(data, stages["bm25"], extra, args.depth, args.pool, args.samples, args.folds, fold)
                log = trainer.train(lists)
                trainer.save(folder, log, data=used, overwrite=True)
                store.keep(f"train/{loss}/fold{fold}", {**log, "wall_seconds": time.perf_counter() - started})
            rankers[loss] = CausalLM(args.model, adapter=folder, device=args.device)
        modes = {"bm25": args.modes.split(","), "dense": args.dense_modes.split(",")}
        for name, llm in rankers.items():
            for first, run in stages.items():
                for mode in modes[first]:
                    ranker = ListwiseRanker(llm, mode=mode, max_passage_tokens=args.max_passage_tokens)
                    def evaluate(ranker=ranker, run=run, held=held) -> dict:
                        started = time.perf_counter()
                        reranked, stats = rerank_run(ranker, data, run, held, args.depth)
                        return scored(data, reranked, held, stats, started)
                    store.run(f"cv/{first}/{name}/{mode}/fold{fold}", evaluate, SHOW)
        rankers.clear()

    # Cost and depth use the last loss's adapters, each on the queries its fold held out (never trained on).
    best = args.losses.split(",")[-1]
    @functools.cache  # one merged model per fold, shared by the cost modes and every depth
    def trained(fold: int) -> CausalLM:
        return CausalLM(args.model, adapter=adapters / f"{best}-fold{fold}", device=args.device)
    cost_q = training_qids(data, args.folds, 0)[1][: args.cost_queries]
    for mode in ("generate", "sliding-window", "first-token"):
        ranker = ListwiseRanker(trained(0), mode=mode, window=args.window, stride=args.stride, max_passage_tokens=args.max_passage_tokens)
        def cost(ranker=ranker) -> dict:
            started = time.perf_counter()
            reranked, stats = rerank_run(ranker, data, stages["bm25"], cost_q, args.depth)
            return scored(data, reranked, cost_q, stats, started)
        store.run(f"cost/{mode}/d{args.depth}", cost, SHOW)
    for depth in (int(d) for d in args.depths.split(",")):
        def curve(depth=depth) -> dict:
            started = time.perf_counter()
            reranked: Run = {}
            total = RankStats()
            for fold in range(args.folds):
                ranker = ListwiseRanker(trained(fold), mode="first-token", max_passage_tokens=args.max_passage_tokens)
                part, stats = rerank_run(ranker, data, stages["bm25"], training_qids(data, args.folds, fold)[1], depth)
                reranked.update(part)
                total.add(stats)
            return scored(data, reranked, qids, total, started)
        store.run(f"depth/first-token/d{depth}", curve, SHOW)
    report(args.out, store)


def report(out: Path, store: ResultStore) -> None:
    """Tables (mean ± std over folds) and the depth plot."""
    runs = store.runs
    cv: dict[str, dict] = {}
    for key, record in runs.items():
        if key.startswith("cv/"):
            _, first, name, *rest = key.split("/")
            label = f"{first} → {name}" + (f" ({rest[0]})" if len(rest) > 1 else "")
            cv.setdefault(label, {}).setdefault("folds", []).append(record)
    rows = {}
    for label, entry in cv.items():
        records = entry["folds"]
        row: dict = {"folds": len(records)}
        for metric in ("nDCG@10", "seconds_per_query", "input_tokens_per_query", "output_tokens_per_query", "parse_failure_rate"):
            values = [r[metric] for r in records if metric in r]
            if values:
                row[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        rows[label] = row
    cost = {k.split("/")[1]: v for k, v in runs.items() if k.startswith("cost/")}
    depth = {int(k.rsplit("/d", 1)[1]): v for k, v in runs.items() if k.startswith("depth/")}
    columns = ["nDCG@10", "input_tokens_per_query", "output_tokens_per_query", "calls_per_query", "seconds_per_query", "parse_failure_rate"]
    lines = ["# LLM full-ranker on DL19", "", f"Settings: `{store.data.get('settings', {})}`", "",
             "## Query-level cross-validation (nDCG@10 over held-out queries, mean ± std over folds)", "",
             markdown_table(rows, "first stage → ranker (mode)", ["folds", "nDCG@10", "seconds_per_query",
                                                                  "input_tokens_per_query", "output_tokens_per_query",
                                                                  "parse_failure_rate"]), "",
             "## Cost at equal depth (BM25 candidates)", "", markdown_table(cost, "mode", columns) if cost else "(not run)", ""]
    if "generate" in cost and "sliding-window" in cost:
        g, s, f = cost["generate"], cost["sliding-window"], cost.get("first-token")
        lines.append(f"Full ranking / sliding window input tokens: {g['input_tokens_per_query'] / s['input_tokens_per_query']:.2f}x; "
                     f"seconds: {g['seconds_per_query'] / s['seconds_per_query']:.2f}x.")
        if f:
            lines.append(f"First-token is {g['seconds_per_query'] / f['seconds_per_query']:.1f}x faster than generate.")
        lines.append("")
    lines += ["## Depth (first-token, BM25 candidates, all queries, each by its held-out fold's adapter)", "",
              markdown_table({f"top-{d}": depth[d] for d in sorted(depth)}, "depth", columns) if depth else "(not run)", "",
              "![depth](depth.png)", "", "Reproduce: `make rerank-study`.", ""]
    from common import save

    save(out, "results", store.data, "\n".join(lines))
    if depth:
        plot_depth(out / "depth.png", depth)


def plot_depth(path: Path, depth: dict[int, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = sorted(depth)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ds, [depth[d]["nDCG@10"] for d in ds], "o-", color="#2a6fb0", label="nDCG@10")
    ax.set(xlabel="re-ranking depth", ylabel="nDCG@10", title="First-token ranking of BM25 candidates")
    right = ax.twinx()
    right.plot(ds, [depth[d]["seconds_per_query"] for d in ds], "s--", color="#d0622a", label="s / query")
    right.set_ylabel("seconds per query")
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
