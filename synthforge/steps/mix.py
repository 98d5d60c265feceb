"""`mix`: combine real and synthetic rows by fraction or counts, seeded.

How many rows of each source (first rule that applies):
  - `real_count` / `synthetic_count`: exact counts (`all` = every row of that input);
  - `synthetic_fraction` with `total`: round(f * total) synthetic, the rest real;
  - `synthetic_fraction` with `total: null`: every real row, plus enough synthetic
    rows that they make up fraction f of the output (f = 1: every synthetic row).
Then `balance` spreads each source's count equally over its labels, and
`max_per_label` caps each label of each source before sampling.

`arm` turns a fraction into a study design with k = round(f * total):
  - `replace`: total rows, k of them synthetic (synthetic rows replace real ones);
  - `augment`: every real row plus k synthetic rows;
  - `upper`: every real row plus k more real rows from `extra_real` (the upper bound of augment).

Rows are taken per (source, label) as a prefix of an order: synthetic rows with a
`selection_rank` (from `select`) in that order (`order: rank`: the rows the
selection picked first, whose diversity its metrics describe), everything else in
a seeded permutation (`order: random`), so a larger request with the same seed is
a superset of a smaller one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from synthforge.errors import UserError
from synthforge.text_tables import plural
from synthforge.stepapi import Ref, StepContext, StepParams, StepResult
from synthforge.steps.base import Step
from synthforge.steps.rows import RANK_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

SOURCES = ("real", "synthetic")
ROLE_COLUMN = "__mix_role"  # which input a row came from; dropped before output


class MixParams(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"real": "real_split", "synthetic": "generated", "synthetic_fraction": 0.5, "total": 100},
        {"real": "real_split", "synthetic": "generated", "real_count": 50, "synthetic_count": "all"},
        {"real": "real_split", "synthetic": "judged", "synthetic_fraction": 0.5, "total": 100, "weight_by": "score"}]})

    real: Ref | None = Field(None, description="the step (or step.table) of real rows (give real, synthetic or both)")
    synthetic: Ref | None = Field(None, description="the step (or step.table) of synthetic rows")
    synthetic_fraction: float | None = Field(
        default=None, ge=0.0, le=1.0, description="the share of synthetic rows in the output, 0..1 (or use the counts)"
    )
    total: int | None = Field(
        default=None, ge=0,
        description="the output size with synthetic_fraction (default: keep every real row and add "
        "round(n_real * f / (1 - f)) synthetic ones)",
    )
    real_count: int | Literal["all"] | None = Field(
        None, description="an exact count of real rows, or `all` (instead of synthetic_fraction; omitted: 0)"
    )
    synthetic_count: int | Literal["all"] | None = Field(
        None, description="an exact count of synthetic rows, or `all` (instead of synthetic_fraction; omitted: 0)"
    )
    balance: bool = Field(
        False, description="true to split each source's count equally over its labels (remainder to the first in sorted order)"
    )
    max_per_label: int | None = Field(
        default=None, ge=1, description="a cap: at most this many rows of any label from each source, applied before counting"
    )
    on_shortage: Literal["error", "take_available"] = Field(
        "error", description="`error` when asked for more rows than exist, or `take_available` to take what there is"
    )
    shuffle: bool = Field(True, description="true to shuffle the output rows (seeded)")
    order: Literal["rank", "random"] = Field(
        "rank",
        description="`rank`: take synthetic rows in their `selection_rank` order (the selection's first picks), "
        "or `random`: a seeded random draw per label (always for rows without a rank)",
    )
    arm: Literal["replace", "augment", "upper"] = Field(
        "replace",
        description="with synthetic_fraction f and total: `replace` (total rows, round(f * total) synthetic), "
        "`augment` (every real row + round(f * total) synthetic) or `upper` (every real row + round(f * total) "
        "more real rows from extra_real)",
    )
    extra_real: Ref | None = Field(
        None, description="real rows the `upper` arm draws its additional rows from (rows also in `real` are skipped)"
    )
    weight_by: str | None = Field(
        None, exclude_if=lambda value: value is None,
        description="a numeric column of the synthetic rows (e.g. a judge's score) that weights their draw: a seeded "
        "weighted order without replacement (instead of `order`), so rows with a higher value are likelier taken; "
        "0 or no value comes last, a negative value is refused",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> "MixParams":
        counts = self.real_count is not None or self.synthetic_count is not None
        if counts and self.synthetic_fraction is not None:
            raise ValueError("give either synthetic_fraction (with total) or real_count/synthetic_count, not both")
        if counts and self.total is not None:
            raise ValueError("total goes with synthetic_fraction; with counts the total is their sum")
        if not counts and self.synthetic_fraction is None:
            raise ValueError("give synthetic_fraction (with optional total) or real_count/synthetic_count")
        for name in ("real_count", "synthetic_count"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.real is None and self.synthetic is None:
            raise ValueError("give at least one of real, synthetic")
        if self.arm != "replace" and (self.synthetic_fraction is None or self.total is None or self.real is None):
            raise ValueError(f"arm '{self.arm}' needs real, synthetic_fraction and total (it adds round(f * total) rows)")
        if self.arm == "upper" and self.extra_real is None:
            raise ValueError("arm 'upper' needs extra_real: the real rows its additional rows come from")
        return self


class MixStep(Step):
    kind = "mix"
    version = "2"  # 2: synthetic rows in selection_rank order by default; arms
    Params = MixParams

    def run(self, ctx: StepContext) -> StepResult:
        import numpy as np
        import polars as pl

        params: MixParams = ctx.params  # type: ignore[assignment]
        pools = {role: _load_pool(ctx.inputs.get(role), role) for role in SOURCES}
        rngs = {role: np.random.default_rng(_seed_int(ctx.seed, i)) for i, role in enumerate(SOURCES)}
        weights = {"real": None, "synthetic": _weights(pools["synthetic"], params.weight_by)}
        groups = {role: _label_groups(pools[role], rngs[role], params.max_per_label, params.order, weights[role])
                  for role in SOURCES}
        available = {role: _group_total(groups[role]) for role in SOURCES}
        wanted = requested_counts(params, available)
        if params.arm == "replace":
            picked = {"real": _sample_source(pools["real"], groups["real"], "real", wanted["real"], params, rngs["real"])}
        else:  # every real row, whatever balance says (it applies to the added rows)
            picked = {"real": pools["real"]}
        if _tops_up(params) and picked["real"] is not None:
            # "all real + f synthetic": size the synthetic part on the real rows actually taken
            # (fewer than asked when balance + take_available trimmed them).
            wanted["synthetic"] = _top_up_count(picked["real"].height, params.synthetic_fraction)
        picked["synthetic"] = _sample_source(
            pools["synthetic"], groups["synthetic"], "synthetic", wanted["synthetic"], params, rngs["synthetic"],
            weights["synthetic"],
        )
        if params.arm == "upper":
            picked["real"] = _with_extra_real(picked["real"], ctx.inputs["extra_real"], params, ctx.seed)
        _check_unique_ids(picked)
        parts = [frame for frame in picked.values() if frame is not None and frame.height]
        data = pl.concat(parts, how="diagonal_relaxed") if parts else _empty_like(pools)
        if params.shuffle and data.height:
            data = data.sample(fraction=1.0, shuffle=True, seed=_seed_int(ctx.seed, 2))
        meta = {**_meta(data, wanted, pools, params.max_per_label), "arm": params.arm, "order": params.order}
        if params.weight_by is not None:
            meta["weight_by"] = _weighted_meta(data, params.weight_by)
        data = data.drop(ROLE_COLUMN)
        ctx.log(f"mix: {meta['n_real']} real + {meta['n_synthetic']} synthetic = {plural(meta['n_total'], 'row')}")
        return StepResult(data=data, meta=meta)


# -- counts ----------------------------------------------------------------
def requested_counts(params: MixParams, available: dict[str, int | None]) -> dict[str, int]:
    """How many rows to take from each source (before shortage checks)."""
    if params.synthetic_fraction is None:
        return {role: _explicit_count(params, role, available[role]) for role in SOURCES}
    fraction = params.synthetic_fraction
    _require_inputs_for_fraction(params, available)
    if params.arm != "replace":  # every real row, plus k synthetic (augment) or k more real rows (upper)
        added = round(fraction * params.total)
        return {"real": available["real"] or 0, "synthetic": added if params.arm == "augment" else 0}
    if params.total is not None:
        synthetic = round(fraction * params.total)
        return {"real": params.total - synthetic, "synthetic": synthetic}
    if fraction == 1.0:
        return {"real": 0, "synthetic": available["synthetic"] or 0}
    real = available["real"] or 0
    return {"real": real, "synthetic": _top_up_count(real, fraction)}


def _tops_up(params: MixParams) -> bool:
    return params.synthetic_fraction is not None and params.total is None and params.synthetic_fraction < 1.0


def _with_extra_real(real: "pl.DataFrame", extra_table: Any, params: MixParams, seed: int) -> "pl.DataFrame":
    """The upper arm: every real row plus round(f * total) rows of extra_real that are not already in it."""
    import numpy as np
    import polars as pl

    extra = _load_pool(extra_table, "real")
    extra = extra.filter(~pl.col("id").is_in(real["id"].implode()))
    rng = np.random.default_rng(_seed_int(seed, 3))
    groups = _label_groups(extra, rng, params.max_per_label, "random")
    count = round(params.synthetic_fraction * params.total)
    more = _sample_source(extra, groups, "extra_real", count, params, rng)
    return pl.concat([real, more], how="diagonal_relaxed") if more is not None and more.height else real


def _top_up_count(n_real: int, fraction: float) -> int:
    return round(n_real * fraction / (1.0 - fraction))


def _explicit_count(params: MixParams, role: str, available: int | None) -> int:
    value = getattr(params, f"{role}_count")
    if value is None:
        return 0
    if available is None and value != 0:
        raise UserError(f"{role}_count is {value} but no '{role}' input is given", field=f"{role}_count")
    return (available or 0) if value == "all" else value


def _require_inputs_for_fraction(params: MixParams, available: dict[str, int | None]) -> None:
    fraction = params.synthetic_fraction
    if fraction is not None and fraction > 0 and available["synthetic"] is None:
        raise UserError(f"synthetic_fraction is {fraction} but no 'synthetic' input is given", field="synthetic")
    if fraction is not None and fraction < 1 and available["real"] is None:
        raise UserError(f"synthetic_fraction is {fraction} but no 'real' input is given", field="real")


# -- sampling ----------------------------------------------------------------
def _load_pool(table: Any, role: str) -> "pl.DataFrame | None":
    if table is None:
        return None
    import polars as pl

    frame = table.frame()
    missing = {"id", "label"} - set(frame.columns)
    if missing:
        raise UserError(f"input '{role}' lacks column(s) {sorted(missing)}", field=role)
    origin = f"{table.step}@{table.key[:12]}"
    if "source" not in frame.columns:
        frame = frame.with_columns(pl.lit(role).alias("source"))
    else:
        frame = frame.with_columns(pl.col("source").fill_null(role))
    # Sorting by id makes the pick independent of the upstream row order.
    return frame.with_columns(pl.lit(origin).alias("origin"), pl.lit(role).alias(ROLE_COLUMN)).sort("id")


def _height(pool: "pl.DataFrame | None") -> int | None:
    return None if pool is None else pool.height


def _sample_source(pool, groups, role: str, count: int, params: MixParams, rng, weights=None) -> "pl.DataFrame | None":
    import numpy as np

    if pool is None or count == 0:
        return None if pool is None else pool.head(0)
    if params.balance:
        quotas = _balanced_quotas(groups, count, role, params)
        rows = [groups[label][:quota] for label, quota in quotas.items()]
        chosen = np.concatenate(rows) if rows else np.array([], dtype=np.int64)
    else:
        usable = np.concatenate(list(groups.values())) if groups else np.array([], dtype=np.int64)
        count = _shortage(count, len(usable), role, params, _per_label_counts(groups))
        if weights is not None:
            return pool[np.sort(weighted_order(usable, weights, rng)[:count])]
        shuffled = rng.permutation(usable)
        ranked = params.order == "rank" and RANK_COLUMN in pool.columns
        chosen = usable[np.argsort(pool[RANK_COLUMN].to_numpy()[usable], kind="stable")][:count] if ranked else shuffled[:count]
    return pool[np.sort(chosen)]


def _label_groups(pool, rng, cap: int | None, order: str = "random", weights=None) -> "dict[str, np.ndarray] | None":
    """Row indices per label, each group in a seeded weighted order (`weights`), selection_rank order (`rank`,
    when the rows have one) or a seeded random order, capped."""
    import numpy as np

    from synthforge.steps.rows import label_codes

    if pool is None:
        return None
    names, codes = label_codes(pool["label"])
    by_label = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes, minlength=len(names)))[:-1])
    ranks = pool[RANK_COLUMN].to_numpy() if order == "rank" and RANK_COLUMN in pool.columns else None
    groups = {}
    for label, members in zip(names, by_label):  # one seeded shuffle per label, in label order
        if weights is not None:
            indices = weighted_order(members, weights, rng)
            groups[label] = indices[:cap] if cap is not None else indices
            continue
        shuffled = rng.permutation(members)  # drawn in rank order too, so the other sources' draws do not move
        indices = members[np.argsort(ranks[members], kind="stable")] if ranks is not None else shuffled
        groups[label] = indices[:cap] if cap is not None else indices
    return groups


def _weights(pool, column: str | None) -> "np.ndarray | None":
    """The synthetic rows' weights from `column` (nulls weigh 0), or None without weight_by."""
    if pool is None or column is None:
        return None
    if column not in pool.columns:
        raise UserError(f"the synthetic rows have no column '{column}'", field="weight_by",
                        hint="a numeric column such as a judge step's score (judge.column)")
    if not pool.schema[column].is_numeric():
        raise UserError(f"column '{column}' is {pool.schema[column]}, not numeric", field="weight_by")
    weights = pool[column].cast(float).fill_null(0.0).to_numpy()
    if (weights < 0).any():
        raise UserError(f"column '{column}' has negative values ({weights.min():g}); weights must be >= 0",
                        field="weight_by", hint="weight by a non-negative score, e.g. a judge's 1-5 score")
    return weights


