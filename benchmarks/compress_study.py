"""Compressing the SciFact domain encoder (the recipe's compress stage): `make compress-study`.

Teacher: the fine-tuned encoder of `make domain` (``--build``/finetune). Each student is the recipe built with its
compress stage on and the teacher as a prebuilt finetune artifact (first stage dense, no filter), so each build's
compress evidence is student against teacher, dense nDCG@10 on the fine-tuning's validation queries (never test).
Choices, all on those validation queries: the structure (``--structures``, GAPrune's score) is the smallest
student within ``--tolerance`` of the teacher (else the best); at that structure the magnitude and activation
scores and GAPrune with the supervised loss (``--supervised``) are built too, and the best of them on validation
is the study's pick. Then, in this one process on the CPU at hand: SciFact test nDCG@10 (300 queries, paired
t-tests against the teacher in int8 and in fp32), DL19 nDCG@10 (43 queries), passages/s over ``--rounds``
interleaved rounds of ``--n`` shuffled SciFact passages (OpenVINO NNCF int8 of every model, and the teacher in
torch fp32; ratios taken within a round), query latency (one query at a time), parameters, bytes on disk, and
the compress stage's build time. Records are resumable (benchmarks/records/compression-records.json); results in
docs/compression/study.{md,json} and pareto.png.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ResultStore, arguments, dense_ndcg, dl19, machine, save, save_figure
from encode_throughput import passages, timed

from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.measures import paired_test
from training.build import PipelineBuilder
from training.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
TEACHER_FP32, TEACHER_INT8 = "teacher, torch fp32", "teacher, int8"


def student_name(score: str, layers: int, ffn: float, supervised: float) -> str:
    return f"{score}, {layers} layers, FFN −{ffn:.0%}" + (f", supervised {supervised:g}" if supervised else "")


def build_student(recipe: Recipe, teacher: Path, work: Path, score: str, layers: int, ffn: float, supervised: float,
                  passages_limit: int) -> dict[str, Any]:
    """The recipe with its compress stage on over the prebuilt teacher; the compress stage's record."""
    folder = work / student_name(score, layers, ffn, supervised).replace(", ", "-").replace(" ", "").replace("−", "")
    overrides = [f'finetune.artifact="{teacher}"', "compress.enabled=true", f'compress.score="{score}"',
                 f"compress.layers={layers}", f"compress.ffn={ffn}", f"compress.supervised={supervised}",
                 f"compress.passages={passages_limit}", 'first_stage.kind="dense"', "calibrate.enabled=false",
                 "rank.enabled=false", "prune.enabled=false"]
    PipelineBuilder(recipe.with_overrides(overrides), folder).build()
    manifest = json.loads((folder / "compress" / "manifest.json").read_text())
    stage = next(s for s in json.loads((folder / "build.json").read_text())["stages"] if s["name"] == "compress")
    details = manifest["lineage"]["details"]
    return {"path": str(folder / "compress"), "overrides": overrides, "evidence": details["evidence"],
            "metrics": {k: v for k, v in details["metrics"].items() if not k.endswith("_log")},
            "seconds": stage["seconds"], "decision": stage["decision"]}


def pick_structure(students: dict[str, dict[str, Any]], tolerance: float) -> str:
    """The smallest student within ``tolerance`` of the teacher on validation; else the best on validation."""
    within = [k for k, r in students.items() if r["evidence"]["student"] >= r["evidence"]["teacher"] - tolerance]
    if within:
        return min(within, key=lambda k: students[k]["metrics"]["parameters"])
    return max(students, key=lambda k: students[k]["evidence"]["student"])


