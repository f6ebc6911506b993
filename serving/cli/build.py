"""``siftrank build``: a domain pipeline from a recipe, stage by stage, reusing what is up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retrieval.artifacts import DATA_DEFAULT, DATA_ENV, data_home
from serving.cli.common import Verbose, app, setup_logging


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="Recipe (TOML): data, base encoder and the build stages prune, finetune, index, first_stage, calibrate, rank.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Build folder: one artifact per stage, then pipeline.toml (for eval, search and serve).")],
    data: Annotated[Optional[Path], typer.Option(help=f"Where 'data:NAME' paths in the recipe point. Default: ${DATA_ENV} ({DATA_DEFAULT} unless set).", show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe value, repeatable: SECTION.KEY=VALUE (e.g. finetune.method=lora, prune.enabled=false).")] = None,
    verbose: Verbose = False,
) -> None:
    """Build the domain pipeline a recipe describes: prune → finetune → index → first_stage → calibrate → rank.

    Each stage's artifact records its lineage (parameters, data digests, the artifacts it was built from);
    a re-run rebuilds only the stages whose lineage changed or that never finished."""
    from training.build import PipelineBuilder
    from training.recipe import Recipe

    setup_logging(verbose)
    data = data if data is not None else data_home()
    loaded = Recipe.load(recipe, data)
    if set_:
        loaded = loaded.with_overrides(set_).resolved(recipe.parent, data)
    PipelineBuilder(loaded, out, echo=typer.echo).build()