def weighted_order(indices: "np.ndarray", weights: "np.ndarray", rng) -> "np.ndarray":
    """`indices` in a seeded weighted random order without replacement (Efraimidis & Spirakis 2006: sort by
    u^(1/w), here log(u)/w, descending): every prefix is a weighted sample, so a larger request takes a superset.
    Rows of weight 0 come last, in seeded random order."""
    import numpy as np

    u = rng.random(len(indices))
    w = weights[indices]
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, np.log(u) / np.where(w > 0, w, 1.0), -np.inf)
    tiebreak = rng.random(len(indices))  # orders the weight-0 rows among themselves
    return indices[np.lexsort((-tiebreak, -keys))]


def _weighted_meta(data, column: str) -> dict[str, Any]:
    """The weight column's mean over the synthetic rows taken (what weighting bought)."""
    import polars as pl

    taken = data.filter(pl.col(ROLE_COLUMN) == "synthetic")[column]
    return {"column": column, "mean_taken": round(float(taken.mean()), 4) if taken.len() and taken.mean() is not None else None}


def _group_total(groups: "dict[str, np.ndarray] | None") -> int | None:
    return None if groups is None else sum(len(idx) for idx in groups.values())


def _balanced_quotas(groups: dict[str, "np.ndarray"], count: int, role: str, params: MixParams) -> dict[str, int]:
    if not groups:
        _shortage(count, 0, role, params, {})
        return {}
    per_label, remainder = divmod(count, len(groups))
    # The remainder goes to the first labels in sorted order: deterministic and off by at most one.
    quotas = {label: per_label + (i < remainder) for i, label in enumerate(groups)}
    short = {label: len(idx) for label, idx in groups.items() if len(idx) < quotas[label]}
    if not short:
        return quotas
    if params.on_shortage == "error":
        raise UserError(
            f"balance needs {max(quotas.values())} '{role}' rows per label but "
            + ", ".join(f"'{label}' has {n}" for label, n in short.items()),
            field="extra_real" if role == "extra_real" else f"{role}_count" if params.synthetic_fraction is None else "total",
            hint=f"available per label: {_per_label_counts(groups)}; or set on_shortage: take_available",
        )
    # take_available keeps the output balanced: every label shrinks to the scarcest one.
    smallest = min(len(idx) for idx in groups.values())
    return {label: smallest for label in groups}


