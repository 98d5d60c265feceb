"""`${var}` interpolation in step configs."""

from __future__ import annotations

import re
from typing import Any

from synthforge.errors import UserError, did_you_mean

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
ESCAPED = "$${"


def interpolate(value: Any, variables: dict[str, Any], path: tuple[Any, ...] = ()) -> Any:
    """Replace `${name}` in every string; a string that is only `${name}` keeps the value's type.

    `$${` stands for a literal `${`. Errors carry the field path (the caller adds file/line).
    """
    if isinstance(value, dict):
        return {k: interpolate(v, variables, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables, path + (i,)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = PLACEHOLDER.fullmatch(value)
    if whole and not value.startswith(ESCAPED):
        return _lookup(whole.group(1), variables, path)
    parts = value.split(ESCAPED)
    return "${".join(PLACEHOLDER.sub(lambda m: str(_lookup(m.group(1), variables, path)), part) for part in parts)


def placeholder_names(value: Any) -> set[str]:
    """Every variable name a `${name}` inside `value` (nested lists and dicts) refers to."""
    if isinstance(value, dict):
        return set().union(*(placeholder_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholder_names(v) for v in value))
    if not isinstance(value, str):
        return set()
    return {m.group(1).strip() for part in value.split(ESCAPED) for m in PLACEHOLDER.finditer(part)}


def _lookup(name: str, variables: dict[str, Any], path: tuple[Any, ...]) -> Any:
    name = name.strip()
    if name in variables:
        return variables[name]
    field = ".".join(map(str, path))
    if not name:
        raise UserError("empty placeholder '${}'", field=field, hint="write ${name} with a variable from vars: or matrix:")
    hint = did_you_mean(name, variables) or (
        f"declare it under vars: (known: {', '.join(sorted(variables))})" if variables else "declare it under vars:"
    )
    raise UserError(f"unknown variable '${{{name}}}'", field=field, hint=hint)
