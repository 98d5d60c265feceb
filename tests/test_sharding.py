"""Sharded generate and embed: the merged output is the unsharded output, byte for byte; shards resume."""

from __future__ import annotations

import io

import polars as pl
import pytest

from synthforge.cache import Cache
from synthforge.sharding import ShardStore, shard_ranges, whole_group_ranges
from synthforge.steps import embed as embed_module
from synthforge.stepapi import InputTable, Runtime, StepContext
from synthforge.steps.embed import EmbedParams, EmbedStep
from tests.generate_helpers import run_step
from tests.helpers import write_entry
from tests.test_generate_transformers import tiny_params
from tests.tiny_models import tiny_chat_model_dir

WORDS = ["the", "movie", "was", "great", "boring", "plot", "acting", "wonderful", "cats", "rain", "stock", "eggs"]


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, statistics=False)
    return buffer.getvalue()


def test_shard_ranges_cover_the_rows_in_order_and_align_to_blocks():
    assert shard_ranges(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert shard_ranges(2500, 1500, align=1024) == [range(0, 2048), range(2048, 2500)]
    assert shard_ranges(0, 4) == []


def embed_input(tmp_path, rows: int) -> InputTable:
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 9)) for i in range(rows)]
    return write_entry(tmp_path, "in", pl.DataFrame({"id": [str(i) for i in range(rows)], "text": texts}))


def run_embed(tmp_path, model, table, shard_rows: int | None, cache: Cache | None = None):
    ctx = StepContext(
        step="emb", recipe="r", params=EmbedParams(input="load", model=str(model), batch_size=16), seed=0, key="emb-key",
        inputs={"input": table}, workdir=tmp_path / "work", cache=cache or Cache(tmp_path / f"cache-{shard_rows}"),
        runtime=Runtime(device="cpu", progress=False, shard_rows=shard_rows),
    )
    return EmbedStep().run(ctx)


def test_sharded_embed_is_byte_identical_and_resumes_after_a_failed_shard(tmp_path, tiny_encoder, monkeypatch):
    block = 16  # small blocks keep the test fast; the code path is the one of BLOCK_ROWS
    monkeypatch.setattr(embed_module, "BLOCK_ROWS", block)
    table = embed_input(tmp_path, 2 * block + 5)
    whole = run_embed(tmp_path, tiny_encoder, table, shard_rows=None)
    assert whole.meta["shards"] == 1
    sharded = run_embed(tmp_path, tiny_encoder, table, shard_rows=block)
    assert sharded.meta["shards"] == 3
    assert parquet_bytes(sharded.data) == parquet_bytes(whole.data)

    cache = Cache(tmp_path / "cache-resume")
    calls = []
    real_call = embed_module.EmbedWorker.__call__

    def fail_on_third_shard(self, texts, on_item=None):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return real_call(self, texts, on_item)

    monkeypatch.setattr(embed_module.EmbedWorker, "__call__", fail_on_third_shard)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_embed(tmp_path, tiny_encoder, table, shard_rows=block, cache=cache)
    assert len(list(ShardStore(cache, "emb-key").folder.glob("*.npy"))) == 2
    calls.clear()
    monkeypatch.setattr(embed_module.EmbedWorker, "__call__", real_call)
    resumed = run_embed(tmp_path, tiny_encoder, table, shard_rows=block, cache=cache)
    assert resumed.meta["shards_resumed"] == 2
    assert parquet_bytes(resumed.data) == parquet_bytes(whole.data)
    assert not ShardStore(cache, "emb-key").folder.exists()  # merged into the output, then dropped


def test_a_damaged_shard_file_is_recomputed_not_served(tmp_path):
    import numpy as np

    store = ShardStore(Cache(tmp_path / "cache"), "key")
    rows = range(0, 4)
    store.save(rows, np.ones((4, 2), np.float32))
    assert store.load(rows).sum() == 8
    store.path(rows).write_bytes(store.path(rows).read_bytes()[:20])
    assert store.load(rows) is None
    store.save(range(4, 6), np.ones((3, 2), np.float32))  # wrong length for its range
    assert store.load(range(4, 6)) is None


@pytest.mark.integration
def test_sharded_generate_is_byte_identical(tmp_path):
    params = tiny_params(tiny_chat_model_dir(), n=14, paraphrase={"fraction": 0.3, "per_seed": 2})
    whole = run_step(tmp_path / "whole", params, runtime=Runtime(progress=False, device="cpu"))
    sharded = run_step(tmp_path / "sharded", params, runtime=Runtime(progress=False, device="cpu", shard_rows=3))
    assert whole.data.height == 14
    assert parquet_bytes(sharded.data) == parquet_bytes(whole.data)
    assert parquet_bytes(sharded.tables["rejects"]) == parquet_bytes(whole.tables["rejects"])


def test_whole_group_ranges_never_split_a_group():
    assert whole_group_ranges([4, 4, 4, 2], 5) == [range(0, 4), range(4, 8), range(8, 12), range(12, 14)]
    assert whole_group_ranges([4, 4, 4, 2], 8) == [range(0, 8), range(8, 14)]
    assert whole_group_ranges([9, 1], 4) == [range(0, 9), range(9, 10)]  # a group larger than a shard stays whole
    assert whole_group_ranges([], 4) == []


def test_shards_decode_every_row_in_its_unsharded_batch(tmp_path, monkeypatch):
    """With a real model a row's batch-mates can flip a sampled token (rounding in batched matrix products),
    so shards are whole decoding batches of the unsharded run."""
    from synthforge.backends import transformers_llm

    decoded: list[list[tuple[int, ...]]] = []
    original = transformers_llm.TransformersLLM._generate_batch

    def recording(self, tokenizer, model, texts, requests, on_tokens=None):
        decoded[-1].append(tuple(sorted(r.seed for r in requests)))
        return original(self, tokenizer, model, texts, requests, on_tokens)

    monkeypatch.setattr(transformers_llm.TransformersLLM, "_generate_batch", recording)
    params = tiny_params(tiny_chat_model_dir(), n=14)  # batches of 4
    for name, rows in (("whole", None), ("shards of 5", 5), ("shards of 6", 6)):
        decoded.append([])
        run_step(tmp_path / name.replace(" ", "-"), params, runtime=Runtime(progress=False, device="cpu", shard_rows=rows))
    whole, *sharded = (sorted(batches) for batches in decoded)
    assert len(whole) == 4 and all(batches == whole for batches in sharded)
