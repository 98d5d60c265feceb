"""Prompt templates: jinja2 in a sandbox, with undefined variables as user errors."""

from __future__ import annotations

from typing import Any

from synthforge.errors import UserError


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    # Recipes may come from anyone: the sandbox blocks attribute access to internals.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)


class PromptTemplate:
    def __init__(self, source: str, field: str):
        from jinja2 import TemplateSyntaxError

        self.field = field
        try:
            self._template = _environment().from_string(source)
        except TemplateSyntaxError as exc:
            raise UserError(f"template syntax error on line {exc.lineno}: {exc.message}", field=field) from None

    def render(self, variables: dict[str, Any]) -> str:
        from jinja2 import TemplateError, UndefinedError
        from jinja2.sandbox import SecurityError

        try:
            return self._template.render(**variables).strip()
        except UndefinedError as exc:
            known = ", ".join(sorted(variables))
            raise UserError(f"undefined variable: {exc.message}", field=self.field, hint=f"variables available: {known}") from None
        except SecurityError as exc:
            raise UserError(f"unsafe template: {exc}", field=self.field) from None
        except TemplateError as exc:
            raise UserError(f"template error: {exc}", field=self.field) from None
