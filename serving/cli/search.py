"""``siftrank search``: one query through every stage of a pipeline, printed as ranked hits; or a topics
file in batch, written as a TREC run (Pyserini's habit: no qrels needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from serving.cli.common import ModelOpt, PipelineOpt, Verbose, app, load_config, setup_logging


@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="The query text (or --topics for a batch).", show_default=False)] = None,
    topics: Annotated[Optional[Path], typer.Option("--topics", help="Batch mode: a topics file, jsonl ({\"_id\", \"text\"}) or TSV (qid<TAB>text); every topic's ranking goes to --out as a TREC run, no qrels needed.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The TREC run to write in batch mode (atomically).")] = None,
    k: Annotated[Optional[int], typer.Option("--k", "-k", min=1, help="Hits to show (default 10), or per topic in batch mode (default 1000).", show_default=False)] = None,
    index: Annotated[Optional[Path], typer.Option("--index", "-i", help="Index directory from 'siftrank index build' (overrides [index].path).")] = None,
    dataset: Annotated[Optional[Path], typer.Option("--dataset", "-d", help="Or a dataset (corpus) folder: its cached index, and BM25 over its corpus.")] = None,
    model: ModelOpt = None,
    pipeline: PipelineOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines.")] = False,
    where: Annotated[Optional[str], typer.Option("--filter", help='Only documents whose metadata match, as JSON: {"source": "pubmed", "year": {"gte": 2020}, "lang": {"in": ["en", "de"]}}.')] = None,
    verbose: Verbose = False,
) -> None:
    """Search with one query through every stage of the pipeline config (first stage, filter, ranker) and
    print the ranked hits. With --index the encoder defaults to the one that built it; another is refused."""
    import json

    from retrieval.artifacts import Manifest, write_text_atomic
    from retrieval.data import Dataset, format_run, read_queries
    from retrieval.errors import SiftrankError
    from retrieval.pipeline import Pipeline

    setup_logging(verbose)
    if (query is None) == (topics is None):
        raise SiftrankError("give a query, or --topics FILE --out RUN for a batch")
    if (topics is None) != (out is None):
        raise SiftrankError("--topics and --out go together")
    queries = read_queries(topics) if topics is not None else {}
    try:
        spec = json.loads(where) if where is not None else None
    except json.JSONDecodeError as exc:
        raise SiftrankError(f"--filter is not JSON ({exc.msg})") from None
    if index is None and dataset is None:
        config = load_config(pipeline, model=model)
        if config.index.path is None:
            raise SiftrankError("give --index, --dataset, or a pipeline config with [index].path")
    else:
        if index is not None and not index.is_dir():
            raise SiftrankError(f"{index}: index directory not found")
        # the index's own encoder (read from its manifest: a sharded index too) unless one is given
        source = Manifest.read(index).source_model if index is not None and model is None and pipeline is None else model
        config = load_config(pipeline, index=index, model=source)
    data = Dataset.corpus_only(dataset) if dataset is not None else None
    pipeline_ = Pipeline.from_config(config, data, progress=False)
    if out is not None:
        hits = k or 1000
        depth = None if pipeline_.filter is not None else hits  # a filter fixes its own K
        result = pipeline_.run(queries, depth=depth, progress=True, where=spec)
        run = {q: {h.id: h.score for h in ranked[:hits]} for q, ranked in result.hits.items()}
        write_text_atomic(out, format_run(run, f"siftrank-{result.final}"))
        typer.echo(f"wrote {out}: {len(run)} topics, {sum(map(len, run.values()))} hits ({result.final} stage)")
        return
    assert query is not None
    for hit in pipeline_.search(query, k=k or 10, where=spec):
        if as_json:
            typer.echo(json.dumps(hit.to_dict()))
        else:
            text = (hit.text or "").replace("\n", " ")
            relevance = f"  rel {hit.relevance:.3f}" if hit.relevance is not None else ""
            typer.echo(f"{hit.rank:>3}  {hit.score:.4f}{relevance}  {hit.id}  {text[:100]}")
