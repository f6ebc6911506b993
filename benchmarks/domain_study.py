"""The domain pipeline, stage by stage and with each stage removed or added: `make eval-domain`.

Reads the build of `make domain` (``--build``, from ``--recipe``) and builds the variants with the same
builder next to it (``<build>.ablations/``): no finetune; the recipe with its prune stage on ("with prune":
GAPrune, structured 50%); the pruned model without fine-tuning and with connected adapters, LoRA or AdaLoRA
instead of the recipe's method (each reusing the "with prune" build's pruned model as a prebuilt artifact).
Every pipeline runs on SciFact test through the eval runner; "no filter" is the default pipeline's dense
stage and "no rank" its last stage before the ranker. Paired differences over the 300 test queries
(t-test and randomisation), DL19 nDCG@10 of every encoder, index bytes, encoder parameters and bytes, ms per
query. Records are kept in ``benchmarks/records/domain-domain-records.json`` (resumable); results in docs/domain/study.{md,json} and
ablation.png.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from common import ResultStore, arguments, bar_chart, dl19, machine, save

from eval.report import markdown_table
from eval.runner import EvalRunner
from retrieval.config import PipelineConfig
from retrieval.data import Dataset, read_run
from retrieval.encoder import Encoder
from retrieval.indexer import Indexer
from retrieval.measures import MetricSuite, paired_test
from retrieval.pipeline import Pipeline
from retrieval.stages.dense import DenseRetriever
from training.build import PipelineBuilder
from training.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(path: Path | None) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path else 0


PRUNED = "with prune"  # the recipe with its prune stage on: the pruned model every "on pruned" variant reuses
HYBRID = "hybrid first stage"  # the recipe with [first_stage] kind = "hybrid", its fusion chosen on validation queries
HYBRID_SAME = "hybrid on the default's encoder"  # the same first stage over the default build's fine-tuned encoder
METHOD_VARIANTS = ("connected on pruned", "lora on pruned", "adalora on pruned")


def variants(work: Path, build: Path) -> dict[str, tuple[str, list[str]]]:
    """(folder, recipe overrides) of each variant. "with prune" turns the recipe's prune stage on; the
    fine-tuning methods reuse its pruned model (a prebuilt artifact, never rebuilt) and skip the filter,
    since they are compared on the dense stage. The hybrid recipe fine-tunes on its own first stage's negatives;
    "hybrid on the default's encoder" sits on the default build's fine-tuned encoder (prebuilt), so that row
    differs from the default in the first stage alone."""
    pruned = ["prune.enabled=true", f'prune.artifact="{work / "with-prune" / "prune"}"']
    encoder_only = ["calibrate.enabled=false"]
    return {"no finetune": ("no-finetune-base", ["prune.enabled=false", "finetune.enabled=false"]),
            HYBRID: ("hybrid-recipe", ['first_stage.kind="hybrid"']),
            HYBRID_SAME: ("hybrid", ['first_stage.kind="hybrid"', f'finetune.artifact="{build / "finetune"}"']),
            PRUNED: ("with-prune", ["prune.enabled=true"]),
            "pruned only": ("no-finetune", pruned + ["finetune.enabled=false"]),
            "connected on pruned": ("connected-on-pruned", pruned + encoder_only + ["finetune.method=connected"]),
            "lora on pruned": ("lora-on-pruned", pruned + encoder_only + ["finetune.method=lora"]),
            "adalora on pruned": ("adalora-on-pruned", pruned + encoder_only + ["finetune.method=adalora"])}


def evaluate(pipeline_file: Path, test: Dataset, out: Path) -> dict[str, Any]:
    """Every stage of a built pipeline on the test set: measures, per-query nDCG@10, ms per query, sizes."""
    config = PipelineConfig.load(pipeline_file)
    pipeline = Pipeline.from_config(config, test)
    metrics = EvalRunner(pipeline, test, out, progress=False).run()
    suite = MetricSuite(test.qrels)
    per_query = {}
    for stage in metrics["stages"]:
        per_query[stage] = suite.per_query(read_run(out / f"run.{stage}.trec"))["nDCG@10"]
    encoder = pipeline.encoder or config.encoder.build()  # the one the run loaded (its query model is in memory)
    return {"stages": metrics["stages"], "final": metrics["final_stage"], "per_query": per_query,
            "ms_per_query": metrics["timings"]["ms_per_query"],
            "index_bytes": folder_bytes(config.index.path),
            "encoder_parameters": sum(p.numel() for p in encoder.query_model.parameters()),
            "encoder_bytes": folder_bytes(encoder.path) + folder_bytes(encoder.adapter),
            "model": str(config.encoder.model), "adapter": str(config.encoder.adapter or ""),
            "passages_per_second": _index_speed(config.index.path)}


def _index_speed(path: Path | None) -> float | None:
    if path is None:
        return None
    return json.loads((Path(path) / "manifest.json").read_text()).get("metrics", {}).get("passages_per_second")


def dl19_ndcg(model: str, adapter: str | None, data: Path) -> dict[str, float]:
    collection = dl19(data)
    encoder = Encoder(model, adapter=adapter or None)
    start = time.perf_counter()
    index = Indexer(encoder, progress=True).cached(collection)
    hits = Pipeline(DenseRetriever(encoder, index)).run(collection.queries, depth=100).hits
    scores = MetricSuite(collection.qrels).evaluate({q: {h.id: h.score for h in hs} for q, hs in hits.items()})
    return {"dl19_ndcg@10": scores["nDCG@10"], "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    args = arguments(__doc__, build=(Path, ROOT / "artifacts" / "scifact-domain", "the build of `make domain`"),
                     recipe=(Path, ROOT / "configs" / "recipes" / "scifact.toml", "its recipe"),
                     only=(str, "", "comma-separated variants to run (default: all)"),
                     dl19=(str, "all", "DL19 nDCG@10 of: all (every encoder), main (the build's, base, with prune), none"))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore("domain-domain-records")
    recipe = Recipe.load(args.recipe, args.data)
    build: Path = args.build
    if not (build / "pipeline.toml").is_file():
        raise SystemExit(f"{build}/pipeline.toml not found: run `make domain` first")
    test = Dataset.load(Path(recipe.data.dataset), split="test")
    work = build.with_name(build.name + ".ablations")
    report = json.loads((build / "build.json").read_text())

    store.run("full", lambda: evaluate(build / "pipeline.toml", test, work / "eval" / "full"))
    base_file = work / "base.toml"
    base_file.parent.mkdir(parents=True, exist_ok=True)
    base_file.write_text(f'[encoder]\nmodel = "{recipe.encoder.base}"\n')
    store.run("base (zero-shot, dense)", lambda: evaluate(base_file, test, work / "eval" / "base"))
    wanted = [v.strip() for v in args.only.split(",") if v.strip()]
    for name, (folder_name, overrides) in variants(work, build).items():
        if wanted and name not in wanted:
            continue
        folder = work / folder_name

        def run(folder: Path = folder, overrides: list[str] = overrides) -> dict[str, Any]:
            start = time.perf_counter()
            PipelineBuilder(recipe.with_overrides(overrides), folder).build()
            record = evaluate(folder / "pipeline.toml", test, work / "eval" / folder.name)
            return {**record, "build_seconds": round(time.perf_counter() - start, 1), "overrides": overrides}

        store.run(name, run)
    # DL19 nDCG@10 of every encoder the builds produced (cached indexes: a rerun is quick)
    for name, record in list(store.runs.items()):
        main_only = args.dl19 == "main" and name not in ("full", "base (zero-shot, dense)", PRUNED, HYBRID)
        if name.startswith("dl19:") or args.dl19 == "none" or main_only:
            continue
        store.run(f"dl19:{name}", lambda r=record: dl19_ndcg(r["model"], r["adapter"], args.data))
    write_report(store, report, out, recipe)
    shutil.rmtree(work / "eval", ignore_errors=True)


def write_report(store: ResultStore, report: dict[str, Any], out: Path, recipe: Recipe) -> None:
    """Three tables (stage by stage, ablation, the pruned model by method), study.{md,json}, ablation.png."""
    runs = store.runs
    full, base = runs["full"], runs["base (zero-shot, dense)"]
    final, first = full["final"], next(iter(full["stages"]))

    def row(record: dict[str, Any], stage: str, reference: tuple[dict[str, Any], str] | None, dl19_key: str,
            sizes: bool = True) -> dict[str, Any]:
        measures = record["stages"][stage]
        recall = next(v for k, v in measures.items() if k.startswith("R") and k.endswith("@100"))  # R@100 or R(rel=2)@100
        values: dict[str, Any] = {"nDCG@10": measures["nDCG@10"], "R@100": recall}
        test = paired_test(reference[0]["per_query"][reference[1]], record["per_query"][stage]) if reference else {}
        values.update({"Δ": test.get("delta"), "t-test p": test.get("t_test_p"), "randomisation p": test.get("randomisation_p")})
        values["DL19 nDCG@10"] = runs.get(f"dl19:{dl19_key}", {}).get("dl19_ndcg@10")
        measured = measures
        if "filter_rate" in measured:  # the filter: candidates removed, recall kept, and Platt scaling's at its threshold
            platt = measured.get("baselines", {}).get("platt", {})
            values.update({"removed": measured["filter_rate"], "recall kept": measured["recall_at_threshold"],
                           "Platt removed": platt.get("filter_rate"), "Platt recall": platt.get("recall_at_threshold")})
        if sizes:
            values.update({"ms/query": record["ms_per_query"], "index MB": record["index_bytes"] / 1e6,
                           "encoder params (M)": record["encoder_parameters"] / 1e6,
                           "encoder MB": record["encoder_bytes"] / 1e6, "passages/s": record["passages_per_second"]})
        return values

    stage_rows = {"base encoder (zero-shot MiniLM), dense": row(base, base["final"], None, "base (zero-shot, dense)")}
    stage_rows[f"+ finetune ({recipe.stage('finetune').method}), dense"] = row(full, first, None, "full")
    if final != first:
        stage_rows["+ filter"] = row(full, final, None, "full")
    stage_rows["+ rank"] = ({"nDCG@10": "off (docs/ranking.md)"} if not recipe.stage('rank').enabled
                            else row(full, final, None, "full"))

    ablation = {f"default pipeline ({' → '.join(recipe.active())})": row(full, final, None, "full", sizes=False)}
    if "no finetune" in runs:
        ablation["no finetune"] = row(runs["no finetune"], runs["no finetune"]["final"], (full, final), "base (zero-shot, dense)",
                                      sizes=False)
    if final != first:
        ablation["no filter"] = row(full, first, (full, final), "full", sizes=False)
    ablation["no rank" + (" (rank is off in the recipe: = default)" if not recipe.stage('rank').enabled else "")] = \
        row(full, "filter" if recipe.stage('rank').enabled else final, (full, final), "full", sizes=False)
    if HYBRID in runs:
        ablation["hybrid first stage (dense + BM25, fusion chosen on validation queries)"] = row(
            runs[HYBRID], runs[HYBRID]["final"], (full, final), HYBRID, sizes=False)
    if HYBRID_SAME in runs:
        ablation["hybrid first stage over the default's fine-tuned encoder"] = row(
            runs[HYBRID_SAME], runs[HYBRID_SAME]["final"], (full, final), "full", sizes=False)
    if PRUNED in runs:
        ablation["with prune (GAPrune 50%, structured) on"] = row(runs[PRUNED], runs[PRUNED]["final"], (full, final), PRUNED,
                                                                 sizes=False)
    ablation["no stage: base encoder, dense"] = row(base, base["final"], (full, final), "base (zero-shot, dense)", sizes=False)

    methods: dict[str, dict[str, Any]] = {f"{recipe.stage('finetune').method} on the dense model (the default)": row(full, first, None, "full")}
    if "pruned only" in runs:
        methods["pruned only"] = row(runs["pruned only"], "dense", (full, first), "pruned only")
    if PRUNED in runs:
        methods[f"{recipe.stage('finetune').method} on pruned"] = row(runs[PRUNED], "dense", (full, first), PRUNED)
    for name in METHOD_VARIANTS:
        if name in runs:
            methods[name] = row(runs[name], "dense", (full, first), name)
    for values in methods.values():
        values["vs dense fine-tuned"] = values["nDCG@10"] / methods[next(iter(methods))]["nDCG@10"] - 1

    def table(rows: dict[str, dict[str, Any]], label: str) -> str:
        columns = list(dict.fromkeys(k for values in rows.values() for k in values))  # every row's measures, in order
        return markdown_table(rows, label, columns)

    build_rows = {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in report["stages"]}
    text = [f"# Domain pipeline: {recipe.name}\n",
            f"Build (`make domain`) on {report['cpu']}: {report.get('stage_seconds_from_scratch', 0):.0f} s for all "
            f"stages from scratch (last run: {report['wall_seconds']:.0f} s wall; seconds of a reused stage are those of "
            "its build).\n", table(build_rows, "stage"),
            "\n## Stage by stage (SciFact test, 300 queries; DL19 closed corpus, 43 queries)\n",
            table(stage_rows, "pipeline so far"),
            "\n## Ablation: the default pipeline with each stage removed or added (final stage of each, paired vs the default)\n",
            table(ablation, "pipeline"),
            "\n## The pruned model (GAPrune 50% of FFN neurons) by fine-tuning method (dense stage, paired vs the default's dense stage)\n",
            table(methods, "encoder"),
            "\nΔ and p: per-query nDCG@10 differences over the 300 test queries (paired t-test and randomisation "
            "test). ms/query: the whole pipeline over all test queries in one batch, divided by their number. "
            f"Measured on {store.data.get('machine', machine())['cpu']}.\n"]
    save(out, "study", {"stages": stage_rows, "ablation": ablation, "methods": methods, "build": report,
                        "machine": store.data.get("machine")}, "\n".join(text))
    chart = {"base (zero-shot)": base["stages"][base["final"]]["nDCG@10"]}
    chart.update({name: values["nDCG@10"] for name, values in list(ablation.items())[:-1]})
    chart.update({name: values["nDCG@10"] for name, values in list(methods.items())[1:]})
    chart = {name: value for name, value in chart.items() if isinstance(value, float)}
    bar_chart(out / "ablation.png", list(chart), list(chart.values()), "SciFact test nDCG@10",
              f"{recipe.name}: full pipeline, ablations, fine-tuning methods")


if __name__ == "__main__":
    main()
