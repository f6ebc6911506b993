"""The live corpus through the real service (`make bench-live`): parity, durability under kill -9, latencies.

1. **Parity.** DL19's corpus is streamed through ``POST /documents`` (batches of ``--batch``) into a service that
   started from an empty index, with the pipeline `make serve` runs (configs/serve.toml: the encoder measured on
   this CPU). Every DL19 query's top-10 over the API is compared with the same encoder's ``index build`` of the
   corpus, and both are scored (nDCG@10, qrels.test.in_corpus.tsv).
2. **Load and kill -9.** ``--writers`` clients upsert batches of new documents and delete some of their own
   acknowledged ones while ``--readers`` clients search: ``--seconds`` read-only, then ``--seconds`` with writes,
   then writes with a compaction (``/admin/compact``) running; then the server gets SIGKILL mid-stream. After a
   restart (snapshot + log replay): every acknowledged upsert is there with its text, every acknowledged
   delete is gone (and no search returns it), and each unacknowledged batch is either wholly there or wholly
   absent. Reader 5xx are counted per phase, and search p50/p99 are compared across the phases (one run).
3. **Update latency.** A prober writes one document at a time during the write phases and searches for it
   (its own text as the query) until it is in the top 3: acknowledgment → visible, p50/p99.
Results: docs/live/live.{md,json,png}, the CPU named. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, arguments, dl19, machine, save, save_figure
from load import free_port, start

from retrieval.config import PipelineConfig
from retrieval.index import Index
from retrieval.indexer import Indexer
from retrieval.measures import MetricSuite, paired_test
from retrieval.pipeline import Pipeline

KEY = "bench-live-key"
PHASES = ("read-only", "writes", "writes + compaction")


def siftrank() -> str:
    return str(Path(os.sys.executable).with_name("siftrank"))


def reference(data, config: PipelineConfig, folder: Path) -> tuple[dict[str, list[str]], dict[str, dict[str, float]], float]:
    """The same encoder's ``index build`` of the corpus: each query's top-10 and run, and its build rate."""
    encoder = config.encoder.build()
    index = Indexer(encoder, "flat").build(data)
    rate = float(index.manifest.metrics["passages_per_second"])  # encoding only (not the int8 calibration)
    index.save(folder / "reference")
    Index.build(np.zeros((0, int(encoder.identity()["dim"]))), data.corpus.clear(), encoder.identity(), device="cpu",
                empty=True).save(folder / "empty")
    pipeline = Pipeline.from_config(config.model_copy(update={"index": config.index.model_copy(update={"path": folder / "reference"})}),
                                    progress=False)
    hits = pipeline.run(data.queries, depth=10).hits
    return {q: [h.id for h in hs] for q, hs in hits.items()}, {q: {h.id: h.score for h in hs} for q, hs in hits.items()}, rate


def experiment(folder: Path, pipeline: Path) -> Path:
    (folder / "pipeline.toml").write_text(pipeline.read_text() + f'\n[index]\npath = "{folder / "empty"}"\n')
    path = folder / "experiment.toml"
    path.write_text("""[service]
event_log = "events.db"
documents_log = "live/documents.db"
max_k = 100
compact_after = 1000000

[variants.live]
pipeline = "pipeline.toml"

