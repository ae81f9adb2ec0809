"""Tables for people and for documents: the same rows as a rich table on screen or as Markdown.

`livemig compare`, `reproduce` and `sweep` print rich tables; piped, they keep
a fixed width (WIDTH) instead of wrapping at 80 columns; `--markdown` prints
the same rows as a Markdown table.
"""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

WIDTH = 200  # columns of a table printed to a pipe or a file
# Above this share of overrun a run's figures are not faithful (DESIGN.md, `fidelity.saturation`).
SATURATION_LIMIT = 0.05
SATURATED = "saturated"  # the mark next to a saturation over the limit, in every table


def saturation_of(result: dict) -> float | None:
    """A result.json's `emulation.fidelity.saturation` (None when it has none: a failed run)."""
    return ((result.get("emulation") or {}).get("fidelity") or {}).get("saturation")


def saturation_cell(saturation: float | None) -> str:
    """A saturation (a fraction) in percent, '1.2%', marked when over SATURATION_LIMIT:
    '7.0% saturated'; '-' when unknown."""
    if saturation is None:
        return "-"
    return f"{saturation:.1%}" + (f" {SATURATED}" if saturation > SATURATION_LIMIT else "")


def to_markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def from_markdown(md: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a Markdown table (its separator line dropped)."""
    lines = [line.strip().strip("|").split("|") for line in md.strip().splitlines()]
    cells = [[c.strip() for c in line] for line in lines]
    return cells[0], [row for row in cells[2:]]


def rich_table(headers: list[str], rows: list[list[str]], title: str | None = None) -> Table:
    """First column left, the others right-aligned (figures); markup in cells is shown as text."""
    t = Table(title=escape(title) if title else None, title_justify="left")
    for i, h in enumerate(headers):
        t.add_column(escape(h), justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*[escape(str(c)) for c in row])
    return t


def print_table(table: Table, console: Console | None = None) -> None:
    """On a terminal at its width; piped, at WIDTH columns so that rows do not wrap."""
    console = console or Console()
    (console if console.is_terminal else Console(width=WIDTH, file=console.file)).print(table)
