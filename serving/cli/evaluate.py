"""``siftrank eval``: a pipeline evaluated stage by stage on a test collection, or TREC runs scored."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.errors import SiftrankError
from serving.cli.common import DatasetOpt, ModelOpt, PipelineOpt, Verbose, app, dataset_or_default, load_config, setup_logging


def check_overlap(path: Path, run: dict, qrels: dict, qrels_path: Path | None) -> None:
    """A run that ranks none of the judged queries is an error (every measure would print 0); some: a warning."""
    shared = set(run) & set(qrels)
    if not shared:
        raise SiftrankError(f"{path}: none of its {len(run)} query ids is judged in {qrels_path} "
                            f"(run ids like {sorted(run)[:3]}, qrels ids like {sorted(qrels)[:3]})")
    if len(shared) < len(qrels) or len(shared) < len(run):
        typer.echo(f"warning: {path.name}: ranks {len(shared)} of the {len(qrels)} judged queries (the other "
                   f"{len(qrels) - len(shared)} score 0); {len(set(run) - shared)} of its queries are not judged (ignored)",
                   err=True)


def print_per_query(per_query: dict[str, dict[str, dict[str, float]]]) -> None:
    """trec_eval -q lines: run, measure, query id, value (tab-separated)."""
    for run, measures in per_query.items():
        for measure, values in measures.items():
            for qid, value in sorted(values.items()):
                typer.echo(f"{run}\t{measure}\t{qid}\t{value:.4f}")


@app.command("eval")
def evaluate(
    dataset: DatasetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory: metrics.json and run.<stage>.trec.")] = None,
    split: Annotated[str, typer.Option(help="Qrels split: qrels/<split>.tsv or qrels.<split>.tsv.")] = "test",
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file, a path or a name in the dataset (e.g. qrels.test.in_corpus.tsv for retrieval over the closed DL19 corpus).")] = None,
    pipeline: PipelineOpt = None,
    model: ModelOpt = None,
    kind: Annotated[Optional[str], typer.Option(help="Index kind: flat, ivf, hnsw. Default: the config's.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Encoder precision: auto, fp32, bf16, fp16.")] = None,
    first_stage: Annotated[Optional[str], typer.Option(help="Override the config's [first_stage] kind: dense, bm25, hybrid.")] = None,
    first_stage_run: Annotated[Optional[Path], typer.Option(help="Take candidates from this TREC run ([first_stage] kind = 'run'; the re-ranking setup).")] = None,
    score_run: Annotated[Optional[list[Path]], typer.Option("--score-run", "--run", help="Only score these TREC runs against the qrels (repeatable); no pipeline. With --qrels FILE no dataset is needed.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Compare the runs given as arguments: per-measure deltas against the first, paired t-test and randomisation test, Holm-corrected.")] = False,
    runs: Annotated[Optional[list[Path]], typer.Argument(help="Runs to compare (with --compare); the first is the baseline.", show_default=False)] = None,
    measure: Annotated[Optional[list[str]], typer.Option("--measure", "-m", help="The measures to report, repeatable, in ir_measures or trec_eval spelling (-m nDCG@10 -m P@5, or -m ndcg_cut_10 -m map). Default: nDCG@10, RR@10, R@100, R@1000, AP.")] = None,
    per_query: Annotated[bool, typer.Option("--per-query", "-q", help="Also print every query's value of every measure (trec_eval -q): run, measure, query id, value.")] = False,
    ties: Annotated[str, typer.Option(help="Tie-break for tied scores in --score-run files: trec_eval (descending docid), docid (ascending), rank (the file's rank column).")] = "trec_eval",
    verbose: Verbose = False,
) -> None:
    """Evaluate every stage of a pipeline (nDCG@10, RR@10, R@100, R@1000, AP via ir_measures), or score runs."""
    from eval.compare import RunComparison, measure_names
    from eval.report import markdown_table, print_table
    from retrieval.artifacts import write_text_atomic
    from retrieval.data import Dataset

    setup_logging(verbose)
    dataset = dataset_or_default(dataset)
    extra = measure_names(measure or [])
    if runs and not compare:
        raise SiftrankError("runs as arguments are compared: add --compare (or score them with --run)")
    if compare or score_run:
        from retrieval.data import read_qrels, read_run
        from retrieval.measures import MetricSuite

        given = list(runs or []) if compare else list(score_run or [])
        if compare and (score_run or len(given) < 2):
            raise SiftrankError("--compare takes two or more runs as arguments (the first is the baseline)")
        qrels_path: Path | None
        if qrels is not None and Path(qrels).is_file():  # scoring alone: no dataset folder needed
            qrels_path, name = Path(qrels), Path(qrels).name
            judged = read_qrels(qrels_path)
        else:
            data = Dataset.load(dataset, split=split, qrels=qrels, with_corpus=False)
            judged, qrels_path, name = data.qrels, data.qrels_path, data.name
        for path in given:
            if not path.is_file():
                raise SiftrankError(f"{path}: run file not found")
        suite = MetricSuite(judged, extra, only=True)
        loaded = {path.name: read_run(path, ties=ties) for path in given}
        if len(loaded) < len(given):
            raise SiftrankError("runs must have distinct file names (they label the table)")
        for path in given:
            check_overlap(path, loaded[path.name], judged, qrels_path)
        typer.echo(f"qrels: {qrels_path} ({len(judged)} judged queries)", err=True)
        payload: dict = {"qrels": str(qrels_path)}
        columns = None
        if compare:
            table = RunComparison(suite, loaded).table()
            rows = RunComparison.rows(table)
            columns = ["mean", "delta", "t-test p (Holm)", "randomisation p (Holm)", "significant"]
            print_table(rows, title=f"{name}: runs against {table['baseline']} (paired, Holm-corrected per measure)",
                        columns=columns)
            payload.update({"runs": table["means"], "comparison": table})
        else:
            rows = {run: suite.evaluate(scored) for run, scored in loaded.items()}
            print_table(rows, title=f"{name} / {qrels_path}")
            payload["runs"] = rows
        if per_query:
            payload["per_query"] = {run: suite.per_query(scored) for run, scored in loaded.items()}
            print_per_query(payload["per_query"])
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "metrics.json", json.dumps(payload, indent=2) + "\n")
            write_text_atomic(out / "runs.md", markdown_table(rows, columns=columns))
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
    metrics = EvalRunner(pipe, data, out, measures=extra, only=True).run(extra_timings={"setup_seconds": round(setup, 3)})
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
