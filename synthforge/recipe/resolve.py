"""Turn a recipe file into validated variants: vars, matrix, interpolation, step params, refs."""

from __future__ import annotations

import functools
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from synthforge.errors import UserError, did_you_mean
from synthforge.text_tables import plural
from synthforge.recipe.fields import file_locations, map_strings, ref_fields, set_at
from synthforge.recipe.interpolate import interpolate, placeholder_names
from synthforge.recipe.model import RecipeModel
from synthforge.recipe.overrides import apply_overrides, narrowed_axes
from synthforge.recipe.yaml_lines import line_for, load_yaml_with_lines
from synthforge.steps import known_kinds, step_class
from synthforge.stepapi import SEED_LIMIT, StepParams
from synthforge.study_stats import REPLICATE_VAR
from synthforge.steps.base import Step

DEFAULT_VARIANT = "default"
MAX_VARIANTS = 10_000  # resolving is per variant: a typo'd range must not hang `plan`


@dataclass(frozen=True)
class RefTarget:
    step: str
    table: str = "data"

    def __str__(self) -> str:
        return self.step if self.table == "data" else f"{self.step}.{self.table}"


@dataclass
class ResolvedStep:
    name: str
    kind: str
    step: Step
    params: StepParams  # as written (relative file paths): what the key sees
    run_params: StepParams  # what the step runs with (absolute file paths)
    refs: dict[str, Any]  # Ref field -> RefTarget | list | dict of RefTarget | None
    files: dict[str, Path]  # "field[.sub]" -> absolute path of each file read

    @functools.cached_property
    def targets(self) -> list[tuple[str, RefTarget]]:
        """(Ref field, target) of every upstream output it reads (found once: 450 variants share a step)."""
        return _targets(self.refs)

    @functools.cached_property
    def _upstream(self) -> tuple[str, ...]:
        return tuple(sorted({t.step for _, t in self.targets}))

    def upstream(self) -> list[str]:
        return list(self._upstream)


@dataclass
class Variant:
    name: str
    matrix_values: dict[str, Any]
    variables: dict[str, Any]
    steps: dict[str, ResolvedStep]
    order: list[str]  # dependency order
    seed: int = 0  # the seed of seeded steps (replicate-specific under `replicates:`)
    base_seed: int = 0  # the recipe seed before the replicate: unseeded steps and fixed test rows use it


@dataclass
class Recipe:
    path: Path
    model: RecipeModel
    lines: dict[tuple[Any, ...], int]
    variants: list[Variant] = field(default_factory=list)
    narrowed: dict[str, Any] = field(default_factory=dict)  # matrix variables `--set` narrowed to one value
    overrides: dict[str, Any] = field(default_factory=dict)  # every `--set` (API `set=`): the recipe as not written

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def seed(self) -> int:
        """The recipe seed (of the first variant when `seed:` is a placeholder)."""
        return self.variants[0].base_seed if self.variants else 0

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def line(self, *path: Any) -> int | None:
        return line_for(self.lines, path)

    def variant(self, name: str | None) -> Variant:
        """The one variant `name` selects (the first when None); a name that selects several is an error listing them."""
        if name is None:
            return self.variants[0]
        found = self.select_variants(name)
        if len(found) > 1:
            raise UserError(f"'{name}' matches {plural(len(found), 'variant')}",
                            hint=f"name one, e.g. '{found[0].name}' (or add {_missing_pairs(name, found)})")
        return found[0]

    def select_variants(self, spec: str | None) -> list[Variant]:
        """The variants `spec` names: all for None; else each whose matrix values match every NAME=VALUE pair of
        `spec`, in any order and any subset ('t=40,replicate=0' = 'replicate=0,t=40'; 't=40' = every replicate)."""
        if spec is None or (spec == DEFAULT_VARIANT and not self.variants[0].matrix_values):
            return list(self.variants)
        names = list(self.variants[0].matrix_values)
        pairs = _variant_pairs(spec, names)
        found = [v for v in self.variants if all(_same_value(v.matrix_values[n], raw) for n, raw in pairs.items())]
        if not found:
            values = "; ".join(f"{n} is one of {', '.join(dict.fromkeys(str(v.matrix_values[n]) for v in self.variants))}" for n in pairs)
            raise UserError(f"no variant '{spec}'", hint=values)
        return found


