"""``siftrank search``: one query through every stage of a pipeline, printed as ranked hits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from serving.cli.common import ModelOpt, PipelineOpt, Verbose, app, load_config, setup_logging


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The query text.")],
    index: Annotated[Optional[Path], typer.Option("--index", help="Index directory from 'siftrank index build' (overrides [index].path).")] = None,
    dataset: Annotated[Optional[Path], typer.Option("--dataset", help="Or a dataset (corpus) folder: its cached index, and BM25 over its corpus.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many hits to show.")] = 10,
    model: ModelOpt = None,
    pipeline: PipelineOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines.")] = False,
    verbose: Verbose = False,
) -> None:
    """Search with one query through every stage of the pipeline config (first stage, filter, ranker) and
    print the ranked hits. With --index the encoder defaults to the one that built it; another is refused."""
    import json

    from retrieval.data import Dataset
    from retrieval.errors import SiftrankError
    from retrieval.index import Index
    from retrieval.pipeline import Pipeline

    setup_logging(verbose)
    if index is None and dataset is None:
        config = load_config(pipeline, model=model)
        if config.index.path is None:
            raise SiftrankError("give --index, --dataset, or a pipeline config with [index].path")
    else:
        source = Index.load(index).manifest.source_model if index is not None and model is None and pipeline is None else model
        config = load_config(pipeline, index=index, model=source)
    data = Dataset.corpus_only(dataset) if dataset is not None else None
    hits = Pipeline.from_config(config, data, progress=False).search(query, k=k)
    for hit in hits:
        if as_json:
            typer.echo(json.dumps(hit.to_dict()))
        else:
            text = (hit.text or "").replace("\n", " ")
            relevance = f"  rel {hit.relevance:.3f}" if hit.relevance is not None else ""
            typer.echo(f"{hit.rank:>3}  {hit.score:.4f}{relevance}  {hit.id}  {text[:100]}")
