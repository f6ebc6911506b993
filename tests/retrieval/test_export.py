"""ONNX Runtime and OpenVINO backends: the exported encoder gives the torch encoder's vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.data import Dataset
from retrieval.encoder import Encoder
from retrieval.errors import SiftrankError
from retrieval.indexer import Indexer
from tests.conftest import DOCS

pytest.importorskip("onnxruntime")
TEXTS = [f"{t} {x}".strip() for t, x in DOCS.values()]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return Encoder(precision="fp32").encode_documents(TEXTS)


@pytest.mark.parametrize("backend, quantize, precision, floor, label", [
    ("onnx", "none", "auto", 0.9999, "fp32"), ("onnx", "int8", "auto", 0.97, "int8"),
    ("openvino", "none", "fp32", 0.9999, "fp32"), ("openvino", "none", "bf16", 0.999, "bf16"),
])
def test_exported_vectors_match_torch(backend: str, quantize: str, precision: str, floor: float, label: str,
                                      reference: np.ndarray) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    encoder = Encoder(backend=backend, quantize=quantize, precision=precision)
    vectors = encoder.encode_documents(TEXTS)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= floor, cosines
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.precision == label and encoder.numerics == f"{backend}-{label}"


def test_openvino_int8_is_nncf_calibrated_on_the_passages_and_close_to_fp32(reference: np.ndarray) -> None:
    pytest.importorskip("nncf")
    from retrieval.artifacts import Manifest, cache_dir

    encoder = Encoder(backend="openvino", quantize="int8")
    encoder.calibrate_on(TEXTS)
    vectors = encoder.encode_documents(TEXTS)
    assert (vectors * reference).sum(axis=1).min() >= 0.95 and encoder.numerics == "openvino-int8"
    (export,) = [d for d in cache_dir("exports").iterdir() if (d / "model_int8.xml").is_file()]
    calibration = Manifest.read(export).parameters["calibration"]
    assert calibration["passages"] == len(TEXTS)
    # queries through the same int8 graph: one query (latency graph) and a batch (throughput streams) agree
    one = encoder.encode_queries(TEXTS[:1])
    many = encoder.encode_queries(TEXTS)
    assert float((one[0] * many[0]).sum()) > 0.9999


def test_export_is_cached_and_index_caches_are_kept_apart(tiny: Path, tmp_path: Path) -> None:
    from retrieval.artifacts import cache_dir

    Encoder(backend="onnx").encode_queries(["warm"])
    exports = list(cache_dir("exports").iterdir())
    assert len(exports) == 1 and (exports[0] / "model.onnx").is_file() and (exports[0] / "manifest.json").is_file()
    stamp = (exports[0] / "model.onnx").stat().st_mtime_ns
    Encoder(backend="onnx").encode_queries(["again"])
    assert (exports[0] / "model.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    data = Dataset.load(tiny)
    keys = {Indexer(Encoder(**kw)).cache_key(data) for kw in ({"precision": "fp32"}, {"backend": "onnx"},
                                                             {"backend": "onnx", "quantize": "int8"})}
    assert len(keys) == 3


def test_exported_encoder_keeps_adapters(tiny_binary: Path, tmp_path: Path) -> None:
    """The connected adapters' hooks are part of the traced graph."""
    from training.finetune import FineTuner
    from training.stages.context import BuildContext

    tuner = FineTuner("bundled:all-MiniLM-L6-v2", "connected", batch_size=2, eval_steps=5, validation_share=0.34,
                      learning_rate=5e-2)
    ctx = BuildContext.plain("bundled:all-MiniLM-L6-v2", tiny_binary, "test", progress=False)
    tuner.train(ctx.dataset, ctx.ranked_ids, steps=2, progress=False)
    tuner.save(tmp_path / "adapter")
    torch_vectors = Encoder(precision="fp32", adapter=tmp_path / "adapter").encode_documents(TEXTS)
    base = Encoder(precision="fp32").encode_documents(TEXTS)
    assert (torch_vectors * base).sum(axis=1).min() < 0.9999  # the adapter changed the vectors
    onnx_vectors = Encoder(backend="onnx", adapter=tmp_path / "adapter").encode_documents(TEXTS)
    assert (onnx_vectors * torch_vectors).sum(axis=1).min() > 0.9999


@pytest.mark.parametrize("kwargs, message", [({"backend": "tensorrt"}, "backend must be one of"),
                                             ({"quantize": "int4", "backend": "onnx"}, "quantize must be one of"),
                                             ({"quantize": "int8"}, "needs backend onnx or openvino")])
def test_bad_backend_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(SiftrankError, match=message):
        Encoder(**kwargs)


def test_token_batches_sort_by_tokens_pad_to_a_multiple_and_cover_every_text() -> None:
    from transformers import AutoTokenizer

    from retrieval import export

    tokenizer = AutoTokenizer.from_pretrained(str(Encoder().path))
    texts = [("word " * n).strip() for n in (3, 40, 1, 17, 300, 9, 0, 25)] * 2  # 300 words: cut to the limit
    seen: list[int] = []
    for feeds, rows in export.token_batches(tokenizer, texts, max_length=64, batch=3, chunk=8):
        lengths = [len(tokenizer(texts[r], truncation=True, max_length=64)["input_ids"]) for r in rows]
        assert feeds["attention_mask"].sum(axis=1).tolist() == lengths and lengths == sorted(lengths, reverse=True)
        width = feeds["input_ids"].shape[1]
        assert width == min(64, -(-lengths[0] // export.PAD_MULTIPLE) * export.PAD_MULTIPLE)
        assert set(feeds) == set(export.INPUTS) and not feeds["token_type_ids"].any()
        assert all(r // 8 == rows[0] // 8 for r in rows)  # sorted within a chunk, never across
        seen += rows
    assert sorted(seen) == list(range(len(texts)))
