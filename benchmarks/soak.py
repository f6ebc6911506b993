"""Soak test of the search service on loopback: ``--minutes`` at concurrency ``--concurrency``, bounded.

Starts ``siftrank serve`` as ``make serve`` does (DL19, configs/serve.toml) with a fresh event log, warms it
up for ``--warmup`` seconds, then drives it in 30-second windows, cycling the 43 DL19 queries, and samples
the server's resident memory (its process tree, from /proc) after each window. Pass criteria, printed with
the figures: zero errors, RSS at the end within 10% of RSS after warm-up, and every answered request's
``query_id`` in the event log's ``queries`` table once the server has stopped (SIGTERM flushes the log).
Results: docs/benchmarks/soak.{json,md,png}. `make bench-soak` (about 12 minutes).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from common import ROOT, arguments, dl19, machine, save, save_figure
from load import drive, free_port, start

WINDOW_S = 30.0


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def main() -> None:
    args = arguments(__doc__, minutes=(float, 10.0, "minutes of load after warm-up"), concurrency=(int, 16, "requests in flight"),
                     warmup=(float, 60.0, "seconds of warm-up load"), pipeline=(str, str(ROOT / "configs" / "serve.toml"), "pipeline config"))
    queries = list(dl19(args.data, with_corpus=False).queries.values())
    work = Path(tempfile.mkdtemp(prefix="siftrank-soak-"))
    log = work / "events.db"
    port = free_port()
    server = start([str(Path(os.sys.executable).with_name("siftrank")), "serve", "--dataset", str(args.data.resolve() / "msmarco-dl19"),
                    "--pipeline", args.pipeline, "--port", str(port), "--event-log", str(log)], port, work / "server.log")
    seen: list[str] = []
    windows: list[dict[str, float]] = []
    try:
        warm = asyncio.run(drive(port, queries, args.concurrency, args.warmup, seen))
        baseline = rss_mb(server.pid)
        print(f"warm-up: {warm['requests']} requests, RSS {baseline:.0f} MB", flush=True)
        began = time.perf_counter()
        while time.perf_counter() - began < 60 * args.minutes:
            result = asyncio.run(drive(port, queries, args.concurrency, WINDOW_S, seen))
            windows.append({"t_s": round(time.perf_counter() - began), "rss_mb": rss_mb(server.pid), **result})
            print({k: round(v, 1) for k, v in windows[-1].items()}, flush=True)
    finally:
        server.terminate()
        server.wait(60)
    with sqlite3.connect(log) as db:
        logged = {row[0] for row in db.execute("SELECT query_id FROM queries")}
    errors = int(warm["errors"] + sum(w["errors"] for w in windows))
    missing = len(set(seen) - logged)
    end = windows[-1]["rss_mb"]
    growth = end / baseline - 1
    requests = sum(w["requests"] for w in windows)
    verdict = {"zero errors": errors == 0, "RSS within 10%": abs(growth) <= 0.10, "every request logged": missing == 0}
    cpu = machine()["cpu"]
    lines = [f"# Soak: {args.minutes:g} minutes at concurrency {args.concurrency} (loopback, DL19 queries, {cpu})", "",
             f"Pipeline {Path(args.pipeline).name}; {args.warmup:.0f} s warm-up, then {len(windows)} windows of {WINDOW_S:.0f} s.", "",
             "| measure | value |", "|---|---:|",
             f"| requests after warm-up | {requests:,} |", f"| QPS (mean of windows) | {sum(w['qps'] for w in windows) / len(windows):.1f} |",
             f"| p50 / p99 ms (last window) | {windows[-1]['p50']:.1f} / {windows[-1]['p99']:.1f} |",
             f"| errors | {errors} |", f"| RSS after warm-up MB | {baseline:.0f} |", f"| RSS at the end MB | {end:.0f} ({growth:+.1%}) |",
             f"| RSS max MB | {max(w['rss_mb'] for w in windows):.0f} |",
             f"| answered requests / in the event log / missing | {len(seen):,} / {len(logged):,} / {missing} |", "",
             "Verdict: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in verdict.items()) + ".", "",
             "![soak](soak.png)", "", "Reproduce: `make bench-soak`", ""]
    save(args.out, "soak", {"machine": machine(), "concurrency": args.concurrency, "minutes": args.minutes, "warmup": warm,
                            "rss_after_warmup_mb": baseline, "windows": windows, "errors": errors, "answered": len(seen),
                            "logged": len(logged), "missing": missing, "verdict": verdict}, "\n".join(lines))
    plot(args.out / "soak.png", windows, baseline)


def plot(path: Path, windows: list[dict[str, float]], baseline: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [w["t_s"] / 60 for w in windows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(minutes, [w["rss_mb"] for w in windows], marker="o")
    axes[0].axhspan(baseline * 0.9, baseline * 1.1, color="#2a6fb0", alpha=0.12, label="±10% of after warm-up")
    axes[0].set(xlabel="minutes", ylabel="RSS MB", title="server memory")
    axes[0].legend()
    axes[1].plot(minutes, [w["p50"] for w in windows], marker="o", label="p50")
    axes[1].plot(minutes, [w["p99"] for w in windows], marker="o", label="p99")
    axes[1].set(xlabel="minutes", ylabel="ms", title="latency per window")
    axes[1].legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