def _variant_pairs(spec: str, names: list[str]) -> dict[str, str]:
    """'a=1, b=2' as {'a': '1', 'b': '2'}; each NAME must be a matrix variable (or replicate)."""
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or name not in names:
            hint = (did_you_mean(name, names) or f"variables: {', '.join(names)}") if names else f"the recipe has no matrix: its one variant is '{DEFAULT_VARIANT}'"
            raise UserError(f"no variant '{spec}'" if not names else f"'{part}' in variant '{spec}' names no matrix variable"
                            if sep else f"variant '{spec}' is not NAME=VALUE,...", hint=hint)
        pairs[name] = raw.strip()
    return pairs


def _same_value(value: Any, raw: str) -> bool:
    """A written value matches a matrix value as text ('0.5') or as YAML ('0.50', '1' for 1.0)."""
    if str(value) == raw:
        return True
    try:
        return yaml.safe_load(raw) == value
    except yaml.YAMLError:
        return False


def _missing_pairs(spec: str, found: list[Variant]) -> str:
    """The matrix variables that still tell `found` apart, with their first values: what to add to `spec`."""
    differing = [n for n in found[0].matrix_values if len({str(v.matrix_values[n]) for v in found}) > 1]
    return ",".join(f"{n}={found[0].matrix_values[n]}" for n in differing)


def _targets(refs: dict[str, Any]) -> list[tuple[str, RefTarget]]:
    found = []
    for name, value in refs.items():
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, RefTarget):
                found.append((name, item))
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
    return found


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None, text: str | None = None) -> Recipe:
    """Load and resolve a recipe; `text` replaces the file's content (e.g. a git revision of it)."""
    path = Path(path)
    filename = str(path)
    if text is None:
        text = read_recipe_text(path)
    data, lines = load_yaml_with_lines(text, filename)
    if not isinstance(data, dict):
        raise UserError("a recipe must be a YAML mapping", file=filename, line=1, hint="start with 'name:' and 'steps:'")
    try:
        written = RecipeModel.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, RecipeModel, filename, lines, (), data) from None
    _check_matrix_axes(written, data, filename, lines)
    overrides_given = dict(overrides or {})  # every --set, replicate included: a narrowed build merges its lockfile
    overrides = dict(overrides_given)
    replicates = _replicates_wanted(written, overrides.pop(REPLICATE_VAR, None) if written.replicates > 1 else None, filename)
    model = apply_overrides(written, overrides, filename)
    _check_variant_count(model, filename, lines)
    narrowed = {**narrowed_axes(written, overrides), **({REPLICATE_VAR: replicates[0]} if len(replicates) < model.replicates else {})}
    recipe = Recipe(path=path, model=model, lines=lines, narrowed=narrowed, overrides=dict(overrides_given))
    _check_replicate_var(recipe, overrides)
    resolved: dict[tuple[str, str], ResolvedStep] = {}  # shared by the variants a step's config does not differ in
    configs, orders = _StepConfigs(recipe), _StepOrders(recipe)
    for matrix_values in _matrix_combinations(model.matrix):
        for replicate in replicates:
            values = {**matrix_values, REPLICATE_VAR: replicate} if model.replicates > 1 else matrix_values
            variables = {**model.vars, **values}
            recipe.variants.append(_resolve_variant(recipe, values, variables, resolved, configs, orders))
    return recipe


def _replicates_wanted(model: RecipeModel, chosen: Any, filename: str) -> list[int]:
    """Every replicate, or the one `--set replicate=N` narrows to (its variants keep their names and keys)."""
    if chosen is None:
        return list(range(model.replicates))
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < model.replicates:
        raise UserError(f"replicate must be one of 0..{model.replicates - 1}, got {chosen!r}", file=filename,
                        field=f"--set {REPLICATE_VAR}", hint=f"replicates: {model.replicates} numbers them from 0")
    return [chosen]


