"""Rows of results as CSV files and markdown tables (one formatter for every report)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from halo.utils.atomic import atomic_write_text

__all__ = ["format_cell", "markdown_table", "write_csv"]


def format_cell(value: object, digits: int = 3) -> str:
    """A table cell: booleans as yes/no, floats with ``digits`` decimals (``nan`` for non-finite)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    rows: Sequence[Mapping],
    columns: Sequence[str],
    *,
    headers: Sequence[str] | None = None,
    align: Sequence[str] | None = None,
    fmt: Callable[[object], str] = format_cell,
) -> str:
    """A GitHub markdown table, one line per row; missing cells are empty.

    Args:
        rows: mappings from column name to value.
        columns: the keys shown, in order.
        headers: header text per column (default: the column names).
        align: per column ``"l"`` / ``"r"`` (``---`` / ``---:``); default: no alignment mark.
        fmt: cell formatter (default :func:`format_cell`).
    """
    headers = list(headers or columns)
    if len(headers) != len(columns):
        raise ValueError(f"markdown_table: {len(headers)} headers for {len(columns)} columns")
    marks = ["---:" if a == "r" else "---" for a in (align or ["l"] * len(columns))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(fmt(r[c]) if c in r else "" for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows -> CSV (columns: ``columns`` or the first row's keys; extra keys are left out), atomically."""
    cols = list(columns if columns is not None else (rows[0].keys() if rows else []))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
