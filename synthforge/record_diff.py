"""Rows of one table in two builds, matched by the stable record id: which records were added, removed or
changed, and per changed record which fields changed, with a short before/after excerpt of each.

Every column both tables have is compared (a record field, `text`, `label`, an embedding...), through one
64-bit hash per value and column (`pl.Expr.hash`, both sides hashed in this process), so a table of any
size costs two streamed passes and memory for the ids and hashes; only the first `shown` records of each
kind are read whole. Counts are always complete; the lists stop at `shown` (`more_*` says how many were left).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from synthforge.cache import Entry

SHOWN = 5  # records listed per kind (changed, added, removed) unless --records says otherwise
EXCERPT_CHARS = 60  # each side of a changed field, around where the values start to differ
LEAD_CHARS = 20  # unchanged characters kept before the first difference
ROW = "__row"  # a table's row order, for "the first N" in the order the rows are stored


def compare_records(entry_a: "Entry", entry_b: "Entry", table: str = "data", shown: int = SHOWN) -> dict[str, Any] | None:
    """Records of `table` added, removed and changed (by `id`) from A to B with their changed fields; None when
    a side has no `id` column (e.g. a table of scores)."""
    import polars as pl

    scan_a, scan_b = entry_a.scan(table), entry_b.scan(table)
    columns_a, columns_b = list(scan_a.collect_schema()), list(scan_b.collect_schema())
    if "id" not in columns_a or "id" not in columns_b:
        return None
    common = [c for c in columns_b if c in columns_a and c != "id"]
    hashes_a, repeated_a = _value_hashes(scan_a, common)
    hashes_b, repeated_b = _value_hashes(scan_b, common)
    joined = hashes_b.join(hashes_a, on="id", how="inner", suffix="__a").sort(ROW)
    flags = joined.select("id", *[(pl.col(c) != pl.col(f"{c}__a")).alias(c) for c in common])
    changed = flags.filter(pl.any_horizontal(common)) if common else flags.clear()
    added = hashes_b.join(hashes_a, on="id", how="anti").sort(ROW)["id"]
    removed = hashes_a.join(hashes_b, on="id", how="anti").sort(ROW)["id"]
    out: dict[str, Any] = {
        "changed_count": changed.height,
        "fields_changed": {c: int(changed[c].sum()) for c in sorted(common) if changed.height and changed[c].any()},
        "columns_added": [c for c in columns_b if c not in columns_a],
        "columns_removed": [c for c in columns_a if c not in columns_b],
        "changed": _changed_records(scan_a, scan_b, changed.head(shown), common),
        "more_changed": max(0, changed.height - shown),
        "added": added.head(shown).to_list(), "more_added": max(0, added.len() - shown),
        "removed": removed.head(shown).to_list(), "more_removed": max(0, removed.len() - shown),
    }
    if repeated_a or repeated_b:
        out["repeated_ids"] = {"a": repeated_a, "b": repeated_b}  # matched by their first row
    return out


def _value_hashes(scan: "pl.LazyFrame", columns: list[str]) -> tuple["pl.DataFrame", int]:
    """One row per id (the first of repeated ids): its row position and a hash of each column's value; and how
    many rows repeated an earlier id."""
    import polars as pl

    frame = scan.select(pl.col("id"), *[pl.col(c).hash(seed=0).alias(c) for c in columns]).with_row_index(ROW).collect()
    unique = frame.unique("id", keep="first", maintain_order=True)
    return unique, frame.height - unique.height


def _changed_records(scan_a: "pl.LazyFrame", scan_b: "pl.LazyFrame", flags: "pl.DataFrame", common: list[str]) -> list[dict[str, Any]]:
    """The listed changed records, each with its changed fields' excerpts, before (a) and after (b)."""
    import polars as pl

    if not flags.height:
        return []
    ids = flags["id"].to_list()
    wanted = [c for c in common if flags[c].any()]

    def values(scan: "pl.LazyFrame") -> dict[str, dict[str, Any]]:
        rows = scan.filter(pl.col("id").is_in(ids)).select("id", *wanted).collect().unique("id", keep="first")
        return {row["id"]: row for row in rows.iter_rows(named=True)}

    before, after = values(scan_a), values(scan_b)
    listed = []
    for row in flags.iter_rows(named=True):
        fields = {}
        for column in wanted:
            if row[column]:
                a, b = excerpts(before[row["id"]][column], after[row["id"]][column])
                fields[column] = {"a": a, "b": b}
        listed.append({"id": row["id"], "fields": fields})
    return listed