def _shortage(count: int, available: int, role: str, params: MixParams, per_label: dict[str, int]) -> int:
    if count <= available:
        return count
    if params.on_shortage == "take_available":
        return available
    field = f"{role}_count" if params.synthetic_fraction is None else ("total" if params.total is not None else role)
    field = "extra_real" if role == "extra_real" else field
    capped = f" after max_per_label={params.max_per_label}" if params.max_per_label else ""
    raise UserError(
        f"needs {count} '{role}' rows but the input has {available}{capped}",
        field=field,
        hint=f"per label: {per_label}; lower the request or set on_shortage: take_available",
    )


def _per_label_counts(groups: dict[str, "np.ndarray"]) -> dict[str, int]:
    return {label: int(len(idx)) for label, idx in groups.items()}


def _check_unique_ids(picked: dict[str, Any]) -> None:
    frames = [f for f in picked.values() if f is not None and f.height]
    if len(frames) < 2:
        return
    shared = frames[0]["id"].filter(frames[0]["id"].is_in(frames[1]["id"].implode())).unique()
    if len(shared):
        example = shared.sort().head(3).to_list()
        raise UserError(
            f"{len(shared)} id(s) appear in both real and synthetic inputs (e.g. {example})",
            field="synthetic",
            hint="ids must be unique across the mixed inputs",
        )


