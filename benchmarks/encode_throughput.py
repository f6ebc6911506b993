"""Encoder throughput: every way siftrank can encode on this CPU, and what ``backend = "auto"`` picks, against
plain sentence-transformers fp32 ``encode`` measured in the same run.

Same model (bundled all-MiniLM-L6-v2), same ``--n`` shuffled DL19 passages, same process. Rows: the baseline,
siftrank's torch fp32 / bf16, OpenVINO fp32 / bf16 (two streams fed by an async queue, length-sorted batches)
and OpenVINO int8 (NNCF, calibrated on DL19 passages), then ``auto``: the fastest faithful way measured once
per CPU model by the encoder's own probe (cached; the reason is printed). Quality: DL19 nDCG@10 of the full
closed-corpus pipeline (in-corpus qrels, 43 queries) for fp32 and for every way at least ``--quality-from``
times the baseline, with the paired difference to fp32 and its p-value (queries encoded the chosen way too).
Results: docs/benchmarks/encode.{json,md,png}. Run on an otherwise idle machine: `make bench-encode`.
"""

from __future__ import annotations

import random
import time

from common import arguments, bar_chart, dense_ndcg, dl19, machine, save

from retrieval.encoder import Encoder
from retrieval.measures import paired_test

WAYS = {"siftrank torch fp32": {"precision": "fp32"}, "siftrank torch bf16": {"precision": "bf16"},
        "siftrank openvino fp32": {"backend": "openvino", "precision": "fp32"},
        "siftrank openvino bf16": {"backend": "openvino", "precision": "bf16"},
        "siftrank openvino int8 (NNCF)": {"backend": "openvino", "quantize": "int8"}}


def passages(data, n: int) -> tuple[list[str], list[str], list[str]]:
    """The corpus, 1,000 evenly spaced passages of it (int8 calibration and the probe), ``n`` shuffled ones to time."""
    corpus = data.doc_texts()
    texts = list(corpus)
    random.Random(0).shuffle(texts)
    return corpus, corpus[::max(1, len(corpus) // 1000)][:1000], texts[:n]


def timed(fn, texts: list[str]) -> tuple[float, object]:
    fn(texts[:64])  # warm-up: first-call allocations, compilation and kernel selection
    start = time.perf_counter()
    out = fn(texts)
    return time.perf_counter() - start, out


def main() -> None:
    args = arguments(__doc__, n=(int, 3000, "passages to time"), batch_size=(int, 64, "batch size of the baseline and torch"),
                     quality_from=(float, 2.0, "nDCG for ways at least this many times the baseline (0: none)"))
    data = dl19(args.data)
    corpus, calibration, texts = passages(data, args.n)

    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(Encoder().path), device="cpu")
    seconds, baseline = timed(lambda t: plain.encode(t, batch_size=args.batch_size, normalize_embeddings=True), texts)
    base_pps = len(texts) / seconds
    rows: dict[str, dict] = {"sentence-transformers fp32 (baseline)": {"passages/s": base_pps, "ratio": 1.0, "min cosine": 1.0}}
    print(f"baseline {base_pps:.1f} passages/s", flush=True)
    encoders: dict[str, Encoder] = {}
    auto = Encoder(backend="auto", batch_size=args.batch_size, query_precision="same")
    auto.calibrate_on(calibration)
    print("auto:", auto.numerics, auto.choice["reason"], flush=True)  # measured once per CPU model (cached)
    ways = {**WAYS, f"auto → {auto.choice['choice']}": None}
    for label, settings in ways.items():
        encoder = auto if settings is None else Encoder(batch_size=args.batch_size, query_precision="same", **settings)
        encoder.calibrate_on(calibration)
        seconds, vectors = timed(encoder.encode_documents, texts)
        rows[label] = {"passages/s": len(texts) / seconds, "ratio": len(texts) / seconds / base_pps,
                       "min cosine": float((vectors * baseline).sum(axis=1).min())}  # type: ignore[operator]
        encoders[label] = encoder
        print(label, {k: round(v, 4) for k, v in rows[label].items()}, flush=True)

    per_query: dict[str, dict[str, float]] = {}
    if args.quality_from:
        for label, encoder in encoders.items():
            if label != "siftrank torch fp32" and rows[label]["ratio"] < args.quality_from:
                continue
            per_query[label] = dense_ndcg(data, encoder)
            rows[label]["nDCG@10"] = sum(per_query[label].values()) / len(per_query[label])
            print(label, "nDCG@10", round(rows[label]["nDCG@10"], 4), flush=True)
        reference = per_query.get("siftrank torch fp32")
        for label, scores in per_query.items():
            if reference is not None and label != "siftrank torch fp32":
                test = paired_test(reference, scores)
                rows[label]["Δ nDCG@10 vs fp32"], rows[label]["p"] = test["delta"], test["t_test_p"]

    cpu = machine()["cpu"]
    markdown = report(rows, auto.choice, len(texts), cpu)
    save(args.out, "encode", {"passages": len(texts), "machine": machine(), "rows": rows, "auto": auto.choice}, markdown)
    bar_chart(args.out / "encode.png", [k.replace("siftrank ", "").replace("sentence-transformers", "ST")[:24] for k in rows],
              [v["passages/s"] for v in rows.values()], "passages / s", f"Encoding throughput, {cpu} (higher is better)")


def report(rows: dict[str, dict], choice: dict, passages: int, cpu: str) -> str:
    """The Markdown of one run: the table, what auto chose and why, the fastest way within 1 nDCG@10 point."""
    from eval.report import markdown_table

    best = max((k for k in rows if "nDCG@10" in rows[k] and rows[k].get("Δ nDCG@10 vs fp32", 0.0) >= -0.01),
               key=lambda k: rows[k]["ratio"], default=None)
    lines = [f"# Encoder throughput ({passages} DL19 passages, {cpu})", "", markdown_table(rows, "encoder"), "",
             f"`auto` chose **{choice['choice']}**: {choice['reason']}.", ""]
    if best:
        lines += [f"Fastest within 1 nDCG@10 point of fp32: {best}, {rows[best]['ratio']:.2f}x the baseline.", ""]
    lines += ["min cosine: to the baseline's vectors of the same passages. Δ and p: paired over the 43 DL19 queries "
              "(t-test) against siftrank torch fp32.", "", "Reproduce: `make bench-encode`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