def excerpts(a: Any, b: Any, width: int = EXCERPT_CHARS) -> tuple[str | None, str | None]:
    """Both values as short text around where they start to differ (`...` marks a cut); None stays None."""
    text_a, text_b = _as_text(a), _as_text(b)
    if text_a is None or text_b is None:
        return _cut(text_a, 0, width), _cut(text_b, 0, width)
    same = next((i for i, (x, y) in enumerate(zip(text_a, text_b)) if x != y), min(len(text_a), len(text_b)))
    start = max(0, same - LEAD_CHARS) if max(len(text_a), len(text_b)) > width else 0
    return _cut(text_a, start, width), _cut(text_b, start, width)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _cut(text: str | None, start: int, width: int) -> str | None:
    if text is None:
        return None
    piece = text[start:start + width]
    return ("..." if start else "") + piece + ("..." if start + width < len(text) else "")


# -- rendering (diff's text and markdown) --------------------------------------------------------------
def record_lines(records: dict[str, Any]) -> list[str]:
    """A step's record changes as lines: fields changed with counts, then the listed records."""
    lines = []
    if records["fields_changed"]:
        lines.append("fields changed: " + ", ".join(f"{name} {count}" for name, count in records["fields_changed"].items()))
    if records["columns_added"] or records["columns_removed"]:
        lines.append(f"columns added: {', '.join(records['columns_added']) or '-'}; "
                     f"removed: {', '.join(records['columns_removed']) or '-'}")
    for record in records["changed"]:
        for i, (name, change) in enumerate(record["fields"].items()):
            lead = f"~ {record['id']}  " if i == 0 else " " * (len(record["id"]) + 4)
            lines.append(f"{lead}{name}: {_quoted(change['a'])} -> {_quoted(change['b'])}")
    if records["more_changed"]:
        lines.append(f"... and {records['more_changed']} more changed records (--records N shows more)")
    for kind, mark in (("added", "+"), ("removed", "-")):
        if records[kind]:
            more = f" and {records[f'more_{kind}']} more" if records[f"more_{kind}"] else ""
            lines.append(f"{mark} {kind} ids: {', '.join(records[kind])}{more}")
    if records.get("repeated_ids"):
        lines.append(f"repeated ids (matched by their first row): A {records['repeated_ids']['a']}, "
                     f"B {records['repeated_ids']['b']}")
    return lines


def record_markdown(records: dict[str, Any]) -> list[str]:
    """The same for a pull-request comment: the counts, then a table of the listed changed fields."""
    from synthforge.text_tables import render_markdown

    lines = [f"- {line}" for line in record_lines({**records, "changed": [], "more_changed": 0})]
    rows = [[f"`{record['id']}`", f"`{name}`", _cell(change["a"]), _cell(change["b"])]
            for record in records["changed"] for name, change in record["fields"].items()]
    if rows:
        more = f" ({records['more_changed']} more not listed)" if records["more_changed"] else ""
        lines += ["", f"Changed records{more}:", "", render_markdown(["id", "field", "A", "B"], rows).rstrip("\n")]
    return lines


def _quoted(text: str | None) -> str:
    return "null" if text is None else json.dumps(text, ensure_ascii=False)


def _cell(text: str | None) -> str:
    return _quoted(text).replace("|", "\\|")
