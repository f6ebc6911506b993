"""The ``siftrank`` command, one module per command group: index, search, eval, training, service.

Bad input ends with one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from retrieval.errors import SiftrankError
from serving.cli import build, evaluate, index, search, serve, train  # noqa: F401 - each registers its commands
from serving.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: run the app, turning bad input into one line and exit status 2."""
    # siftrank never downloads weights: the command (not the library) keeps the Hugging Face libraries offline
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        app()
    except SiftrankError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
