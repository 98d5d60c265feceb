"""Prompt templates: jinja2 in a sandbox, with undefined variables as user errors and bounded output."""

from __future__ import annotations

from typing import Any

from synthforge.errors import UserError, did_you_mean

MAX_PROMPT_CHARS = 200_000  # a rendered prompt (system or user message) longer than this is a recipe mistake


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment, SecurityError

    class BoundedSandbox(SandboxedEnvironment):
        """The sandbox, also refusing `'x' * 10**9`, `9 ** 9 ** 9` and calls with huge sizes."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*" and _repeat_size(left, right) > MAX_PROMPT_CHARS:
                raise SecurityError(f"'*' would build more than {MAX_PROMPT_CHARS:,} items")
            if operator == "**" and _power_bits(left, right) > 100_000:
                raise SecurityError("'**' result too large")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
            if any(isinstance(a, int) and abs(a) > MAX_PROMPT_CHARS for a in (*args, *kwargs.values())):
                raise SecurityError(f"a call argument over {MAX_PROMPT_CHARS:,}")
            return super().call(__context, __obj, *args, **kwargs)

    # Recipes may come from anyone: the sandbox blocks attribute access to internals.
    environment = BoundedSandbox(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    environment.filters = {name: _bounded_filter(f, SecurityError) for name, f in environment.filters.items()}
    return environment


def _bounded_filter(filter_function, error: type[Exception]):
    """A filter refusing huge size arguments (`center(10**9)`, `indent(10**9)`): filters bypass the sandbox's call()."""
    import functools

    skip = 2 if hasattr(filter_function, "jinja_pass_arg") else 1  # (context or environment,) value

    @functools.wraps(filter_function)  # keeps jinja's pass_context / pass_environment marker
    def bounded(*args, **kwargs):
        if any(isinstance(a, int) and abs(a) > MAX_PROMPT_CHARS for a in (*args[skip:], *kwargs.values())):
            raise error(f"a filter argument over {MAX_PROMPT_CHARS:,}")
        return filter_function(*args, **kwargs)

    return bounded


def _repeat_size(left: Any, right: Any) -> int:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
            return len(seq) * count
    return 0


def _power_bits(base: Any, exponent: Any) -> float:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        return abs(base).bit_length() * exponent
    return 0


def _parse(source: str, field: str):
    from jinja2 import TemplateSyntaxError

    environment = _environment()
    try:
        return environment, environment.parse(source)
    except TemplateSyntaxError as exc:
        raise UserError(f"template syntax error on line {exc.lineno}: {exc.message}", field=field) from None


def check_template(source: str, field: str, provided: set[str]) -> None:
    """Fail now, not mid-build: a syntax error, or a variable the step will not provide."""
    from jinja2 import meta

    environment, ast = _parse(source, field)
    unknown = sorted(meta.find_undeclared_variables(ast) - provided - set(environment.globals))
    if unknown:
        hint = did_you_mean(unknown[0], provided) or f"this template gets: {', '.join(sorted(provided))}"
        raise UserError(f"template uses '{unknown[0]}', which this step does not provide", field=field, hint=hint)


class PromptTemplate:
    def __init__(self, source: str, field: str):
        self.field = field
        environment, ast = _parse(source, field)
        self._template = environment.from_string(ast)

    def render(self, variables: dict[str, Any]) -> str:
        from jinja2 import UndefinedError
        from jinja2.sandbox import SecurityError

        try:
            return self._bounded_render(variables).strip()
        except UndefinedError as exc:
            known = ", ".join(sorted(variables))
            raise UserError(f"undefined variable: {exc.message}", field=self.field, hint=f"variables available: {known}") from None
        except SecurityError as exc:
            raise UserError(f"unsafe template: {exc}", field=self.field) from None
        except UserError:
            raise
        except Exception as exc:  # the template is the user's code: any failure in it is theirs to fix
            first = (str(exc).splitlines() or [""])[0][:200]
            raise UserError(f"template error: {type(exc).__name__}: {first}", field=self.field) from None

    def _bounded_render(self, variables: dict[str, Any]) -> str:
        parts, size = [], 0
        for chunk in self._template.generate(**variables):
            size += len(chunk)
            if size > MAX_PROMPT_CHARS:
                raise UserError(f"rendered prompt is longer than {MAX_PROMPT_CHARS:,} characters", field=self.field,
                                hint="shorten the template, its variables or few_shot_k")
            parts.append(chunk)
        return "".join(parts)