def _empty_like(pools: dict[str, Any]):
    for pool in pools.values():
        if pool is not None:
            return pool.head(0)
    raise AssertionError("validated: at least one input")  # pragma: no cover


def _seed_int(*parts: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _meta(data, wanted: dict[str, int], pools: dict[str, Any], max_per_label: int | None) -> dict[str, Any]:
    import polars as pl

    n_total = data.height
    by_role = {role: 0 for role in SOURCES}
    per_label: dict[str, dict[str, int]] = {}
    counts = data.group_by([ROLE_COLUMN, "label"]).agg(pl.len().alias("n")).sort([ROLE_COLUMN, "label"])
    for role, label, n in counts.iter_rows():
        by_role[role] += int(n)
        per_label.setdefault(role, {})[str(label)] = int(n)
    return {
        "n_total": n_total,
        "n_real": by_role["real"],
        "n_synthetic": by_role["synthetic"],
        "synthetic_fraction": by_role["synthetic"] / n_total if n_total else None,
        "requested": {"real": wanted["real"], "synthetic": wanted["synthetic"]},
        "shortfall": max(0, wanted["real"] + wanted["synthetic"] - n_total),  # rows asked for but not there (take_available)
        "available": {role: _height(pool) for role, pool in pools.items()},
        "max_per_label": max_per_label,
        "per_label": per_label,
    }
