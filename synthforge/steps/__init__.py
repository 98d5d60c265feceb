"""Step kinds, one module each, imported only when a recipe uses them.

Plugins add kinds through the `synthforge.steps` entry-point group or $SYNTHFORGE_PLUGINS modules
that call `register` (see synthforge.plugins and docs/plugins.md).
"""

from __future__ import annotations

from synthforge.plugins import Registry
from synthforge.steps.base import Step

# kind -> "module:Class". Add a line here to register a new step kind.
KINDS = Registry("synthforge.steps", "step kind", {
    "load": "synthforge.steps.load:LoadStep",
    "split": "synthforge.steps.split:SplitStep",
    "generate": "synthforge.steps.generate:GenerateStep",
    "judge": "synthforge.steps.judge:JudgeStep",
    "embed": "synthforge.steps.embed:EmbedStep",
    "select": "synthforge.steps.select:SelectStep",
    "mix": "synthforge.steps.mix:MixStep",
    "train": "synthforge.steps.train:TrainStep",
})
STEP_KINDS: dict[str, str] = KINDS.targets  # the kinds known so far (plugins appear once looked up)


def register(kind: str, target: str) -> None:
    """Add a step kind ("module:Class"); plugin modules named in $SYNTHFORGE_PLUGINS call this when imported."""
    KINDS.register(kind, target)


def step_class(kind: str) -> type[Step]:
    return KINDS.load(kind)


def known_kinds() -> list[str]:
    """Every step kind, plugins included (for hints)."""
    return KINDS.names()
