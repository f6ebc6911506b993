"""The recipe of a domain pipeline: one TOML file naming the data, the base encoder and the stages
(prune → finetune → index → calibrate → rank) with their parameters, validated before any work.

Paths are relative to the recipe's folder; ``data:NAME`` means NAME under the data folder (``../shared/data``
or ``--data``), so a recipe works from any checkout. Unknown sections or keys are errors, not silently
ignored. ``prune``, ``finetune``, ``calibrate`` and ``rank`` can be switched off (``enabled = false``);
the index cannot (a pipeline needs its first stage). A stage may take a prebuilt ``artifact`` instead
of building one: it is checked against the model it must have been built from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from retrieval.config import load_toml
from retrieval.errors import SiftrankError

DATA_PREFIX = "data:"
STAGES: tuple[str, ...] = ("prune", "finetune", "index", "calibrate", "rank")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    """The domain dataset (BEIR layout with training qrels) and optional general training data."""

    dataset: str
    split: str = "train"
    general: str | None = None  # a folder of MS MARCO training samples (msmarco-train-toy layout)


class EncoderSection(_Section):
    base: str = "bundled:all-MiniLM-L6-v2"


class _Stage(_Section):
    enabled: bool = True
    artifact: str | None = None  # a prebuilt artifact of this stage instead of building one

    def lineage(self) -> dict[str, Any]:
        """The parameters that define this stage's artifact (what its lineage key covers)."""
        return self.model_dump(mode="json", exclude={"enabled"})


class PruneStage(_Stage):
    method: Literal["gaprune", "magnitude", "random", "fisher-domain", "fisher-general"] = "gaprune"
    sparsity: float = Field(0.5, gt=0, lt=1)
    structured: bool = True  # remove whole FFN neurons: smaller matrices, bytes and time really saved
    retrain_steps: int = Field(0, ge=0)
    triplets: int = Field(256, ge=1)  # calibration triplets per set (domain, general)
    general_mix: bool = True  # retraining mixes the general triplets with the domain ones
    seed: int = 0


class FinetuneStage(_Stage):
    method: Literal["connected", "lora", "adalora", "bitfit", "full"] = "full"
    steps: int = Field(100, ge=1)
    learning_rate: float | None = Field(None, gt=0)  # default per method (training.finetune.LEARNING_RATES)
    batch_size: int = Field(32, ge=2)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # several: the best on validation is kept
    general: int = Field(0, ge=0)  # general triplets mixed into the domain ones (0: none)


class IndexStage(_Section):
    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    params: dict[str, int] = Field(default_factory=dict)

    def lineage(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class CalibrateStage(_Stage):
    k: int = Field(100, ge=1)
    target_recall: float = Field(0.95, gt=0, le=1)
    family: Literal["linear", "sqrt", "quadratic", "power"] = "power"
    features: Literal["auto", "global", "embedding", "stats", "embedding+stats"] = "auto"
    seed: int = 0


class RankStage(_Stage):
    model: str = "bundled:SmolLM2-135M-Instruct"
    depth: int = Field(20, ge=2)
    steps: int = Field(60, ge=1)
    mode: Literal["first-token", "generate", "sliding-window"] = "first-token"
    validation: int = Field(40, ge=0)  # training queries kept out for early stopping and the fusion weight (0: none)
    seed: int = 0


class Recipe(_Section):
    """A validated recipe; :meth:`load` resolves its paths."""

    name: str = Field("domain", pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSection
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    prune: PruneStage = Field(default_factory=PruneStage)
    finetune: FinetuneStage = Field(default_factory=FinetuneStage)
    index: IndexStage = Field(default_factory=IndexStage)
    calibrate: CalibrateStage = Field(default_factory=CalibrateStage)
    rank: RankStage = Field(default_factory=lambda: RankStage(enabled=False))

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
            if value.startswith(DATA_PREFIX):
                return str((Path(data_root) / value[len(DATA_PREFIX):]).resolve())
            candidate = Path(value).expanduser()
            return str(candidate if candidate.is_absolute() else (base / candidate).resolve())

        data = self.data.model_copy(update={"dataset": where(self.data.dataset), "general": where(self.data.general)})
        update: dict[str, Any] = {"data": data, "encoder": self.encoder.model_copy(update={"base": where(self.encoder.base)})}
        for name in ("prune", "finetune", "calibrate", "rank"):
            stage = getattr(self, name)
            changes = {"artifact": where(stage.artifact)}
            if name == "rank":
                changes["model"] = where(stage.model)
            update[name] = stage.model_copy(update=changes)
        return self.model_copy(update=update)

    def with_overrides(self, overrides: list[str]) -> Recipe:
        """A copy with ``section.key=value`` settings applied (TOML values), validated again."""
        import tomllib

        raw = self.model_dump(mode="json")
        for item in overrides:
            key, sep, value = item.partition("=")
            section, dot, field = key.strip().partition(".")
            if not sep or not dot or section not in raw or not isinstance(raw[section], dict):
                raise SiftrankError(f"--set '{item}': expected SECTION.KEY=VALUE with a recipe section")
            try:
                raw[section][field] = tomllib.loads(f"v = {value.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                raw[section][field] = value.strip()  # a bare string
        from pydantic import ValidationError

        from retrieval.config import describe_errors

        try:
            return Recipe.model_validate(raw)
        except ValidationError as exc:
            raise SiftrankError(f"--set: {describe_errors(exc)}") from None

    def active(self) -> list[str]:
        """The stages this recipe runs, in order."""
        return [s for s in STAGES if s == "index" or getattr(self, s).enabled]
