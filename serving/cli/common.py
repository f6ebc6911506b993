"""What every command shares: the typer app, option types, the config loader with overrides, and the
refuse-to-overwrite check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from retrieval.artifacts import DATA_DEFAULT, DATA_ENV, data_home
from retrieval.config import PipelineConfig, describe_errors
from retrieval.errors import SiftrankError

# Help is plain text: config sections such as [first_stage] must print as written, not as Rich markup.
app = typer.Typer(name="siftrank", help="Dense retrieval, relevance calibration and LLM full ranking, measured end to end.\n\n"
                  "Bad input ends with one 'error: ...' line on stderr and exit status 2, never a traceback. "
                  f"Data: ${DATA_ENV} (default {DATA_DEFAULT}, from the working directory).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)

DEFAULT_DATASET = "msmarco-dl19"  # what eval, search, serve and replay read when no --dataset is given


def dataset_or_default(dataset: Optional[Path]) -> Path:
    """``--dataset`` as given, else DL19 under the data folder (``$SIFTRANK_DATA``, default ``../shared/data``)."""
    return dataset if dataset is not None else data_home() / DEFAULT_DATASET


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens (cache hits, builds) to stderr.")]
ModelOpt = Annotated[Optional[str], typer.Option(help="Encoder: 'bundled:all-MiniLM-L6-v2' or a local sentence-transformers folder. Default: the pipeline config's.")]
PipelineOpt = Annotated[Optional[Path], typer.Option("--pipeline", "-p", help="Pipeline config (TOML), or a build folder holding pipeline.toml: encoder, index, first stage and later stages. Default: bundled MiniLM, dense first stage, flat index.")]
# Every command that reads a collection: the same flag; eval, search, serve and replay default to DL19
DatasetOpt = Annotated[Optional[Path], typer.Option("--dataset", "-d", help=f"Dataset folder (BEIR layout or MS MARCO tsv). Default: ${DATA_ENV}/{DEFAULT_DATASET}.", show_default=False)]
# Training commands need labels: no default collection
TrainDatasetOpt = Annotated[Path, typer.Option("--dataset", "-d", help="Dataset folder with training qrels (BEIR layout), e.g. ../shared/data/scifact.", show_default=False)]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing output (only once the new one is complete).")]


def version_callback(value: bool) -> None:
    """``siftrank --version``: the installed package's version, then exit."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"siftrank {version('siftrank')}")
        except PackageNotFoundError:
            typer.echo("siftrank (not installed as a package)")
        raise typer.Exit()


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                        help="Print the version and exit.")] = False) -> None:
    """Dense retrieval, relevance calibration and LLM full ranking, measured end to end."""


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


def refuse_existing(out: Path, overwrite: bool) -> None:
    """Never replace an artifact unless asked: checked before any work is done."""
    if out.exists() and not overwrite:
        raise SiftrankError(f"{out} already exists (pass --overwrite to replace it)")


ENCODER_KEYS = {"model", "precision", "backend"}
def load_config(path: Optional[Path], first_stage: Optional[str] = None, first_stage_run: Optional[Path] = None,
                index: Optional[Path] = None, **overrides: Optional[str]) -> PipelineConfig:
    """The pipeline config with command-line overrides applied (and validated again): encoder and index
    keys, the first stage's kind, a run file as first stage, a prebuilt index."""
    config = PipelineConfig.load(path)
    raw = config.model_dump(mode="json", exclude_none=True)
    for key, value in overrides.items():
        if value is not None:
            raw["encoder" if key in ENCODER_KEYS else "index"][key] = value
    if first_stage is not None or first_stage_run is not None:
        if first_stage is not None and first_stage_run is not None:
            raise SiftrankError("give --first-stage or --first-stage-run, not both")
        section = {"kind": first_stage or "run"} | ({"path": str(first_stage_run)} if first_stage_run else {})
        raw["first_stage"] = section | ({"depth": config.first_stage.depth} if config.first_stage.depth else {})
    if index is not None:
        raw["index"]["path"] = str(index)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:  # a bad --kind, --precision or --first-stage
        raise SiftrankError(f"invalid option: {describe_errors(exc)}") from None


def refuse_stages(config: PipelineConfig, command: str, first_stages: tuple[str, ...] = ("dense",)) -> None:
    """Commands that use a config's encoder and index but run no pipeline refuse the stages they would
    otherwise silently drop."""
    extra = [name for name in ("filter", "rerank") if getattr(config, name) is not None]
    if extra or config.first_stage.kind not in first_stages:
        named = ", ".join(f"[{n}]" for n in extra) or f"[first_stage] kind = '{config.first_stage.kind}'"
        raise SiftrankError(f"{command} uses only the config's [encoder], [index] and first stage ({' or '.join(first_stages)}); "
                            f"it does not run {named}: give it a config without them")
