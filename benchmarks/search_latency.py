"""Search latency and recall of the three index kinds over the DL19 corpus embeddings.

Vectors: the DL19 corpus (14,581 passages) encoded by the default encoder (cached index). Queries:
the 43 DL19 queries, searched one at a time (p50/p99 latency over repeated rounds) and as one batch
(QPS). Recall@10 of IVF and HNSW is measured against exact (flat) search in the same run; latency and
QPS are printed as ratios against flat, the baseline.
Results: docs/benchmarks/search.{json,md,png}.
"""

from __future__ import annotations

import time

import numpy as np
from common import arguments, bar_chart, dl19, machine, save

from retrieval.encoder import Encoder
from retrieval.index import KINDS, Index
from retrieval.indexer import Indexer


def main() -> None:
    args = arguments(__doc__, k=(int, 10, "hits per query"), rounds=(int, 30, "rounds of single-query searches"),
                     device=(str, "cpu", "index device: cpu, gpu or auto"))
    data = dl19(args.data)
    encoder = Encoder()
    flat_cached = Indexer(encoder).cached(data)
    vectors = flat_cached.cpu_index.reconstruct_n(0, len(flat_cached))
    queries = encoder.encode_queries([data.queries[q] for q in data.queries])

    results: dict[str, dict[str, float]] = {}
    exact: list[list[str]] | None = None
    for kind in KINDS:
        start = time.perf_counter()
        index = Index.build(vectors, flat_cached.docs, encoder.identity(), kind=kind, device=args.device)
        index.search(queries[:1], args.k)  # builds the search structure (and a GPU clone) outside the timings
        build = time.perf_counter() - start
        latencies = []
        for _ in range(args.rounds):
            for row in queries:
                t0 = time.perf_counter()
                index.search(row[None, :], args.k)
                latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch_rounds = max(1, args.rounds)
        for _ in range(batch_rounds):
            _, ids = index.search(queries, args.k)
        qps = batch_rounds * len(queries) / (time.perf_counter() - t0)
        exact = ids if kind == "flat" else exact
        assert exact is not None
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, exact)]))
        results[kind] = {"build_seconds": build, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                         "p99_ms": 1000 * float(np.percentile(latencies, 99)), "batch_qps": qps,
                         f"recall@{args.k}_vs_flat": recall, **{k: v for k, v in index.manifest.parameters.items()
                                                               if k not in ("index_kind", "dim", "count")}}

    flat = results["flat"]
    lines = [f"# Search latency, DL19 corpus ({len(vectors)} x {vectors.shape[1]}-d), {len(queries)} queries, "
             f"k={args.k}, device {args.device}, {machine()['cpus']} CPUs", "",
             "| index | build s | p50 ms | p99 ms | p50 speedup vs flat | batch QPS | QPS vs flat | recall@10 vs flat |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, r in results.items():
        lines.append(f"| {kind} | {r['build_seconds']:.2f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{flat['p50_ms'] / r['p50_ms']:.2f}x | {r['batch_qps']:.0f} | {r['batch_qps'] / flat['batch_qps']:.2f}x | "
                     f"{r[f'recall@{args.k}_vs_flat']:.4f} |")
    lines += ["", "Parameters: " + "; ".join(f"{k}: " + ", ".join(f"{p}={v}" for p, v in r.items()
              if p not in ("build_seconds", "p50_ms", "p99_ms", "batch_qps", f"recall@{args.k}_vs_flat")) for k, r in results.items()),
              "", "Reproduce: `make bench-search`", ""]
    save(args.out, "search", {"machine": machine(), "corpus": len(vectors), "queries": len(queries), "k": args.k,
                              "device": args.device, "results": results}, "\n".join(lines))
    bar_chart(args.out / "search.png", list(results), [r["p50_ms"] for r in results.values()], "p50 ms / query",
              "Single-query search latency (lower is better)")


if __name__ == "__main__":
    main()
