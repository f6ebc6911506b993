"""The ASGI app factory behind ``siftrank serve --workers N``: each uvicorn worker process builds its own
variants from the experiment file named in the environment (the parent has validated it and warmed the
index cache). Workers share the event log (SQLite WAL), which also holds the teams of interleaved lists,
so a click reaching another worker than its search is credited to the right team."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

EXPERIMENT_ENV = "SIFTRANK_EXPERIMENT"
EVENT_LOG_ENV = "SIFTRANK_EVENT_LOG"


def create() -> FastAPI:
    """The app for ``$SIFTRANK_EXPERIMENT`` (event log overridden by ``$SIFTRANK_EVENT_LOG`` when set)."""
    from serving.app import create_app
    from serving.experiment import ExperimentConfig

    path = Path(os.environ[EXPERIMENT_ENV])
    config = ExperimentConfig.load(path)
    if os.environ.get(EVENT_LOG_ENV):
        config.service.event_log = Path(os.environ[EVENT_LOG_ENV])
    return create_app(config, path)
