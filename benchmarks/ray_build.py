"""Index build time: one process vs a sharded build on Ray (local cluster on this machine by default).

Builds the DL19 flat index with the Indexer (baseline) and with ``index build --ray`` into ``--shards``
shards, in the same run and precision; prints both times and the ratio, and checks that the sharded
index returns the same top-10 as the single one for the 43 DL19 queries. On one 2-core machine Ray can
only add overhead: the point is that the same command scales out on a cluster (``--address``).
Results: docs/benchmarks/ray_build.{json,md}. Reproduce: `make bench-ray`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import arguments, dl19, machine, save

from retrieval.encoder import Encoder
from retrieval.indexer import Indexer
from retrieval.sharded import ShardedIndex


def main() -> None:
    args = arguments(__doc__, shards=(int, 2, "shards"), address=(str, "local", "Ray address"),
                     precision=(str, "auto", "encoder precision"))
    data = dl19(args.data)
    encoder = Encoder(precision=args.precision)
    start = time.perf_counter()
    single = Indexer(encoder, progress=False).build(data)
    single_s = time.perf_counter() - start
    out = Path(tempfile.mkdtemp(prefix="siftrank-ray-")) / "sharded"
    start = time.perf_counter()
    sharded = ShardedIndex.build(data, {"precision": args.precision}, out, shards=args.shards, address=args.address)
    ray_s = time.perf_counter() - start
    queries = encoder.encode_queries(list(data.queries.values()))
    same = sum(a == b for a, b in zip(single.search(queries, 10)[1], sharded.search(queries, 10)[1]))
    payload = {"single_seconds": single_s, "ray_seconds": ray_s, "shards": args.shards, "address": args.address,
               "same_top10_queries": same, "queries": len(queries), "machine": machine()}
    lines = [f"# Index build: one process vs Ray ({len(single)} DL19 passages, {args.shards} shards, {args.address})", "",
             "| build | seconds | ratio |", "|---|---:|---:|",
             f"| single process (baseline) | {single_s:.1f} | 1.00x |", f"| Ray, {args.shards} shards | {ray_s:.1f} | {single_s / ray_s:.2f}x |", "",
             f"Identical top-10 for {same} of {len(queries)} queries.", "", "Reproduce: `make bench-ray`", ""]
    save(args.out, "ray_build", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