def _check_replicate_var(recipe: Recipe, overrides: dict[str, Any]) -> None:
    if recipe.model.replicates > 1 and any(REPLICATE_VAR in names for names in (recipe.model.vars, recipe.model.matrix, overrides)):
        section = "matrix" if REPLICATE_VAR in recipe.model.matrix else "vars"
        raise UserError(
            f"'{REPLICATE_VAR}' is set by replicates: and cannot be declared", file=str(recipe.path),
            line=recipe.line(section, REPLICATE_VAR) or recipe.line("replicates"), field=f"{section}.{REPLICATE_VAR}",
            hint=f"rename the variable, or drop it and use ${{{REPLICATE_VAR}}} from replicates:",
        )


@functools.cache  # 450 variants ask for 10 replicates' seeds
def replicate_seed(base_seed: int, replicate: int) -> int:
    """Replicate 0 keeps the recipe seed (its cache is the unreplicated study's); others get an independent one:
    numpy's `SeedSequence([base_seed & 0xFFFFFFFF, replicate]).generate_state(1)[0] & 0x7FFFFFFF`."""
    if replicate == 0:
        return base_seed
    return _seed_sequence_word([base_seed & _MASK32, replicate]) & 0x7FFFFFFF


_MASK32 = 0xFFFFFFFF


def _seed_sequence_word(entropy: list[int]) -> int:
    """The first uint32 of numpy's `SeedSequence(entropy).generate_state(1)`, in plain Python: planning a
    cached build must not import numpy (~0.1 s) for two multiplications. `entropy`: uint32 words, at most 4
    (the pool size); tests/test_replicates.py checks it against numpy."""
    multiplier = 0x43B0D7E5  # numpy's INIT_A, advanced by MULT_A at every hashmix

    def hashmix(value: int) -> int:
        nonlocal multiplier
        value ^= multiplier
        multiplier = (multiplier * 0x931E8875) & _MASK32
        value = (value * multiplier) & _MASK32
        return value ^ (value >> 16)

    def mix(x: int, y: int) -> int:
        result = (0xCA01F9DD * x - 0x4973F715 * y) & _MASK32
        return result ^ (result >> 16)

    pool = [hashmix(entropy[i] if i < len(entropy) else 0) for i in range(4)]
    for source in range(4):
        for target in range(4):
            if source != target:
                pool[target] = mix(pool[target], hashmix(pool[source]))
    word = ((pool[0] ^ 0x8B51F9DD) * 0x8B51F9DD * 0x58F38DED) & _MASK32  # generate_state: INIT_B, times MULT_B
    return word ^ (word >> 16)


def _variant_seed(recipe: Recipe, variables: dict[str, Any]) -> int:
    raw = recipe.model.seed
    if isinstance(raw, str):
        try:
            raw = interpolate(raw, variables, ("seed",))
        except UserError as exc:
            raise exc.located(str(recipe.path), recipe.line("seed"), "seed") from None
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < SEED_LIMIT:
            raise UserError(
                f"seed must resolve to an integer from 0 to {SEED_LIMIT - 1}, got {raw!r}", file=str(recipe.path),
                line=recipe.line("seed"), field="seed", hint="give the variable integer values in that range",
            )
    return raw


def _check_variant_count(model: RecipeModel, filename: str, lines: dict[tuple[Any, ...], int]) -> None:
    count = math.prod(len(values) for values in model.matrix.values()) * model.replicates
    if count > MAX_VARIANTS:
        sizes = " x ".join(str(len(values)) for values in model.matrix.values())
        raise UserError(f"the matrix makes {count:,} variants ({sizes}), over the limit of {MAX_VARIANTS:,}", file=filename,
                        line=line_for(lines, ("matrix",)), field="matrix", hint="fewer values per variable, or split the study")


