"""The recipe of a domain pipeline: one TOML file naming the data, the base encoder and the build stages
(``training.stages.registry``: prune → finetune → index → first_stage → calibrate → rank) with their
parameters, validated before any work.

Paths are relative to the recipe's folder; ``data:NAME`` means NAME under the data folder (``--data``, else
``$SIFTRANK_DATA``, else ``../shared/data``), so a recipe works from any checkout. Unknown sections or keys are errors, not silently
ignored. Each stage's section is its own ``Params`` model; optional stages can be switched off
(``enabled = false``) or take a prebuilt ``artifact``, checked against the model it must have been built from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrieval.artifacts import resolve_path
from retrieval.config import describe_errors, load_toml, with_overrides
from retrieval.errors import SiftrankError
from training.clicks import LabelRule
from training.stages.registry import BUILD_STAGES, build_stage


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    """The domain dataset (BEIR layout: its corpus, and training qrels unless ``events`` is given), the
    service's event log to learn from (clicks; either or both), and optional general training data."""

    dataset: str
    split: str = "train"
    general: str | None = None  # a folder of MS MARCO training samples (msmarco-train-toy layout)
    events: str | None = None  # an event log (SQLite) of the search service: clicks become weighted labels
    eta: float | None = Field(None, ge=0.0)  # the log's position bias when known; default: estimated from its swaps
    propensity_clip: float = Field(10.0, ge=1.0)  # largest inverse-propensity weight of one click
    click_labels: LabelRule = "ipw"  # every click a positive, or only those a fitted click model finds relevant
    judgments: bool = True  # with events: train on the dataset's training qrels too, where it has them
    held_out: str | None = None  # qrels of evaluation queries: their texts are dropped from the log, never trained on


class EncoderSection(_Section):
    base: str = "bundled:all-MiniLM-L6-v2"


class Recipe(BaseModel):
    """A validated recipe: ``name``, ``data``, ``encoder`` and one section per registered build stage
    (missing sections take the stage's defaults); :meth:`load` resolves its paths."""

    model_config = ConfigDict(extra="allow")

    name: str = Field("domain", pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSection
    encoder: EncoderSection = Field(default_factory=EncoderSection)

    @model_validator(mode="before")
    @classmethod
    def _stages(cls, raw: Any) -> Any:
        """Every other section must be a build stage's, validated by that stage's ``Params``."""
        if not isinstance(raw, dict):
            return raw
        unknown = sorted(set(raw) - set(cls.model_fields) - set(BUILD_STAGES))
        if unknown:
            raise ValueError("; ".join(f"{name}: Extra inputs are not permitted" for name in unknown))
        raw = dict(raw)
        for name in BUILD_STAGES:
            stage = build_stage(name)
            value = raw.get(name)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            if value is None:
                value = {"enabled": False} if stage.off_by_default else {}
            try:
                raw[name] = stage.Params.model_validate(value)
            except ValidationError as exc:
                raise ValueError(describe_errors(exc, prefix=name)) from None
        return raw

    def stage(self, name: str) -> Any:
        """The validated parameters of build stage ``name`` (its ``Params`` model)."""
        if name not in BUILD_STAGES:
            raise SiftrankError(f"no build stage '{name}' (stages: {', '.join(BUILD_STAGES)})")
        return (self.model_extra or {})[name]

    @classmethod
    def load(cls, path: Path, data_root: Path) -> Recipe:
        """Read and validate a recipe file; its paths become absolute (``data:`` under ``data_root``)."""
        path = Path(path)
        recipe = load_toml(cls, path, "recipe")
        return recipe.resolved(path.parent, data_root)

    def resolved(self, base: Path, data_root: Path) -> Recipe:
        """A copy whose paths are absolute: ``data:NAME`` under ``data_root``, others under ``base``."""
        def where(value: str | None) -> str | None:
            if value is None or value.startswith("bundled:"):
                return value
            return str(resolve_path(base, value, data_root).resolve())

        raw = self.model_dump(mode="json")
        raw["data"].update(dataset=where(self.data.dataset), general=where(self.data.general), events=where(self.data.events),
                           held_out=where(self.data.held_out))
        raw["encoder"]["base"] = where(self.encoder.base)
        for name in BUILD_STAGES:
            for key in self.stage(name).path_keys:
                raw[name][key] = where(raw[name][key])
        return Recipe.model_validate(raw)

    def with_overrides(self, overrides: list[str]) -> Recipe:
        """A copy with ``section.key=value`` settings applied (TOML values), validated again."""
        return with_overrides(self, overrides)

    def active(self) -> list[str]:
        """The stages this recipe runs, in order."""
        return [name for name in BUILD_STAGES if self.stage(name).active]
