"""Exported encoders for faster CPU inference: ONNX Runtime (fp32 or dynamic int8) and OpenVINO.

The transformer inside a sentence-transformers model is exported once to ONNX (TorchScript exporter,
eager attention, dynamic batch and sequence axes; adapters and pruned shapes are part of the traced
graph). ``int8`` differs by backend: ONNX Runtime quantises dynamically (per-channel int8 weights of the
MatMuls, activations quantised on the fly); OpenVINO takes NNCF's post-training static quantisation
(transformer preset: SmoothQuant, fast bias correction), calibrated on passages of the corpus being encoded,
which its CPU plugin runs as real int8 kernels (ONNX Runtime's quantised graph runs 0.64x fp32 under OpenVINO).
OpenVINO compiles the graph twice: for latency (one request, all cores: a query) and for throughput (one
stream per core fed by an async queue: a corpus, in length-sorted batches of ``OV_BATCH``). The exported
graph stands in for the Hugging Face model inside the sentence-transformers pipeline, so tokenisation,
prompts and pooling stay the library's. Exports are cached under ``~/.cache/siftrank/exports``
(atomically), keyed by the encoder's fingerprint, the backend and the quantisation; an int8 OpenVINO export
keeps the calibration it was first built with (its manifest names the passages' digest).

Why not sentence-transformers' own ``backend="onnx"``: it needs optimum-onnx, which today pins
transformers < 5 and silently downgrades the whole environment (tests/test_packaging.py guards it). This path needs only
``onnx``, ``onnxruntime`` and ``openvino`` (the ``fast`` extra).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.artifacts import Manifest, atomic_dir, cache_dir
from retrieval.errors import SiftrankError

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnx", "openvino")
QUANTISATIONS = ("none", "int8")
EXPORT_VERSION = 2  # 2: OpenVINO int8 by NNCF (was ONNX Runtime's quantised graph)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OV_BATCH = 4  # passages per OpenVINO throughput request (measured on 2 cores: batch 1-16, 2-8 requests in flight)
OV_REQUESTS_PER_STREAM = 2  # one request fills a stream while the next is tokenised
PAD_MULTIPLE = 16  # batch lengths rounded up to this: fewer distinct shapes (measured 2 cores: 1 383/s, 8 416/s, 16 424/s, 32 382/s)
SORT_CHUNK = 8192  # texts tokenised and length-sorted together (bounds the token lists held at once)
CALIBRATION_PASSAGES = 300  # NNCF calibration sample (its default subset size)


def check_backend(backend: str, quantize: str) -> None:
    if backend not in BACKENDS:
        raise SiftrankError(f"encoder backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if quantize not in QUANTISATIONS:
        raise SiftrankError(f"quantize must be one of {', '.join(QUANTISATIONS)}, not '{quantize}'")
    if backend == "torch" and quantize != "none":
        raise SiftrankError("int8 quantisation needs backend onnx or openvino (torch runs fp32, bf16 or fp16)")


def export_onnx(hf_model, tokenizer, target: Path, quantize: str, backend: str = "onnx",
                calibration: list[str] | None = None, max_length: int | None = None) -> Path:
    """Export ``hf_model`` (a Hugging Face encoder) to ``target/model.onnx`` (+ int8: ONNX Runtime's dynamic
    quantisation, or for OpenVINO NNCF's calibrated on ``calibration``), atomically; cached."""
    nncf_int8 = quantize == "int8" and backend == "openvino"
    model_file = target / ("model_int8.xml" if nncf_int8 else "model_int8.onnx" if quantize == "int8" else "model.onnx")
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
        parameters: dict[str, Any] = {"quantize": quantize, "version": EXPORT_VERSION, "backend": backend}
        if nncf_int8:
            parameters["calibration"] = quantize_nncf(tmp / "model.onnx", tmp / "model_int8.xml", tokenizer, calibration or [],
                                                     max_length)
        elif quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel int8 weights of the MatMuls only: quantising the embedding Gather too, or per tensor,
            # costs accuracy (MiniLM on DL19 passages: min cosine to fp32 0.91 per tensor, 0.99 this way).
            quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model_int8.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul"])
        Manifest(kind="encoder-export", parameters=parameters).write(tmp)
    return model_file


def feeds(tokenizer, texts: list[str], max_length: int | None = None) -> dict[str, np.ndarray]:
    """The exported graph's int64 inputs for ``texts``."""
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length or tokenizer.model_max_length,
                        return_tensors="np", return_token_type_ids=True)
    return {k: encoded[k].astype(np.int64) for k in INPUTS}


