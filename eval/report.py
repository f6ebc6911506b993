"""Tables for people: metrics per stage (or per run) printed with rich, and as Markdown for docs/."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table


def metrics_table(rows: Mapping[str, Mapping[str, float]], title: str = "") -> Table:
    """A rich table, one row per stage or run, one column per measure (4 decimals, as TREC reports)."""
    names = list(next(iter(rows.values()), {}))
    table = Table(title=title or None)
    table.add_column("stage / run")
    for name in names:
        table.add_column(name, justify="right")
    for label, values in rows.items():
        table.add_row(label, *(f"{values[n]:.4f}" for n in names))
    return table


def markdown_table(rows: Mapping[str, Mapping[str, float]], label: str = "run") -> str:
    """The same table as Markdown."""
    names = list(next(iter(rows.values()), {}))
    lines = [f"| {label} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {key} | " + " | ".join(f"{values[n]:.4f}" for n in names) + " |" for key, values in rows.items()]
    return "\n".join(lines) + "\n"


def print_table(rows: Mapping[str, Mapping[str, float]], title: str = "") -> None:
    console = Console()
    if console.width < 120:  # pipes and CI logs: do not truncate measure names
        console = Console(width=120)
    console.print(metrics_table(rows, title))
