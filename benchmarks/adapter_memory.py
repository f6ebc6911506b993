"""Memory over many ranker-adapter loads in one process: flat with siftrank's release, growing without it.

A study loads a base model plus a LoRA adapter (merged) many times in one process. Each load here:
build ``CausalLM(adapter=...)``, rank one query of 20 passages in first-token mode, drop it. The same loop
runs in two child processes: as shipped (``release_memory``: garbage collection and glibc's
``malloc_trim`` after every load and close) and with the release reduced to garbage collection (the
code before the fix). RSS after each load and seconds per query are recorded; the verdict compares the
last RSS with the RSS after the warm-up (second) load. Writes docs/ranking/memory.{md,json,png}.
Reproduce: `make bench-adapter-memory`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, arguments, machine, save


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def make_adapter(model: str, folder: Path) -> Path:
    """A LoRA adapter with non-zero weights (as after training), bound to the base model."""
    from peft import LoraConfig, get_peft_model

    from retrieval.artifacts import Manifest
    from retrieval.causal_lm import ADAPTER_KIND, CausalLM

    base = CausalLM(model, precision="fp32")
    peft = get_peft_model(base.load(trainable=True), LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM",
                                                                 init_lora_weights=False))
    peft.save_pretrained(str(folder))
    Manifest(kind=ADAPTER_KIND, source_model=model, base={"model": model, "fingerprint": base.fingerprint}).write(folder)
    return folder


def child(model: str, adapter: Path, loads: int, trim: bool) -> None:
    """One loop of loads; prints one JSON line per load."""
    import gc

    import retrieval.causal_lm as causal_lm
    from retrieval.causal_lm import CausalLM
    from retrieval.rerank import ListwiseRanker

    if not trim:
        causal_lm.release_memory = gc.collect  # type: ignore[assignment]  # the code before the fix
    passages = [f"passage {i} " + "about the tides and the moon and the sea " * 6 for i in range(20)]
    for i in range(loads):
        start = time.perf_counter()
        llm = CausalLM(model, adapter=adapter, precision="bf16")
        ranker = ListwiseRanker(llm, mode="first-token", max_passage_tokens=48)
        ranked = time.perf_counter()
        ranker.score("what causes the tides", passages)
        seconds = time.perf_counter() - ranked
        llm.close() if trim else gc.collect()
        del ranker, llm
        print(json.dumps({"load": i, "rss_mb": round(rss_mb(), 1), "seconds_per_query": round(seconds, 3),
                          "seconds_per_load": round(time.perf_counter() - start, 3)}), flush=True)


def main() -> None:
    args = arguments(__doc__ or "", loads=(int, 30, "adapter loads per process"), model=(str, "bundled:SmolLM2-135M-Instruct", "causal LM"),
                     child=(str, "", "internal: trim | gc"), adapter=(str, "", "internal: the adapter folder"))
    if args.child:
        child(args.model, Path(args.adapter), args.loads, args.child == "trim")
        return
    out = args.out.parent / "ranking" if args.out.name == "benchmarks" else args.out
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(args.model, Path(tmp) / "adapter")
        for mode in ("gc", "trim"):
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--adapter", str(adapter), "--loads", str(args.loads),
                                   "--model", args.model], capture_output=True, text=True, cwd=ROOT, check=True)
            results[mode] = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = {}
    for mode, label in (("gc", "garbage collection only (before)"), ("trim", "release_memory (shipped)")):
        loads = results[mode]
        warm, last = loads[1]["rss_mb"], loads[-1]["rss_mb"]
        rows[label] = {"RSS after warm-up MB": warm, "RSS at the end MB": last, "growth": last / warm - 1,
                       "peak MB": max(r["rss_mb"] for r in loads),
                       "s/query first 5": sum(r["seconds_per_query"] for r in loads[:5]) / 5,
                       "s/query last 5": sum(r["seconds_per_query"] for r in loads[-5:]) / 5}
    from eval.report import markdown_table

    cpu = machine()["cpu"]
    md = (f"# Memory over {args.loads} ranker-adapter loads in one process\n\nMeasured on {cpu}. Each load: base model "
          "+ LoRA adapter merged, one first-token ranking of 20 passages, dropped. Reproduce: `make bench-adapter-memory`.\n\n"
          + markdown_table(rows, "release after each load") + "\n\n![memory](memory.png)\n")
    save(out, "memory", {"machine": machine(), "loads": results, "summary": rows}, md)
    plot(out / "memory.png", results)


def plot(path: Path, results: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for mode, label in (("gc", "gc only (before)"), ("trim", "release_memory")):
        ax.plot([r["load"] for r in results[mode]], [r["rss_mb"] for r in results[mode]], "o-", ms=3, label=label)
    ax.set(xlabel="adapter load", ylabel="RSS (MB)", title="RSS over adapter loads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
