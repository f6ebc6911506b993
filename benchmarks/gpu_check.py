"""GPU check: the same FAISS index on GPU and on CPU must give the same top-10; how fast is each?

Run on a machine with a GPU and the `gpu` extra (faiss-gpu): `make FAISS=gpu install gpu-check`.
Encodes the DL19 corpus on the GPU (fp16) and a slice on the CPU (auto precision) for the speed
ratio; builds flat and IVF indexes through the one Index code path with device=gpu and device=cpu;
searches the 43 DL19 queries plus `--synthetic` random unit vectors; reports top-10 agreement for flat
(exact search: GPU fp16 storage may swap near-ties) and IVF, and QPS of each device; then flat and IVF
over 1M synthetic 384-d vectors on each device: build time, QPS, recall@10 of each against exact CPU search.
Without a GPU it says so and exits 2: nothing is measured, nothing is written.
Results: docs/benchmarks/gpu_check.{json,md}.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from common import arguments, dl19, machine, save

from retrieval.encoder import Encoder
from retrieval.index import Index, gpu_count


def qps(index: Index, queries: np.ndarray, k: int, rounds: int = 5) -> tuple[float, list[list[str]]]:
    index.search(queries[:8], k)  # warm-up (GPU clone, kernels)
    start = time.perf_counter()
    for _ in range(rounds):
        _, ids = index.search(queries, k)
    return rounds * len(queries) / (time.perf_counter() - start), ids


def main() -> None:
    args = arguments(__doc__, synthetic=(int, 10000, "extra random queries"), cpu_slice=(int, 2000, "passages encoded on CPU"),
                     base=(int, 1_000_000, "synthetic vectors for the large-index check"))
    import torch

    if gpu_count() == 0 or not torch.cuda.is_available():
        print(f"no GPU: FAISS sees {gpu_count()} GPUs, torch.cuda.is_available()={torch.cuda.is_available()}; "
              "the GPU path is not checked on this machine", file=sys.stderr)
        sys.exit(2)
    data = dl19(args.data)
    texts = data.doc_texts()
    gpu_encoder = Encoder(device="cuda")
    start = time.perf_counter()
    vectors = gpu_encoder.encode_documents(texts)
    gpu_pps = len(texts) / (time.perf_counter() - start)
    cpu_encoder = Encoder(device="cpu")
    start = time.perf_counter()
    cpu_vectors = cpu_encoder.encode_documents(texts[: args.cpu_slice])
    cpu_pps = args.cpu_slice / (time.perf_counter() - start)
    agreement = float((cpu_vectors * vectors[: args.cpu_slice]).sum(axis=1).min())

    rng = np.random.default_rng(0)
    synthetic = rng.normal(size=(args.synthetic, vectors.shape[1])).astype(np.float32)
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    queries = np.vstack([gpu_encoder.encode_queries(list(data.queries.values())), synthetic])
    rows = {}
    for kind in ("flat", "ivf"):
        per_device = {}
        for device in ("cpu", "gpu"):
            index = Index.build(vectors, data.corpus, gpu_encoder.identity(), kind=kind, device=device)
            assert index.on_gpu == (device == "gpu")
            per_device[device] = qps(index, queries, 10)
        (cpu_qps, cpu_ids), (gpu_qps, gpu_ids) = per_device["cpu"], per_device["gpu"]
        rows[kind] = {"cpu_qps": cpu_qps, "gpu_qps": gpu_qps, "speedup": gpu_qps / cpu_qps,
                      "identical_top10_lists": float(np.mean([a == b for a, b in zip(cpu_ids, gpu_ids)])),
                      "top10_set_overlap": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_ids, gpu_ids)]))}
    large = synthetic_scale(args.base, vectors.shape[1], gpu_encoder.identity())
    device_name = torch.cuda.get_device_name(0)
    lines = [f"# GPU check on {device_name} ({gpu_count()} GPU(s) visible to FAISS)", "",
             f"Encoding DL19: GPU fp16 {gpu_pps:.0f} passages/s vs CPU {cpu_encoder.precision} {cpu_pps:.0f} passages/s "
             f"({gpu_pps / cpu_pps:.1f}x); min cosine GPU vs CPU embeddings {agreement:.4f}.", "",
             f"Search: {len(queries)} queries ({len(data.queries)} DL19 + {args.synthetic} random), k=10, {len(vectors)} passages.", "",
             "| index | CPU QPS | GPU QPS | GPU / CPU | identical top-10 lists | top-10 overlap |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['cpu_qps']:.0f} | {r['gpu_qps']:.0f} | {r['speedup']:.1f}x | {r['identical_top10_lists']:.4f} | "
              f"{r['top10_set_overlap']:.4f} |" for k, r in rows.items()]
    lines += ["", f"{args.base:,} synthetic {vectors.shape[1]}-d unit vectors, 1,000 queries, k=10 "
              "(recall@10 against exact CPU search):", "",
              "| index | device | build s | QPS | recall@10 vs exact | identical top-10 lists vs CPU flat |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['kind']} | {r['device']} | {r['build_seconds']:.1f} | {r['qps']:.0f} | {r['recall@10']:.4f} | "
              f"{r['identical_vs_cpu_flat']:.4f} |" for r in large]
    lines += ["", "Reproduce: `make FAISS=gpu install gpu-check` on a GPU machine.", ""]
    save(args.out, "gpu_check", {"device": device_name, "machine": machine(), "encode_pps": {"gpu": gpu_pps, "cpu": cpu_pps},
                                 "embedding_min_cosine": agreement, "search": rows, "synthetic": large}, "\n".join(lines))


def synthetic_scale(n: int, dim: int, identity: dict, queries: int = 1000, devices: tuple[str, ...] = ("cpu", "gpu")) -> list[dict]:
    """Flat and IVF over ``n`` random unit vectors on CPU and GPU: build time, QPS, recall@10 vs exact."""
    import polars as pl

    rng = np.random.default_rng(1)
    # clustered like real embeddings (isotropic noise has no neighbourhoods for IVF to find)
    centres = rng.normal(size=(max(1, n // 1000), dim)).astype(np.float32)
    base = centres[rng.integers(len(centres), size=n)] + rng.normal(size=(n, dim)).astype(np.float32) * 0.6
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    picks = centres[rng.integers(len(centres), size=queries)] + rng.normal(size=(queries, dim)).astype(np.float32) * 0.6
    picks /= np.linalg.norm(picks, axis=1, keepdims=True)
    docs = pl.DataFrame({"id": [str(i) for i in range(n)], "title": [""] * n, "text": [""] * n})
    out, exact = [], None
    for kind in ("flat", "ivf"):
        for device in devices:
            start = time.perf_counter()
            index = Index.build(base, docs, {**identity, "dim": dim}, kind=kind, device=device)
            index.warm()
            build = time.perf_counter() - start
            speed, ids = qps(index, picks, 10, rounds=3)
            if exact is None:  # CPU flat comes first: the exact answer
                exact = ids
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]))
            same = float(np.mean([a == b for a, b in zip(ids, exact)]))
            out.append({"kind": kind, "device": device, "build_seconds": build, "qps": speed, "recall@10": recall,
                        "identical_vs_cpu_flat": same})
    return out


if __name__ == "__main__":
    main()
