"""Load test on loopback: the siftrank service vs a naive FastAPI + sentence-transformers + FAISS endpoint.

Both serve DL19 (the same FAISS vectors: the naive endpoint reads our cached index file) and run in
their own uvicorn processes; a client process keeps ``concurrency`` requests in flight for a fixed
duration per level, cycling the DL19 queries, and records QPS, p50 and p99. The naive endpoint is what
one writes first: a sync handler that encodes the single query with SentenceTransformer (fp32) and
searches FAISS. Ours serves configs/serve.toml (the `make serve` pipeline: bf16 queries on AMX CPUs). Then the primary's latency with and without a shadow variant (a second dense pipeline,
sample rate 1) at the same concurrency.
Results: docs/benchmarks/load.{md,json,png}. Reproduce: `make bench-load` (~4 minutes).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from common import ROOT, arguments, dl19, machine, save, save_figure

NAIVE = '''
import sys, faiss, polars as pl
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer
index = faiss.read_index(sys.argv[1] + "/index.faiss")
ids = pl.read_parquet(sys.argv[1] + "/docs.parquet")
ids, texts = ids["id"].to_list(), ids["text"].to_list()
model = SentenceTransformer(sys.argv[2], device="cpu")
app = FastAPI()
class Q(BaseModel):
    query: str
    k: int = 10
@app.post("/search")
def search(q: Q):
    vector = model.encode([q.query], normalize_embeddings=True)
    scores, rows = index.search(vector, q.k)
    return {"hits": [{"id": ids[r], "text": texts[r], "cosine": float(s)} for s, r in zip(scores[0], rows[0])]}
@app.get("/readyz")
def ready():
    return {"ready": True}
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, log: Path, timeout: float = 600) -> subprocess.Popen:
    """Start a server process and wait until /readyz answers 200 (``timeout`` seconds at most)."""
    import httpx

    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not become ready")


async def drive(port: int, queries: list[str], concurrency: int, seconds: float, seen: list[str] | None = None) -> dict[str, float]:
    """Keep ``concurrency`` requests in flight for ``seconds``; QPS and latency percentiles (ms). ``seen``
    collects the ``query_id`` of every answered request."""
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client:
        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                start = time.perf_counter()
                response = await client.post("/search", json={"query": queries[i % len(queries)], "k": 10})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                    if seen is not None:
                        seen.append(response.json()["query_id"])
                else:
                    errors += 1
                i += concurrency
        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = 1000 * np.array(latencies)
    return {"qps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "requests": len(latencies), "errors": errors}


def measure(command: list[str], port: int, log: Path, queries: list[str], levels: list[int], seconds: float
            ) -> dict[int, dict[str, float]]:
    process = start(command, port, log)
    try:
        asyncio.run(drive(port, queries, levels[0], 2.0))  # warm-up
        return {c: asyncio.run(drive(port, queries, c, seconds)) for c in levels}
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    args = arguments(__doc__, seconds=(float, 10.0, "seconds per concurrency level"),
                     levels=(str, "1,8,32", "concurrency levels"))
    args.data = args.data.resolve()  # written into a config file in another folder
    levels = [int(x) for x in args.levels.split(",")]
    data = dl19(args.data, with_corpus=False)
    queries = list(data.queries.values())
    work = Path(tempfile.mkdtemp(prefix="siftrank-load-"))
    python = sys.executable
    siftrank = str(Path(python).with_name("siftrank"))
    # Our service first: it builds (or reuses) the cached DL19 index the naive endpoint then reads.
    port = free_port()
    ours = measure([siftrank, "serve", "--dataset", str(args.data / "msmarco-dl19"), "--port", str(port),
                    "--pipeline", str(ROOT / "configs" / "serve.toml"),
                    "--event-log", str(work / "ours.db")], port, work / "ours.log", queries, levels, args.seconds)
    print("ours", ours, flush=True)
    from retrieval.data import Dataset
    from retrieval.encoder import Encoder
    from retrieval.indexer import Indexer

    encoder = Encoder()
    index_dir = Indexer(encoder, progress=False).cache_path(Dataset.corpus_only(args.data / "msmarco-dl19"))
    (work / "naive.py").write_text(NAIVE)
    port = free_port()
    naive = measure([python, str(work / "naive.py"), str(index_dir), str(encoder.path), str(port)], port, work / "naive.log", queries, levels, args.seconds)
    print("naive", naive, flush=True)

    experiment = work / "shadow.toml"
    experiment.write_text(textwrap.dedent(f"""
        [service]
        data = "{args.data / 'msmarco-dl19'}"
        event_log = "{work / 'shadow.db'}"
        [variants.primary]
        pipeline = "{ROOT / 'configs' / 'serve.toml'}"
        [variants.candidate]
        pipeline = "{ROOT / 'configs' / 'serve.toml'}"
        [experiment]
        primary = "primary"
        shadows = [{{ variant = "candidate", sample_rate = 1.0, timeout_ms = 5000 }}]
        """))
    shadow_level = [levels[0]]
    port = free_port()
    with_shadow = measure([siftrank, "serve", "--experiment", str(experiment), "--port", str(port)], port,
                          work / "shadow.log", queries, shadow_level, args.seconds)
    print("with shadow", with_shadow, flush=True)

    rows = {}
    for c in levels:
        rows[f"concurrency {c}"] = {"siftrank QPS": ours[c]["qps"], "naive QPS": naive[c]["qps"],
                                    "QPS ratio": ours[c]["qps"] / naive[c]["qps"],
                                    "siftrank p50 ms": ours[c]["p50"], "naive p50 ms": naive[c]["p50"],
                                    "siftrank p99 ms": ours[c]["p99"], "naive p99 ms": naive[c]["p99"]}
    c = shadow_level[0]
    overhead = with_shadow[c]["p50"] / ours[c]["p50"] - 1
    from eval.report import markdown_table

    lines = ["# Load test: siftrank service vs a naive endpoint (loopback, DL19 queries)", "",
             f"{args.seconds:.0f} s per level; both serve the same FAISS flat index over {14_581:,} passages; "
             f"k = 10. Machine: {machine()['cpu']}.", "", markdown_table(rows, "level"), "",
             f"Shadow overhead at concurrency {c}: primary p50 {ours[c]['p50']:.2f} ms without a shadow, "
             f"{with_shadow[c]['p50']:.2f} ms with a dense shadow at sample rate 1 ({overhead:+.1%}); "
             f"p99 {ours[c]['p99']:.2f} vs {with_shadow[c]['p99']:.2f} ms.", "", "![load](load.png)", "",
             "Reproduce: `make bench-load`.", ""]
    save(args.out, "load", {"machine": machine(), "seconds": args.seconds, "ours": ours, "naive": naive,
                            "with_shadow": with_shadow, "shadow_p50_overhead": overhead}, "\n".join(lines))
    plot(args.out / "load.png", levels, ours, naive)


def plot(path: Path, levels: list[int], ours: dict, naive: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, results in (("siftrank", ours), ("naive", naive)):
        axes[0].plot(levels, [results[c]["qps"] for c in levels], marker="o", label=name)
        axes[1].plot(levels, [results[c]["p99"] for c in levels], marker="o", label=name)
    axes[0].set(xlabel="concurrency", ylabel="QPS", title="throughput", xscale="log")
    axes[1].set(xlabel="concurrency", ylabel="p99 ms", title="tail latency", xscale="log", yscale="log")
    for ax in axes:
        ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
