"""Encoder speed from a smaller model: FFN neurons removed, the full model distilled back in, then NNCF int8.

For each ``--sparsities`` share, training/distil.py removes that share of MiniLM's FFN neurons and distils the
full model's vectors into it on ``--limit`` DL19 corpus passages and their openings (unlabeled: no query, no
qrel), once (cached under ``--work``). Speed: ``--rounds`` interleaved rounds over the same ``--n`` shuffled
passages of plain sentence-transformers fp32 ``encode`` (the baseline), OpenVINO NNCF int8 of the full model
and of every distilled model; medians per way, and each ratio's spread over the rounds (ratios are taken
within a round, so a slow round slows the baseline too). Size: bytes of the weights on disk. Quality: DL19
nDCG@10 (43 queries, in-corpus qrels; queries encoded by the same model), paired against the full model in
torch fp32. Every sparsity tried is reported: the sparsity is not chosen on DL19's queries.
Results: docs/benchmarks/encode_prune.{json,md,png}. `make bench-encode-prune` on an otherwise idle machine.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from common import arguments, bar_chart, dense_ndcg, dl19, machine, save
from encode_throughput import passages, timed

from retrieval.encoder import Encoder
from retrieval.measures import paired_test
from training.distil import LEARNING_RATE, Distiller

FULL = "bundled:all-MiniLM-L6-v2"


def distilled(work: Path, sparsity: float, passages: list[str], limit: int, epochs: float, loss: str, lr: float,
              scoring: str) -> Path:
    """The distilled model for these settings (built on first use; a folder with a manifest is reused)."""
    path = work / (f"minilm-ffn{round(sparsity * 100)}-{loss}-{limit}-{epochs:g}ep-lr{lr:g}"
                   + ("" if scoring == "magnitude" else f"-{scoring}"))
    if not (path / "manifest.json").is_file():
        distiller = Distiller(FULL, sparsity, epochs=epochs, learning_rate=lr, loss=loss, scoring=scoring)
        distiller.run(passages, limit)
        distiller.save(path, overwrite=True)
    return path


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def main() -> None:
    args = arguments(__doc__, n=(int, 3000, "passages to time"), rounds=(int, 3, "interleaved timing rounds"),
                     sparsities=(str, "0.5", "shares of FFN neurons removed, comma-separated"),
                     limit=(int, 15000, "corpus passages to distil on (DL19 has 14,581: all of them)"), epochs=(float, 1.0, "distillation epochs"),
                     loss=(str, "layers", "distillation loss: layers (vector + every layer's token states) or cosine"),
                     lr=(float, LEARNING_RATE, "distillation learning rate"),
                     scoring=(str, "magnitude", "how FFN neurons are ranked for removal: magnitude or activation"),
                     name=(str, "encode_prune", "result file name (under --out)"),
                     work=(Path, Path.home() / ".cache" / "siftrank" / "models", "where the distilled models are kept"))
    data = dl19(args.data)
    corpus, calibration, texts = passages(data, args.n)
    models = {"full": Encoder().path}
    suffix = f" {args.epochs:g} epochs" if args.epochs != 1 else ""
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        models[f"FFN −{sparsity:.0%}, distilled{suffix}"] = distilled(args.work, sparsity, corpus, args.limit, args.epochs,
                                                                      args.loss, args.lr, args.scoring)

    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(models["full"]), device="cpu")
    ways = {"sentence-transformers fp32 (baseline)": lambda t: plain.encode(t, batch_size=64, normalize_embeddings=True)}
    folders = {"sentence-transformers fp32 (baseline)": Path(models["full"])}
    encoders: dict[str, Encoder] = {}
    for name, path in models.items():
        encoder = Encoder(str(path), backend="openvino", quantize="int8", query_precision="same")
        encoder.calibrate_on(calibration)
        encoders[f"openvino int8, {name}"] = encoder
        ways[f"openvino int8, {name}"] = encoder.encode_documents
        folders[f"openvino int8, {name}"] = Path(path)
    seconds: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        for label, fn in ways.items():
            seconds[label].append(timed(fn, texts)[0])
        print(f"round {r + 1}:", {k: round(len(texts) / v[-1], 1) for k, v in seconds.items()}, flush=True)

    base = seconds["sentence-transformers fp32 (baseline)"]
    rows: dict[str, dict] = {}
    for label, times in seconds.items():
        ratios = [b / t for b, t in zip(base, times)]
        rows[label] = {"passages/s": len(texts) / statistics.median(times), "ratio": statistics.median(ratios),
                       "ratio min": min(ratios), "ratio max": max(ratios), "weights MB": weight_bytes(folders[label]) / 1e6}
    reference = dense_ndcg(data, Encoder(FULL, precision="fp32", query_precision="fp32"))
    rows["sentence-transformers fp32 (baseline)"]["nDCG@10"] = sum(reference.values()) / len(reference)
    for label, encoder in encoders.items():
        scores = dense_ndcg(data, encoder)
        test = paired_test(reference, scores)
        rows[label].update({"nDCG@10": sum(scores.values()) / len(scores), "Δ nDCG@10 vs fp32": test["delta"], "p": test["t_test_p"]})
        print(label, {k: round(v, 4) for k, v in rows[label].items()}, flush=True)

    manifests = {name: json.loads((Path(p) / "manifest.json").read_text()) for name, p in models.items() if name != "full"}
    cpu = str(machine()["cpu"])
    recipe = f"{args.epochs:g} epoch(s), loss {args.loss}, learning rate {args.lr:g}, {args.scoring} neuron scoring, on {args.limit}"
    save(args.out, args.name, {"passages": len(texts), "rounds": args.rounds, "machine": machine(), "rows": rows,
                               "distilled": manifests}, report(rows, len(texts), args.rounds, cpu, recipe))
    plot(rows, cpu, args.out / f"{args.name}.png")


def plot(rows: dict[str, dict], cpu: str, path: Path) -> None:
    """Median ratio per way as a bar chart, with short labels."""
    short = {k: k.replace("sentence-transformers fp32 (baseline)", "ST fp32").replace("openvino int8, ", "int8 ")
             .replace(", distilled", "\ndistilled") for k in rows}
    bar_chart(path, list(short.values()), [v["ratio"] for v in rows.values()], "× ST fp32 (median of rounds)",
              f"Encode speed, smaller model\n{cpu}")


def report(rows: dict[str, dict], passages: int, rounds: int, cpu: str, recipe: str) -> str:
    """The Markdown of one run: the table and whether any way reaches 4x within 1 nDCG@10 point."""
    from eval.report import markdown_table

    fits = [k for k, v in rows.items() if v["ratio"] >= 4.0 and v.get("Δ nDCG@10 vs fp32", 0.0) >= -0.01]
    verdict = (f"≥ 4x within 1 nDCG@10 point: {', '.join(fits)}." if fits else
               "No way reaches 4x the baseline within 1 nDCG@10 point in this run.")
    return "\n".join([f"# Encoder speed from a smaller model ({passages} DL19 passages, {rounds} rounds, {cpu})", "",
                      markdown_table(rows, "encoder"), "", verdict, "",
                      f"Distilled for {recipe} DL19 corpus passages and their openings (no queries, no qrels). Ratios: median "
                      "over interleaved rounds (min and max beside). Δ and p: paired over the 43 DL19 queries (t-test) "
                      "against the full model in torch fp32.", "", "Reproduce: `make bench-encode-prune`", ""])


if __name__ == "__main__":
    main()
