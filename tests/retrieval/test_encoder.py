from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.encoder import Encoder, cpu_has_native_bf16, pick_precision, resolve_model_path
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


def test_precision_auto_follows_hardware() -> None:
    assert pick_precision("auto", "cuda") == "fp16"
    assert pick_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert pick_precision("fp32", "cpu") == "fp32"


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
