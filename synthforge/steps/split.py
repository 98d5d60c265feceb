"""`split`: seeded, stratified train / test / validation splits, with a scarce-label option."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from synthforge.errors import UserError
from synthforge.steps.base import Ref, Step, StepContext, StepParams, StepResult

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
    seed: int | None = Field(
        None,
        description="an integer seed for the test and validation draw (default: the step's seed); the training rows "
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
    version = "1"
    Params = SplitParams
    tables = ("train", "test", "validation")
    held_out_seed_field = "seed"

    def run(self, ctx: StepContext) -> StepResult:
        import numpy as np
        import polars as pl

        params: SplitParams = ctx.params
        frame = ctx.inputs["input"].frame().sort("id")
        held_out_seed = ctx.seed if params.seed is None else params.seed
        rng = np.random.default_rng([held_out_seed, 0x5B117])
        labels = frame["label"].to_numpy()
        pool = rng.permutation(frame.height)  # test, then validation, then train are drawn in this order
        test, pool = _take(pool, _count(params.test, frame.height), labels, params.stratify, "test")
        validation, pool = _take(pool, _count(params.validation, frame.height), labels, params.stratify, "validation")
        if held_out_seed != ctx.seed:  # the training rows get their own draw from what is left
            pool = np.random.default_rng([ctx.seed, 0x5B117, 1]).permutation(pool)
        if params.train_per_label is not None:
            train = _per_label(pool, labels, params.train_per_label)
        elif params.train is not None:
            train, _ = _take(pool, _count(params.train, frame.height), labels, params.stratify, "train")
        else:
            train = pool
        parts = {"train": frame[np.sort(train)], "test": frame[np.sort(test)], "validation": frame[np.sort(validation)]}
        parts = {name: part.with_columns(pl.lit(name).alias("split")) for name, part in parts.items()}
        meta = {name: _label_counts(part) for name, part in parts.items()}
        return StepResult(pl.concat(list(parts.values())), tables=parts, meta={"label_counts": meta})


def _count(size: int | float, total: int) -> int:
    return round(size * total) if isinstance(size, float) else int(size)


def _take(pool: "np.ndarray", count: int, labels: np.ndarray, stratify: bool, field: str) -> tuple[np.ndarray, np.ndarray]:
    """`count` rows from `pool` (stratified by label when asked) and the rest of the pool."""
    import numpy as np

    if count > len(pool):
        raise UserError(f"needs {count} rows but only {len(pool)} are left", field=field, hint="ask for fewer rows")
    if count == 0:
        return pool[:0], pool
    if not stratify:
        return pool[:count], pool[count:]
    quotas = _quotas(labels[pool], count)
    chosen = np.concatenate([pool[labels[pool] == label][:quota] for label, quota in quotas.items()])
    return chosen, pool[~np.isin(pool, chosen)]


def _quotas(pool_labels: np.ndarray, count: int) -> dict[str, int]:
    """Largest-remainder allocation of `count` proportional to label frequencies."""
    import numpy as np

    names, sizes = np.unique(pool_labels, return_counts=True)
    exact = sizes * count / sizes.sum()
    quotas = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - quotas), kind="stable")[: count - quotas.sum()]:
        quotas[index] += 1
    return dict(zip(names.tolist(), quotas.tolist()))


def _per_label(pool: "np.ndarray", labels: "np.ndarray", k: int) -> "np.ndarray":
    import numpy as np

    chosen = []
    for label in sorted(set(labels.tolist())):
        rows = pool[labels[pool] == label]
        if len(rows) < k:
            raise UserError(
                f"label '{label}' has only {len(rows)} rows left for training, {k} asked",
                field="train_per_label",
                hint="lower train_per_label or the test/validation sizes",
            )
        chosen.append(rows[:k])
    return np.concatenate(chosen)


def _label_counts(frame: "pl.DataFrame") -> dict[str, int]:
    return dict(frame.group_by("label").len().sort("label").iter_rows()) if frame.height else {}
