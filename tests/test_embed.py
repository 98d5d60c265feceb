"""The embedder backend and the `embed` step, on a tiny BERT (MiniLM only in one integration test)."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest

from synthforge.backends.devices import pick_device
from synthforge.backends.embedder import Embedder, get_embedder, model_identity
from synthforge.cache import Cache
from synthforge.errors import UserError
from synthforge.stepapi import InputTable, Runtime, StepContext
from synthforge.steps.embed import EmbedParams, EmbedStep
from synthforge.steps.rows import embeddings_of
from tests.helpers import fixture_entry
from tests.tiny_encoder import build_tiny_encoder

TEXTS = [
    "the movie was great",
    "a dull film with a boring plot and weak acting, the worst of the year",
    "rain",
    "cats and dogs play in the garden all day long while the stock prices fell",
    "funny, warm and surprisingly moving",
]


def test_embeddings_are_unit_float32_in_input_order(tiny_encoder):
    emb = Embedder(str(tiny_encoder), device="cpu").embed(TEXTS, batch_size=2)
    assert emb.shape == (len(TEXTS), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Length-sorted batching must not reorder or change rows: embed each text alone.
    alone = np.stack([Embedder(str(tiny_encoder), device="cpu").embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(emb, alone, atol=1e-5)


def test_padding_does_not_change_an_embedding(tiny_encoder):
    embedder = get_embedder(str(tiny_encoder), "cpu")
    short = embedder.embed(["rain"])[0]
    padded_batch = embedder.embed(["rain", TEXTS[3] + " " + TEXTS[1]], batch_size=2)[0]
    np.testing.assert_allclose(short, padded_batch, atol=1e-5)


def test_max_length_truncates(tiny_encoder):
    long_a = "the movie was great " * 40 + "cats"
    long_b = "the movie was great " * 40 + "stock prices fell"
    emb = Embedder(str(tiny_encoder), device="cpu", max_length=16).embed([long_a, long_b])
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)  # the differing tail is cut


def test_model_identity_follows_weights(tmp_path, tiny_encoder):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_encoder, copy)
    assert model_identity(str(copy))["hash"] == model_identity(str(tiny_encoder))["hash"]
    other = build_tiny_encoder(tmp_path / "other", seed=1)  # same config, other weights
    assert model_identity(str(other))["hash"] != model_identity(str(tiny_encoder))["hash"]


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        Embedder(str(tmp_path / "nope"))


def test_device_auto_is_cpu_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    with pytest.raises(UserError):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"


# -- the step -------------------------------------------------------------------
def make_input(tmp_path, texts=TEXTS) -> InputTable:
    frame = pl.DataFrame({
        "id": [f"r{i}" for i in range(len(texts))], "text": texts,
        "label": ["a", "b"] * (len(texts) // 2) + ["a"] * (len(texts) % 2), "source": ["real"] * len(texts),
    })
    return InputTable(fixture_entry(tmp_path / "in", {"data": frame}))


def run_embed(tmp_path, params: EmbedParams, table: InputTable, batch_size: int | None = None):
    ctx = StepContext(
        step="emb", recipe="r", params=params, seed=0, key="k", inputs={"input": table},
        workdir=tmp_path / "work", cache=Cache(tmp_path / "cache"), runtime=Runtime(device="cpu", progress=False, batch_size=batch_size),
    )
    return EmbedStep().run(ctx)


def test_embed_step_adds_fixed_size_float32_column(tmp_path, tiny_encoder):
    table = make_input(tmp_path)
    result = run_embed(tmp_path, EmbedParams(input="load", model=str(tiny_encoder)), table, batch_size=2)
    assert result.data.schema["embedding"] == pl.Array(pl.Float32, 32)
    assert result.data.drop("embedding").equals(table.frame())
    assert result.meta["dim"] == 32 and result.meta["model_hash"] == model_identity(str(tiny_encoder))["hash"]
    direct = Embedder(str(tiny_encoder), device="cpu").embed(TEXTS)
    np.testing.assert_allclose(embeddings_of(result.data), direct, atol=1e-5)
    # round trip through parquet keeps the fixed-size float32 column
    result.data.write_parquet(tmp_path / "out.parquet")
    assert pl.read_parquet(tmp_path / "out.parquet").schema["embedding"] == pl.Array(pl.Float32, 32)


def test_embed_step_key_inputs(tiny_encoder):
    from synthforge.keys import runtime_fields

    step = EmbedStep()
    assert runtime_fields(EmbedParams) == ["batch_size"]
    files = {p.name for p in step.files_read(EmbedParams(input="x", model=str(tiny_encoder)))}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files


def test_embed_step_missing_text_column(tmp_path, tiny_encoder):
    with pytest.raises(UserError, match="no 'body' column"):
        run_embed(tmp_path, EmbedParams(input="load", model=str(tiny_encoder), text_column="body"), make_input(tmp_path))


def test_embedding_module_imports_stay_light():
    import subprocess
    import sys

    code = "import sys, synthforge.steps.embed, synthforge.steps.select, synthforge.metrics, synthforge.selection, synthforge.stats; print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.integration
def test_minilm_puts_paraphrases_closer_than_unrelated_text():
    emb = get_embedder("minilm", "cpu").embed(
        ["A wonderful, moving film.", "A beautiful and touching movie.", "Quarterly tax forms are due in April."]
    )
    assert emb.shape[1] == 384
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2]
