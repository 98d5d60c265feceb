"""Registries of things other packages may add: step kinds and LLM backends (docs/plugins.md).

A registry maps a name (`kind: shout`, `backend: {type: echo}`) to a "module:attr" target, imported
only when a recipe names it. Built-ins are listed in code; a name not there is looked up, on first
use, in the modules named by $SYNTHFORGE_PLUGINS (comma-separated; imported, they call `register`)
and in the installed packages' entry points of the registry's group (`synthforge.steps`,
`synthforge.backends`), as the `llm` tool finds its plugins. A built-in or registered name wins over
an entry point of the same name.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from synthforge.errors import UserError, did_you_mean

PLUGINS_VARIABLE = "SYNTHFORGE_PLUGINS"


def import_plugin_modules() -> None:
    """Import the modules named in $SYNTHFORGE_PLUGINS so they can register what they provide."""
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"cannot import plugin module '{module}': {exc}", field=PLUGINS_VARIABLE) from None


class Registry:
    """Names to "module:attr" targets for one entry-point group; `what` ("step kind") names a member in errors."""

    def __init__(self, group: str, what: str, builtin: dict[str, str]):
        self.group = group
        self.what = what
        self.plural = what.rsplit(" ", 1)[-1] + "s"  # "kinds", "types": the hint's "known kinds: ..."
        self.targets = dict(builtin)  # name -> "module:attr", in the order hints list them

    def register(self, name: str, target: str) -> None:
        self.targets[name] = target

    def find_plugins(self) -> None:
        """Add what $SYNTHFORGE_PLUGINS modules register and what installed entry points name."""
        from importlib.metadata import entry_points  # ~30 ms to import: only when a name is not built in

        import_plugin_modules()
        for point in sorted(entry_points(group=self.group), key=lambda p: p.name):
            self.targets.setdefault(point.name, point.value)

    def names(self) -> list[str]:
        """Every known name, plugins included (for hints)."""
        self.find_plugins()
        return list(self.targets)

    def load(self, name: str) -> Any:
        """The object registered under `name`; an unknown name is a UserError listing the known ones."""
        if name not in self.targets:
            self.find_plugins()
        if name not in self.targets:
            raise UserError(f"unknown {self.what} '{name}'", hint=did_you_mean(name, self.targets)
                            or f"known {self.plural}: {', '.join(sorted(self.targets))}")
        module, _, attribute = self.targets[name].partition(":")
        loaded = getattr(sys.modules.get(module), attribute, None)  # 450 variants ask 4,000 times: no import machinery
        if loaded is not None:
            return loaded
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"cannot load {self.what} '{name}' from '{self.targets[name]}': {exc}",
                            hint="check the plugin's entry point or register() call") from None