def token_batches(tokenizer, texts: list[str], max_length: int | None = None, batch: int = OV_BATCH,
                  chunk: int = SORT_CHUNK) -> Iterator[tuple[dict[str, np.ndarray], list[int]]]:
    """(feeds, rows) for ``texts``: tokenised once, sorted by token count (not characters: 14% less padding on
    DL19 passages), batched ``batch`` at a time, each batch padded to a multiple of ``PAD_MULTIPLE`` tokens."""
    limit = max_length or tokenizer.model_max_length
    pad = tokenizer.pad_token_id or 0
    for begin in range(0, len(texts), chunk):
        ids = tokenizer(texts[begin:begin + chunk], truncation=True, max_length=limit)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            width = min(-(-len(ids[rows[0]]) // PAD_MULTIPLE) * PAD_MULTIPLE, limit)  # the longest is first
            input_ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, row in enumerate(rows):
                input_ids[j, :len(ids[row])], mask[j, :len(ids[row])] = ids[row], 1
            yield ({"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)},
                   [begin + r for r in rows])


def quantize_nncf(onnx_file: Path, target: Path, tokenizer, passages: list[str], max_length: int | None = None) -> dict[str, Any]:
    """NNCF post-training int8 quantisation (transformer preset) of an ONNX encoder into OpenVINO IR at
    ``target``, calibrated on up to ``CALIBRATION_PASSAGES`` of ``passages`` (evenly spaced), each cut to
    ``max_length`` tokens as the encoder cuts them."""
    import hashlib

    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise SiftrankError("OpenVINO int8 needs openvino and nncf (the fast extra: pip install 'siftrank[fast]')") from None
    texts = [t for t in passages if t.strip()]
    if not texts:
        raise SiftrankError("int8 calibration needs passages: encode documents (the corpus) first")
    step = max(1, len(texts) // CALIBRATION_PASSAGES)
    sample = texts[::step][:CALIBRATION_PASSAGES]
    batches = [feeds(tokenizer, sample[i:i + OV_BATCH], max_length) for i in range(0, len(sample), OV_BATCH)]
    log.info("NNCF int8 calibration on %d passages", len(sample))
    quantized = nncf.quantize(ov.Core().read_model(str(onnx_file)), nncf.Dataset(batches), subset_size=len(batches),
                              model_type=nncf.ModelType.TRANSFORMER)  # the generic preset wrecks MiniLM (cosine 0.02)
    ov.save_model(quantized, str(target))
    return {"passages": len(sample), "sha256": hashlib.sha256("\n".join(sample).encode()).hexdigest()[:16]}


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

            self._core = ov.Core()
            self._graph = self._core.read_model(str(model_file))
            self._hint = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
            if threads:
                self._hint["INFERENCE_NUM_THREADS"] = threads  # type: ignore[assignment]
            self.compiled = self._compile("LATENCY")
            self.names = [p.get_any_name() for p in self.compiled.inputs]

    def _compile(self, mode: str):
        try:
            return self._core.compile_model(self._graph, "CPU", {**self._hint, "PERFORMANCE_HINT": mode})
        except RuntimeError as exc:
            raise SiftrankError(f"OpenVINO cannot compile {self.model_file}: {exc}") from None

    @functools.cached_property
    def throughput(self):
        """The graph compiled for throughput (a stream per core), for :meth:`run_async`."""
        return self._compile("THROUGHPUT")

    def run_async(self, batches: Iterable[tuple[dict[str, np.ndarray], Any]],
                  on_output: Callable[[np.ndarray, dict[str, np.ndarray], Any], None]) -> None:
        """Run OpenVINO requests over ``batches`` (feeds, tag), as many in flight as the device has streams;
        ``on_output(hidden, feeds, tag)`` is called for each as it finishes (then its buffers are reused)."""
        import openvino as ov

        errors: list[BaseException] = []

        def done(request, item) -> None:  # noqa: ANN001
            try:
                on_output(request.get_output_tensor(0).data, *item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)

        streams = int(self.throughput.get_property("NUM_STREAMS"))
        queue = ov.AsyncInferQueue(self.throughput, OV_REQUESTS_PER_STREAM * max(1, streams))
        queue.set_callback(done)
        for inputs, tag in batches:
            if errors:
                break
            queue.start_async({n: inputs[n] for n in self.names}, (inputs, tag))
        queue.wait_all()
        if errors:
            raise errors[0]

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, **_: Any) -> dict[str, Any]:  # noqa: ANN001
        import torch

        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)}
        inputs = {name: given[name].cpu().numpy().astype(np.int64) for name in self.names}
        if self.backend == "onnx":
            hidden = self.session.run(None, inputs)[0]
        else:
            hidden = self.compiled(inputs)[0]
        return {"last_hidden_state": torch.from_numpy(np.asarray(hidden, dtype=np.float32))}


def use_exported(st_model, key: str, backend: str, quantize: str, precision: str,
                 calibration: list[str] | None = None) -> ExportedTransformer:
    """Swap the transformer inside ``st_model`` (a SentenceTransformer) for its cached export (an int8
    OpenVINO export is calibrated on ``calibration`` when first built); returns the runner."""
    module = st_model[0]
    hf_model = getattr(module, "model", None) or module.auto_model
    target = cache_dir("exports") / f"{key}-v{EXPORT_VERSION}"
    model_file = export_onnx(hf_model, st_model.tokenizer, target, quantize, backend, calibration, st_model.max_seq_length)
    runner = ExportedTransformer(model_file, backend, hf_model.config, precision)
    setattr(module, "model" if hasattr(module, "model") else "auto_model", _as_module(runner))
    return runner


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
