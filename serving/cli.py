"""The ``siftrank`` command: build indexes, search them, evaluate pipelines on test collections.

Bad input ends with one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.errors import SiftrankError

app = typer.Typer(name="siftrank", help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
index_app = typer.Typer(help="Build FAISS indexes over a corpus.", no_args_is_help=True)
app.add_typer(index_app, name="index")

# The shared data folder beside the repository (../shared/data), or $SIFTRANK_DATA.
DEFAULT_DATA = Path(os.environ.get("SIFTRANK_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens (cache hits, builds) to stderr.")]
ModelOpt = Annotated[Optional[str], typer.Option(help="Encoder: 'bundled:all-MiniLM-L6-v2' or a local sentence-transformers folder. Default: the pipeline config's.")]
PipelineOpt = Annotated[Optional[Path], typer.Option("--pipeline", help="Pipeline config (TOML): encoder, index and later stages. Default: bundled MiniLM, flat index.")]


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Option("--corpus", help="A corpus file (corpus.jsonl[.gz], collection.tsv) or a dataset directory holding one.")],
    out: Annotated[Path, typer.Option("--out", help="Index directory to write (written atomically).")],
    pipeline: PipelineOpt = None,
    model: ModelOpt = None,
    kind: Annotated[Optional[str], typer.Option(help="flat (exact), ivf (inverted lists) or hnsw (graph). Default: the config's (flat).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Index device: auto (GPU when FAISS sees one), cpu or gpu.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Encoder precision: auto (fp16 GPU, bf16 on CPUs with native bf16, else fp32), fp32, bf16, fp16.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index directory (only once the new one is complete).")] = False,
    verbose: Verbose = False,
) -> None:
    """Encode a corpus and write a FAISS index directory (index.faiss, docs.parquet, manifest.json)."""
    from retrieval.data import Dataset
    from retrieval.indexer import Indexer

    _logging(verbose)
    config = _config(pipeline, model=model, kind=kind, device=device, precision=precision)
    if out.exists() and not overwrite:
        raise SiftrankError(f"{out} already exists (pass --overwrite to replace it)")
    dataset = Dataset.corpus_only(corpus)
    index = Indexer(config.encoder.build(), config.index.kind, config.index.params, config.index.device).build(dataset)
    index.save(out, overwrite=overwrite)
    m = index.manifest.metrics
    typer.echo(f"wrote {out}: {len(index)} passages, {index.kind}, {m['passages_per_second']} passages/s "
               f"({m['encoder_precision']} on {m['encoder_device']})")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The query text.")],
    index: Annotated[Path, typer.Option("--index", help="Index directory from 'siftrank index build'.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many hits to show.")] = 10,
    model: ModelOpt = None,
    pipeline: PipelineOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines.")] = False,
    verbose: Verbose = False,
) -> None:
    """Search an index with one query and print the ranked hits. The encoder defaults to the one that
    built the index; another model is refused."""
    from retrieval.index import Index
    from retrieval.pipeline import Pipeline

    _logging(verbose)
    loaded = Index.load(index)
    config = _config(pipeline, model=model or loaded.manifest.source_model)
    hits = Pipeline(config.encoder.build(), loaded, depth=k).search(query, k=k)
    for hit in hits:
        if as_json:
            typer.echo(hit.model_dump_json())
        else:
            text = (hit.text or "").replace("\n", " ")
            typer.echo(f"{hit.rank:>3}  {hit.score:.4f}  {hit.id}  {text[:100]}")


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
    first_stage: Annotated[str, typer.Option(help="dense (encoder + index) or bm25 (the lexical baseline).")] = "dense",
    first_stage_run: Annotated[Optional[Path], typer.Option(help="Take candidates from this TREC run instead of retrieving (re-ranking setup).")] = None,
    score_run: Annotated[Optional[list[Path]], typer.Option(help="Only score these TREC runs against the qrels (repeatable); no pipeline.")] = None,
    ties: Annotated[str, typer.Option(help="Tie-break for tied scores in --score-run files: trec_eval (descending docid), docid (ascending), rank (the file's rank column).")] = "trec_eval",
    verbose: Verbose = False,
) -> None:
    """Evaluate a pipeline stage by stage (nDCG@10, RR@10, R@100, R@1000, AP via ir_measures), or score runs."""
    from eval.report import markdown_table, print_table
    from retrieval.artifacts import write_text_atomic
    from retrieval.data import Dataset

    _logging(verbose)
    if score_run:
        from eval.metrics import MetricSuite
        from retrieval.data import read_run

        data = Dataset.load(dataset, split=split, qrels=qrels, with_corpus=False)
        suite = MetricSuite(data.qrels)
        rows = {path.name: suite.evaluate(read_run(path, ties=ties)) for path in score_run}
        print_table(rows, title=f"{data.name} / {data.qrels_path.name}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "metrics.json", json.dumps({"runs": rows, "qrels": str(data.qrels_path)}, indent=2) + "\n")
            write_text_atomic(out / "runs.md", markdown_table(rows))
        return
    if out is None:
        raise SiftrankError("--out is required (where metrics.json and the runs go)")
    from eval.runner import EvalRunner
    from retrieval.pipeline import Pipeline

    config = _config(pipeline, model=model, kind=kind, precision=precision)
    start = time.perf_counter()
    data = Dataset.load(dataset, split=split, qrels=qrels, with_corpus=first_stage_run is None)
    if first_stage_run is not None:
        pipe = Pipeline(depth=config.index.depth)
    else:
        pipe = Pipeline.from_config(config, data, first_stage=first_stage)
    setup = time.perf_counter() - start
    metrics = EvalRunner(pipe, data, out).run(first_stage_run, extra_timings={"setup_seconds": round(setup, 3)})
    print_table(metrics["stages"], title=f"{data.name} / {data.qrels_path.name} ({len(data.queries)} queries)")
    typer.echo(f"wrote {out}/metrics.json")


def _config(path: Optional[Path], **overrides: Optional[str]):
    """The pipeline config with command-line overrides applied (and validated again)."""
    from retrieval.config import PipelineConfig

    config = PipelineConfig.load(path)
    raw = config.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        section = "index" if key in ("kind", "device") else "encoder"
        raw[section]["model" if key == "model" else key] = value
    try:
        return PipelineConfig.model_validate(raw)
    except Exception as exc:  # pydantic ValidationError: a bad --kind or --precision
        raise SiftrankError(f"invalid option: {exc}") from None


def main() -> None:
    """Entry point: run the app, turning bad input into one line and exit status 2."""
    try:
        app()
    except SiftrankError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