def _check_matrix_axes(model: RecipeModel, data: dict[str, Any], filename: str, lines: dict[tuple[Any, ...], int]) -> None:
    """A matrix variable no `${...}` uses would build identical variants: an error, not a silent success."""
    used = placeholder_names({k: v for k, v in data.items() if k not in ("vars", "matrix")})
    for name in model.matrix:
        if name not in used:
            hint = did_you_mean(name, used | set(model.vars)) or f"use it as ${{{name}}} in a step, or remove it"
            raise UserError(f"matrix variable '{name}' is not used by any ${{...}} in the recipe", file=filename,
                            line=line_for(lines, ("matrix", name)), field=f"matrix.{name}", hint=hint)


def read_recipe_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UserError("recipe file not found", file=str(path), hint="check the path") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe: {exc.__class__.__name__}", file=str(path), hint="pass a YAML file") from None


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """`--set name=value` pairs; values are parsed as YAML scalars (numbers stay numbers).

    NAME is a variable from vars: or matrix: (a matrix variable narrows the matrix to VALUE) or `seed`.
    """
    result = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set expects name=value, got '{pair}'", hint="e.g. --set per_label=32")
        result[name.strip()] = yaml.safe_load(raw) if raw else ""
    return result


def _matrix_combinations(matrix: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(matrix)
    return [dict(zip(names, combo)) for combo in itertools.product(*(matrix[n] for n in names))]


def variant_name(matrix_values: dict[str, Any]) -> str:
    if not matrix_values:
        return DEFAULT_VARIANT
    return ",".join(f"{k}={v}" for k, v in matrix_values.items())


class _StepConfigs:
    """Each step's interpolated config, made once per values of the variables it names (and held-out seed):
    the 450 variants of a study share a handful."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.names: dict[str, list[str]] = {}  # step -> the variables its config names
        self.made: dict[tuple[str, str, int | None], tuple[Any, tuple[str, str]]] = {}

    def config(self, name: str, variables: dict[str, Any], base_seed: int) -> tuple[Any, tuple[str, str]]:
        """The step's config for these variables, and the key variants sharing a ResolvedStep agree on."""
        raw = self.recipe.model.steps[name]
        names = self.names.get(name)
        if names is None:
            names = self.names[name] = sorted(placeholder_names(raw))
        fixed_seed = self.recipe.model.replicates > 1 and not self.recipe.model.vary_test
        made_of = (name, repr([variables.get(n, _UNSET) for n in names]), base_seed if fixed_seed else None)
        if made_of not in self.made:
            config = _interpolated(self.recipe, name, raw, variables)
            if fixed_seed:
                config = _fix_held_out_seed(config, base_seed)
            self.made[made_of] = config, (name, repr(config))  # YAML values: repr tells 1, 1.0, True and '1' apart
        return self.made[made_of]


_UNSET = object()  # a variable no value is given for (interpolation names it in its error)


def _interpolated(recipe: Recipe, name: str, raw: Any, variables: dict[str, Any]) -> Any:
    try:
        return interpolate(raw, variables)
    except UserError as exc:
        path = ("steps", name) + tuple(_path_of(exc.field))
        exc.field = ".".join(map(str, path))
        raise exc.located(str(recipe.path), recipe.line(*path)) from None


def _resolve_variant(recipe: Recipe, matrix_values: dict[str, Any], variables: dict[str, Any],
                     resolved: dict[tuple[str, str], ResolvedStep], configs: _StepConfigs, orders: _StepOrders) -> Variant:
    """One variant's steps; `resolved` remembers each (step, interpolated config) already validated, so
    variants that agree on a step share one ResolvedStep (validation, templates and files checked once)."""
    base_seed = _variant_seed(recipe, variables)
    replicated = recipe.model.replicates > 1
    seed = replicate_seed(base_seed, variables[REPLICATE_VAR]) if replicated else base_seed
    steps = {}
    for name in recipe.model.steps:
        config, memo = configs.config(name, variables, base_seed)
        if memo not in resolved:
            resolved[memo] = _resolve_step(recipe, name, config)
        steps[name] = resolved[memo]
    return Variant(variant_name(matrix_values), matrix_values, variables, steps, orders.order(steps), seed, base_seed)


class _StepOrders:
    """Each distinct set of ResolvedSteps has its refs checked and its dependency order found once (the
    diversity study's 450 variants have 45). Keyed by the steps' ids, which stay unique while load_recipe's `resolved`
    holds every ResolvedStep."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.made: dict[tuple[int, ...], list[str]] = {}

    def order(self, steps: dict[str, ResolvedStep]) -> list[str]:
        made_of = tuple(map(id, steps.values()))
        if made_of not in self.made:
            for step in steps.values():
                _check_refs(self.recipe, step, steps)
            self.made[made_of] = _topological_order(self.recipe, steps)
        return list(self.made[made_of])


def _fix_held_out_seed(config: Any, base_seed: int) -> Any:
    """Steps that draw held-out rows (split) keep them fixed across replicates: their seed field gets the recipe seed."""
    if not isinstance(config, dict) or "kind" not in config:
        return config
    try:
        field_name = step_class(str(config["kind"])).held_out_seed_field
    except UserError:
        return config  # reported with its location by _resolve_step
    if field_name is None or config.get(field_name) is not None:
        return config
    return {**config, field_name: base_seed}


def _path_of(field_path: str | None) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in field_path.split(".")] if field_path else []


def _resolve_step(recipe: Recipe, name: str, config: Any) -> ResolvedStep:
    filename = str(recipe.path)
    where = ("steps", name)
    if not isinstance(config, dict):
        raise UserError(
            "a step must be a mapping with a 'kind'", file=filename, line=recipe.line(*where), field=f"steps.{name}"
        )
    if "kind" not in config:
        raise UserError(
            "missing 'kind'", file=filename, line=recipe.line(*where), field=f"steps.{name}",
            hint=f"add e.g. 'kind: load' (kinds: {', '.join(known_kinds())})",
        )
    kind = str(config["kind"])
    try:
        cls = step_class(kind)
    except UserError as exc:
        raise exc.located(filename, recipe.line(*where, "kind"), f"steps.{name}.kind") from None
    fields = {k: v for k, v in config.items() if k != "kind"}
    try:
        params = cls.Params.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc, cls.Params, filename, recipe.lines, where, fields) from None
    except UserError as exc:  # raised by a Params validator that knew the field
        path = where + tuple(_path_of(exc.field))
        exc.field = ".".join(map(str, path))
        raise exc.located(filename, recipe.line(*path)) from None
    refs = {f: _parse_refs(getattr(params, f)) for f in ref_fields(cls.Params)}
    files = _resolve_files(recipe, name, params)
    run_params = params
    if files:  # the step runs with absolute paths; the key keeps them as written
        absolute = fields
        for label, path in files.items():
            absolute = set_at(absolute, tuple(_path_of(label)), str(path))
        run_params = cls.Params.model_validate(absolute)
    return ResolvedStep(name, kind, cls(), params, run_params, refs, files)


def _parse_refs(value: Any) -> Any:
    if value is None:
        return None

    def parse(text: str) -> RefTarget:
        step, _, table = text.partition(".")
        return RefTarget(step, table or "data")

    return map_strings(value, parse)


def _resolve_files(recipe: Recipe, name: str, params: StepParams) -> dict[str, Path]:
    files = {}
    for sub, text in file_locations(params):
        path = (recipe.path.parent / text).resolve()
        label = ".".join(map(str, sub))
        if not path.is_file():
            raise UserError(
                f"file not found: {text}",
                file=str(recipe.path),
                line=recipe.line("steps", name, *sub),
                field=f"steps.{name}.{label}",
                hint=f"paths are relative to the recipe's folder ({recipe.path.parent.resolve()})",
            )
        files[label] = path
    return files


def _check_refs(recipe: Recipe, resolved: ResolvedStep, steps: dict[str, ResolvedStep]) -> None:
    for field_name, target in resolved.targets:
        def located(message: str, hint: str) -> UserError:
            where = ("steps", resolved.name, field_name)
            return UserError(message, hint=hint, file=str(recipe.path), line=recipe.line(*where), field=".".join(where))

        if target.step not in steps:
            raise located(f"unknown input step '{target.step}'", did_you_mean(target.step, steps) or f"steps: {', '.join(steps)}")
        if target.step == resolved.name:
            raise located("a step cannot read its own output", "name an earlier step")
        upstream = steps[target.step]
        tables = ("data",) + upstream.step.tables
        if target.table not in tables:
            hint = did_you_mean(target.table, tables) or f"'{upstream.kind}' has tables: {', '.join(tables)}"
            raise located(f"step '{target.step}' has no table '{target.table}'", hint)


def _topological_order(recipe: Recipe, steps: dict[str, ResolvedStep]) -> list[str]:
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = trail[trail.index(name):] + [name]
            raise UserError(
                f"steps form a cycle: {' -> '.join(cycle)}",
                file=str(recipe.path),
                line=recipe.line("steps", name),
                field=f"steps.{name}",
                hint="a step may only read steps that do not (indirectly) read it",
            )
        state[name] = "active"
        for upstream in steps[name].upstream():
            visit(upstream, trail + [name])
        state[name] = "done"
        order.append(name)

    for name in steps:
        visit(name, [])
    return order


def validation_error(
    exc: ValidationError, model: type[BaseModel], filename: str, lines: dict[tuple[Any, ...], int], prefix: tuple,
    data: Any = None,
) -> UserError:
    """The first pydantic error as a one-line UserError with file, line, field and a fix.

    `data` is what was validated: the location keeps only the keys and indices that occur in it,
    so pydantic's internal union tags (`list[str]`, `int`...) never reach the user.
    """
    error = _deepest_of_first_field(exc.errors())
    loc = _user_loc(tuple(error["loc"]), data, error["type"])
    full = prefix + loc
    field = ".".join(map(str, full))
    line = line_for(lines, full)
    owner, field_info = _field_owner(model, loc, data)
    if error["type"] == "extra_forbidden":
        known = list(owner.model_fields) if owner else []
        hint = did_you_mean(str(loc[-1]), known) or (f"known fields: {', '.join(known)}" if known else None)
        return UserError(f"unknown field '{loc[-1]}'", file=filename, line=line, field=field, hint=hint)
    description = field_info.description if field_info is not None else None
    hint = f"expected {description}" if description else None
    if error["type"] == "missing":
        return UserError("required field is missing", file=filename, line=line, field=field, hint=hint)
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return UserError(message, file=filename, line=line, field=field, hint=hint)


def _deepest_of_first_field(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The first field's most specific error: for a union, the member that got furthest into the input."""
    first = errors[0]["loc"][:1]
    return max((e for e in errors if e["loc"][:1] == first), key=lambda e: len(e["loc"]))


def _user_loc(loc: tuple[Any, ...], data: Any, error_type: str) -> tuple[Any, ...]:
    if data is None:
        return loc
    kept: list[Any] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif error_type == "missing" and index == len(loc) - 1 and isinstance(node, dict):
            pass  # the missing field itself
        else:
            continue  # a union member's tag, a '[key]' marker: pydantic's, not the recipe's
        kept.append(part)
    return tuple(kept)


def _field_owner(model: type[BaseModel], loc: tuple[Any, ...], data: Any = None) -> tuple[type[BaseModel] | None, Any]:
    """Walk nested models along `loc`: the model that owns the last field, and that field's info.

    A model with a `model_for(data)` classmethod (a backend block) names the class its data validates with.
    A part the model does not declare (a free-form mapping's key, an unknown field) keeps the model, so the
    values of `variables: {name: {file: ...}}` still find theirs."""
    owner: type[BaseModel] | None = model
    parent, info = model, None
    node = data
    for part in loc:
        node = _child(node, part)
        if owner is None or not isinstance(part, str):
            continue  # list indices, values of fields that hold no model
        if part not in owner.model_fields:
            parent, info = owner, None
            continue
        parent, info = owner, owner.model_fields[part]
        owner = _model_in(info.annotation)
        if owner is not None and hasattr(owner, "model_for"):
            owner = owner.model_for(node)
    return parent, info


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
