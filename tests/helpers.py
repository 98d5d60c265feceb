"""Fixture entries and contexts for step tests (no builder needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from synthforge.cache import Cache
from synthforge.steps.base import InputTable, Runtime, StepContext


def write_entry(root: Path, name: str, frame: pl.DataFrame, key: str | None = None) -> InputTable:
    """A cache-entry-like folder with data.parquet and a manifest, as an InputTable."""
    entry = root / name
    entry.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(entry / "data.parquet")
    manifest = {"key": key or f"{name}-key-0123456789abcdef", "step": name, "meta": {}}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    return InputTable(entry)


def rows(prefix: str, labels: dict[str, int], source: str) -> pl.DataFrame:
    """`n` rows per label with ids `<prefix>-<label>-<i>`."""
    records = [
        {"id": f"{prefix}-{label}-{i}", "text": f"{label} text {i}", "label": label, "source": source}
        for label, n in labels.items()
        for i in range(n)
    ]
    return pl.DataFrame(records, schema={"id": pl.String, "text": pl.String, "label": pl.String, "source": pl.String})


def make_ctx(step_cls, tmp: Path, inputs: dict[str, Any], seed: int = 0, **params) -> tuple[Any, StepContext]:
    step = step_cls()
    workdir = tmp / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(
        step=step_cls.kind,
        recipe="test",
        params=step_cls.Params(**params, **{k: f"{k}_step" for k, v in inputs.items() if v is not None}),
        seed=seed,
        key="k" * 32,
        inputs=inputs,
        workdir=workdir,
        cache=Cache(tmp / "cache"),
        runtime=Runtime(progress=False),
        log=lambda message: None,
    )
    return step, ctx
