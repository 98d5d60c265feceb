"""Helpers for LLM-step tests (generate, judge): contexts built directly, fixture entries, params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthforge.cache import Cache
from synthforge.stepapi import InputTable, Runtime, StepContext
from synthforge.steps.generate import GenerateStep


def write_entry(folder: Path, rows: list[dict[str, Any]]) -> InputTable:
    """A tiny fixture entry holding `rows` to feed a step as input."""
    import polars as pl

    from tests.helpers import fixture_entry

    return InputTable(fixture_entry(folder, {"data": pl.DataFrame(rows)}))


def make_ctx(root: Path, params: dict[str, Any], *, seed: int = 0, inputs: dict[str, Any] | None = None,
             step: str = "gen", runtime: Runtime | None = None, kind: type = GenerateStep) -> StepContext:
    """A context for a step of `kind` (an LLM step: generate by default, or judge)."""
    return StepContext(
        step=step,
        recipe="test",
        params=kind.Params.model_validate(params),
        seed=seed,
        key="test-key",
        inputs=inputs or {},
        workdir=root / "work",
        cache=Cache(root / "cache"),
        runtime=runtime or Runtime(progress=False),
        log=lambda message: None,
    )


def run_step(root: Path, params: dict[str, Any], **kwargs):
    return GenerateStep().run(make_ctx(root, params, **kwargs))


def openai_params(base_url: str, n: int, **overrides: Any) -> dict[str, Any]:
    backend = {"type": "openai", "base_url": base_url, "model": "fake-model", "backoff_s": 0.01, "max_retries": 4,
               "timeout_s": 5, **overrides.pop("backend", {})}
    return {
        "n": n,
        "labels": {"positive": "a happy review", "negative": "an unhappy review"},
        "variables": {"topic": ["food", "travel", "music", "sports", "books"], "style": ["short", "formal"]},
        "template": "Write a {{ style }} {{ label }} review ({{ label_description }}) about {{ topic }}.",
        "backend": backend,
        **overrides,
    }
