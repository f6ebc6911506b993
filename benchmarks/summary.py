"""One table of the benchmarks `make bench` ran: encode, search, service (load and soak) and ranker, each
figure as a ratio against the baseline its own script measured in the same run, with the CPU it ran on.

Reads docs/benchmarks/{encode,search,load,rerank,soak}.json (a missing one is left out and said so) and
writes docs/benchmarks/summary.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import arguments

from retrieval.artifacts import write_text_atomic


def rows(folder: Path) -> tuple[list[list[str]], list[str]]:
    out, missing = [], []

    def load(name: str) -> dict | None:
        path = folder / f"{name}.json"
        if not path.is_file():
            missing.append(name)
            return None
        return json.loads(path.read_text())

    if (encode := load("encode")) is not None:
        auto = next(k for k in encode["rows"] if k.startswith("auto"))
        row, base = encode["rows"][auto], encode["rows"]["sentence-transformers fp32 (baseline)"]
        quality = f"DL19 nDCG@10 Δ {row['Δ nDCG@10 vs fp32']:+.4f} (p {row['p']:.2f})" if "Δ nDCG@10 vs fp32" in row else ""
        out.append(["encode", f"{auto}: {row['passages/s']:.0f} passages/s", f"sentence-transformers fp32 {base['passages/s']:.0f}/s",
                    f"{row['ratio']:.2f}x", quality, encode["machine"]["cpu"]])
    if (search := load("search")) is not None:
        flat = search["results"]["flat"]
        for kind in ("hnsw", "ivf"):
            r = search["results"][kind]
            out.append(["search", f"{kind} p50 {r['p50_ms']:.2f} ms", f"flat p50 {flat['p50_ms']:.2f} ms",
                        f"{flat['p50_ms'] / r['p50_ms']:.2f}x", f"recall@{search['k']} vs flat {r['recall@' + str(search['k']) + '_vs_flat']:.4f}",
                        search["machine"]["cpu"]])
    if (load_ := load("load")) is not None:
        for level in sorted(load_["ours"], key=int):
            ours, naive = load_["ours"][level], load_["naive"][level]
            out.append(["service", f"concurrency {level}: {ours['qps']:.0f} QPS, p99 {ours['p99']:.0f} ms",
                        f"naive FastAPI endpoint {naive['qps']:.0f} QPS", f"{ours['qps'] / naive['qps']:.2f}x", "", load_["machine"]["cpu"]])
    if (soak := load("soak")) is not None:
        growth = soak["windows"][-1]["rss_mb"] / soak["rss_after_warmup_mb"] - 1
        out.append(["service soak", f"{soak['minutes']:g} min at concurrency {soak['concurrency']}: {soak['errors']} errors",
                    f"RSS after warm-up {soak['rss_after_warmup_mb']:.0f} MB", f"RSS {growth:+.1%}",
                    f"{soak['missing']} of {soak['answered']:,} requests missing from the event log", soak["machine"]["cpu"]])
    if (rerank := load("rerank")) is not None:
        for depth in (20, 50):
            ours = {k.split()[0]: v for k, v in rerank["rows"].items() if f"depth {depth} tree" in k}
            chosen = rerank["auto_precision"]  # what precision auto runs; faster ones are listed beside it
            before = rerank["rows"][f"{chosen} depth {depth} per-digit steps (before)"]
            others = ", ".join(f"{p} {v['s / query']:.2f} s" for p, v in ours.items() if p != chosen)
            out.append(["ranker", f"first-token, BM25 top-{depth}, {chosen} (auto): {ours[chosen]['s / query']:.2f} s/query",
                        f"previous scoring {before['s / query']:.2f} s/query", f"{ours[chosen]['speed-up']:.2f}x",
                        f"also {others}" + _quality_note(rerank.get("quality", {}), chosen),
                        rerank["machine"]["cpu"]])
    return out, missing


def _quality_note(quality: dict, chosen: str) -> str:
    """Each other precision's DL19 nDCG@10 against the chosen one's, from the same run (empty without them)."""
    ndcg = {k.split()[-1]: v["nDCG@10"] for k, v in quality.items() if k.startswith("SmolLM2")}
    if chosen not in ndcg:
        return ""
    return " (nDCG@10 vs " + chosen + ": " + ", ".join(f"{p} {v - ndcg[chosen]:+.4f}" for p, v in ndcg.items() if p != chosen) + ")"


def main() -> None:
    args = arguments(__doc__)
    table, missing = rows(args.out)
    lines = ["# Benchmarks (`make bench`)", "", "Every ratio is against a baseline measured in the same run of the same script.", "",
             "| area | ours | baseline (same run) | ratio | also | CPU |", "|---|---|---|---:|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)} (`make bench-{' bench-'.join(missing)}`)."]
    lines += ["", "Details: encode.md, search.md, load.md, soak.md, rerank.md in this folder.", ""]
    write_text_atomic(args.out / "summary.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
