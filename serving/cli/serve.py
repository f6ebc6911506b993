"""Service commands: ``serve`` (the search API), ``replay`` (drive a running service with a collection's
queries and simulated clicks) and ``ab-report`` (the statistics of an event log)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.errors import SiftrankError
from serving.cli.common import DatasetOpt, PipelineOpt, Verbose, app, dataset_or_default, setup_logging


@app.command()
def serve(
    experiment: Annotated[Optional[Path], typer.Option(help="Experiment config (TOML): variants, primary, shadows, A/B, interleaving. Default: one variant serving --pipeline over --dataset.")] = None,
    dataset: Annotated[Optional[Path], typer.Option("--dataset", "-d", help="Corpus to serve (a dataset folder or corpus file); its index is built once and cached. Default: $SIFTRANK_DATA/msmarco-dl19. With --experiment: the experiment's [service] data.", show_default=False)] = None,
    pipeline: PipelineOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    event_log: Annotated[Optional[Path], typer.Option("--event-log", envvar="SIFTRANK_EVENT_LOG", help="SQLite event log (WAL). Default: the experiment's, or out/events.db.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (uvicorn); more than one needs --experiment. They share the event log, interleaving credit included.")] = 1,
    verbose: Verbose = False,
) -> None:
    """Serve the search API (FastAPI + uvicorn): /search, /feedback, /variants, /readyz, /metrics, /docs."""
    import uvicorn

    from serving.app import create_app
    from serving.experiment import ExperimentConfig
    from serving.variants import VariantPool

    setup_logging(verbose)
    if experiment is not None:
        config = ExperimentConfig.load(experiment)
        if event_log is not None:
            config.service.event_log = event_log
        if dataset is not None:
            config.service.data = dataset
    else:
        config = ExperimentConfig.single(dataset_or_default(dataset), pipeline, event_log)
    if workers > 1 and experiment is None:
        raise SiftrankError("--workers above 1 needs --experiment (each worker reads the experiment file)")
    # Load and warm before listening, so a bad config or corpus fails here with one error line.
    pool = VariantPool.build(config, progress=True)
    for name, variant in pool.variants.items():  # what backend = "auto" measured and kept, and why
        if variant.encoder is not None:
            typer.echo(f"variant {name}: encoder {variant.encoder}", err=True)
    typer.echo(f"serving {', '.join(pool.variants)} on http://{host}:{port} with {workers} worker(s) (docs: /docs)", err=True)
    level = "info" if verbose else "warning"
    if workers == 1:
        uvicorn.run(create_app(config, experiment, pool), host=host, port=port, log_level=level)
        return
    import asyncio
    import os

    from serving.asgi import EVENT_LOG_ENV, EXPERIMENT_ENV

    asyncio.run(pool.close())  # the workers build their own (from the warm index cache)
    os.environ[EXPERIMENT_ENV] = str(Path(experiment).resolve())  # type: ignore[arg-type]  # checked above
    os.environ[EVENT_LOG_ENV] = str(config.service.event_log.resolve())
    uvicorn.run("serving.asgi:create", factory=True, workers=workers, host=host, port=port, log_level=level)


@app.command("ab-report")
def ab_report(
    log: Annotated[Path, typer.Option("--event-log", envvar="SIFTRANK_EVENT_LOG", help="The service's SQLite event log.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.md, report.json and report.png.")] = None,
    dataset: Annotated[Optional[Path], typer.Option("--dataset", "-d", help="Dataset with queries and qrels: adds nDCG@10 per variant on judged queries.")] = None,
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file (a name in the dataset or a path); default: the split's.")] = None,
    experiment: Annotated[Optional[Path], typer.Option(help="The experiment config: its A/B split is what the sample-ratio check expects (default: equal shares).")] = None,
) -> None:
    """Per-arm users, clicks, CTR and sample-ratio check; per-variant latency, primary-vs-shadow agreement,
    interleaving wins and (with qrels) nDCG@10."""
    from eval.abreport import ABReport
    from eval.report import markdown_table
    from retrieval.artifacts import write_text_atomic
    from retrieval.data import Dataset

    report = ABReport(log)
    weights = None
    if experiment is not None:
        from serving.experiment import ExperimentConfig

        weights = ExperimentConfig.load(experiment).experiment.ab or None
    arms = report.arms(weights)
    latency, agreement, wins = report.latency(), report.shadow_agreement(), report.interleaving()
    ndcg = None
    if dataset is not None:
        data = Dataset.load(dataset, qrels=qrels, with_corpus=False)
        ndcg = report.ndcg(data.queries, data.qrels)
    sections = [("A/B arms (CTR: share of queries with a click; SRM: chi-square of users per arm vs the split)", arms, "arm"),
                ("Latency (ms)", latency, "variant"), ("Primary vs shadow", agreement, "pair"),
                ("Team-draft interleaving", wins, "pair")] + ([("nDCG@10 on judged queries", ndcg, "variant")] if ndcg else [])
    text = "\n\n".join(f"## {title}\n\n{markdown_table(rows, label) if rows else '(none in this log)'}"
                        for title, rows, label in sections) + "\n"
    typer.echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "report.md", f"# A/B report: {log.name}\n\n{text}")
        write_text_atomic(out / "report.json", json.dumps({"arms": arms, "latency": latency, "shadow": agreement,
                                                           "interleaving": wins, "ndcg": ndcg}, indent=2) + "\n")
        report.plot(out / "report.png", latency, wins, ndcg)
        typer.echo(f"wrote {out}/report.md, report.json, report.png", err=True)


@app.command()
def replay(
    dataset: DatasetOpt = None,
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    users: Annotated[int, typer.Option(min=1, help="Simulated users; each issues every query once.")] = 10,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=100, help="Hits per search.")] = 10,
    qrels: Annotated[Optional[str], typer.Option(help="Qrels file (a name in the dataset or a path).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the click simulation and query order.")] = 0,
    click_model: Annotated[str, typer.Option(help="Position-based click model: default (eta 1, eps+ 1.0, eps- 0.1) "
                                                  "or noisy (eta 2, eps+ 0.8, eps- 0.2).")] = "default",
) -> None:
    """Drive a running service with a collection's queries and clicks simulated from its qrels."""
    import httpx

    from eval.clickmodel import ClickModel
    from retrieval.data import Dataset
    from serving.replay import Replayer

    model = ClickModel.preset(click_model)
    data = Dataset.load(dataset_or_default(dataset), qrels=qrels, with_corpus=False)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            counts = Replayer(client, data.queries, data.qrels, k=k, click_model=model, seed=seed).run(users)
    except httpx.HTTPError as exc:
        raise SiftrankError(f"{url}: {exc}") from None
    typer.echo(json.dumps(dict(counts), indent=2))