[experiment]
name = "live"
primary = "live"
""")
    return path


class Load:
    """Writers, readers and a prober against one server; what was acknowledged, what failed, latencies by phase."""

    def __init__(self, port: int, queries: list[str], writers: int, readers: int) -> None:
        self.port, self.queries, self.writers, self.readers = port, queries, writers, readers
        self.phase, self.stop = PHASES[0], False
        self.acked: dict[str, str] = {}  # upserted id -> text, acknowledged
        self.deleted: set[str] = set()  # acknowledged deletes
        self.unacked: list[list[str]] = []  # batches sent without an answer (outcome unknown)
        self.latency: dict[str, list[float]] = {p: [] for p in PHASES}
        self.errors: dict[str, dict[str, int]] = {p: {"5xx": 0, "other": 0} for p in PHASES}
        self.visible_ms: list[float] = []
        self.writes = 0

    async def run(self, seconds: float, kill: Any) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.writers + self.readers + 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(self.reader(client, r)) for r in range(self.readers)]
            await asyncio.sleep(seconds)
            self.phase = PHASES[1]
            tasks += [asyncio.create_task(self.writer(client, w)) for w in range(self.writers)]
            tasks.append(asyncio.create_task(self.prober(client)))
            await asyncio.sleep(seconds)
            self.phase = PHASES[2]
            compaction = asyncio.create_task(client.post("/admin/compact", headers={"X-API-Key": KEY}))
            began = time.perf_counter()
            self.compaction = (await compaction).json()
            self.compaction_wall_s = time.perf_counter() - began
            await asyncio.sleep(max(0.0, seconds / 3 - self.compaction_wall_s))
            self.phase = "killed"
            kill()
            self.stop = True
            await asyncio.gather(*tasks, return_exceptions=True)

    async def reader(self, client, r: int) -> None:
        i = r
        while not self.stop:
            phase, begin = self.phase, time.perf_counter()
            try:
                response = await client.post("/search", json={"query": self.queries[i % len(self.queries)], "k": 10})
            except Exception:  # noqa: BLE001 - the server was killed
                return
            if phase in self.latency:
                if response.status_code == 200:
                    self.latency[phase].append(1000 * (time.perf_counter() - begin))
                else:
                    self.errors[phase]["5xx" if response.status_code >= 500 else "other"] += 1
            i += self.readers

    async def writer(self, client, w: int) -> None:
        rng, n, mine = random.Random(w), 0, []
        while not self.stop:
            if mine and rng.random() < 0.25:
                doc_id = mine.pop(rng.randrange(len(mine)))
                try:
                    response = await client.delete(f"/documents/{doc_id}", headers={"X-API-Key": KEY})
                except Exception:  # noqa: BLE001 - killed mid-request: the delete may or may not have landed
                    self.unacked.append([f"delete:{doc_id}"])
                    self.acked.pop(doc_id, None)
                    return
                if response.status_code == 200:
                    self.deleted.add(doc_id)
                    self.acked.pop(doc_id, None)
                continue
            batch = [{"id": f"w{w}-{n + j}", "text": f"writer {w} note {n + j}: {' '.join(rng.sample(WORDS, 12))}",
                      "metadata": {"writer": w}} for j in range(4)]
            n += 4
            try:
                response = await client.post("/documents", json={"documents": batch}, headers={"X-API-Key": KEY})
            except Exception:  # noqa: BLE001 - killed mid-request
                self.unacked.append([d["id"] for d in batch])
                return
            if response.status_code == 200:
                self.acked.update({d["id"]: d["text"] for d in batch})
                mine += [d["id"] for d in batch]
                self.writes += 1

    async def prober(self, client) -> None:
        n = 0
        while not self.stop:
            doc = {"id": f"probe-{n}", "text": f"probe {n}: {' '.join(random.sample(WORDS, 16))}"}
            n += 1
            try:
                response = await client.post("/documents", json={"documents": [doc]}, headers={"X-API-Key": KEY})
                if response.status_code != 200:
                    continue
                acked = time.perf_counter()
                self.acked[doc["id"]] = doc["text"]
                while not self.stop:
                    hits = (await client.post("/search", json={"query": doc["text"], "k": 3})).json()["hits"]
                    if doc["id"] in [h["id"] for h in hits]:
                        self.visible_ms.append(1000 * (time.perf_counter() - acked))
                        break
            except Exception:  # noqa: BLE001 - killed
                return
            await asyncio.sleep(0.2)


WORDS = ("glacier volcano protein enzyme orbit tide yeast bread league offside python syntax lava magma chloroplast "
         "glucose oxygen mantle crust starter dough moon earth gravity ocean library package index tensor vector "
         "matrix entropy photon neutron quasar nebula comet asteroid basalt granite quartz feldspar mica").split()


def check_after_restart(port: int, load: Load) -> dict[str, Any]:
    """Acknowledged writes present, acknowledged deletes absent (also from search), unacknowledged batches all-or-none."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        def present(doc_id: str) -> dict | None:
            answer = client.get(f"/documents/{doc_id}")
            return answer.json() if answer.status_code == 200 else None

        missing = [d for d, text in load.acked.items() if (got := present(d)) is None or got["text"] != text]
        resurrected = [d for d in load.deleted if present(d) is not None]
        in_search = 0
        for doc_id in list(load.deleted)[:100]:
            writer = doc_id.split("-")[0][1:]
            hits = client.post("/search", json={"query": f"writer {writer} note {doc_id.split('-')[1]}", "k": 20}).json()["hits"]
            in_search += doc_id in {h["id"] for h in hits}
        partial = 0
        for batch in load.unacked:
            if batch[0].startswith("delete:"):
                continue
            found = [present(d) is not None for d in batch]
            partial += any(found) and not all(found)
        return {"acknowledged_upserts": len(load.acked), "missing_or_changed": len(missing),
                "acknowledged_deletes": len(load.deleted), "deleted_but_present": len(resurrected),
                "deleted_found_by_search (of 100 checked)": in_search, "unacknowledged_batches": len(load.unacked),
                "unacknowledged_partially_visible": partial}


