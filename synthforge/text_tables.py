"""Plain-text tables for the terminal (no heavy imports)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """'1 row', '2 rows', '1 entry' (with nouns='entries'), '1,234 variants'."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align_right: Sequence[int] = ()) -> str:
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in align_right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]) + "\n"
