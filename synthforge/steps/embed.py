"""`embed`: add a sentence-embedding column so selection and metrics never re-embed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from synthforge.errors import UserError
from synthforge.stepapi import Ref, StepContext, StepParams, StepResult
from synthforge.steps.base import Step
from synthforge.steps.rows import EMBEDDING_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

class EmbedParams(StepParams):
    input: Ref
    model: str = "minilm"
    max_length: int = Field(256, ge=8, le=8192)
    text_column: str = "text"
    batch_size: int = Field(64, ge=1, exclude=True)  # runtime-only: never in a key


# Rows are embedded in blocks of this many, each sorted by length into batches, whatever the
# shard size: shards are whole blocks, so a sharded run computes exactly the unsharded batches.
BLOCK_ROWS = 1024


class EmbedStep(Step):
    seeded = False
    kind = "embed"
    version = "2"  # 2: batches are formed within blocks of BLOCK_ROWS rows (was: across all rows)
    Params = EmbedParams
    row_parallel = True

    def files_read(self, params: EmbedParams) -> list[Path]:
        # The weights' content, not the model's name, decides the embeddings.
        from synthforge.backends.embedder import model_files

        return model_files(params.model)

    def loads_model(self, params: EmbedParams) -> bool:
        return True

    def run(self, ctx: StepContext) -> StepResult:
        import numpy as np
        import polars as pl

        from synthforge.backends.embedder import model_dim, model_identity
        from synthforge.progress import progress
        from synthforge.sharding import ShardStore, run_shards, shard_ranges, shard_rows

        params: EmbedParams = ctx.params  # type: ignore[assignment]
        frame = ctx.inputs["input"].frame()
        if params.text_column not in frame.columns:
            raise UserError(f"input has no '{params.text_column}' column", field="text_column")
        texts = frame[params.text_column].cast(pl.Utf8).fill_null("").to_list()
        store = ShardStore(ctx.cache, ctx.key)
        shards = shard_ranges(len(texts), shard_rows(ctx.runtime), align=BLOCK_ROWS)
        vectors = {i: store.load(rows) for i, rows in enumerate(shards)}
        todo = [i for i, array in vectors.items() if array is None]
        worker = EmbedWorker(params.model, ctx.runtime.resolve("device", default="auto"), params.max_length,
                             ctx.runtime.resolve("batch_size", params.batch_size))
        devices = set()
        start = time.perf_counter()
        with progress(sum(len(shards[i]) for i in todo), f"{ctx.step}: embed", enabled=ctx.runtime.progress) as bar:

            def finished(position: int, result: tuple[str, "np.ndarray"]) -> None:
                shard = todo[position]
                devices.add(result[0])
                vectors[shard] = result[1]
                store.save(shards[shard], result[1])  # a rerun after a failure starts from here
                if ctx.runtime.ray:  # in-process shards count their rows as they go
                    bar.update(len(shards[shard]))

            payloads = [texts[shards[i].start:shards[i].stop] for i in todo]
            run_shards(ctx.runtime, worker, payloads, finished, on_item=lambda shard, j, rows: bar.update(rows))
        seconds = time.perf_counter() - start
        dim = model_dim(params.model)
        merged = np.concatenate([vectors[i] for i in range(len(shards))]) if shards else np.zeros((0, dim), np.float32)
        column = pl.Series(EMBEDDING_COLUMN, merged, dtype=pl.Array(pl.Float32, dim))
        identity = model_identity(params.model)
        meta = {
            "model": identity["name"],
            "model_hash": identity["hash"],
            "dim": dim,
            "device": ",".join(sorted(devices)) or "(all shards resumed)",
            "rows": len(texts),
            "shards": len(shards),
            "shards_resumed": len(shards) - len(todo),
            "rows_per_s": round(len(texts) / seconds, 1) if seconds > 0 and todo else None,
        }
        result = StepResult(frame.with_columns(column), meta=meta)
        store.discard()
        return result


class EmbedWorker:
    """Embeds one shard of texts, block by block; loads the model on first use (once per process)."""

    def __init__(self, model: str, device: str, max_length: int, batch_size: int):
        self.model, self.device, self.max_length, self.batch_size = model, device, max_length, batch_size

    def __call__(self, texts: list[str], on_item=None) -> tuple[str, "np.ndarray"]:
        """(device, vectors); `on_item(0, rows)` counts rows as batches finish."""
        import numpy as np

        from synthforge.backends.embedder import get_embedder

        embedder = get_embedder(self.model, self.device, self.max_length)
        counter = _RowCounter(on_item) if on_item else None
        blocks = [embedder.embed(texts[b:b + BLOCK_ROWS], batch_size=self.batch_size, progress=counter)
                  for b in range(0, len(texts), BLOCK_ROWS)]
        return embedder.device, np.concatenate(blocks) if blocks else np.zeros((0, embedder.dim), np.float32)


class _RowCounter:
    """The `progress.update(n)` an embedder calls, turned into `on_item` calls."""

    def __init__(self, on_item):
        self.on_item = on_item

    def update(self, rows: int) -> None:
        self.on_item(0, rows)