def main() -> None:
    args = arguments(__doc__, batch=(int, 256, "documents per POST when streaming DL19"),
                     writers=(int, 8, "writing clients"), readers=(int, 16, "searching clients"),
                     seconds=(float, 30.0, "seconds per load phase"),
                     pipeline=(str, str(ROOT / "configs" / "serve.toml"), "the served pipeline config"),
                     limit=(int, 0, "only the first N documents of DL19 (0: all; a smoke run)"))
    out = args.out if args.out != ROOT / "docs" / "benchmarks" else ROOT / "docs" / "live"
    data = dl19(args.data)
    if args.limit:
        data.corpus = data.corpus.head(args.limit)
        data.__dict__.pop("store", None)
    folder = Path(tempfile.mkdtemp(prefix="siftrank-live-"))
    config = PipelineConfig.load(Path(args.pipeline))
    print("reference: index build of DL19 with the served encoder", flush=True)
    ref_top, ref_run, ref_rate = reference(data, config, folder)
    path = experiment(folder, Path(args.pipeline))
    port = free_port()
    os.environ["SIFTRANK_API_KEY"] = KEY  # the server inherits it: the admin key of the writes
    command = [siftrank(), "serve", "--experiment", str(path), "--port", str(port)]
    server = start(command, port, folder / "server.log")
    import httpx

    docs = [{"id": r["id"], "title": r["title"], "text": r["text"]} for r in data.corpus.iter_rows(named=True)]
    began = time.perf_counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        for lo in range(0, len(docs), args.batch):
            answer = client.post("/documents", json={"documents": docs[lo:lo + args.batch]}, headers={"X-API-Key": KEY})
            answer.raise_for_status()
        stream_s = time.perf_counter() - began
        api_run = {}
        for qid, text in data.queries.items():
            hits = client.post("/search", json={"query": text, "k": 10}).json()["hits"]
            api_run[qid] = {h["id"]: h["score"] for h in hits}
    api_top = {q: list(r) for q, r in api_run.items()}
    same = sum(api_top[q] == ref_top[q] for q in ref_top)
    same_set = sum(set(api_top[q]) == set(ref_top[q]) for q in ref_top)
    suite = MetricSuite(data.qrels)
    ndcg_ref, ndcg_api = suite.per_query(ref_run)["nDCG@10"], suite.per_query(api_run)["nDCG@10"]
    parity = {"queries": len(ref_top), "same_top10_order": same, "same_top10_set": same_set,
              "nDCG@10 index build": statistics.fmean(ndcg_ref.values()), "nDCG@10 streamed": statistics.fmean(ndcg_api.values()),
              "paired p": paired_test(ndcg_ref, ndcg_api)["t_test_p"] if ndcg_ref != ndcg_api else 1.0,
              "documents": len(docs), "batch": args.batch, "stream seconds": stream_s,
              "passages/s through POST /documents": len(docs) / stream_s, "passages/s index build": ref_rate}
    print("parity:", parity, flush=True)

    load = Load(port, list(data.queries.values()), args.writers, args.readers)
    asyncio.run(load.run(args.seconds, lambda: os.kill(server.pid, signal.SIGKILL)))
    server.wait()
    print(f"killed after {load.writes} acknowledged write batches; restarting", flush=True)
    restart_began = time.perf_counter()
    server = start(command, port, folder / "server-restart.log")
    restart_s = time.perf_counter() - restart_began
    try:
        durability = check_after_restart(port, load)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    latency = {p: {"requests": len(v), "p50 ms": float(np.percentile(v, 50)) if v else None,
                   "p99 ms": float(np.percentile(v, 99)) if v else None, **load.errors[p]} for p, v in load.latency.items()}
    visible = {"samples": len(load.visible_ms), "p50 ms": float(np.percentile(load.visible_ms, 50)) if load.visible_ms else None,
               "p99 ms": float(np.percentile(load.visible_ms, 99)) if load.visible_ms else None}
    payload = {"machine": machine(), "parity": parity, "latency": latency, "update_visible": visible,
               "durability": durability, "compaction": {**getattr(load, "compaction", {}), "wall_s": getattr(load, "compaction_wall_s", None)},
               "restart_seconds": restart_s, "writers": args.writers, "readers": args.readers, "phase_seconds": args.seconds}
    save(out, "live", payload, report(payload))
    plot(latency, str(payload["machine"]["cpu"]), out / "live.png")


