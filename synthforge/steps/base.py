"""The contract every step kind implements, and the plugin-facing surface.

A plugin (docs/plugins.md) imports all it needs from here: `Step`, and the step API types
defined in `synthforge.stepapi` and re-exported below (`StepParams`, `Ref`, `FilePath`, `Labels`,
`Runtime`, `InputTable`, `StepContext`, `StepResult`, `Estimate`).

A step kind is a subclass of `Step` with:
  - `kind`: the name used in recipes (`kind: split`);
  - `version`: its code version; bump it whenever the output for the same
    params would change, so every cached output of the old code is rebuilt;
  - `Params`: a pydantic model (subclass `StepParams`) of the recipe fields.
    Fields typed `Ref` (or `Ref | None`, `list[Ref]`, `dict[str, Ref]`) name
    other steps (`train_split` or `split.train` for a named table);
    fields that change how, not what, a step computes (batch size, device,
    concurrency, API key variable names...) are declared `Field(exclude=True)`:
    they never enter the cache key (see `synthforge.keys`);
  - `tables`: names of side tables the step writes beside its main table;
  - `run(ctx) -> StepResult`.

Step modules must stay cheap to import: import torch, transformers, faiss and
friends inside `run`, never at module level (a cached build must not load them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from synthforge.stepapi import (
    FILE, REF, Estimate, FilePath, InputTable, Labels, Ref, Runtime, Seed, StepContext, StepParams, StepResult,
)

__all__ = [
    "FILE", "REF", "Estimate", "FilePath", "InputTable", "Labels", "Ref", "Runtime", "Seed", "Step", "StepContext",
    "StepParams", "StepResult",
]


class Step:
    kind: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StepParams]]
    tables: ClassVar[tuple[str, ...]] = ()
    # Whether the output depends on the seed: an unseeded step (load, embed) keys on the recipe
    # seed, so replicates share it; a seeded one gets the replicate's seed.
    seeded: ClassVar[bool] = True
    # A Params field holding the seed of held-out rows (split's test rows): under `replicates:`
    # without `vary_test` the resolver sets it to the recipe seed so those rows stay fixed.
    held_out_seed_field: ClassVar[str | None] = None
    row_parallel: ClassVar[bool] = False  # splits its rows into shards (synthforge.sharding) that workers share
    # Asks an LLM through the shared response cache: a pushed entry takes a snapshot of it along (remote.py),
    # so a rebuild elsewhere (more rows, another shard) reuses the answers.
    carries_responses: ClassVar[bool] = False
    # Records a selection in its manifest's meta (`selection_hash`, `metrics.vendi`): a build compares
    # those across diversity levels and warns (api.selection_warnings); only such entries' manifests are read.
    reports_selection: ClassVar[bool] = False

    def files_read(self, params: StepParams) -> list[Path]:
        """Files whose content enters the key (a changed file rebuilds the step)."""
        return []

    def identity(self, params: StepParams) -> dict[str, Any]:
        """Extra facts that enter the key: a backend's or packaged dataset's identity, versions of code it calls."""
        return {}

    def loads_model(self, params: StepParams) -> bool:
        """Whether a run holds a heavy model (LLM, encoder) on its device: executors run few of these at once."""
        return False

    def plan_note(self, params: StepParams) -> str | None:
        """A short estimate shown by `synthforge plan` (e.g. tokens needed)."""
        return None

    def estimate(self, params: StepParams) -> Estimate | None:
        """LLM requests and tokens a run needs at most; None for steps that ask no LLM."""
        return None

    def run(self, ctx: StepContext) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError
