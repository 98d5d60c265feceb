"""Step kinds, one module each, imported only when a recipe uses them."""

from __future__ import annotations

import importlib

from synthforge.errors import UserError, did_you_mean
from synthforge.steps.base import Step

# kind -> "module:Class". Add a line here to register a new step kind.
STEP_KINDS: dict[str, str] = {
    "load": "synthforge.steps.load:LoadStep",
    "split": "synthforge.steps.split:SplitStep",
}


def step_class(kind: str) -> type[Step]:
    if kind not in STEP_KINDS:
        raise UserError(
            f"unknown step kind '{kind}'",
            hint=did_you_mean(kind, STEP_KINDS) or f"known kinds: {', '.join(sorted(STEP_KINDS))}",
        )
    module, _, name = STEP_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
