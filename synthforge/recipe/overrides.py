"""`--set NAME=VALUE` on a validated recipe: set a variable, narrow a matrix axis, or set the seed."""

from __future__ import annotations

from typing import Any

from synthforge.errors import UserError, did_you_mean
from synthforge.recipe.model import RecipeModel
from synthforge.stepapi import SEED_LIMIT


def apply_overrides(model: RecipeModel, overrides: dict[str, Any], filename: str) -> RecipeModel:
    """The recipe with `overrides` applied; a name that is no variable (nor `seed`) is an error.

    A matrix variable is narrowed to the one value given (its variants keep their names, so
    they share keys and the lockfile with the full matrix); any other variable takes the value.
    """
    if not overrides:
        return model
    update: dict[str, Any] = {"vars": dict(model.vars), "matrix": dict(model.matrix)}
    for name, value in overrides.items():
        field = f"--set {name}"
        if name == "seed":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < SEED_LIMIT:
                raise UserError(f"the seed must be an integer from 0 to {SEED_LIMIT - 1}, got {value!r}",
                                file=filename, field=field, hint="e.g. --set seed=7")
            update["seed"] = value
        elif name in model.matrix:
            update["matrix"][name] = [value]
        elif name in model.vars:
            update["vars"][name] = value
        else:
            known = sorted({*model.vars, *model.matrix, "seed"})
            raise UserError(f"no variable '{name}' in the recipe", file=filename, field=field,
                            hint=did_you_mean(name, known) or f"variables: {', '.join(known)}")
    return model.model_copy(update=update)


def narrowed_axes(model: RecipeModel, overrides: dict[str, Any]) -> dict[str, Any]:
    """Matrix variables that `overrides` narrowed to one value."""
    return {name: value for name, value in (overrides or {}).items() if name in model.matrix}
