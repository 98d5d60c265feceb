"""`embed`: add a sentence-embedding column so selection and metrics never re-embed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from synthforge.errors import UserError
from synthforge.steps.base import Ref, Step, StepContext, StepParams, StepResult

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

EMBEDDING_COLUMN = "embedding"


class EmbedParams(StepParams):
    input: Ref
    model: str = "minilm"
    max_length: int = Field(256, ge=8, le=8192)
    text_column: str = "text"
    batch_size: int = Field(64, ge=1, exclude=True)  # runtime-only: never in a key


class EmbedStep(Step):
    kind = "embed"
    version = "1"
    Params = EmbedParams

    def files_read(self, params: EmbedParams) -> list[Path]:
        # The weights' content, not the model's name, decides the embeddings.
        from synthforge.backends.embedder import model_files

        return model_files(params.model)

    def run(self, ctx: StepContext) -> StepResult:
        import polars as pl

        from synthforge.backends.embedder import get_embedder
        from synthforge.progress import progress

        params: EmbedParams = ctx.params  # type: ignore[assignment]
        frame = ctx.inputs["input"].frame()
        if params.text_column not in frame.columns:
            raise UserError(f"input has no '{params.text_column}' column", field="text_column")
        embedder = get_embedder(params.model, ctx.runtime.device, params.max_length)
        texts = frame[params.text_column].cast(pl.Utf8).fill_null("").to_list()
        batch_size = ctx.runtime.batch_size or params.batch_size
        start = time.perf_counter()
        with progress(len(texts), f"{ctx.step}: embed", enabled=ctx.runtime.progress) as bar:
            vectors = embedder.embed(texts, batch_size=batch_size, progress=bar)
        seconds = time.perf_counter() - start
        column = pl.Series(EMBEDDING_COLUMN, vectors, dtype=pl.Array(pl.Float32, embedder.dim))
        identity = embedder.identity()
        meta = {
            "model": identity["name"],
            "model_hash": identity["hash"],
            "dim": embedder.dim,
            "device": embedder.device,
            "rows": len(texts),
            "rows_per_s": round(len(texts) / seconds, 1) if seconds > 0 else None,
        }
        return StepResult(frame.with_columns(column), meta=meta)


def embeddings_of(frame: "pl.DataFrame", column: str = EMBEDDING_COLUMN) -> "np.ndarray":
    """The embedding column as a C-contiguous float32 (rows, dim) matrix."""
    import numpy as np

    if column not in frame.columns:
        raise UserError(f"input has no '{column}' column", hint="add an `embed` step before this one")
    if frame.height == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(frame[column].to_numpy(), dtype=np.float32)
