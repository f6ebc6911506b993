"""The domain pipeline, stage by stage and with each stage removed: `make eval-domain`.

Reads the build of `make domain` (``--build``, from ``--recipe``), builds the ablation variants with the
same builder (each reusing the full build's pruned model as a prebuilt artifact where it keeps the prune
stage): no prune, no finetune, and connected adapters / LoRA instead of the recipe's fine-tuning on the
pruned model. Every pipeline runs on SciFact test through the eval runner; "no filter" is the full
pipeline's dense stage and "no rank" its last stage before the ranker. Paired differences to the full
pipeline over the 300 test queries (t-test and randomisation), DL19 nDCG@10 of every encoder, index
bytes, encoder parameters and bytes, ms per query. Records are kept in ``domain-records.json``
(resumable); results in docs/domain/study.{md,json} and ablation.png.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from common import ResultStore, arguments, bar_chart, dl19, machine, save

from eval.metrics import MetricSuite
from eval.report import markdown_table
from eval.runner import EvalRunner
from eval.significance import paired_test
from retrieval.config import PipelineConfig
from retrieval.data import Dataset, read_run
from retrieval.encoder import Encoder
from retrieval.indexer import Indexer
from retrieval.pipeline import Pipeline
from retrieval.stages.dense import DenseRetriever
from training.build import PipelineBuilder
from training.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(path: Path | None) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path else 0


def variants(build: Path) -> dict[str, list[str]]:
    """Recipe overrides of each ablation (the full pipeline's pruned model is reused, never rebuilt)."""
    pruned = [f'prune.artifact="{build / "prune"}"']
    return {"no prune": ["prune.enabled=false"],
            "no finetune": pruned + ["finetune.enabled=false"],
            "connected on pruned": pruned + ["finetune.method=connected"],
            "lora on pruned": pruned + ["finetune.method=lora"]}


def evaluate(pipeline_file: Path, test: Dataset, out: Path) -> dict[str, Any]:
    """Every stage of a built pipeline on the test set: measures, per-query nDCG@10, ms per query, sizes."""
    config = PipelineConfig.load(pipeline_file)
    pipeline = Pipeline.from_config(config, test)
    metrics = EvalRunner(pipeline, test, out, progress=False).run()
    suite = MetricSuite(test.qrels)
    per_query = {}
    for stage in metrics["stages"]:
        per_query[stage] = suite.per_query(read_run(out / f"run.{stage}.trec"))["nDCG@10"]
    encoder = config.encoder.build()
    return {"stages": metrics["stages"], "final": metrics["final_stage"], "per_query": per_query,
            "ms_per_query": metrics["timings"]["ms_per_query"],
            "index_bytes": folder_bytes(config.index.path),
            "encoder_parameters": sum(p.numel() for p in encoder.model.parameters()),
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
                     only=(str, "", "comma-separated variants to run (default: all)"))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / "domain-records.json")
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
    for name, overrides in variants(build).items():
        if wanted and name not in wanted:
            continue
        folder = work / name.replace(" ", "-")

        def run(folder: Path = folder, overrides: list[str] = overrides) -> dict[str, Any]:
            start = time.perf_counter()
            PipelineBuilder(recipe.with_overrides(overrides), folder).build()
            record = evaluate(folder / "pipeline.toml", test, work / "eval" / folder.name)
            return {**record, "build_seconds": round(time.perf_counter() - start, 1), "overrides": overrides}

        store.run(name, run)
    # DL19 nDCG@10 of every encoder the builds produced (cached indexes: a rerun is quick)
    for name, record in list(store.runs.items()):
        if name.startswith("dl19:"):
            continue
        store.run(f"dl19:{name}", lambda r=record: dl19_ndcg(r["model"], r["adapter"], args.data))
    pruned = build / "prune"
    if pruned.is_dir():
        store.run("dl19:pruned (no finetune)", lambda: dl19_ndcg(str(pruned), None, args.data))
    write_report(store, report, out, recipe)
    shutil.rmtree(work / "eval", ignore_errors=True)


def write_report(store: ResultStore, report: dict[str, Any], out: Path, recipe: Recipe) -> None:
    runs = store.runs
    full = runs["full"]
    final = full["final"]
    first = next(iter(full["stages"]))
    reference = full["per_query"][final]
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str, record: dict[str, Any], stage: str, dl19_key: str) -> None:
        test = paired_test(reference, record["per_query"][stage]) if record is not full or stage != final else None
        rows[name] = {"nDCG@10": record["stages"][stage]["nDCG@10"], "R@100": record["stages"][stage]["R@100"],
                      "Δ vs full": test["delta"] if test else 0.0, "t-test p": test["t_test_p"] if test else None,
                      "randomisation p": test["randomisation_p"] if test else None,
                      "DL19 nDCG@10": runs.get(f"dl19:{dl19_key}", {}).get("dl19_ndcg@10"),
                      "ms/query": record["ms_per_query"], "index MB": record["index_bytes"] / 1e6,
                      "encoder params (M)": record["encoder_parameters"] / 1e6,
                      "encoder MB": record["encoder_bytes"] / 1e6, "passages/s": record["passages_per_second"]}

    row(f"full pipeline ({' → '.join(recipe.active())})", full, final, "full")
    if final != first:
        row("no filter", full, first, "full")
    row("no rank" + (" (= full: rank is off in the recipe)" if not recipe.rank.enabled else ""), full,
        final if not recipe.rank.enabled else next(s for s in full["stages"] if s == "filter"), "full")
    for name in ("no prune", "no finetune", "connected on pruned", "lora on pruned"):
        if name in runs:
            record = runs[name]
            row(name, record, record["final"], name)
    base = runs["base (zero-shot, dense)"]
    row("base encoder, no stage (zero-shot MiniLM)", base, base["final"], "base (zero-shot, dense)")

    stages = report["stages"]
    build_rows = {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in stages}
    text = [f"# Domain pipeline: {recipe.name}\n",
            f"Machine: {store.data.get('machine', machine())['cpu']}. Build wall time: {report['wall_seconds']:.0f} s "
            f"(CPU {report['cpu']}).\n", markdown_table(build_rows, "stage"), "\n## SciFact test (300 queries) and DL19\n",
            markdown_table(rows, "pipeline"),
            "\nΔ and p: paired over the test queries against the full pipeline (nDCG@10). ms/query: the whole "
            "pipeline over all test queries in one batch, divided by their number.\n"]
    save(out, "study", {"rows": rows, "build": report, "machine": store.data.get("machine")}, "\n".join(text))
    order = [list(rows)[-1]] + list(rows)[:-1]  # the zero-shot base first (drawn grey), then the pipelines
    bar_chart(out / "ablation.png", order, [rows[n]["nDCG@10"] for n in order], "SciFact test nDCG@10",
              f"{recipe.name}: full pipeline and ablations")


if __name__ == "__main__":
    main()
