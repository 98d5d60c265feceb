"""Row conventions shared by steps and commands: the standard columns, stable ids, the embedding column."""

from __future__ import annotations

from typing import TYPE_CHECKING

from synthforge.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

STANDARD_COLUMNS = ["id", "text", "label", "source"]
EMBEDDING_COLUMN = "embedding"  # added by `embed`: a fixed-size float32 array per row
RANK_COLUMN = "selection_rank"  # added by `select`: 0 for the row picked first (mix takes rows in this order)


def stable_ids(texts: "pl.Series | list[str]", labels: "pl.Series | list[str]", prefix: str = "") -> "pl.Series":
    """Ids from content, so the same row gets the same id in every build and recipe.

    An id is the hex xxh3-64 of `label \\x1f text` (polars-hash, no Python loop per row);
    repeats of the same (text, label) get a `~n` suffix in order of appearance.
    """
    import numpy as np
    import polars as pl
    import polars_hash as plh

    frame = pl.DataFrame({"text": pl.Series(texts, dtype=pl.String), "label": pl.Series(labels, dtype=pl.String)})
    digests = frame.select(plh.concat_str("label", pl.lit("\x1f"), "text").nchash.xxh3_64()).to_series()
    digest_values = digests.to_numpy()
    if digests.n_unique() == len(digests):  # the usual case, and a count is 3x cheaper than finding repeats
        return (prefix + _hex64(digest_values)).alias("id")
    repeats = np.zeros(len(digest_values), dtype=np.int64)
    repeated = np.flatnonzero(digests.is_duplicated().to_numpy())  # usually few: rank only those
    repeats[repeated] = rank_within_groups(digest_values[repeated])
    base = pl.DataFrame({"base": prefix + _hex64(digest_values), "repeat": repeats})
    repeat = pl.col("repeat")
    ids = base.select(pl.when(repeat == 0).then("base").otherwise(pl.col("base") + "~" + repeat.cast(pl.String)).alias("id"))
    return ids.to_series()


def rank_within_groups(keys: "np.ndarray") -> "np.ndarray":
    """For each position, how many earlier positions hold the same key (a stable sort, no Python loop)."""
    import numpy as np

    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - run_start
    return rank


def id_order(ids: "pl.Series") -> "np.ndarray":
    """Positions of `ids` in ascending string order, equal ids in row order (int64).

    When every id starts with 16 lower-case hex digits (as `stable_ids` makes them), rows sort first by
    that prefix read as a uint64 (the same order: fixed width, and '0' < '9' < 'a' < 'f'), then by the
    whole id: an integer sort is several times cheaper than a string sort, more so at 10M rows.
    """
    import polars as pl

    index, id_ = pl.int_range(pl.len(), dtype=pl.Int64), pl.col("id")
    frame = pl.DataFrame({"id": ids.cast(pl.String)})
    keys = [id_, index]
    if frame.height and frame.select(id_.str.contains(r"^[0-9a-f]{16}").all()).item():
        keys.insert(0, id_.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64))
    return frame.select(index.sort_by(*keys)).to_series().to_numpy()


def _hex64(values: "np.ndarray") -> "pl.Series":
    """16-digit lower-case hex of uint64 values (as xxhash's hexdigest writes them).

    One C-speed `bytes.hex` of the big-endian values with a space every 8 bytes, split by polars: no
    Python loop per row and no pyarrow (whose import alone cost more than the conversion).
    """
    import numpy as np
    import polars as pl

    if len(values) == 0:
        return pl.Series([], dtype=pl.String)
    text = np.ascontiguousarray(values, dtype=">u8").tobytes().hex(" ", 8)
    return pl.Series([text]).str.split(" ").explode()


def label_codes(labels: "pl.Series") -> tuple[list[str], "np.ndarray"]:
    """The sorted distinct labels and each row's index into them (unsigned codes, no per-row Python)."""
    import numpy as np
    import polars as pl

    labels = labels.cast(pl.String)
    if labels.null_count():
        raise UserError(f"{labels.null_count()} rows have no label", field="input", hint="drop or label them upstream")
    names = labels.unique().sort()
    # the narrowest unsigned type: numpy's stable sort of 8/16-bit keys is a radix sort, about 5x faster
    codes = labels.cast(pl.Enum(names.to_list())).to_physical().to_numpy().astype(np.min_scalar_type(max(len(names) - 1, 0)))
    return names.to_list(), codes


def standard_first(frame: "pl.DataFrame") -> "pl.DataFrame":
    """Standard columns first, others after, in their order."""
    first = [c for c in STANDARD_COLUMNS if c in frame.columns]
    return frame.select(first + [c for c in frame.columns if c not in first])


def columns_that_matter_first(columns: list[str], data_columns: list[str]) -> list[str]:
    """For a person reading a table: the columns only this table has (a rejects table's `reason` and `raw`),
    then text, label and source, the rest, and the id (a hash) last; never the embedding."""
    own = [c for c in columns if c not in data_columns]
    standard = [c for c in STANDARD_COLUMNS if c in columns and c not in own and c != "id"]
    rest = [c for c in columns if c not in own and c not in standard and c not in ("id", EMBEDDING_COLUMN)]
    return [*own, *standard, *rest, *(["id"] if "id" in columns and "id" not in own else [])]


def describe_dropped(dropped: dict[str, int]) -> str:
    """`{"duplicates": 3, "blank_text": 2}` as "dropped 3 duplicates, 2 blank text" ("dropped none" when all zero)."""
    parts = [f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items()) if n]
    return "dropped " + (", ".join(parts) if parts else "none")


def embeddings_of(frame: "pl.DataFrame", column: str = EMBEDDING_COLUMN) -> "np.ndarray":
    """The embedding column as a C-contiguous float32 (rows, dim) matrix."""
    import numpy as np

    if column not in frame.columns:
        raise UserError(f"input has no '{column}' column", hint="add an `embed` step before this one")
    if frame.height == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(frame[column].to_numpy(), dtype=np.float32)
