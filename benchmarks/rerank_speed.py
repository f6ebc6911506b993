"""First-token LLM re-ranking speed: seconds per query at depth 20 and 50 on DL19's BM25 run, against the
ranker as it was before (measured in the same run), with the ranking it gives.

Baseline ("per-digit steps"): the previous scoring, kept here as it was: one prefill of the whole prompt,
then one step per identifier digit over the KV cache copied once per trie row, and no reuse across
queries. Ours: one prefill after the prefix the previous query's prompt shares (the chat template and
instruction), and one tree-attention step for every identifier's later digits. Each at fp32, bf16 and
dynamic int8 (torch), SmolLM2-135M, ``--queries`` DL19 queries, BM25 top-``depth``, 48-token passages.
Wall seconds per query include building the prompt. nDCG@10 (43 queries, graded) of the LLM's own order
at depth 20 for each precision, beside BM25's, so that a faster precision's cost in quality is seen.
Results: docs/benchmarks/rerank.{json,md,png}. `make bench-rerank`.
"""

from __future__ import annotations

import time

import torch
from common import arguments, bar_chart, dl19, machine, save

from eval.report import markdown_table
from retrieval.causal_lm import CausalLM
from retrieval.data import read_run
from retrieval.measures import MetricSuite
from retrieval.rerank import ListwiseRanker, _cache_argument


def per_digit_scores(ranker: ListwiseRanker, query: str, passages: list[str]) -> list[float]:
    """The previous first-token scoring (the baseline): per-digit steps over a cache copied per trie row."""
    model = ranker.llm.model
    ids = torch.tensor([ranker.prompt(query, passages).ids])
    opening = ranker._ids("[")
    paths = {i: ranker._ids(f"[{i + 1}]")[len(opening):] for i in range(len(passages))}
    name = _cache_argument(model)
    with torch.inference_mode():
        out = model(torch.cat([ids, torch.tensor([opening])], dim=1), use_cache=True, logits_to_keep=1)
        cache = getattr(out, name)
        logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores = {i: float(logp[p[0]]) for i, p in paths.items()}
        prefixes: list[tuple[int, ...]] = [()]
        depth = 1
        while True:
            nexts = sorted({tuple(p[:depth]) for p in paths.values() if len(p) > depth})
            if not nexts:
                break
            cache.batch_select_indices(torch.tensor([prefixes.index(p[:-1]) for p in nexts]))
            out = model(torch.tensor([[p[-1]] for p in nexts]), use_cache=True, **{name: cache})
            cache, prefixes = getattr(out, name), nexts
            rows = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            for i, p in paths.items():
                if len(p) > depth:
                    scores[i] += float(rows[prefixes.index(tuple(p[:depth])), p[depth]])
            depth += 1
    return [scores[i] for i in range(len(passages))]


def main() -> None:
    args = arguments(__doc__, queries=(int, 12, "queries timed per row"), precisions=(str, "fp32,bf16,int8", "LLM precisions"),
                     quality=(int, 1, "1: nDCG@10 of every precision at depth 20 on all 43 queries"))
    data = dl19(args.data)
    bm25 = read_run(data.root / "runs" / "run.BM25.trec")
    qids = sorted(q for q in data.queries if q in bm25)

    def top(q: str, depth: int) -> list[str]:
        return sorted(bm25[q], key=lambda d: -bm25[q][d])[:depth]

    rows: dict[str, dict] = {}
    auto = CausalLM().precision  # the one-time fp32/bf16 measurement, cached per CPU model
    quality: dict[str, dict[str, float]] = {}
    suite = MetricSuite(data.qrels)
    for precision in args.precisions.split(","):
        ranker = ListwiseRanker(CausalLM(precision=precision), mode="first-token", max_passage_tokens=48)  # type: ignore[arg-type]
        for depth in (20, 50):
            texts = {q: data.store.texts(top(q, depth)) for q in qids[:args.queries]}
            per_digit_scores(ranker, data.queries[qids[0]], texts[qids[0]])  # warm-up
            for label, fn in (("per-digit steps (before)", per_digit_scores), ("tree step + shared prefix", ListwiseRanker.first_token_scores)):
                start = time.perf_counter()
                for q, passages in texts.items():
                    fn(ranker, data.queries[q], passages)
                seconds = (time.perf_counter() - start) / len(texts)
                rows[f"{precision} depth {depth} {label}"] = {"s / query": seconds}
                print(precision, depth, label, round(seconds, 3), flush=True)
            base = rows[f"{precision} depth {depth} per-digit steps (before)"]["s / query"]
            rows[f"{precision} depth {depth} tree step + shared prefix"]["speed-up"] = base / seconds
        if args.quality:
            run = {}
            for q in qids:
                docs = top(q, 20)
                s = ranker.first_token_scores(data.queries[q], data.store.texts(docs))
                run[q] = {d: float(v) for d, v in zip(docs, s)}
            quality[f"SmolLM2 first-token {precision}"] = suite.evaluate(run)
        ranker.llm.close()
    if args.quality:
        quality = {"BM25 top-20 (input order)": suite.evaluate({q: {d: -r for r, d in enumerate(top(q, 20))} for q in qids}), **quality}
    cpu = machine()["cpu"]
    markdown = report(rows, quality, auto, args.queries, cpu)
    save(args.out, "rerank", {"machine": machine(), "auto_precision": auto, "rows": rows, "quality": quality}, markdown)
    picked = {k: v for k, v in rows.items() if "depth 20" in k}
    bar_chart(args.out / "rerank.png", [k.replace(" depth 20", "").replace(" + shared prefix", "")[:26] for k in picked],
              [v["s / query"] for v in picked.values()], "seconds / query", f"First-token re-ranking of 20, {cpu}")


def report(rows: dict[str, dict], quality: dict[str, dict[str, float]], auto: str, queries: int, cpu: str) -> str:
    """The Markdown of one run: seconds per query and speed-ups, then ranking quality by precision."""
    lines = [f"# First-token LLM re-ranking, DL19 BM25 top-20 / top-50 ({cpu})", "",
             f"SmolLM2-135M-Instruct, 48-token passages, {queries} queries per row, wall seconds per query. "
             f"precision auto picks **{auto}** on this CPU (one-time prefill measurement).", "",
             markdown_table(rows, "precision, depth, scoring"), ""]
    if quality:
        lines += ["Ranking quality, 43 queries, the LLM's own order of BM25 top-20 (zero-shot):", "",
                  markdown_table({k: {m: v[m] for m in ("nDCG@10", "RR(rel=2)@10")} for k, v in quality.items()}, "ranking"), ""]
    lines += ["Reproduce: `make bench-rerank`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
