"""Exported encoders for faster CPU inference: ONNX Runtime (fp32 or dynamic int8) and OpenVINO.

The transformer inside a sentence-transformers model is exported once to ONNX (TorchScript exporter,
eager attention, dynamic batch and sequence axes; adapters and pruned shapes are part of the traced
graph) and, for ``int8``, quantised with ONNX Runtime's dynamic quantisation (per-channel int8 weights of the MatMuls,
activations quantised on the fly: VNNI kernels). OpenVINO compiles the same ONNX file; on CPUs with native bf16 it
runs in bf16 unless fp32 is asked for. The exported graph then stands in for the Hugging Face model
inside the sentence-transformers pipeline, so tokenisation, length sorting, prompts and pooling stay
exactly the library's. Exports are cached under ``~/.cache/siftrank/exports`` (atomically), keyed by
the encoder's fingerprint, the backend and the quantisation.

Why not sentence-transformers' own ``backend="onnx"``: it needs optimum-onnx, which today pins
transformers < 5 and silently downgrades the whole environment (DESIGN.md). This path needs only
``onnx``, ``onnxruntime`` and ``openvino`` (the ``fast`` extra).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.artifacts import Manifest, atomic_dir, cache_dir
from retrieval.errors import SiftrankError

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnx", "openvino")
QUANTISATIONS = ("none", "int8")
EXPORT_VERSION = 1
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def check_backend(backend: str, quantize: str) -> None:
    if backend not in BACKENDS:
        raise SiftrankError(f"encoder backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if quantize not in QUANTISATIONS:
        raise SiftrankError(f"quantize must be one of {', '.join(QUANTISATIONS)}, not '{quantize}'")
    if backend == "torch" and quantize != "none":
        raise SiftrankError("int8 quantisation needs backend onnx or openvino (torch runs fp32, bf16 or fp16)")


def export_onnx(hf_model, tokenizer, target: Path, quantize: str) -> Path:
    """Export ``hf_model`` (a Hugging Face encoder) to ``target/model.onnx`` (+ int8), atomically; cached."""
    model_file = target / ("model_int8.onnx" if quantize == "int8" else "model.onnx")
    if model_file.is_file():
        return model_file
    import torch

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise SiftrankError("the onnx and openvino backends need the fast extra: pip install 'siftrank[fast]'") from None

    class Graph(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tokenizer(["an example passage", "a somewhat longer example passage for the export"],
                       return_tensors="pt", padding=True, return_token_type_ids=True)
    graph = Graph(hf_model)
    previous = {m: m.training for m in graph.modules()}
    previous_attention = getattr(hf_model.config, "_attn_implementation", None)
    graph.eval()
    with atomic_dir(target, overwrite=True) as tmp:
        try:
            if previous_attention is not None:
                hf_model.config._attn_implementation = "eager"  # traces cleanly, dynamic shapes included
            with torch.no_grad():
                torch.onnx.export(graph, tuple(sample[k] for k in INPUTS), str(tmp / "model.onnx"),
                                  input_names=list(INPUTS), output_names=["last_hidden_state"],
                                  dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*INPUTS, "last_hidden_state")},
                                  opset_version=17, dynamo=False)
        finally:
            if previous_attention is not None:
                hf_model.config._attn_implementation = previous_attention
            for module, mode in previous.items():  # the exporter restores train mode recursively: undo that
                module.training = mode
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel int8 weights of the MatMuls only: quantising the embedding Gather too, or per tensor,
            # costs accuracy (MiniLM on DL19 passages: min cosine to fp32 0.91 per tensor, 0.99 this way).
            quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model_int8.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul"])
        Manifest(kind="encoder-export", parameters={"quantize": quantize, "version": EXPORT_VERSION}).write(tmp)
    return model_file


class ExportedTransformer:
    """Runs an exported encoder graph; called like the Hugging Face model it replaces (returns
    ``last_hidden_state``), so the sentence-transformers pipeline around it is unchanged."""

    def __init__(self, model_file: Path, backend: str, config, precision: str = "fp32", threads: int | None = None) -> None:
        self.backend, self.config, self.model_file = backend, config, model_file
        if backend == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
            self.names = [i.name for i in self.session.get_inputs()]
        else:
            import openvino as ov

            core = ov.Core()
            hint = {"inference_precision_hint": "bf16" if precision == "bf16" else "f32"}
            if threads:
                hint["inference_num_threads"] = threads  # type: ignore[assignment]
            try:
                self.compiled = core.compile_model(core.read_model(str(model_file)), "CPU", {k.upper(): v for k, v in hint.items()})
            except RuntimeError as exc:
                raise SiftrankError(f"OpenVINO cannot compile {model_file}: {exc}") from None
            self.names = [p.get_any_name() for p in self.compiled.inputs]

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, **_: Any) -> dict[str, Any]:  # noqa: ANN001
        import torch

        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)}
        feeds = {name: given[name].cpu().numpy().astype(np.int64) for name in self.names}
        if self.backend == "onnx":
            hidden = self.session.run(None, feeds)[0]
        else:
            hidden = self.compiled(feeds)[0]
        return {"last_hidden_state": torch.from_numpy(np.asarray(hidden, dtype=np.float32))}


def use_exported(st_model, key: str, backend: str, quantize: str, precision: str) -> None:
    """Swap the transformer inside ``st_model`` (a SentenceTransformer) for its cached export."""
    module = st_model[0]
    hf_model = getattr(module, "model", None) or module.auto_model
    target = cache_dir("exports") / f"{key}-v{EXPORT_VERSION}"
    model_file = export_onnx(hf_model, st_model.tokenizer, target, quantize)
    runner = ExportedTransformer(model_file, backend, hf_model.config, precision)
    setattr(module, "model" if hasattr(module, "model") else "auto_model", _as_module(runner))


def _as_module(runner: ExportedTransformer):
    """A parameter-free torch Module (sentence-transformers expects one) that calls ``runner``."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.runner, self.config = runner, runner.config

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):  # noqa: ANN001
            return self.runner(input_ids, attention_mask, token_type_ids)

    return Exported()
