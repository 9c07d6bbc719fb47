"""Markdown tables: the one writer behind every report and benchmark table in specjax."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["markdown"]


def markdown(
    header: Sequence[str], rows: Iterable[Sequence[Any]], fmt: Callable[[Any], str] = str
) -> str:
    """A Markdown table: the `header` line, the `|---|` rule, one line per row of cells
    (each cell written by `fmt`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
