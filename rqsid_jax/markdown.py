"""Markdown tables: the one place their pipes and separator rows are written."""
from __future__ import annotations

from typing import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a markdown table: the header, its separator row, one line per row of cells."""
    return [row(header), "|" + "---|" * len(header)] + [row(r) for r in rows]


def row(cells: Sequence[str]) -> str:
    """One table line."""
    return "| " + " | ".join(str(c) for c in cells) + " |"