def weights(folder: Path) -> tuple[int, int]:
    """Parameters and bytes of the model's own weights (its top-level safetensors: not the fold models beside them)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    count = 0
    for f in files:
        with safe_open(str(f), framework="np") as handle:
            count += sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys())
    return count, sum(f.stat().st_size for f in files)


def measure(models: dict[str, Path], scifact: Dataset, dl19_data: Dataset | None, n: int, rounds: int) -> dict[str, Any]:
    """Quality and speed of the teacher (fp32 and int8) and every student (int8), all in this process."""
    corpus, calibration, texts = passages(scifact, n)
    encoders: dict[str, Encoder] = {TEACHER_FP32: Encoder(str(models[TEACHER_INT8]), backend="torch", precision="fp32",
                                                          query_precision="fp32")}
    for name, path in models.items():
        encoder = Encoder(str(path), backend="openvino", quantize="int8", query_precision="same")
        encoder.calibrate_on(calibration)
        encoders[name] = encoder
    seconds: dict[str, list[float]] = {k: [] for k in encoders}
    for r in range(rounds):
        for name, encoder in encoders.items():
            seconds[name].append(timed(encoder.encode_documents, texts)[0])
        print(f"round {r + 1}:", {k: round(len(texts) / v[-1], 1) for k, v in seconds.items()}, flush=True)
    queries = list(scifact.queries.values())[:200]
    rows: dict[str, dict[str, Any]] = {}
    base = seconds[TEACHER_INT8]
    for name, encoder in encoders.items():
        encoder.encode_queries(queries[:8])  # warm-up
        latency = []
        for q in queries:
            start = time.perf_counter()
            encoder.encode_queries([q])
            latency.append((time.perf_counter() - start) * 1000)
        ratios = [b / t for b, t in zip(base, seconds[name])]
        rows[name] = {"passages/s": len(texts) / statistics.median(seconds[name]), "× teacher int8": statistics.median(ratios),
                      "ratio min": min(ratios), "ratio max": max(ratios), "query ms (median)": statistics.median(latency),
                      "parameters": weights(encoder.path)[0], "weights MB": weights(encoder.path)[1] / 1e6}
    per_query: dict[str, dict[str, float]] = {}
    for name, encoder in encoders.items():
        per_query[name] = dense_ndcg(scifact, encoder)
        rows[name]["SciFact nDCG@10"] = statistics.fmean(per_query[name].values())
        if dl19_data is not None:
            rows[name]["DL19 nDCG@10"] = statistics.fmean(dense_ndcg(dl19_data, encoder).values())
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
    for name in encoders:
        for teacher, label in ((TEACHER_INT8, "int8"), (TEACHER_FP32, "fp32")):
            if name != teacher:
                test = paired_test(per_query[teacher], per_query[name])
                rows[name][f"Δ vs teacher {label}"], rows[name][f"p vs teacher {label}"] = test["delta"], test["t_test_p"]
    return {"rows": rows, "per_query": per_query, "passages": len(texts), "rounds": rounds, "machine": machine(),
            "test_queries": len(per_query[TEACHER_INT8])}


def main() -> None:
    args = arguments(__doc__, build=(Path, ROOT / "artifacts" / "scifact-domain", "the build of `make domain`"),
                     recipe=(Path, ROOT / "configs" / "recipes" / "scifact.toml", "its recipe"),
                     structures=(str, "4:0.5,3:0,3:0.5", "layers:ffn share of the GAPrune students, comma-separated"),
                     scores=(str, "magnitude,activation", "the other scores, built at the chosen structure"),
                     supervised=(float, 0.5, "weight of the supervised loss tried at the chosen structure (0: none)"),
                     passages=(int, 8000, "corpus passages distilled on (compress.passages)"),
                     tolerance=(float, 0.01, "validation nDCG@10 a student may lose"),
                     n=(int, 1500, "passages to time"), rounds=(int, 3, "interleaved timing rounds"),
                     dl19=(int, 1, "1: DL19 nDCG@10 of every model too; 0: not"))
    out: Path = args.out if args.out != ROOT / "docs" / "benchmarks" else ROOT / "docs" / "compression"
    teacher = args.build / "finetune"
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"error: {teacher} holds no fine-tuned encoder: run `make domain` first")
    recipe = Recipe.load(args.recipe, args.data)
    store = ResultStore("compression-records")
    work = args.build.with_name(args.build.name + ".compress")

    def student(score: str, layers: int, ffn: float, supervised: float = 0.0) -> str:
        name = student_name(score, layers, ffn, supervised)
        if name in store.runs and not Path(store.runs[name]["path"]).is_dir():
            store.runs.pop(name)  # a fresh machine: the model is gone, so it is built (and measured) again
        store.run(name, lambda: build_student(recipe, teacher, work, score, layers, ffn, supervised, args.passages))
        return name

    structures = {student("gaprune", int(s.split(":")[0]), float(s.split(":")[1])): (int(s.split(":")[0]), float(s.split(":")[1]))
                  for s in args.structures.split(",") if s.strip()}
    chosen = pick_structure({name: store.runs[name] for name in structures}, args.tolerance)
    layers, ffn = structures[chosen]
    same = [chosen] + [student(score, layers, ffn) for score in args.scores.split(",") if score.strip()]
    if args.supervised:
        same.append(student("gaprune", layers, ffn, args.supervised))
    pick = max(same, key=lambda k: store.runs[k]["evidence"]["student"])
    models = {TEACHER_INT8: teacher, **{name: Path(store.runs[name]["path"]) for name in store.runs if name != "measured"}}
    if "measured" in store.runs and set(store.runs["measured"]["rows"]) != {*models, TEACHER_FP32}:
        store.runs.pop("measured")  # a student was added since: every figure is measured again, in one run
    measured = store.run("measured", lambda: measure(models, Dataset.load(Path(recipe.data.dataset), split="test"),
                                                     dl19(args.data) if args.dl19 else None, args.n, args.rounds))
    scores_vs_gaprune = {name: paired_test(measured["per_query"][chosen], measured["per_query"][name])
                         for name in same if name != chosen}  # the scores at one structure, on test
    payload = {"structure": chosen, "pick": pick, "same_structure": same, "students": {k: v for k, v in store.runs.items() if k != "measured"},
               "scores_vs_gaprune": scores_vs_gaprune, **{k: v for k, v in measured.items() if k != "per_query"}}
    save(out, "study", payload, report(payload, args.tolerance))
    plot(measured["rows"], pick, str(measured["machine"]["cpu"]), out / "pareto.png")


def chosen_why(students: dict[str, dict[str, Any]], payload: dict[str, Any], tolerance: float) -> str:
    """Why the structure was chosen: the smallest within tolerance, or (none within) the best on validation."""
    evidence = students[payload["structure"]]["evidence"]
    if evidence["student"] >= evidence["teacher"] - tolerance:
        return f"the smallest within {tolerance} of the teacher"
    return f"no GAPrune student of --structures was within {tolerance} of the teacher: the best of them on validation"


def report(payload: dict[str, Any], tolerance: float) -> str:
    from eval.report import markdown_table

    rows, students, pick = payload["rows"], payload["students"], payload["pick"]
    table = {name: {**row, **({"validation Δ": students[name]["evidence"]["student"] - students[name]["evidence"]["teacher"],
                               "compress stage s": students[name]["seconds"]} if name in students else {})}
             for name, row in rows.items()}
    best = rows[pick]
    met = best.get("Δ vs teacher int8", -1.0) >= -0.010 and best["× teacher int8"] >= 1.8
    verdict = (f"**Goal met** by the validation pick ({pick}): Δ {best['Δ vs teacher int8']:+.4f} (p {best['p vs teacher int8']:.3g}) "
               f"at {best['× teacher int8']:.2f}x the teacher's passages/s, both int8." if met else
               f"**Goal not met** by the validation pick ({pick}): Δ {best.get('Δ vs teacher int8', float('nan')):+.4f} at "
               f"{best['× teacher int8']:.2f}x the teacher's passages/s (goal: ≥ −0.010 at ≥ 1.8x, both int8).")
    cpu = payload["machine"]["cpu"]
    versus = "; ".join(f"{name}: Δ {t['delta']:+.4f} (p {t['t_test_p']:.3g})" for name, t in payload["scores_vs_gaprune"].items())
    return "\n".join([f"# Compressing the SciFact domain encoder ({cpu})", "", markdown_table(table, "encoder"), "", verdict, "",
                      f"Structure chosen on the fine-tuning's validation queries: {payload['structure']} ({chosen_why(students, payload, tolerance)}). "
                      f"Pick among the scores at it: {pick}. Speed: {payload['passages']} "
                      f"shuffled SciFact passages, {payload['rounds']} interleaved rounds, ratio to the teacher's int8 within "
                      "each round (median, min, max); query ms: one query at a time. Δ and p: paired t-tests over the "
                      f"{payload['test_queries']} SciFact test queries.", "", f"At {payload['structure'].split(', ', 1)[1]}, against GAPrune's score on SciFact "
                      f"test (paired): {versus or 'no other score built'}.", "", "Reproduce: `make compress-study`", ""])


def plot(rows: dict[str, dict[str, Any]], pick: str, cpu: str, path: Path) -> None:
    """SciFact test nDCG@10 against speed (× the teacher's int8): the Pareto front of the students."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, row in rows.items():
        marker = "*" if name == pick else ("s" if name.startswith("teacher") else "o")
        ax.scatter(row["× teacher int8"], row["SciFact nDCG@10"], marker=marker, s=120 if name == pick else 50)
        ax.annotate(name, (row["× teacher int8"], row["SciFact nDCG@10"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    teacher = rows[TEACHER_INT8]["SciFact nDCG@10"]
    ax.axhline(teacher - 0.010, ls="--", lw=0.8, color="grey", label="teacher int8 − 0.010")
    ax.axvline(1.8, ls=":", lw=0.8, color="grey", label="1.8x")
    ax.set_xlabel("passages/s, × the teacher's int8 (median of rounds)")
    ax.set_ylabel("SciFact test nDCG@10 (dense)")
    ax.set_title(f"Compressed domain encoders\n{cpu}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
