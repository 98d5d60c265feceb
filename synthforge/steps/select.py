"""`select`: pick n rows by diversity (k-center, clusters, semdedup, random or a level)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from synthforge.errors import UserError
from synthforge.stepapi import Ref, StepContext, StepParams, StepResult
from synthforge.steps.base import Step
from synthforge.steps.rows import RANK_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl


class ScoreRange(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [{"column": "score", "min": 4}]})

    column: str = Field(description="a numeric column of the input, e.g. a judge step's score")
    min: float | None = Field(None, description="the lowest value kept (inclusive)")
    max: float | None = Field(None, description="the highest value kept (inclusive)")

    @model_validator(mode="after")
    def _a_bound(self) -> "ScoreRange":
        if self.min is None and self.max is None:
            raise UserError("where needs min, max or both", field="where", hint="e.g. where: {column: score, min: 4}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise UserError(f"min {self.min:g} is above max {self.max:g}", field="where.min")
        return self

    def describe(self) -> str:
        bounds = [f"{self.column} >= {self.min:g}"] if self.min is not None else []
        return " and ".join(bounds + ([f"{self.column} <= {self.max:g}"] if self.max is not None else []))


class SelectParams(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"input": "embed", "n": 100, "method": "kcenter"}, {"input": "embed", "n": 100, "diversity": 0.5},
        {"input": "embed", "n": 100, "diversity": 0.5, "reference": "real", "shift_band": [0.2, 0.8], "label_filter": True},
        {"input": "embed", "n": 100, "diversity": 0.5, "reference": "real", "judge": "held_out"},
        {"input": "embed", "n": 100, "method": "kcenter", "where": {"column": "score", "min": 4, "max": 5}}]})

    input: Ref = Field(description="the step (or step.table) whose rows, with an `embedding` column, to select from")
    n: int | None = Field(None, ge=1, description="the number of rows to select (a positive integer; optional only for semdedup)")
    method: Literal["kcenter", "clusters", "semdedup", "random"] | None = Field(
        None, description="one of kcenter, clusters, semdedup, random (give exactly one of method and diversity)"
    )
    diversity: float | None = Field(
        None, ge=0.0, le=1.0,
        description="a diversity level in [0, 1]: from the n rows nearest an anchor (0) to k-center over the whole pool (1)",
    )
    k: int | None = Field(
        None, ge=1, description="the number of k-means clusters for clusters, semdedup and diversity (default: about sqrt(rows))"
    )
    n_clusters: int | None = Field(
        None, ge=1, description="the number of clusters the clusters method draws from (default: all k)"
    )
    threshold: float = Field(
        0.95, gt=-1.0, le=1.0, description="the cosine similarity in (-1, 1] that marks a near-duplicate (semdedup)"
    )
    per_label: bool = Field(False, description="true to select within each label, keeping the label shares")
    label_column: str = Field("label", description="the column holding the labels that per_label groups by")
    reference: Ref | None = Field(
        None, description="real rows with embeddings (and labels): the basis of shift metrics, shift_band and label checks"
    )
    shift_band: tuple[float, float] | None = Field(
        None,
        description="[low, high] quantiles (0..1) of the pool's nearest-reference similarity: select only among rows "
        "inside the band, so every diversity level has about the same shift to the reference (needs reference)",
    )
    dcscore_tau: float = Field(0.1, gt=0.0, description="DCScore's softmax temperature for the reported metrics")
    label_filter: bool = Field(
        False,
        description="drop rows whose label a linear probe disagrees with: the judge's when a `judge` is given, "
        "else one trained on the reference rows; dropped rows land in the `rejects` table",
    )
    judge: Ref | None = Field(
        None,
        description="labelled real rows with embeddings, disjoint from the training and test rows (e.g. split.validation): "
        "an oracle label judge whose cross-validated error rates correct the fidelity of the selected rows (studies)",
    )

    where: ScoreRange | None = Field(
        None, exclude_if=lambda value: value is None,
        description="select only among rows whose numeric `column` (e.g. a judge's score) is within [min, max]; "
        "the others (and rows without a value) land in `rejects`",
    )

    @model_validator(mode="after")
    def _one_way_to_select(self) -> "SelectParams":
        if (self.method is None) == (self.diversity is None):
            raise UserError(
                "give exactly one of `method` and `diversity`",
                field="method",
                hint="method: kcenter|clusters|semdedup|random, or diversity: 0..1",
            )
        if self.n is None and self.method != "semdedup":
            raise UserError("`n` (rows to select) is required", field="n", hint="only semdedup may omit it")
        if (self.shift_band is not None or (self.label_filter and self.judge is None)) and self.reference is None:
            field = "shift_band" if self.shift_band is not None else "label_filter"
            raise UserError(f"{field} needs a `reference`", field=field, hint="reference: the real rows' embed step")
        if self.shift_band is not None and not 0.0 <= self.shift_band[0] < self.shift_band[1] <= 1.0:
            raise UserError(
                f"shift_band must be [low, high] quantiles with 0 <= low < high <= 1, got {list(self.shift_band)}",
                field="shift_band", hint="e.g. [0.25, 0.75]",
            )
        return self


class SelectStep(Step):
    kind = "select"
    version = "4"  # 2: big selections' DCScore is a sampled estimate; 3: rejects table, label agreement, shift band; 4: judge
    Params = SelectParams
    tables = ("rejects",)
    reports_selection = True

    def identity(self, params: SelectParams) -> dict[str, Any]:
        from synthforge.metrics import METRICS_VERSION

        return {"metrics version": METRICS_VERSION}  # the metrics in meta come from that code

    def run(self, ctx: StepContext) -> StepResult:
        import numpy as np
        import polars as pl

        from synthforge.keys import key_of
        from synthforge.metrics import diversity_metrics, metric_methods
        from synthforge.steps.rows import embeddings_of

        params: SelectParams = ctx.params  # type: ignore[assignment]
        frame = ctx.inputs["input"].frame()
        emb = embeddings_of(frame)
        reference = ctx.inputs.get("reference")
        ref_frame = reference.frame() if reference is not None else None
        ref_emb = embeddings_of(ref_frame) if ref_frame is not None else None
        meta: dict = {"method": params.method or "diversity", "level": params.diversity, "rows_in": frame.height}
        judge = _judge(ctx.inputs.get("judge"), params)
        eligible, rejects = np.arange(frame.height), []
        if ref_frame is not None or judge is not None:
            eligible, rejects = _screen(emb, frame, ref_emb, ref_frame, params, ctx.seed, meta, judge)
        if params.where is not None:
            eligible, outside = _within(frame, eligible, params.where, meta)
            rejects.append(outside)
        rows = eligible[choose_rows(emb[eligible], frame[eligible.tolist()], params, ctx.seed)]
        chosen = frame[rows.tolist()].with_columns(pl.Series(RANK_COLUMN, range(len(rows)), dtype=pl.Int64))
        texts = chosen["text"].cast(pl.Utf8).fill_null("") if "text" in chosen.columns else None
        meta["rows_out"] = len(rows)
        meta["selection_hash"] = key_of(sorted(chosen["id"].cast(pl.Utf8).to_list())) if "id" in chosen.columns else None
        meta["metrics"] = diversity_metrics(
            emb[rows], texts, reference_emb=ref_emb, seed=ctx.seed, pool_emb=emb, tau=params.dcscore_tau
        )
        meta["metric_methods"] = metric_methods(len(rows), len(ref_emb) if ref_emb is not None else None)
        if judge is not None:
            from synthforge.fidelity import judged_fidelity

            meta["fidelity"] = {**judged_fidelity(judge, emb[rows], chosen[params.label_column].to_list()), **judge.summary()}
        if ref_emb is not None:
            meta["reference"] = reference.key
        rejected = pl.concat(rejects) if rejects else frame.head(0).with_columns(pl.lit(None, pl.Utf8).alias("reason"))
        return StepResult(chosen, tables={"rejects": rejected}, meta=meta)


def _within(frame, eligible: "np.ndarray", where: ScoreRange, meta: dict):
    """The eligible rows whose `where.column` lies in its range, and the others as rejects with the reason."""
    import numpy as np
    import polars as pl

    if where.column not in frame.columns:
        raise UserError(f"the input has no column '{where.column}'", field="where.column",
                        hint="a numeric column such as a judge step's score (judge.column)")
    if not frame.schema[where.column].is_numeric():
        raise UserError(f"column '{where.column}' is {frame.schema[where.column]}, not numeric", field="where.column")
    value = pl.col(where.column)
    inside = value.is_not_null() & (value >= where.min if where.min is not None else True) & \
        (value <= where.max if where.max is not None else True)
    mask = frame.select(inside.fill_null(False)).to_series().to_numpy()
    outside = np.zeros(frame.height, dtype=bool)
    outside[eligible] = ~mask[eligible]
    meta["where"] = {"range": where.describe(), "rows": int(mask[eligible].sum()), "outside": int(outside.sum())}
    reason = f"outside where: {where.describe()}"
    return eligible[mask[eligible]], frame.filter(pl.Series(outside)).with_columns(pl.lit(reason).alias("reason"))


LABEL_REASON = "label disagrees with a probe trained on the reference"
JUDGE_REASON = "label disagrees with the oracle judge"
SHIFT_REASON = "nearest-reference similarity outside shift_band"


def _judge(table, params: SelectParams):
    """The oracle label judge fitted on the `judge` rows (None without them)."""
    if table is None:
        return None
    from synthforge.fidelity import fit_judge
    from synthforge.steps.rows import embeddings_of

    frame = table.frame()
    if params.label_column not in frame.columns:
        raise UserError(f"the judge rows need a '{params.label_column}' column", field="judge")
    return fit_judge(embeddings_of(frame), frame[params.label_column].to_list())


def _screen(emb, frame, ref_emb, ref_frame, params: SelectParams, seed: int, meta: dict, judge=None):
    """Rows eligible for selection after the label check and the shift band; rejected rows with reasons."""
    import numpy as np
    import polars as pl

    from synthforge.fidelity import label_agreement
    from synthforge.selection import as_unit_float32, max_similarity, within_shift_band

    keep = np.ones(frame.height, dtype=bool)
    rejects = []
    labelled = ref_frame is not None and params.label_column in frame.columns and params.label_column in ref_frame.columns
    agreement = (
        label_agreement(emb, frame[params.label_column].to_list(), ref_emb, ref_frame[params.label_column].to_list(), seed)
        if labelled else None
    )
    if agreement is not None:
        meta["label_agreement"] = agreement.summary(frame[params.label_column].to_list())
    if judge is not None and params.label_column in frame.columns:
        agrees = np.array([p == str(t) for p, t in zip(judge.predict(emb), frame[params.label_column].to_list())], dtype=bool)
    else:
        agrees = agreement.agrees if agreement is not None else None
    if agrees is not None and params.label_filter:
        rejects.append(frame.filter(pl.Series(~agrees)).with_columns(pl.lit(JUDGE_REASON if judge else LABEL_REASON).alias("reason")))
        keep &= agrees
    elif params.label_filter:
        raise UserError(f"label_filter needs a '{params.label_column}' column in the input and the reference", field="label_filter")
    if params.shift_band is not None and ref_emb is not None:
        similarity = max_similarity(as_unit_float32(emb), as_unit_float32(ref_emb))
        band_rows, bounds = within_shift_band(similarity[keep], params.shift_band)
        in_band = np.zeros(frame.height, dtype=bool)
        in_band[np.flatnonzero(keep)[band_rows]] = True
        rejects.append(frame.filter(pl.Series(keep & ~in_band)).with_columns(pl.lit(SHIFT_REASON).alias("reason")))
        keep = in_band
        meta["shift_band"] = {"quantiles": list(params.shift_band), "similarity": bounds, "rows": int(keep.sum())}
    return np.flatnonzero(keep), rejects


def choose_rows(emb: "np.ndarray", frame: "pl.DataFrame", params: SelectParams, seed: int) -> "np.ndarray":
    from synthforge.selection import as_unit_rows, select, select_per_label

    x = as_unit_rows(emb)
    options = dict(
        method=params.method or "random", level=params.diversity, k=params.k,
        n_clusters_used=params.n_clusters, threshold=params.threshold, seed=seed,
    )
    if not params.per_label:
        return select(x, params.n, **options)
    if params.label_column not in frame.columns:
        raise UserError(f"per_label needs a '{params.label_column}' column", field="label_column")
    return select_per_label(x, frame[params.label_column].to_list(), params.n, **options)
