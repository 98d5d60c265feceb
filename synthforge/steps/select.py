"""`select`: pick n rows by diversity (k-center, clusters, semdedup, random or a level)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from synthforge.errors import UserError
from synthforge.steps.base import Ref, Step, StepContext, StepParams, StepResult

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

RANK_COLUMN = "selection_rank"


class SelectParams(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"input": "embed", "n": 100, "method": "kcenter"}, {"input": "embed", "n": 100, "diversity": 0.5}]})

    input: Ref
    n: int | None = Field(None, ge=1)
    method: Literal["kcenter", "clusters", "semdedup", "random"] | None = None
    diversity: float | None = Field(None, ge=0.0, le=1.0)
    k: int | None = Field(None, ge=1, description="k-means clusters (clusters, semdedup, diversity)")
    n_clusters: int | None = Field(None, ge=1, description="clusters to draw from (clusters)")
    threshold: float = Field(0.95, gt=-1.0, le=1.0, description="cosine similarity that marks a duplicate (semdedup)")
    per_label: bool = False
    label_column: str = "label"
    reference: Ref | None = None

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
        return self


class SelectStep(Step):
    kind = "select"
    version = "2"  # 2: big selections' DCScore is a sampled estimate; meta records metric_methods
    Params = SelectParams

    def identity(self, params: SelectParams) -> dict[str, Any]:
        from synthforge.metrics import METRICS_VERSION

        return {"metrics version": METRICS_VERSION}  # the metrics in meta come from that code

    def run(self, ctx: StepContext) -> StepResult:
        import polars as pl

        from synthforge.metrics import diversity_metrics, metric_methods
        from synthforge.steps.embed import embeddings_of

        params: SelectParams = ctx.params  # type: ignore[assignment]
        frame = ctx.inputs["input"].frame()
        emb = embeddings_of(frame)
        rows = choose_rows(emb, frame, params, ctx.seed)
        chosen = frame[rows.tolist()].with_columns(pl.Series(RANK_COLUMN, range(len(rows)), dtype=pl.Int64))
        texts = chosen["text"].cast(pl.Utf8).fill_null("") if "text" in chosen.columns else None
        reference = ctx.inputs.get("reference")
        ref_emb = embeddings_of(reference.frame(["embedding"])) if reference is not None else None
        metrics = diversity_metrics(emb[rows], texts, reference_emb=ref_emb, seed=ctx.seed, pool_emb=emb)
        meta = {
            "method": params.method or "diversity",
            "level": params.diversity,
            "rows_in": frame.height,
            "rows_out": len(rows),
            "metrics": metrics,
            "metric_methods": metric_methods(len(rows), len(ref_emb) if ref_emb is not None else None),
        }
        if ref_emb is not None:
            meta["reference"] = reference.key
        return StepResult(chosen, meta=meta)


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
