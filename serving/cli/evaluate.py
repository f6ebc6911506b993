"""``siftrank eval``: a pipeline evaluated stage by stage on a test collection, or TREC runs scored."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.errors import SiftrankError
from serving.cli.common import DEFAULT_DATA, ModelOpt, PipelineOpt, Verbose, app, load_config, setup_logging


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Option("--dataset", help="Dataset directory (BEIR layout or MS MARCO tsv).")] = DEFAULT_DATA / "msmarco-dl19",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory: metrics.json and run.<stage>.trec.")] = None,
    split: Annotated[str, typer.Option(help="Qrels split: qrels/<split>.tsv or qrels.<split>.tsv.")] = "test",
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file, a path or a name in the dataset (e.g. qrels.test.in_corpus.tsv for retrieval over the closed DL19 corpus).")] = None,
    pipeline: PipelineOpt = None,
    model: ModelOpt = None,
    kind: Annotated[Optional[str], typer.Option(help="Index kind: flat, ivf, hnsw. Default: the config's.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Encoder precision: auto, fp32, bf16, fp16.")] = None,
    first_stage: Annotated[Optional[str], typer.Option(help="Override the config's [first_stage] kind: dense, bm25, hybrid.")] = None,
    first_stage_run: Annotated[Optional[Path], typer.Option(help="Take candidates from this TREC run ([first_stage] kind = 'run'; the re-ranking setup).")] = None,
    score_run: Annotated[Optional[list[Path]], typer.Option(help="Only score these TREC runs against the qrels (repeatable); no pipeline.")] = None,
    ties: Annotated[str, typer.Option(help="Tie-break for tied scores in --score-run files: trec_eval (descending docid), docid (ascending), rank (the file's rank column).")] = "trec_eval",
    verbose: Verbose = False,
) -> None:
    """Evaluate every stage of a pipeline (nDCG@10, RR@10, R@100, R@1000, AP via ir_measures), or score runs."""
    from eval.report import markdown_table, print_table
    from retrieval.artifacts import write_text_atomic
    from retrieval.data import Dataset

    setup_logging(verbose)
    if score_run:
        from eval.metrics import MetricSuite
        from retrieval.data import read_run

        data = Dataset.load(dataset, split=split, qrels=qrels, with_corpus=False)
        suite = MetricSuite(data.qrels)
        rows = {path.name: suite.evaluate(read_run(path, ties=ties)) for path in score_run}
        print_table(rows, title=f"{data.name} / {data.qrels_path}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "metrics.json", json.dumps({"runs": rows, "qrels": str(data.qrels_path)}, indent=2) + "\n")
            write_text_atomic(out / "runs.md", markdown_table(rows))
        return
    if out is None:
        raise SiftrankError("--out is required (where metrics.json and the runs go)")
    from eval.runner import EvalRunner
    from retrieval.pipeline import Pipeline

    config = load_config(pipeline, first_stage=first_stage, first_stage_run=first_stage_run, model=model, kind=kind,
                         precision=precision)
    start = time.perf_counter()
    data = Dataset.load(dataset, split=split, qrels=qrels)
    pipe = Pipeline.from_config(config, data)
    setup = time.perf_counter() - start
    metrics = EvalRunner(pipe, data, out).run(extra_timings={"setup_seconds": round(setup, 3)})
    stages = metrics["stages"]
    print_table(stages, title=f"{data.name} / {getattr(data.qrels_path, 'name', '-')} ({len(data.queries)} queries)",
                columns=list(next(iter(stages.values()))))
    if "rerank" in stages and "input_tokens_per_query" in stages["rerank"]:
        cost = stages["rerank"]
        typer.echo(f"ranker: {cost['input_tokens_per_query']:.0f} input and {cost['output_tokens_per_query']:.0f} output "
                   f"tokens, {cost['seconds_per_query']:.2f} s per query; {cost['parse_failures']} parse failures, "
                   f"{cost['repaired_answers']} repaired answers")
    if "filter" in stages and "baselines" in stages["filter"]:
        from eval.report import FILTER_COLUMNS

        rows = {"adapter": stages["filter"], **stages["filter"]["baselines"]}
        print_table(rows, title="relevance filter over the first-stage candidates (thresholds from training data)",
                    columns=[c for c in FILTER_COLUMNS if c != "nDCG@10"])
    typer.echo(f"wrote {out}/metrics.json")
