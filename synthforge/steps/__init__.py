"""Step kinds, one module each, imported only when a recipe uses them."""

from __future__ import annotations

import importlib
import os

from synthforge.errors import UserError, did_you_mean
from synthforge.steps.base import Step

# kind -> "module:Class". Add a line here to register a new step kind.
STEP_KINDS: dict[str, str] = {
    "load": "synthforge.steps.load:LoadStep",
    "split": "synthforge.steps.split:SplitStep",
    "generate": "synthforge.steps.generate:GenerateStep",
    "embed": "synthforge.steps.embed:EmbedStep",
    "select": "synthforge.steps.select:SelectStep",
    "mix": "synthforge.steps.mix:MixStep",
    "train": "synthforge.steps.train:TrainStep",
}


def register(kind: str, target: str) -> None:
    """Add a step kind ("module:Class"); plugins call this when imported."""
    STEP_KINDS[kind] = target


def _load_plugins() -> None:
    """Import the modules named in $SYNTHFORGE_PLUGINS (comma-separated) so they can register kinds."""
    for module in filter(None, (m.strip() for m in os.environ.get("SYNTHFORGE_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"cannot import plugin module '{module}': {exc}", field="SYNTHFORGE_PLUGINS") from None


def step_class(kind: str) -> type[Step]:
    if kind not in STEP_KINDS:
        _load_plugins()
    if kind not in STEP_KINDS:
        raise UserError(
            f"unknown step kind '{kind}'",
            hint=did_you_mean(kind, STEP_KINDS) or f"known kinds: {', '.join(sorted(STEP_KINDS))}",
        )
    module, _, name = STEP_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
