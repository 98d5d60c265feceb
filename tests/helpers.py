"""Fixture entries and contexts for step tests (no builder needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from synthforge.cache import Cache, write_entry_files
from synthforge.keys import key_of
from synthforge.stepapi import InputTable, Runtime, StepContext


def fixture_entry(folder: Path, tables: dict[str, pl.DataFrame], step: str = "fixture") -> Path:
    """An entry folder written the way the builder writes one (tables + sealed manifest), outside any cache."""
    folder.mkdir(parents=True, exist_ok=True)
    components = {"fixture": step, "folder": folder.name}
    write_entry_files(folder, tables, key=key_of(components), step=step, kind="fixture", components=components,
                      timings={"started": 0.0, "seconds": 0.0})
    return folder


def write_entry(root: Path, name: str, frame: pl.DataFrame) -> InputTable:
    """A fixture entry `root/name` holding `frame` as its data table, as an InputTable."""
    return InputTable(fixture_entry(root / name, {"data": frame}, step=name))


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
