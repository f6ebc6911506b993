"""The CLI's flags as one table (``python -m serving.cli.reference``): docs/cli.md holds it, and a test checks
that the file matches the commands as they are."""

from __future__ import annotations

from typing import Any

import typer.main

from serving.cli import app


def flags() -> dict[str, list[str]]:
    """Every command (``index build`` for a group's) mapped to its arguments and options as typed."""
    table: dict[str, list[str]] = {}

    def walk(group: Any, prefix: str) -> None:  # typer's own click types
        for name, command in sorted(group.commands.items()):
            full = f"{prefix} {name}".strip()
            if hasattr(command, "commands"):
                walk(command, full)
                continue
            table[full] = [f"<{p.name}>" if p.param_type_name == "argument"
                           else " ".join(sorted(p.opts + p.secondary_opts, key=lambda o: (o.startswith("--"), o)))
                           for p in command.params]

    walk(typer.main.get_command(app), "")
    return table


def markdown() -> str:
    """The table as markdown: one row per command."""
    rows = [f"| `{name}` | {', '.join(f'`{f}`' for f in options)} |" for name, options in flags().items()]
    return "\n".join(["| command | arguments and options |", "|---|---|", *rows]) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
