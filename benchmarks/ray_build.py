"""Index build time: one process vs a sharded build on Ray (local cluster on this machine by default).

Builds the DL19 flat index with the Indexer (baseline) and with ``index build --ray`` into ``--shards``
shards, in the same run and precision; prints both times and the ratio, and checks that the sharded
index returns the same top-10 as the single one for the 43 DL19 queries. On one 2-core machine Ray can
only add overhead: the point is that the same command scales out on a cluster (``--address``).
Results: docs/benchmarks/ray_build_PRECISION.{json,md}. Reproduce: `make bench-ray`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import arguments, dl19, machine, save

from retrieval.encoder import Encoder
from retrieval.index import Index
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
    (one_scores, one_ids), (ray_scores, ray_ids) = single.search(queries, 10), sharded.search(queries, 10)
    same = sum(a == b for a, b in zip(one_ids, ray_ids))
    overlap = sum(len(set(a) & set(b)) for a, b in zip(one_ids, ray_ids)) / (10 * len(one_ids))
    # Differences can only come from the vectors: compare them directly, passage by passage.
    shards = [Index.load(out / f"shard-{i}", device="cpu") for i in range(args.shards)]
    ray_vectors = dict(zip((d for s in shards for d in s.docs["id"].to_list()), np.vstack([flat_vectors(s) for s in shards])))
    mine = flat_vectors(single)
    max_diff = float(max(np.abs(mine[i] - ray_vectors[d]).max() for i, d in enumerate(single.docs["id"].to_list())))
    score_diff = float(np.abs(np.asarray(one_scores) - np.asarray(ray_scores)).max())
    payload = {"single_seconds": single_s, "ray_seconds": ray_s, "shards": args.shards, "address": args.address,
               "precision": encoder.precision, "same_top10_queries": same, "queries": len(queries),
               "top10_overlap": overlap, "max_vector_difference": max_diff, "max_top10_score_difference": score_diff,
               "machine": machine()}
    lines = [f"# Index build: one process vs Ray ({len(single)} DL19 passages, {args.shards} shards, {args.address})", "",
             "| build | seconds | ratio |", "|---|---:|---:|",
             f"| single process (baseline) | {single_s:.1f} | 1.00x |", f"| Ray, {args.shards} shards | {ray_s:.1f} | {single_s / ray_s:.2f}x |", "",
             f"Encoder precision {encoder.precision}. Identical top-10 for {same} of {len(queries)} queries; top-10 overlap "
             f"{overlap:.3f}; largest difference between the two builds' vectors {max_diff:.2e}, between top-10 scores "
             f"{score_diff:.2e}.", "", "Reproduce: `make bench-ray`", ""]
    save(args.out, f"ray_build_{encoder.precision}", payload, "\n".join(lines))


def flat_vectors(index: Index) -> np.ndarray:
    """The stored vectors of a flat index, in its passage order."""
    return index.cpu_index.reconstruct_n(0, len(index))


if __name__ == "__main__":
    main()