def report(p: dict[str, Any]) -> str:
    par, dur = p["parity"], p["durability"]
    lines = [f"# The live corpus through the service (`make bench-live`)\n\nCPU: {p['machine']['cpu']}. "
             f"{p['writers']} writers, {p['readers']} readers, {p['phase_seconds']:.0f} s per phase.\n",
             "## Parity: DL19 streamed through POST /documents vs `index build` (same encoder)\n",
             f"- {par['same_top10_order']}/{par['queries']} queries with the identical top-10 (order included), "
             f"{par['same_top10_set']}/{par['queries']} with the same ten documents.",
             f"- nDCG@10: index build {par['nDCG@10 index build']:.4f}, streamed {par['nDCG@10 streamed']:.4f} (paired p {par['paired p']:.3g}).",
             f"- {par['documents']} documents in batches of {par['batch']}: {par['passages/s through POST /documents']:.1f} passages/s "
             f"through the API (acknowledged = durable and searchable) vs {par['passages/s index build']:.1f} for index build.\n",
             "## Search latency by phase (one run, same readers)\n",
             "| phase | searches | p50 ms | p99 ms | 5xx | other errors |", "|---|---:|---:|---:|---:|---:|"]
    for phase, row in p["latency"].items():
        p50 = f"{row['p50 ms']:.1f}" if row["p50 ms"] is not None else "–"
        p99 = f"{row['p99 ms']:.1f}" if row["p99 ms"] is not None else "–"
        lines.append(f"| {phase} | {row['requests']} | {p50} | {p99} | {row['5xx']} | {row['other']} |")
    v = p["update_visible"]
    c = p["compaction"]
    lines += ["", f"Update latency, acknowledgment → in the top 3 of a search for it: p50 {v['p50 ms']:.0f} ms, p99 {v['p99 ms']:.0f} ms "
              f"({v['samples']} probes; the write is applied before it is acknowledged, so this is at least one "
              f"search under the load of that phase). Compaction during load: version {c.get('version')}, "
              f"{c.get('operations_dropped')} log operations dropped, {c.get('seconds')} s.\n",
              "## After kill -9 and a restart\n", *(f"- {k}: {val}" for k, val in dur.items()),
              f"- restart (snapshot + log replay, warm-up) took {p['restart_seconds']:.1f} s"]
    return "\n".join(lines) + "\n"


def plot(latency: dict[str, dict[str, Any]], cpu: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [k for k, v in latency.items() if v["p50 ms"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(phases))
    ax.bar(x - 0.2, [latency[k]["p50 ms"] for k in phases], 0.4, label="p50")
    ax.bar(x + 0.2, [latency[k]["p99 ms"] for k in phases], 0.4, label="p99")
    ax.set_xticks(x, phases)
    ax.set_ylabel("search latency (ms)")
    ax.set_title(f"Searches while documents are written\n{cpu}", fontsize=9)
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
