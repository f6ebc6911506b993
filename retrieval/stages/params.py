"""The base of every stage's config keys: its own module, so the pipeline config can validate stage
sections without importing the stage bases (which would import the config back)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class StageParams(BaseModel):
    """A stage's config keys (besides ``kind``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    def resolve(self, base: Path) -> StageParams:
        """Paths in the params made relative to the config file's folder ``base`` (none by default)."""
        return self
