"""The pipeline config: one TOML file naming each stage and its artifact (the contract in docs/stages.md)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from retrieval.artifacts import resolve_path
from retrieval.errors import SiftrankError
from retrieval.stages.params import StageParams

M = TypeVar("M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncoderSection(_Section):
    model: str = "bundled:all-MiniLM-L6-v2"  # or a local folder (relative to the config file)
    adapter: Path | None = None  # an adapter artifact from `siftrank finetune` (for this base model only)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # documents; auto: fp16 on GPU, measured on CPU
    query_precision: Literal["auto", "same", "fp32", "bf16", "fp16"] = "auto"  # auto: fp32 on CPU, else as documents; same: as documents
    batch_size: int = Field(64, ge=1)
    max_length: int | None = Field(None, ge=8)
    # onnx / openvino: exported graph on CPU (fast extra); auto: the fastest way measured on this CPU (torch,
    # OpenVINO fp32/bf16/int8) whose vectors stay within cosine 0.98 of fp32
    backend: Literal["torch", "onnx", "openvino", "auto"] = "torch"
    quantize: Literal["none", "int8"] = "none"  # int8: NNCF static (openvino) or dynamic (onnx) quantisation

    def build(self):
        """The :class:`~retrieval.encoder.Encoder` this section describes (weights load lazily)."""
        from retrieval.encoder import Encoder

        return Encoder(self.model, device=self.device, precision=self.precision, batch_size=self.batch_size,
                       max_length=self.max_length, query_precision=self.query_precision, adapter=self.adapter,
                       backend=self.backend, quantize=self.quantize)


class IndexSection(_Section):
    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    path: Path | None = None  # a prebuilt index directory; else built (and cached) from the dataset
    params: dict[str, int] = Field(default_factory=dict)  # nlist, nprobe, M, ef_construction, ef_search
    ray: str | None = None  # a sharded index (`index build --ray`) is searched on this Ray cluster: HOST:PORT, auto or local


class _StageSection(_Section):
    """A stage: ``kind`` (a registry name) and that kind's own keys, validated by its ``Params`` model."""

    model_config = ConfigDict(extra="allow")
    group: ClassVar[str]
    kind: str
    _params: StageParams | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_params(self) -> _StageSection:
        from retrieval.stages.registry import stage_class

        try:
            cls = stage_class(self.group, self.kind)
            self._params = cls.Params.model_validate(self.model_extra or {})
        except SiftrankError as exc:
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            raise ValueError(describe_errors(exc)) from None
        return self

    @property
    def params(self) -> Any:
        """The kind's validated parameters (a ``StageParams`` subclass)."""
        assert self._params is not None
        return self._params

    def resolved(self, base: Path) -> Self:
        """A copy whose relative paths point into ``base`` (the config file's folder)."""
        params = self.params.resolve(base)
        return type(self).model_validate(self.model_dump() | params.model_dump())

    def build(self, context: Any) -> Any:
        from retrieval.stages.registry import stage_class

        return stage_class(self.group, self.kind).from_config(self.params, context)


class FirstStageSection(_StageSection):
    group: ClassVar[str] = "first_stage"
    kind: str = "dense"  # dense | bm25 | hybrid | run
    depth: int | None = Field(None, ge=1)  # candidates per query: 1000, or the filter's K (a service: its max k)


class FilterSection(_StageSection):
    group: ClassVar[str] = "filter"
    kind: str = "cosine-adapter"


class RerankSection(_StageSection):
    group: ClassVar[str] = "rerank"
    kind: str = "llm"


class PipelineConfig(_Section):
    """Validated pipeline config: the whole pipeline, first stage included; unknown sections, kinds or
    keys are errors, not silently ignored."""

    encoder: EncoderSection = Field(default_factory=EncoderSection)
    index: IndexSection = Field(default_factory=IndexSection)
    first_stage: FirstStageSection = Field(default_factory=FirstStageSection)
    filter: FilterSection | None = None
    rerank: RerankSection | None = None

    @classmethod
    def load(cls, path: Path | None) -> PipelineConfig:
        """Read a TOML config, or a build folder's ``pipeline.toml`` (``None``: the defaults: bundled MiniLM,
        dense first stage, flat index)."""
        if path is None:
            return cls()
        path = Path(path)
        if path.is_dir():  # a build folder (what `siftrank build` writes)
            path = path / "pipeline.toml"
        return load_toml(cls, path, "pipeline config").resolved(path.parent)

    def resolved(self, base: Path) -> PipelineConfig:
        """Artifact paths made relative to ``base`` (the config file's folder), wherever the command runs."""
        update: dict[str, Any] = {"first_stage": self.first_stage.resolved(base)}
        if self.index.path is not None:
            update["index"] = self.index.model_copy(update={"path": resolve_path(base, self.index.path)})
        encoder: dict[str, Any] = {}
        if self.encoder.adapter is not None:
            encoder["adapter"] = resolve_path(base, self.encoder.adapter)
        if not self.encoder.model.startswith("bundled:") and not Path(self.encoder.model).expanduser().is_absolute():
            encoder["model"] = str(base / self.encoder.model)  # a model folder next to the config (a built pipeline)
        if encoder:
            update["encoder"] = self.encoder.model_copy(update=encoder)
        for name in ("filter", "rerank"):
            section = getattr(self, name)
            if section is not None:
                update[name] = section.resolved(base)
        return self.model_copy(update=update)

    def stages(self) -> list[str]:
        """Stage kinds in order, e.g. ``['dense', 'filter', 'rerank']``."""
        return [self.first_stage.kind] + [n for n in ("filter", "rerank") if getattr(self, n) is not None]


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: ``section.key: message`` for each problem (``prefix``: the section the
    model was validated as)."""
    def one(error: Any) -> str:
        where = ".".join(map(str, ((prefix,) if prefix else ()) + tuple(error["loc"])))
        message = error["msg"].removeprefix("Value error, ")
        return f"{where}: {message}" if where else message  # a whole-model check names its section itself

    return "; ".join(one(e) for e in exc.errors())


def load_toml(model: type[M], path: Path, what: str) -> M:
    """Read a TOML file into a pydantic model; a missing file, bad TOML or invalid fields are one clear error."""
    if not path.is_file():
        raise SiftrankError(f"{path}: {what} not found")
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
        return model.model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise SiftrankError(f"{path}: invalid TOML ({exc})") from None
    except ValidationError as exc:
        problems = describe_errors(exc)
        raise SiftrankError(f"{path}: {problems}") from None


def with_overrides(config: M, overrides: list[str]) -> M:
    """A copy of ``config`` with ``SECTION.KEY=VALUE`` settings applied (TOML values, else a bare string) and
    validated again: ``--set`` of recipes, and any config a script varies. A section the config leaves out
    starts empty."""
    raw = config.model_dump(mode="json")
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, field = key.strip().partition(".")
        absent = section in type(config).model_fields and raw.get(section) is None  # an optional section left out
        if not sep or not dot or not (absent or isinstance(raw.get(section), dict)):
            raise SiftrankError(f"--set '{item}': expected SECTION.KEY=VALUE with a section of {type(config).__name__}")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        raw[section] = {**(raw.get(section) or {}), field: parsed}
    try:
        return type(config).model_validate(raw)
    except ValidationError as exc:
        raise SiftrankError(f"--set: {describe_errors(exc)}") from None
