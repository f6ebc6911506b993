"""The base of every build stage: a recipe section (its ``Params``), the lineage inputs its artifact is
built from, and one ``run(ctx, target)`` that writes the artifact; ``use(ctx, path)`` hands the artifact to
the stages after it (a built one, a reused one or a prebuilt one alike)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from retrieval.artifacts import MANIFEST
from retrieval.data import file_digest
from training.stages.lineage import lineage_key

if TYPE_CHECKING:
    from training.stages.context import BuildContext


class BuildParams(BaseModel):
    """A build stage's recipe section; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    #: keys holding paths (relative to the recipe's folder, or ``data:NAME``)
    path_keys: ClassVar[tuple[str, ...]] = ()

    @property
    def active(self) -> bool:
        return True

    def lineage(self) -> dict[str, Any]:
        """The parameters that define the stage's artifact (what its lineage key covers)."""
        return self.model_dump(mode="json", exclude={"enabled"})


class OptionalParams(BuildParams):
    """A stage that can be switched off, or take a prebuilt ``artifact`` instead of building one; a stage
    that ``decides`` also takes ``enabled = "auto"``: it runs, and keeps its result only where the domain's
    validation queries show it pays (the decision is in its lineage details)."""

    path_keys: ClassVar[tuple[str, ...]] = ("artifact",)
    decides: ClassVar[bool] = False
    enabled: bool | Literal["auto"] = True
    artifact: str | None = None

    @field_validator("enabled")
    @classmethod
    def _auto(cls, value: bool | str) -> bool | str:
        if value == "auto" and not cls.decides:
            raise ValueError("this stage does not decide for itself: true or false")
        return value

    @property
    def active(self) -> bool:
        return self.enabled is not False

    def lineage(self) -> dict[str, Any]:
        return {**super().lineage(), **({"auto": True} if self.enabled == "auto" else {})}


class BuildStage(ABC):
    """One step of ``siftrank build`` (see the module doc)."""

    name: ClassVar[str]
    Params: ClassVar[type[BuildParams]] = BuildParams
    #: the build context's keys this stage's artifact depends on (its lineage inputs)
    inputs: ClassVar[tuple[str, ...]] = ()
    #: the artifact kinds a prebuilt ``artifact`` may be
    kinds: ClassVar[tuple[str, ...]] = ()
    #: whether a recipe without this section leaves the stage off
    off_by_default: ClassVar[bool] = False

    def __init__(self, params: Any) -> None:
        self.params = params

    def check(self, ctx: BuildContext) -> None:  # noqa: B027 - most stages have nothing to check
        """Refuse bad inputs before any stage does work (one SiftrankError)."""

    def data(self, ctx: BuildContext) -> list[Any]:
        """Digests of the data the artifact is built from, beyond its inputs (part of the lineage key)."""
        return [ctx.digest("data")]

    def lineage_inputs(self, ctx: BuildContext) -> dict[str, str]:
        return {name: ctx.keys[name] for name in self.inputs}

    def key(self, ctx: BuildContext) -> str:
        """The lineage key the artifact would be built with now: parameters, inputs' keys, data digests."""
        return lineage_key(self.name, self.params.lineage(), self.lineage_inputs(ctx), self.data(ctx))

    def prebuilt_key(self, path: Path) -> str:
        """The key of a prebuilt artifact (what later stages' keys build on)."""
        return lineage_key(self.name, "prebuilt", file_digest(Path(path) / MANIFEST))

    @abstractmethod
    def run(self, ctx: BuildContext, target: Path) -> dict[str, Any]:
        """Build the artifact into ``target`` (atomically); returns details for its lineage."""

    @abstractmethod
    def use(self, ctx: BuildContext, path: Path, key: str) -> None:
        """Make the artifact at ``path`` (lineage ``key``) what the later stages and the pipeline see."""

