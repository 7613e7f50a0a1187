"""Markdown tables: one way to write them, so every report's tables look and escape alike."""

from __future__ import annotations

from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: header, separator, one line per row (cells written as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def cell(text: str) -> str:
    """`text` made safe for one table cell: `|` escaped, newlines written as `\\n`."""
    return text.replace("|", "\\|").replace("\n", "\\n")
