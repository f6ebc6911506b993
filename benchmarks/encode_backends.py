"""Encoder backends on CPU: throughput and DL19 quality of each backend and precision, against plain
sentence-transformers fp32 measured in the same run, also with the structured-pruned model.

Rows: torch fp32 / bf16 (siftrank Encoder), ONNX Runtime fp32 / int8 (per-channel MatMul weights),
OpenVINO fp32 / bf16 / int8, and with ``--pruned DIR`` (a structured GAPrune folder: `siftrank prune
--structured`; built here into the cache when absent) the same backends on the smaller model. For each:
passages/s on ``--n`` shuffled DL19 passages (batch 64, warm-up first), the ratio to the baseline, the
minimum cosine to the baseline's vectors (same model only), and DL19 nDCG@10 of the full closed-corpus
pipeline (in-corpus qrels; 43 queries: differences under ~0.005 are noise). Also the LLM ranker's
seconds per query in fp32 and bf16 (first-token, BM25 top-20, ``--llm-queries`` queries).
Results: docs/benchmarks/backends.{json,md,png}. Run on an otherwise idle machine: `make bench-backends`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from common import arguments, bar_chart, dl19, machine, save

from retrieval.artifacts import cache_dir
from retrieval.encoder import Encoder
from retrieval.indexer import Indexer
from retrieval.measures import MetricSuite
from retrieval.pipeline import Pipeline
from retrieval.stages.dense import DenseRetriever

BACKENDS = [("torch", "none", "fp32"), ("torch", "none", "bf16"), ("onnx", "none", "fp32"), ("onnx", "int8", "fp32"),
            ("openvino", "none", "fp32"), ("openvino", "none", "bf16"), ("openvino", "int8", "bf16")]


def pruned_model(data_root: Path) -> Path:
    """The structured GAPrune 50% model (FFN neurons removed), built once into the cache."""
    from training.prune import Pruner, calibration_sets

    target = cache_dir("models") / "minilm-gaprune50-structured"
    if not (target / "config.json").is_file():
        domain, general = calibration_sets("bundled:all-MiniLM-L6-v2", data_root / "scifact", "train",
                                           data_root / "msmarco-train-toy", 256)
        pruner = Pruner("bundled:all-MiniLM-L6-v2")
        pruner.prune("gaprune", 0.5, domain, general, structured=True)
        pruner.save(target, overwrite=True)
    return target


def main() -> None:
    args = arguments(__doc__, n=(int, 3000, "passages to time"), pruned=(str, "auto", "structured-pruned model folder, auto (build) or none"),
                     llm_queries=(int, 5, "queries for the LLM ranker timing"), skip_quality=(int, 0, "1: skip nDCG"))
    data = dl19(args.data)
    texts = data.doc_texts()
    random.Random(0).shuffle(texts)
    texts = texts[: args.n]
    from sentence_transformers import SentenceTransformer

    base_path = str(Encoder().path)
    plain = SentenceTransformer(base_path, device="cpu")
    plain.encode(texts[:64], batch_size=64)
    start = time.perf_counter()
    baseline = plain.encode(texts, batch_size=64, normalize_embeddings=True)
    base_pps = len(texts) / (time.perf_counter() - start)
    models = {"MiniLM": "bundled:all-MiniLM-L6-v2"}
    if args.pruned != "none":
        models["MiniLM GAPrune-50% structured"] = str(pruned_model(args.data) if args.pruned == "auto" else Path(args.pruned))
    rows: dict[str, dict] = {"sentence-transformers fp32 (baseline)": {"passages/s": base_pps, "ratio": 1.0}}
    suite = MetricSuite(data.qrels)
    for model_name, model in models.items():
        for backend, quantize, precision in BACKENDS:
            encoder = Encoder(model, precision=precision, query_precision="same", backend=backend, quantize=quantize)
            encoder.encode_documents(texts[:64])
            start = time.perf_counter()
            vectors = encoder.encode_documents(texts)
            pps = len(texts) / (time.perf_counter() - start)
            row = {"passages/s": pps, "ratio": pps / base_pps}
            if model_name == "MiniLM":
                row["min cosine"] = float((vectors * baseline).sum(axis=1).min())
            if not args.skip_quality:
                index = Indexer(encoder, progress=False).cached(data)
                hits = Pipeline(DenseRetriever(encoder, index)).run(data.queries).hits
                row["nDCG@10"] = suite.evaluate({q: {h.id: h.score for h in hs} for q, hs in hits.items()})["nDCG@10"]
            label = f"{model_name} {backend} {encoder.precision}"
            rows[label] = row
            print(label, {k: round(v, 4) for k, v in row.items()}, flush=True)
    llm = llm_seconds(data, args.llm_queries) if args.llm_queries else {}
    best = max((k for k in rows if "nDCG@10" in rows[k] or args.skip_quality), key=lambda k: rows[k]["ratio"])
    lines = [f"# Encoder backends ({len(texts)} DL19 passages, batch 64, {machine()['cpus']} CPUs)", "",
             "| encoder | passages/s | ratio vs baseline | min cosine to baseline | DL19 nDCG@10 |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['passages/s']:.1f} | {v['ratio']:.2f}x | {v.get('min cosine', float('nan')):.4f} | "
              f"{v.get('nDCG@10', float('nan')):.4f} |" for k, v in rows.items()]
    lines += ["", f"Fastest: {best} at {rows[best]['ratio']:.2f}x the baseline.", ""]
    if llm:
        lines += ["| LLM ranker (first-token, BM25 top-20) | s / query |", "|---|---:|"]
        lines += [f"| SmolLM2-135M {p} | {s:.2f} |" for p, s in llm.items()]
        lines += ["", f"bf16 / fp32 time: {llm['bf16'] / llm['fp32']:.2f}", ""]
    lines += ["Reproduce: `make bench-backends`", ""]
    save(args.out, "backends", {"rows": rows, "llm_seconds_per_query": llm, "machine": machine()}, "\n".join(lines))
    bar_chart(args.out / "backends.png", [k.replace("MiniLM ", "").replace("GAPrune-50% structured", "pruned")[:22] for k in rows],
              [v["passages/s"] for v in rows.values()], "passages / s", "Encoding throughput by backend (higher is better)")


def llm_seconds(data, queries: int) -> dict[str, float]:
    """Seconds per query of the LLM ranker (first-token mode, BM25 top-20) in fp32 and bf16."""
    from retrieval.causal_lm import CausalLM
    from retrieval.data import read_run
    from retrieval.rerank import ListwiseRanker

    run = read_run(data.root / "runs" / "run.BM25.trec")
    qids = sorted(data.queries)[:queries]
    out = {}
    for precision in ("fp32", "bf16"):
        ranker = ListwiseRanker(CausalLM(precision=precision), mode="first-token", max_passage_tokens=48)
        seconds = 0.0
        for q in qids:
            top = sorted(run[q], key=lambda d: -run[q][d])[:20]
            seconds += ranker.rank(data.queries[q], data.store.texts(top))[1].seconds
        out[precision] = seconds / len(qids)
    return out


if __name__ == "__main__":
    main()
