"""Encoder throughput: siftrank's Encoder (precision auto) vs plain sentence-transformers fp32 encode.

Same model (bundled all-MiniLM-L6-v2), same passages, same process, same batch size. Prints
passages/s and the ratio to the baseline measured in this run, then checks that the speed costs no
quality: DL19 nDCG@10 of the full pipeline with fp32 documents and with precision auto.
Results: docs/benchmarks/encode.{json,md,png}.
"""

from __future__ import annotations

import random
import time

from common import arguments, bar_chart, dl19, machine, save

from eval.metrics import MetricSuite
from retrieval.encoder import Encoder
from retrieval.indexer import Indexer
from retrieval.pipeline import Pipeline
from retrieval.stages.dense import DenseRetriever


def timed(fn, texts: list[str]) -> tuple[float, object]:
    fn(texts[:64])  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    out = fn(texts)
    return time.perf_counter() - start, out


def main() -> None:
    args = arguments(__doc__, n=(int, 3000, "passages to time"), batch_size=(int, 64, "batch size for all encoders"),
                     skip_quality=(int, 0, "1: skip the full-corpus nDCG check"))
    data = dl19(args.data)
    texts = data.doc_texts()
    random.Random(0).shuffle(texts)
    texts = texts[: args.n]

    from sentence_transformers import SentenceTransformer

    auto = Encoder(batch_size=args.batch_size)
    fp32 = Encoder(precision="fp32", batch_size=args.batch_size)
    plain = SentenceTransformer(str(auto.path), device="cpu")
    rows = {}
    seconds, baseline = timed(lambda t: plain.encode(t, batch_size=args.batch_size, normalize_embeddings=True), texts)
    rows["sentence-transformers fp32 (baseline)"] = seconds
    seconds, ours_fp32 = timed(fp32.encode_documents, texts)
    rows["siftrank Encoder fp32"] = seconds
    seconds, ours_auto = timed(auto.encode_documents, texts)
    rows[f"siftrank Encoder auto ({auto.precision})"] = seconds
    base = rows["sentence-transformers fp32 (baseline)"]
    cosine_min = float((baseline * ours_auto).sum(axis=1).min())  # type: ignore[operator]
    cosine_mean = float((baseline * ours_auto).sum(axis=1).mean())  # type: ignore[operator]

    quality = {}
    if not args.skip_quality:
        suite = MetricSuite(data.qrels)
        for label, encoder in (("fp32", fp32), (f"auto ({auto.precision} documents, {auto.query_precision} queries)", auto)):
            index = Indexer(encoder).cached(data)
            hits = Pipeline(DenseRetriever(encoder, index)).run(data.queries).hits
            quality[label] = suite.evaluate({q: {h.id: h.score for h in hs} for q, hs in hits.items()})["nDCG@10"]

    payload = {"passages": len(texts), "batch_size": args.batch_size, "machine": machine(),
               "passages_per_second": {k: len(texts) / v for k, v in rows.items()},
               "ratio_vs_baseline": {k: base / v for k, v in rows.items()},
               "cosine_auto_vs_fp32": {"min": cosine_min, "mean": cosine_mean}, "dl19_ndcg10": quality}
    lines = [f"# Encoder throughput ({len(texts)} DL19 passages, batch {args.batch_size}, {machine()['cpus']} CPUs)", "",
             "| encoder | passages/s | ratio vs baseline |", "|---|---:|---:|"]
    lines += [f"| {k} | {len(texts) / v:.1f} | {base / v:.2f}x |" for k, v in rows.items()]
    lines += ["", f"Cosine between auto and fp32 embeddings: min {cosine_min:.4f}, mean {cosine_mean:.5f}.", ""]
    if quality:
        lines += ["| DL19 (in-corpus qrels) | nDCG@10 |", "|---|---:|"] + [f"| {k} | {v:.4f} |" for k, v in quality.items()]
        first, *rest = quality.values()
        lines += ["", f"nDCG@10 difference auto - fp32: {rest[0] - first:+.4f}" if rest else ""]
    lines += ["", "Reproduce: `make bench-encode`", ""]
    save(args.out, "encode", payload, "\n".join(lines))
    bar_chart(args.out / "encode.png", ["ST fp32", "ours fp32", f"ours {auto.precision}"],
              [len(texts) / v for v in rows.values()], "passages / s", "Encoding throughput (higher is better)")


if __name__ == "__main__":
    main()
