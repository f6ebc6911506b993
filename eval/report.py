"""Tables for people: metrics per stage (or per run, or per filter) printed with rich, and as Markdown."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

FILTER_COLUMNS = ("PR-AUC", "P@R95", "filter_rate", "recall_at_threshold", "recall_ci_low", "recall_ci_high", "ECE",
                  "kept_per_query", "nDCG@10")


def _columns(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    """The given columns, else every measure some row has, in the order they first appear (a measure the first
    row lacks, such as a baseline without a quality figure, is not dropped)."""
    if columns:
        return list(columns)
    names: dict[str, None] = {}
    for values in rows.values():
        names.update({k: None for k, v in values.items() if isinstance(v, (int, float)) or v is None})
    return list(names)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, Mapping):  # {"mean", "std"} from an aggregate over folds or seeds
        return f"{value['mean']:.4f} ± {value['std']:.4f}"
    if isinstance(value, (str, bool)) or (isinstance(value, int) and not isinstance(value, bool)):  # counts, notes
        return str(value)
    return f"{value:.4f}"


def metrics_table(rows: Mapping[str, Mapping[str, Any]], title: str = "", columns: Sequence[str] | None = None) -> Table:
    """A rich table, one row per stage/run/filter, one column per measure (4 decimals, as TREC reports)."""
    names = _columns(rows, columns)
    table = Table(title=title or None)
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for label, values in rows.items():
        table.add_row(label, *(_cell(values.get(n)) for n in names))
    return table


def markdown_table(rows: Mapping[str, Mapping[str, Any]], label: str = "run", columns: Sequence[str] | None = None) -> str:
    """The same table as Markdown."""
    names = _columns(rows, columns)
    lines = [f"| {label} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {key} | " + " | ".join(_cell(values.get(n)) for n in names) + " |" for key, values in rows.items()]
    return "\n".join(lines) + "\n"


def print_table(rows: Mapping[str, Mapping[str, Any]], title: str = "", columns: Sequence[str] | None = None) -> None:
    """A rich table on a terminal; plain tab-separated lines (a header, then one row each) when stdout is a pipe
    or a file, for the next program (the title then goes to stderr)."""
    if not sys.stdout.isatty():
        if title:
            print(f"# {title}", file=sys.stderr)  # what the table is, beside the data
        names = _columns(rows, columns)
        print("\t".join(["", *names]))
        for label, values in rows.items():
            print("\t".join([label, *(_cell(values.get(n)) for n in names)]))
        return
    console = Console()
    if console.width < 120:  # pipes and CI logs: do not truncate measure names
        console = Console(width=120)
    console.print(metrics_table(rows, title, columns))
