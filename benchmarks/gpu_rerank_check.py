"""GPU check of the LLM ranker: BM25 top-``depth`` (100) of DL19 re-ranked on the GPU in bf16.

For ``--queries`` DL19 queries and each mode (first-token, generate): seconds per query, prompt tokens
per second (prefill) and generated tokens per second, parse failures, nDCG@10 over those queries, and
the same first-token ranking on the CPU for a few queries (agreement of the top-10 and the speed ratio).
``--adapter`` evaluates a trained ranker instead of the zero-shot model. Without a GPU it says so and
exits 2: nothing is measured, nothing is written. Results: docs/ranking/gpu_check.{json,md}.
Run: `make gpu-rerank-check` on a machine with a GPU (the torch build there must have CUDA).
"""

from __future__ import annotations

import sys
import time

from common import arguments, machine, save
from rerank_study import rerank_run, scored

from eval.report import markdown_table
from retrieval.causal_lm import CausalLM
from retrieval.data import Dataset, read_run
from retrieval.rerank import ListwiseRanker


def main() -> None:
    args = arguments(__doc__, model=(str, "bundled:SmolLM2-135M-Instruct", "causal LM"), adapter=(str, "", "ranker adapter"),
                     depth=(int, 100, "candidates per query"), queries=(int, 43, "DL19 queries"),
                     cpu_queries=(int, 3, "queries also ranked on the CPU"), max_passage_tokens=(int, 64, "passage truncation"))
    import torch

    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False; the ranker's GPU path is not checked on this machine", file=sys.stderr)
        sys.exit(2)
    args.out = args.out.parent / "ranking" if args.out.name == "benchmarks" else args.out
    data = Dataset.load(args.data / "msmarco-dl19")  # qrels.test.tsv: the standard re-ranking setup (BM25 0.5058)
    run = read_run(data.root / "runs" / "run.BM25.trec")
    qids = sorted(data.queries)[: args.queries]
    adapter = args.adapter or None
    gpu = CausalLM(args.model, adapter=adapter, device="cuda", precision="bf16")
    rows = {}
    for mode in ("first-token", "generate"):
        ranker = ListwiseRanker(gpu, mode=mode, max_passage_tokens=args.max_passage_tokens)
        rerank_run(ranker, data, run, qids[:1], args.depth)  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        started = time.perf_counter()
        reranked, stats = rerank_run(ranker, data, run, qids, args.depth)
        record = scored(data, reranked, qids, stats, started)
        record["prompt_tokens_per_second"] = stats.input_tokens / stats.seconds
        record["generated_tokens_per_second"] = stats.output_tokens / stats.seconds if stats.output_tokens else 0.0
        rows[f"gpu bf16 {mode}"] = record
    cpu_ranker = ListwiseRanker(CausalLM(args.model, adapter=adapter, device="cpu"), mode="first-token",
                                max_passage_tokens=args.max_passage_tokens)
    gpu_ranker = ListwiseRanker(gpu, mode="first-token", max_passage_tokens=args.max_passage_tokens)
    few = qids[: args.cpu_queries]
    cpu_run, cpu_stats = rerank_run(cpu_ranker, data, run, few, args.depth)
    gpu_run, gpu_stats = rerank_run(gpu_ranker, data, run, few, args.depth)
    top = lambda r, q: [d for d, _ in sorted(r[q].items(), key=lambda x: -x[1])[:10]]  # noqa: E731
    agreement = sum(len(set(top(cpu_run, q)) & set(top(gpu_run, q))) for q in few) / (10 * len(few))
    rows["cpu first-token"] = {"seconds_per_query": cpu_stats.seconds / len(few), "queries": len(few)}
    columns = ["nDCG@10", "queries", "input_tokens_per_query", "output_tokens_per_query", "seconds_per_query",
               "prompt_tokens_per_second", "generated_tokens_per_second", "parse_failure_rate"]
    lines = [f"# Ranker GPU check ({torch.cuda.get_device_name(0)}, {args.model}, depth {args.depth})", "",
             markdown_table(rows, "run", columns), "",
             f"First-token top-10 agreement GPU bf16 vs CPU ({len(few)} queries): {agreement:.3f}; "
             f"GPU is {cpu_stats.seconds / gpu_stats.seconds:.1f}x faster.", ""]
    save(args.out, "gpu_check", {"rows": rows, "agreement": agreement, "machine": machine(),
                                 "gpu": torch.cuda.get_device_name(0)}, "\n".join(lines))


if __name__ == "__main__":
    main()
