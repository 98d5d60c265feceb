"""Row helpers shared by steps: stable ids and the standard columns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

STANDARD_COLUMNS = ["id", "text", "label", "source"]


def stable_ids(texts: list[str], labels: list[str], prefix: str = "") -> list[str]:
    """Ids from content, so the same row gets the same id in every build and recipe.

    Repeats of the same (text, label) get a `~n` suffix in order of appearance.
    """
    seen: dict[str, int] = {}
    ids = []
    for text, label in zip(texts, labels):
        base = prefix + xxhash.xxh3_64_hexdigest(f"{label}\x1f{text}".encode())
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.append(base if count == 0 else f"{base}~{count}")
    return ids


def standard_first(frame: "pl.DataFrame") -> "pl.DataFrame":
    """Standard columns first, others after, in their order."""
    first = [c for c in STANDARD_COLUMNS if c in frame.columns]
    return frame.select(first + [c for c in frame.columns if c not in first])


def describe_dropped(dropped: dict[str, int]) -> str:
    """`{"duplicates": 3, "blank_text": 2}` as "dropped 3 duplicates, 2 blank text" ("dropped none" when all zero)."""
    parts = [f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items()) if n]
    return "dropped " + (", ".join(parts) if parts else "none")
