"""The headline figures, each from one pipeline config run now on this machine: `make results`.

DL19 (closed corpus, ``qrels.test.in_corpus.tsv``) and SciFact test: BM25, the dense encoder in torch fp32,
the pipeline `make serve` serves (``configs/serve.toml``: the encoder's backend and precision measured on this
CPU), the zero-shot hybrid, and the SciFact domain pipeline of `make domain` when it is built. Every row names
the backend and precision its encoder ran with and the CPU; the paired p is against the first dense row of the
same collection. Results: docs/results/headline.{md,json,png}; README and docs/results.md quote them.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, arguments, bar_chart, dl19, machine, save

from eval.report import markdown_table
from eval.runner import EvalRunner
from retrieval.config import PipelineConfig, with_overrides
from retrieval.data import Dataset, read_run
from retrieval.measures import MetricSuite, paired_test
from retrieval.pipeline import Pipeline

MEASURES = ("nDCG@10", "R@100")


def rows() -> list[tuple[str, str, Path | None, list[str]]]:
    """(collection, label, pipeline config, ``SECTION.KEY=VALUE`` overrides) of every headline row."""
    configs = ROOT / "configs"
    domain = ROOT / "artifacts" / "scifact-domain" / "pipeline.toml"
    fp32 = ['encoder.backend="torch"', 'encoder.precision="fp32"', 'encoder.query_precision="fp32"']
    table = []
    for collection in ("dl19", "scifact"):
        table += [(collection, "dense, torch fp32", None, fp32),
                  (collection, "dense, as served (make serve)", configs / "serve.toml", []),
                  (collection, "BM25", configs / "bm25.toml", []),
                  (collection, "hybrid dense + BM25, zero-shot", configs / "hybrid.toml", [])]
    if domain.is_file():
        table.append(("scifact", "domain pipeline (make domain)", domain, []))
    return table


def main() -> None:
    args = arguments(__doc__.splitlines()[0], report_only=(int, 0, "1: redraw the report from headline.json, measure nothing"))
    out = args.out if args.out != ROOT / "docs" / "benchmarks" else ROOT / "docs" / "results"
    if args.report_only:
        write_report(json.loads((out / "headline.json").read_text()), out)
        return
    collections = {"dl19": dl19(args.data), "scifact": Dataset.load(args.data / "scifact", split="test")}
    report: dict[str, Any] = {"machine": machine(), "rows": {}}
    per_query: dict[str, dict[str, float]] = {}
    baseline: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as work:
        for collection, label, path, overrides in rows():
            data = collections[collection]
            config = with_overrides(PipelineConfig.load(path), overrides)
            pipeline = Pipeline.from_config(config, data)
            runs = Path(work) / f"{collection}-{len(report['rows'])}"
            metrics = EvalRunner(pipeline, data, runs, progress=False).run()
            final = metrics["final_stage"]
            scores = MetricSuite(data.qrels).per_query(read_run(runs / f"run.{final}.trec"))["nDCG@10"]
            encoder = pipeline.encoder
            key = f"{collection}: {label}"
            row = {"collection": collection, "queries": len(data.queries), "stages": " -> ".join(pipeline.stages),
                   **{re.sub(r"\(.*?\)", "", m): round(value, 4) for m, value in metrics["stages"][final].items()
                      if re.sub(r"\(.*?\)", "", m) in MEASURES},  # DL19's graded qrels: R(rel=2)@100
                   "encoder": f"{encoder.backend} {encoder.precision} (queries {encoder.query_precision})" if encoder else "-",
                   "ms_per_query": metrics["timings"]["ms_per_query"],
                   "config": str(path.relative_to(ROOT)) if path else "defaults + fp32"}
            if collection not in baseline:  # the first row of each collection: dense, torch fp32
                baseline[collection] = key
            else:
                test = paired_test(per_query[baseline[collection]], scores)
                p = test["randomisation_p"]  # 10,000 sign flips: 0 means below 1e-4
                row["vs dense fp32"] = f"{test['delta']:+.4f} (p {p:.2g})" if p > 0 else f"{test['delta']:+.4f} (p < 1e-4)"
            per_query[key] = scores
            report["rows"][key] = row
            print(key, row, flush=True)
    write_report(report, out)


COLUMNS = ("nDCG@10", "R@100", "vs dense fp32", "encoder", "ms_per_query", "stages", "config")


def write_report(report: dict[str, Any], out: Path) -> None:
    """headline.md and .json, and the bar chart (``--report-only`` redraws them from headline.json)."""
    header = (f"Measured by `make results` on {report['machine']['cpu']}, torch {report['machine']['torch']}. DL19: 43 "
              "queries, qrels.test.in_corpus.tsv; SciFact: 300 test queries. R@100 counts grade ≥ 2 as relevant on DL19. "
              "Encoder: the backend and precision it ran with (as served: measured on this CPU). vs dense fp32: paired "
              "difference in nDCG@10 and randomisation-test p against the dense torch fp32 row of the same collection. "
              "ms_per_query: the whole pipeline over the query set, one process on this CPU.\n\n")
    table = markdown_table(report["rows"], columns=COLUMNS)
    save(out, "headline", report, "# Headline figures\n\n" + header + table + "\n![nDCG@10 per pipeline](headline.png)\n")
    bar_chart(out / "headline.png", list(report["rows"]), [r["nDCG@10"] for r in report["rows"].values()],
              "nDCG@10", f"nDCG@10 per pipeline ({report['machine']['cpu']})")


if __name__ == "__main__":
    main()
