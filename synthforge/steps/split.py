"""`split`: seeded, stratified train / test / validation splits, with a scarce-label option."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from synthforge.errors import UserError
from synthforge.stepapi import Ref, Seed, StepContext, StepParams, StepResult
from synthforge.steps.base import Step
from synthforge.steps.rows import id_order, label_codes, rank_within_groups

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

SIZE = "a count (an integer, e.g. 1000) or a fraction between 0 and 1 (e.g. 0.2)"


class SplitParams(StepParams):
    input: Ref = Field(description="the step whose rows to split")
    test: int | float = Field(0.2, description=SIZE)
    validation: int | float = Field(0, description=SIZE)
    train: int | float | None = Field(None, description=f"{SIZE}; default: every row left")
    train_per_label: int | None = Field(
        None, gt=0, description="a positive integer k: scarce labels, k training rows per label"
    )
    stratify: bool = Field(True, description="keep label proportions in test and validation")
    seed: Seed | None = Field(
        None,
        description="an integer seed (0 to 2^31 - 1) for the test and validation draw (default: the step's seed); the training rows "
        "are drawn with the step's seed, so under `replicates:` they vary while the test rows stay fixed",
    )

    @field_validator("test", "validation", "train")
    @classmethod
    def _size(cls, value: int | float | None) -> int | float | None:
        if value is None:
            return value
        if isinstance(value, float) and not 0 <= value < 1:
            raise ValueError("a fraction must be in [0, 1); write a count as an integer")
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value


class SplitStep(Step):
    kind = "split"
    version = "2"  # 2: the main table is the union of train, test and validation (stored once)
    Params = SplitParams
    tables = ("train", "test", "validation")
    held_out_seed_field = "seed"

    def run(self, ctx: StepContext) -> StepResult:
        import numpy as np
        import polars as pl

        params: SplitParams = ctx.params
        # one chunk per column: gathering rows from a table read in several row groups is about 5x slower
        frame = ctx.inputs["input"].frame().rechunk()
        # Rows are drawn in id order, so the split does not depend on the upstream row order;
        # `by_id` maps id-order positions to rows (no full sort of every column).
        by_id = id_order(frame["id"])
        held_out_seed = ctx.seed if params.seed is None else params.seed
        rng = np.random.default_rng([held_out_seed, 0x5B117])
        names, codes = label_codes(frame["label"])
        labels = codes[by_id]
        pool = rng.permutation(frame.height)  # test, then validation, then train are drawn in this order
        test, pool = _take(pool, _count(params.test, frame.height), labels, params.stratify, "test")
        validation, pool = _take(pool, _count(params.validation, frame.height), labels, params.stratify, "validation")
        if held_out_seed != ctx.seed:  # the training rows get their own draw from what is left
            pool = np.random.default_rng([ctx.seed, 0x5B117, 1]).permutation(pool)
        if params.train_per_label is not None:
            train = _per_label(pool, labels, names, params.train_per_label)
        elif params.train is not None:
            train, _ = _take(pool, _count(params.train, frame.height), labels, params.stratify, "train")
        else:
            train = pool
        parts = {"train": train, "test": test, "validation": validation}
        in_order = _ascending(parts, frame.height)
        tables = {name: frame[by_id[in_order[name]]].with_columns(pl.lit(name).alias("split")) for name in parts}
        meta = {name: _label_counts(labels[rows], names) for name, rows in parts.items()}
        # The main table is the union of the three (stored once, see StepResult.data).
        return StepResult(None, tables=tables, meta={"label_counts": meta})


def _ascending(parts: dict[str, "np.ndarray"], total: int) -> dict[str, "np.ndarray"]:
    """Each part's positions (disjoint, below `total`) in ascending order: one pass marking which part holds
    each position, then one scan per part, instead of a sort per part."""
    import numpy as np

    part_of = np.full(total, len(parts), dtype=np.uint8)  # positions in no part keep len(parts)
    for code, rows in enumerate(parts.values()):
        part_of[rows] = code
    return {name: np.flatnonzero(part_of == code) for code, name in enumerate(parts)}


def _count(size: int | float, total: int) -> int:
    return round(size * total) if isinstance(size, float) else int(size)


def _take(pool: "np.ndarray", count: int, labels: "np.ndarray", stratify: bool, field: str) -> tuple["np.ndarray", "np.ndarray"]:
    """`count` rows from `pool` (stratified by label code when asked) and the rest of the pool, both in pool order."""
    import numpy as np

    if count > len(pool):
        raise UserError(f"needs {count} rows but only {len(pool)} are left", field=field, hint="ask for fewer rows")
    if count == 0:
        return pool[:0], pool
    if not stratify:
        return pool[:count], pool[count:]
    pool_labels = labels[pool]
    quotas = _quotas(np.bincount(pool_labels), count)
    # each label's first `quota` rows in pool order all lie in a prefix of the pool: rank only that
    head = _prefix_holding(pool_labels, quotas, count)
    head_labels = pool_labels[:head]
    chosen = rank_within_groups(head_labels) < quotas[head_labels]
    # label by label, each in pool order (the order the rows were drawn in)
    order = np.argsort(head_labels[chosen], kind="stable")
    return pool[:head][chosen][order], np.concatenate([pool[:head][~chosen], pool[head:]])


def _prefix_holding(pool_labels: "np.ndarray", quotas: "np.ndarray", count: int) -> int:
    """The length of a prefix of the pool holding at least `quotas[label]` rows of every label (doubling from 2x count)."""
    import numpy as np

    head = min(len(pool_labels), 2 * count + 64)
    while head < len(pool_labels) and np.any(np.bincount(pool_labels[:head], minlength=len(quotas)) < quotas):
        head = min(len(pool_labels), 2 * head)
    return head


def _quotas(sizes: "np.ndarray", count: int) -> "np.ndarray":
    """Largest-remainder allocation of `count` proportional to label sizes (by label code)."""
    import numpy as np

    exact = sizes * count / sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - quotas), kind="stable")[: count - quotas.sum()]:
        quotas[index] += 1
    return quotas


def _per_label(pool: "np.ndarray", labels: "np.ndarray", names: list[str], k: int) -> "np.ndarray":
    import numpy as np

    pool_labels = labels[pool]
    left = np.bincount(pool_labels, minlength=len(names))
    short = np.flatnonzero(left < k)
    if len(short):
        code = short[0]
        raise UserError(
            f"label '{names[code]}' has only {left[code]} rows left for training, {k} asked",
            field="train_per_label",
            hint="lower train_per_label or the test/validation sizes",
        )
    chosen = rank_within_groups(pool_labels) < k
    return pool[chosen][np.argsort(pool_labels[chosen], kind="stable")]


def _label_counts(codes: "np.ndarray", names: list[str]) -> dict[str, int]:
    import numpy as np

    counts = np.bincount(codes, minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts) if n}
