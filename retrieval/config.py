"""The pipeline config: one TOML file naming each stage and its artifact (see DESIGN.md)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrieval.errors import SiftrankError


M = TypeVar("M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncoderSection(_Section):
    model: str = "bundled:all-MiniLM-L6-v2"
    adapter: Path | None = None  # an adapter artifact from `siftrank finetune` (for this base model only)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # documents
    query_precision: Literal["auto", "same", "fp32", "bf16", "fp16"] = "auto"  # auto: fp32 on CPU, else as documents; same: as documents
    batch_size: int = Field(64, ge=1)
    max_length: int | None = Field(None, ge=8)
    backend: Literal["torch", "onnx", "openvino"] = "torch"  # onnx / openvino: exported graph on CPU (fast extra)
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic quantisation of the exported graph

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
    depth: int | None = Field(None, ge=1)  # first-stage candidates per query: 1000, or the calibrator's K
    params: dict[str, int] = Field(default_factory=dict)  # nlist, nprobe, M, ef_construction, ef_search
    ray: str | None = None  # a sharded index (`index build --ray`) is searched on this Ray cluster: HOST:PORT, auto or local


class FilterSection(_Section):
    calibrator: Path  # a calibrator artifact from `siftrank calibrate`
    threshold: float | None = Field(None, ge=0.0, le=1.0)  # override the artifact's global threshold


class RerankSection(_Section):
    model: str = "bundled:SmolLM2-135M-Instruct"  # or a local Hugging Face causal-LM folder
    adapter: Path | None = None  # a LoRA artifact from `siftrank train-ranker` (for this base model only)
    depth: int = Field(20, ge=1)  # candidates from the previous stage that the LLM orders
    mode: Literal["generate", "sliding-window", "first-token"] = "generate"
    window: int = Field(20, ge=2)
    stride: int = Field(10, ge=1)
    max_passage_tokens: int = Field(100, ge=8)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def build(self):
        """The :class:`~retrieval.rerank.ListwiseRanker` this section describes (weights load lazily)."""
        from retrieval.causal_lm import CausalLM
        from retrieval.rerank import ListwiseRanker

        llm = CausalLM(self.model, adapter=self.adapter, device=self.device, precision=self.precision)
        return ListwiseRanker(llm, mode=self.mode, window=self.window, stride=self.stride,
                              max_passage_tokens=self.max_passage_tokens)


class PipelineConfig(_Section):
    """Validated pipeline config; unknown sections or keys are errors, not silently ignored."""

    encoder: EncoderSection = Field(default_factory=EncoderSection)
    index: IndexSection = Field(default_factory=IndexSection)
    filter: FilterSection | None = None
    rerank: RerankSection | None = None

    @classmethod
    def load(cls, path: Path | None) -> PipelineConfig:
        """Read a TOML config (``None``: the defaults: bundled MiniLM, flat index)."""
        if path is None:
            return cls()
        path = Path(path)
        config = load_toml(cls, path, "pipeline config")
        # Artifact paths are relative to the config file, wherever the command runs.
        if config.index.path is not None and not config.index.path.is_absolute():
            config.index.path = path.parent / config.index.path
        if config.encoder.adapter is not None and not config.encoder.adapter.is_absolute():
            config.encoder.adapter = path.parent / config.encoder.adapter
        if config.filter is not None and not config.filter.calibrator.is_absolute():
            config.filter.calibrator = path.parent / config.filter.calibrator
        if config.rerank is not None and config.rerank.adapter is not None and not config.rerank.adapter.is_absolute():
            config.rerank.adapter = path.parent / config.rerank.adapter
        return config


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
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise SiftrankError(f"{path}: {problems}") from None
