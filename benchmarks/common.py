"""Shared plumbing for the benchmark scripts: arguments, DL19 loading, result files and plots."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.artifacts import data_home, write_text_atomic  # noqa: E402
from retrieval.data import Dataset  # noqa: E402


def arguments(description: str, **extra: tuple[type, object, str]) -> argparse.Namespace:
    """--data (the shared data folder) and --out (where results go), plus script-specific options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=data_home(), help="data folder (default: $SIFTRANK_DATA, else ../shared/data)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    for name, (kind, default, help_text) in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=help_text)
    return parser.parse_args()


def dl19(data: Path, with_corpus: bool = True) -> Dataset:
    return Dataset.load(data / "msmarco-dl19", qrels="qrels.test.in_corpus.tsv", with_corpus=with_corpus)


def machine() -> dict[str, object]:
    import torch

    from eval.machine import cpu_model

    return {"cpu": cpu_model(), "python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}


def save(out: Path, name: str, payload: dict, markdown: str) -> None:
    """``out/name.json`` and ``out/name.md``, each written atomically; prints the Markdown."""
    write_text_atomic(out / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    write_text_atomic(out / f"{name}.md", markdown)
    print(markdown)


def bar_chart(path: Path, labels: list[str], values: list[float], ylabel: str, title: str) -> None:
    """A small labelled bar chart (PNG), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["#888888"] + ["#2a6fb0"] * (len(values) - 1)
    if len(labels) > 5:  # many bars: horizontal, so that the labels stay readable
        width = max(len(label) for label in labels)  # room for long labels, so the bars keep their width
        fig, ax = plt.subplots(figsize=(4.5 + 0.075 * width, 0.35 * len(labels) + 1.2))
        bars = ax.barh(labels[::-1], values[::-1], color=colors[::-1])
        ax.set_xlim(0, max(values) * 1.15)  # the value labels stay inside the axes
        ax.set_xlabel(ylabel)
    else:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bars = ax.bar(labels, values, color=colors)
        ax.set_ylabel(ylabel)
    ax.bar_label(bars, fmt="%.3g")
    ax.set_title(title)
    save_figure(fig, path, dpi=120)


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


class ResultStore:
    """Results of a long study, kept one record at a time in ``path`` (JSON, written atomically), so that
    the study can be stopped and resumed: ``run(key, fn)`` computes a record only when it is missing."""

    def __init__(self, name: str, folder: Path = ROOT / "benchmarks" / "records") -> None:
        """The records ``folder/name.json``: raw and resumable, so kept out of the user docs, where each study
        writes only its report."""
        path = folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.is_file() else {"runs": {}}

    @property
    def runs(self) -> dict[str, dict]:
        return self.data["runs"]

    def keep(self, key: str, record: dict, show: tuple[str, ...] = ()) -> dict:
        self.runs[key] = record
        self.data["machine"] = machine()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self.data, indent=1) + "\n")
        shown = ", ".join(f"{m} {record[m]:.4f}" for m in show if isinstance(record.get(m), (int, float)))
        print(f"{key}: {shown} [{record.get('wall_seconds', record.get('seconds', 0)):.0f}s]", flush=True)
        return record

    def run(self, key: str, compute, show: tuple[str, ...] = ()) -> dict:
        return self.runs[key] if key in self.runs else self.keep(key, compute(), show)


def dense_ndcg(data: Dataset, encoder) -> dict[str, float]:
    """Per-query nDCG@10 of dense retrieval over ``data``'s whole corpus with ``encoder`` (index cached)."""
    from retrieval.indexer import Indexer
    from retrieval.measures import MetricSuite
    from retrieval.pipeline import Pipeline
    from retrieval.stages.dense import DenseRetriever

    index = Indexer(encoder, progress=False).cached(data)
    hits = Pipeline(DenseRetriever(encoder, index)).run(data.queries).hits
    return MetricSuite(data.qrels).per_query({q: {h.id: h.score for h in hs} for q, hs in hits.items()})["nDCG@10"]
