from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.encoder import Encoder, candidates, pick_precision, resolve_model_path
from retrieval.errors import SiftrankError


def test_bundled_model_resolves_offline() -> None:
    path = resolve_model_path("bundled:all-MiniLM-L6-v2")
    assert (path / "config.json").is_file()


def test_bad_model_specs(tmp_path: Path) -> None:
    with pytest.raises(SiftrankError, match="not a local folder"):
        Encoder(str(tmp_path / "missing-model"))
    with pytest.raises(SiftrankError, match="unknown bundled encoder"):
        Encoder("bundled:nope")
    with pytest.raises(SiftrankError, match="has no config.json"):
        Encoder(str(tmp_path))
    with pytest.raises(SiftrankError, match="precision must be"):
        Encoder(precision="int3")  # type: ignore[arg-type]
    with pytest.raises(SiftrankError, match="torch sees no GPU"):
        Encoder(device="cuda")


def test_precision_auto_is_fp16_on_gpu_and_measured_on_cpu() -> None:
    assert pick_precision("auto", "cuda") == "fp16"
    assert pick_precision("auto", "cpu") == "auto"  # left to the speed probe, never read from CPU flags
    assert pick_precision("fp32", "cpu") == "fp32"
    assert candidates("torch", "auto", "none") == [("torch", "none", "fp32"), ("torch", "none", "bf16")]
    assert candidates("torch", "bf16", "none") == [("torch", "none", "bf16")]
    assert candidates("openvino", "auto", "int8") == [("openvino", "int8", "fp32")]
    assert ("torch", "none", "fp32") in candidates("auto", "auto", "none")


def test_auto_measures_once_keeps_the_fastest_faithful_way_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json


    monkeypatch.setenv("SIFTRANK_PROBES", str(tmp_path / "probes"))
    passages = [f"passage {i} about photosynthesis, volcanoes and bread in plain words" for i in range(40)]
    encoder = Encoder(backend="auto")
    encoder.calibrate_on(passages)
    assert encoder.numerics in {"fp32", "bf16", "openvino-fp32", "openvino-bf16", "openvino-int8"}
    stored = json.loads((tmp_path / "probes" / "encoder.json").read_text())
    (entry,) = stored.values()
    assert entry["choice"] == encoder.choice["choice"] and set(entry["seconds"]) <= set(entry["min_cosine_to_fp32"])
    fastest = min(entry["seconds"], key=entry["seconds"].get)
    assert encoder.choice["choice"] == fastest and "fastest on" in encoder.choice["reason"]
    # the second encoder reads the stored choice: nothing is measured again
    monkeypatch.setattr(Encoder, "_measure", lambda *a, **k: pytest.fail("measured twice"))
    again = Encoder(backend="auto")
    assert again.numerics == encoder.numerics
    np.testing.assert_allclose(again.encode_documents(passages[:3]), encoder.encode_documents(passages[:3]), atol=1e-5)


def test_a_way_whose_vectors_stray_from_fp32_is_never_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.encoder as encoder_module

    monkeypatch.setenv("SIFTRANK_PROBES", str(tmp_path / "probes"))
    monkeypatch.setattr(encoder_module, "MIN_COSINE", 0.999999)  # bf16 rounding (cosine ~0.9999) now counts as straying
    encoder = Encoder()
    encoder.calibrate_on([f"passage {i} about the tides and the moon's gravity" for i in range(40)])
    assert encoder.precision == "fp32" and encoder.choice["min_cosine_to_fp32"]["torch-bf16"] < 0.999999
    assert "not eligible" in encoder.choice["reason"] and "torch-bf16" in encoder.choice["reason"]


def test_embeddings_normalised_and_bf16_close_to_fp32() -> None:
    texts = ["the chloroplast is where photosynthesis happens", "football matches last ninety minutes", ""]
    fp32 = Encoder(precision="fp32").encode_documents(texts)
    bf16 = Encoder(precision="bf16").encode_documents(texts)
    assert fp32.shape == (3, 384) and fp32.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fp32, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(fp32 * bf16, axis=1))) > 0.99  # same direction in bf16
    assert Encoder().encode_queries([]).shape == (0, 384)


def test_fingerprint_tells_models_apart(tmp_path: Path) -> None:
    import shutil

    base = resolve_model_path("bundled:all-MiniLM-L6-v2")
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    assert Encoder(str(copy)).fingerprint == Encoder().fingerprint  # same weights, other folder
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "note": 1}', 1))
    assert Encoder(str(copy)).fingerprint != Encoder().fingerprint
