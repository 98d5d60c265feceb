"""`synthforge tune`: search a `generate` step's settings until the pool it makes meets declared targets.

A search = a step, a space (fields of the step with ranges or choices), targets (constraints such as
`vendi >= 20` and objectives such as `maximize label_agreement`) and a probe size. Optuna proposes the
settings (TPE; NSGA-II for two or more objectives); each probe is the recipe with the step's fields set and
`n` = probe rows, built by the ordinary builder up to the measured step and the reference, so a probe is an
ordinary cached step (its key follows the key rules) and one already built, by this search or any other
build, costs nothing. Its metrics come from `stats.entry_stats` (a derived record). The study lives in
`cache/shared/tune/<search key>.sqlite`: a killed search resumes where it stopped and recomputes no probe.
Optuna is imported inside functions only.
"""

from __future__ import annotations

import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from synthforge.errors import UserError, did_you_mean
from synthforge.text_tables import plural

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.api import OpenRecipe
    from synthforge.metric_registry import Interval
    from synthforge.recipe.resolve import Recipe

TUNE_VERSION = 1  # bump when what a probe measures or how a study is keyed changes
RUNTIME_FIELDS_NOTE = "runtime-only fields never change the output"

# Metric ranges by definition, to refuse a target no pool can reach ("rows": the probe's row count).
_BOUNDS: dict[str, tuple[float, float | str]] = {
    "vendi": (1.0, "rows"), "dcscore": (1.0, "rows"), "mean_cosine_distance": (0.0, 2.0), "cluster_entropy": (0.0, 1.0),
    "distinct_1": (0.0, 1.0), "distinct_2": (0.0, 1.0), "nn_real_similarity": (-1.0, 1.0), "mmd_rbf": (0.0, math.inf),
    "frechet": (0.0, math.inf), "label_agreement": (0.0, 1.0), "prdc_precision": (0.0, 1.0), "prdc_recall": (0.0, 1.0),
    "prdc_density": (0.0, math.inf), "prdc_coverage": (0.0, 1.0), "fidelity_observed": (0.0, 1.0),
    "fidelity_corrected": (0.0, 1.0), "judge_pass_rate": (0.0, 1.0),
}
NEEDS_REFERENCE = frozenset({"nn_real_similarity", "mmd_rbf", "frechet", "label_agreement", "prdc_precision",
                             "prdc_recall", "prdc_density", "prdc_coverage"})
NEEDS_JUDGE = frozenset({"fidelity_observed", "fidelity_corrected"})
NEEDS_LLM_JUDGE = frozenset({"judge_pass_rate"})
WILSON_METRICS = frozenset({"label_agreement", "fidelity_observed", "judge_pass_rate"})  # shares of the rows
_TARGET = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=)\s*(?P<bound>[-+0-9.eE]+)\s*$")
_GOAL = re.compile(r"^\s*(?P<goal>maximi[sz]e|minimi[sz]e|max|min)\s+(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*$")


def tunable_metrics() -> tuple[str, ...]:
    """Metric names a target may name: every diversity, shift and coverage metric `stats` measures, label
    agreement, the oracle judge's fidelity and an LLM judge's pass rate (aliases such as `coverage` resolve
    through the metric registry)."""
    from synthforge.metric_registry import names

    return tuple(name for name in names("diversity", "shift", "coverage", "fidelity") if name in _BOUNDS)


# -- the search's declaration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    """Where a piece of the search was declared (a recipe line, or a command-line option)."""

    file: str | None
    line: int | None
    field: str

    def error(self, message: str, hint: str | None = None) -> UserError:
        return UserError(message, file=self.file, line=self.line, field=self.field, hint=hint)


@dataclass(frozen=True)
class Dimension:
    """One field of the step to search: a float or integer range, or a list of choices."""

    field: str  # dotted path into the step's config, e.g. temperature, paraphrase.fraction, variables.topic
    low: float | None = None
    high: float | None = None
    integer: bool = False
    log: bool = False
    choices: tuple[Any, ...] = ()
    where: Where = Where(None, None, "")

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return self.choices[trial.suggest_categorical(self.field, list(range(len(self.choices))))]
        if self.integer:
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log)
        # 4 significant digits: the value a recipe pins is the value the probe ran (one key), and reads well
        return float(f"{trial.suggest_float(self.field, float(self.low), float(self.high), log=self.log):.4g}")

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.choices else [self.low, self.high]

    def describe(self) -> str:
        if self.choices:
            return f"{self.field} in {list(self.choices)}"
        return f"{self.field} in {self.low}..{self.high}" + (" (log)" if self.log else "")

    def identity(self) -> dict[str, Any]:
        return {"field": self.field, "low": self.low, "high": self.high, "integer": self.integer, "log": self.log,
                "choices": list(self.choices)}


@dataclass(frozen=True)
class Target:
    """A constraint (`metric >= bound`, `metric <= bound`) or an objective (`maximize metric`)."""

    metric: str
    op: str  # ">=", "<=", "max", "min"
    bound: float | None = None
    where: Where = Where(None, None, "")

    @property
    def is_constraint(self) -> bool:
        return self.op in (">=", "<=")

    def violation(self, value: float) -> float:
        """How far `value` misses the constraint (<= 0: met), the form Optuna's constraints_func takes."""
        return self.bound - value if self.op == ">=" else value - self.bound

    def relative_miss(self, value: float) -> float:
        return max(0.0, self.violation(value)) / max(abs(self.bound), 1e-9)

    def __str__(self) -> str:
        if self.is_constraint:
            return f"{self.metric} {self.op} {self.bound:g}"
        return f"{'maximize' if self.op == 'max' else 'minimize'} {self.metric}"


@dataclass(frozen=True)
class Search:
    """Everything a search is: the step, what it measures against, the space, the targets and its size."""

    step: str
    space: tuple[Dimension, ...]
    targets: tuple[Target, ...]
    reference: str | None = None  # the step (or step.table) of real rows the shift metrics compare to
    embed: str | None = None  # the step that embeds the probe's rows; None: stats embeds them with `model`
    judge: str | None = None  # real held-out labelled rows (step or step.table): the oracle judge's training pool
    llm_judge: str | None = None  # a `judge` step reading the tuned step: its pass rate on each probe's rows
    pass_score: int | None = None  # with an integer-scale llm_judge: the lowest score that passes
    probe_rows: int = 40
    probes: int = 20
    seed: int = 0
    model: str = "minilm"
    max_requests: int | None = None
    max_tokens: int | None = None

    @property
    def constraints(self) -> list[Target]:
        return [t for t in self.targets if t.is_constraint]

    @property
    def objectives(self) -> list[Target]:
        return [t for t in self.targets if not t.is_constraint]

    @property
    def measured_step(self) -> str:
        return self.embed or self.step


def parse_target(text: str, where: Where) -> Target:
    """`vendi >= 20`, `mmd_rbf <= 0.02`, `maximize label_agreement` (or `minimize frechet`)."""
    text = str(text)
    found = _TARGET.match(text)
    if found:
        try:
            bound = float(found["bound"])
        except ValueError:
            raise where.error(f"'{found['bound']}' is not a number in target '{text}'", hint="e.g. 'vendi >= 20'") from None
        return _known_metric(Target(found["metric"], found["op"], bound, where))
    found = _GOAL.match(text)
    if found:
        return _known_metric(Target(found["metric"], "max" if found["goal"].startswith("max") else "min", None, where))
    raise where.error(f"cannot read target '{text}'",
                      hint="write METRIC >= NUMBER, METRIC <= NUMBER, 'maximize METRIC' or 'minimize METRIC'")


def _known_metric(target: Target) -> Target:
    from dataclasses import replace

    from synthforge.metric_registry import resolve

    where = target.where
    return replace(target, metric=resolve(target.metric, tunable_metrics(), file=where.file, line=where.line,
                                          field=where.field, what="to tune for"))


def parse_dimension(name: str, spec: Any, where: Where) -> Dimension:
    """A range `{low: 0.2, high: 1.4}` (`log: true`; integers when both ends are), a string `0.2..1.4`, or
    choices `{choices: [0, 2, 4]}` (any YAML values, e.g. lists of topics)."""
    if isinstance(spec, str) and ".." in spec:
        low, _, high = spec.partition("..")
        spec = {"low": _scalar(low), "high": _scalar(high)}
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise where.error(f"cannot read the range of '{name}': {spec!r}",
                          hint="write {low: A, high: B}, 'A..B' or {choices: [...]}")
    unknown = sorted(set(spec) - {"low", "high", "log", "choices"})
    if unknown:
        raise where.error(f"unknown key '{unknown[0]}' in the range of '{name}'", hint="keys: low, high, log, choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices or set(spec) - {"choices"}:
            raise where.error(f"'{name}': choices must be a non-empty list (and alone)", hint="e.g. {choices: [0, 2, 4]}")
        return Dimension(name, choices=tuple(_frozen(c) for c in choices), where=where)
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or low >= high:
        raise where.error(f"'{name}' needs numbers low < high, got low={low!r}, high={high!r}", hint="e.g. {low: 0.2, high: 1.4}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise where.error(f"'{name}': a log range needs low > 0, got {low}")
    return Dimension(name, low, high, integer=isinstance(low, int) and isinstance(high, int), log=log, where=where)


def _scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text.strip())


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _thawed(value: Any) -> Any:
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


def search_from(recipe: "Recipe", step: str, *, targets: typing.Sequence[str] = (), space: typing.Sequence[str] = (),
                reference: str | None = None, embed: str | None = None, judge: str | None = None,
                llm_judge: str | None = None, pass_score: int | None = None, probe_rows: int | None = None,
                probes: int | None = None, seed: int | None = None, model: str | None = None,
                max_requests: int | None = None, max_tokens: int | None = None) -> Search:
    """The search for `step`: the recipe's `tune:` block for it, with anything given here replacing its part
    (targets and space given here replace the recipe's lists; `space` items are `FIELD=LOW..HIGH` or `FIELD=A,B,C`)."""
    file = str(recipe.path)
    if step not in recipe.model.steps:
        raise UserError(f"no step '{step}' in {file}", hint=did_you_mean(step, recipe.model.steps) or
                        f"steps: {', '.join(recipe.model.steps)}")
    kind = recipe.model.steps[step].get("kind")
    if kind != "generate":
        raise UserError(f"step '{step}' is a {kind} step; tune searches the settings of a generate step",
                        file=file, line=recipe.line("steps", step), field=f"steps.{step}")
    block = recipe.model.tune.get(step) or {}
    if not isinstance(block, dict):
        raise UserError("a tune block is a mapping", file=file, line=recipe.line("tune", step), field=f"tune.{step}")
    allowed = {"targets", "space", "reference", "embed", "judge", "llm_judge", "pass_score", "probe_rows", "probes",
               "seed", "model", "budget", "pinned"}
    for name in block:
        if name not in allowed:
            raise UserError(f"unknown key '{name}'", file=file, line=recipe.line("tune", step, name), field=f"tune.{step}.{name}",
                            hint=did_you_mean(name, allowed) or f"keys: {', '.join(sorted(allowed))}")

    def at(*path: Any) -> Where:
        return Where(file, recipe.line("tune", step, *path), ".".join(map(str, ("tune", step, *path))))

    if targets:
        parsed_targets = [parse_target(t, Where(None, None, "--target")) for t in targets]
    else:
        written = block.get("targets") or []
        if not isinstance(written, list):
            raise at("targets").error("targets is a list", hint="e.g. ['vendi >= 20', 'maximize label_agreement']")
        parsed_targets = [parse_target(t, at("targets", i)) for i, t in enumerate(written)]
    if space:
        parsed_space = [_dimension_option(item) for item in space]
    else:
        written = block.get("space") or {}
        if not isinstance(written, dict):
            raise at("space").error("space is a mapping of step fields to ranges or choices", hint="e.g. temperature: 0.2..1.4")
        parsed_space = [parse_dimension(str(name), spec, at("space", name)) for name, spec in written.items()]
    budget = block.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"max_requests", "max_tokens"}:
        raise at("budget").error("budget is a mapping of max_requests and max_tokens", hint="e.g. budget: {max_requests: 1000}")
    for name, value in budget.items():
        _whole(value, at("budget", name), minimum=0)
    if not isinstance(seed if seed is not None else block.get("seed", 0), int):
        raise at("seed").error(f"the seed must be an integer, got {block.get('seed')!r}")
    search = Search(
        step=step, space=tuple(parsed_space), targets=tuple(parsed_targets),
        reference=reference or block.get("reference"), embed=embed or block.get("embed"), judge=judge or block.get("judge"),
        llm_judge=llm_judge or block.get("llm_judge"),
        pass_score=pass_score if pass_score is not None else block.get("pass_score"),
        probe_rows=_whole(probe_rows if probe_rows is not None else block.get("probe_rows", 40), at("probe_rows")),
        probes=_whole(probes if probes is not None else block.get("probes", 20), at("probes")),
        seed=int(seed if seed is not None else block.get("seed", 0)), model=model or block.get("model", "minilm"),
        max_requests=max_requests if max_requests is not None else budget.get("max_requests", recipe.model.budget.max_requests),
        max_tokens=max_tokens if max_tokens is not None else budget.get("max_tokens", recipe.model.budget.max_tokens),
    )
    check_search(recipe, search, at)
    return search


def _whole(value: Any, where: Where, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(f"must be an integer of at least {minimum}, got {value!r}")
    return value


def _dimension_option(item: str) -> Dimension:
    name, sep, spec = str(item).partition("=")
    where = Where(None, None, "--space")
    if not sep or not name.strip():
        raise where.error(f"cannot read '{item}'", hint="write FIELD=LOW..HIGH or FIELD=A,B,C, e.g. temperature=0.2..1.4")
    spec = spec.strip()
    value = spec if ".." in spec else {"choices": [_scalar(v) for v in spec.split(",")]}
    return parse_dimension(name.strip(), value, where)


def check_search(recipe: "Recipe", search: Search, at: Callable[..., Where]) -> None:
    """Refuse, before any probe, a search that cannot run: no target or space, unknown or runtime-only fields,
    steps that do not exist, targets that contradict each other or that no pool can reach."""
    from synthforge.steps import step_class

    if not search.targets:
        raise at("targets").error("the search has no targets", hint="e.g. targets: ['vendi >= 20'] or --target 'vendi >= 20'")
    if not search.space:
        raise at("space").error("the search has an empty space", hint="e.g. space: {temperature: 0.2..1.4} or --space temperature=0.2..1.4")
    params = step_class("generate").Params
    for dim in search.space:
        check_field(params, dim, recipe.model.steps[search.step])
    for name, what in ((search.reference, "reference"), (search.embed, "embed"), (search.judge, "judge"),
                       (search.llm_judge, "llm_judge")):
        step_name = (name or "").split(".")[0]
        if name is not None and step_name not in recipe.model.steps:
            raise at(what).error(f"no step '{step_name}' in the recipe", hint=did_you_mean(step_name, recipe.model.steps))
    if search.embed is not None:
        embed_step = recipe.variants[0].steps[search.embed]
        if search.step not in embed_step.upstream():
            raise at("embed").error(f"step '{search.embed}' does not read '{search.step}': its rows would not change with the settings",
                                    hint=f"name the step that embeds {search.step} (kind: embed, input: {search.step})")
    if search.reference is None:
        needing = [t for t in search.targets if t.metric in NEEDS_REFERENCE]
        if needing:
            raise needing[0].where.error(f"'{needing[0]}' compares to real rows: the search needs a reference",
                                         hint="add reference: STEP (e.g. the embedded real rows) or --reference STEP")
    if search.judge is None:
        needing = [t for t in search.targets if t.metric in NEEDS_JUDGE]
        if needing:
            raise needing[0].where.error(f"'{needing[0]}' is judged by an oracle: the search needs a judge",
                                         hint="add judge: STEP.TABLE (real labelled rows held out from training, e.g. "
                                              "split.validation) or --judge STEP.TABLE")
    check_llm_judge(recipe, search, at)
    if len(search.objectives) > len({t.metric for t in search.objectives}):
        raise search.objectives[-1].where.error(f"'{search.objectives[-1]}' is declared twice")
    _check_reachable(search)


def check_llm_judge(recipe: "Recipe", search: Search, at: Callable[..., Where]) -> None:
    """An LLM judge instrument is a `judge` step that reads the tuned step (so each probe's rows are judged),
    with `pass_score` exactly when its scale is an integer score; a target on its pass rate needs one."""
    name = search.llm_judge
    if name is None:
        needing = [t for t in search.targets if t.metric in NEEDS_LLM_JUDGE]
        if needing:
            raise needing[0].where.error(f"'{needing[0]}' is measured by an LLM judge: the search needs one",
                                         hint=f"add llm_judge: STEP (a step of kind: judge with input: {search.step}) "
                                              "or --llm-judge STEP")
        if search.pass_score is not None:
            raise at("pass_score").error("pass_score applies to an LLM judge, and the search has none",
                                         hint="add llm_judge: STEP, or remove pass_score")
        return
    if "." in name:
        raise at("llm_judge").error(f"llm_judge names a judge step, not a table: '{name}'",
                                    hint=f"write llm_judge: {name.split('.')[0]}")
    step = recipe.variants[0].steps[name]
    if step.kind != "judge":
        raise at("llm_judge").error(f"step '{name}' is a {step.kind} step; llm_judge names a judge step",
                                    hint=f"add a step of kind: judge with input: {search.step} (docs/steps/judge.md)")
    if search.step not in step.upstream():
        raise at("llm_judge").error(f"judge step '{name}' does not read '{search.step}': it would not judge the "
                                    "probes' rows", hint=f"give it input: {search.step} (or a step reading it)")
    scale = step.params.scale
    if scale.type == "pass_fail":
        if search.pass_score is not None:
            raise at("pass_score").error(f"pass_score applies to an integer scale; judge step '{name}' has pass/fail "
                                         "criteria (a row passes when it passes every one)", hint="remove pass_score")
        return
    low, high = scale.bounds()
    if search.pass_score is None:
        raise at("llm_judge").error(f"judge step '{name}' scores {low} to {high}: the search needs the score that "
                                    "passes", hint=f"add pass_score: N ({low} < N <= {high}) or --pass-score N, or give "
                                                   "the judge criteria")
    if isinstance(search.pass_score, bool) or not isinstance(search.pass_score, int) or not low < search.pass_score <= high:
        raise at("pass_score").error(f"pass_score must be an integer in {low + 1}..{high} (judge step '{name}' scores "
                                     f"{low} to {high}), got {search.pass_score!r}", hint=f"e.g. pass_score: {high - 1}")


def check_field(params: type[BaseModel], dim: Dimension, config: dict[str, Any]) -> None:
    """`dim.field` names a field of the step that changes its output (not `n`: that is the probe size)."""
    from synthforge.recipe.resolve import _model_in  # the one walk from a field's annotation to its nested model

    model: type[BaseModel] | None = params
    parts = dim.field.split(".")
    for depth, part in enumerate(parts):
        if model is None:  # inside a mapping field (variables): its keys are the step's own
            written = _get(config, parts[:depth]) or {}
            if part not in written:
                raise dim.where.error(f"'{dim.field}': the step has no {'.'.join(parts[:depth])} entry '{part}'",
                                      hint=did_you_mean(part, written) or f"entries: {', '.join(map(str, written)) or 'none'}")
            return
        fields = model.model_fields
        if part not in fields:
            raise dim.where.error(f"'{dim.field}' is no field of a generate step",
                                  hint=did_you_mean(part, fields) or f"fields: {', '.join(f for f in fields if not fields[f].exclude)}")
        if fields[part].exclude:
            raise dim.where.error(f"'{dim.field}' is runtime-only: searching it cannot move a metric", hint=RUNTIME_FIELDS_NOTE)
        if part == "n" and depth == 0:
            raise dim.where.error("'n' is the probe size, not a setting to search", hint="set probe_rows instead")
        model = None if _is_mapping(fields[part].annotation) else _model_in(fields[part].annotation)
        if model is None and depth + 1 < len(parts) and not _is_mapping(fields[part].annotation):
            raise dim.where.error(f"'{dim.field}': '{part}' has no fields")


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict or any(_is_mapping(a) for a in typing.get_args(annotation))


def _check_reachable(search: Search) -> None:
    by_metric: dict[str, list[Target]] = {}
    for target in search.constraints:
        by_metric.setdefault(target.metric, []).append(target)
        low, high = _BOUNDS[target.metric]
        high = float(search.probe_rows) if high == "rows" else high
        if (target.op == ">=" and target.bound > high) or (target.op == "<=" and target.bound < low):
            limit = f"at most {high:g}" + (f" with {search.probe_rows} probe rows" if _BOUNDS[target.metric][1] == "rows" else "")
            if target.op == "<=":
                limit = f"at least {low:g}"
            raise target.where.error(f"'{target}' is unreachable: {target.metric} is {limit}",
                                     hint="loosen the target" + (" or raise probe_rows" if _BOUNDS[target.metric][1] == "rows" else ""))
    for metric, targets in by_metric.items():
        floors = [t for t in targets if t.op == ">="]
        ceilings = [t for t in targets if t.op == "<="]
        if floors and ceilings:
            floor, ceiling = max(floors, key=lambda t: t.bound), min(ceilings, key=lambda t: t.bound)
            if floor.bound > ceiling.bound:
                raise ceiling.where.error(f"targets contradict each other: '{floor}' and '{ceiling}'",
                                          hint="no value meets both; widen the band")


# -- probes ----------------------------------------------------------------------------------------------
def _get(config: dict[str, Any], path: list[str]) -> Any:
    value: Any = config
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _set(config: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(config.get(part), dict):
            config[part] = {}
        config = config[part]
    config[path[-1]] = value


def probe_text(recipe_text: str, step: str, settings: dict[str, Any], rows: int | None) -> str:
    """The recipe's YAML with the step's fields set (and `n` = `rows`, when given): the probe as a recipe."""
    import yaml

    data = yaml.safe_load(recipe_text)
    config = data["steps"][step]
    for name, value in settings.items():
        _set(config, name.split("."), _thawed(value))
    if rows is not None:
        config["n"] = rows
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@dataclass
class Probe:
    """One probe's outcome: its settings, the keys it built or found, its metrics and what it cost."""

    number: int
    settings: dict[str, Any]
    metrics: dict[str, float]
    rows: int
    keys: dict[str, str]  # step -> key (the generated pool, the measured step, the reference)
    requests: int = 0  # LLM requests this probe sent (0: every response was cached)
    tokens: int = 0
    violations: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # the objectives' values
    default: bool = False
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> 95% [low, high] (stats.INTERVAL_METHODS)

    @property
    def feasible(self) -> bool:
        """Every constraint met by its point estimate."""
        return all(v <= 0 for v in self.violations)

    def interval(self, metric: str) -> "Interval | None":
        """The metric with its 95% interval (None when either is missing)."""
        from synthforge.metric_registry import Interval

        value, bounds = self.metrics.get(metric), self.intervals.get(metric)
        return Interval(value, *bounds) if value is not None and bounds else None

    def straddles(self, constraints: list[Target]) -> list[Target]:
        """The constraints whose threshold lies inside the metric's interval: met or missed, another draw of
        rows at these settings could land on the other side."""
        return [t for t in constraints if (found := self.interval(t.metric)) is not None and found.lo < t.bound < found.hi]


class ProbeRunner:
    """Builds probes of one search: the recipe with the step's settings, up to the measured step and reference."""

    def __init__(self, r: "OpenRecipe", search: Search, variant: str | None, *, device: str = "auto",
                 progress: bool = False, jobs: int | None = None, log: Callable[[str], None] = lambda m: None):
        from synthforge.recipe.resolve import read_recipe_text

        self.r, self.search, self.device, self.progress, self.jobs, self.log = r, search, device, progress, jobs, log
        self.text = read_recipe_text(r.path)
        for name in dict.fromkeys([search.step, search.measured_step]):
            r.key(name, variant)  # a step that differs across the variants `variant` selects: an error naming them
        # probes narrow the matrix to it (the first it selects: r.key has checked that they all share the step)
        chosen = r.graph.recipe.select_variants(variant)[0] if variant else r.graph.recipe.variants[0]
        self.overrides = {**r.graph.recipe.overrides, **chosen.matrix_values}

    def load(self, settings: dict[str, Any]):
        """The probe's graph; its recipe's own error when the settings make an invalid step (located in the
        probe's generated text: callers say where the settings came from)."""
        from synthforge.graph import build_graph
        from synthforge.recipe.resolve import load_recipe

        text = probe_text(self.text, self.search.step, settings, self.search.probe_rows)
        return build_graph(load_recipe(self.r.path, self.overrides, text=text), self.r.cache)

    def graph(self, settings: dict[str, Any]):
        try:
            return self.load(settings)
        except UserError as exc:
            raise UserError(f"the probe with {_settings_text(settings)} is not a valid step: {_what(exc)}",
                            file=str(self.r.path), line=self.r.graph.recipe.line("tune", self.search.step),
                            field=f"tune.{self.search.step}", hint=exc.hint) from None

    def keys(self, graph) -> dict[str, str]:
        variant = graph.recipe.variants[0].name
        names = [self.search.step, self.search.measured_step] + [
            table.split(".")[0] for table in (self.search.reference, self.search.judge, self.search.llm_judge) if table]
        return {name: graph.keys[variant][name] for name in dict.fromkeys(names)}

    def estimate(self, settings: dict[str, Any]) -> tuple[int, int]:
        """The LLM requests and tokens one probe with these settings plans when nothing of it is cached: the
        generate step's, and an LLM judge's on the probe's rows."""
        graph = self.graph(settings)
        keys = self.keys(graph)
        requests = tokens = 0
        for name in filter(None, (self.search.step, self.search.llm_judge)):
            resolved = graph.nodes[keys[name]].resolved
            params = resolved.run_params
            if name == self.search.llm_judge:  # it judges at most the probe's rows
                params = params.model_copy(update={"n": min(params.n or self.search.probe_rows, self.search.probe_rows)})
            found = resolved.step.estimate(params)
            if found is not None:
                requests, tokens = requests + found.requests, tokens + found.tokens
        return requests, tokens

    def run(self, number: int, settings: dict[str, Any], requests_left: int, tokens_left: int) -> Probe:
        from synthforge.building import build
        from synthforge.stats import entry_fidelity, entry_intervals, entry_stats, judge_pass_rate
        from synthforge.stepapi import Runtime

        graph = self.graph(settings)
        keys = self.keys(graph)
        runtime = Runtime(device=self.device, progress=self.progress, max_requests=requests_left, max_tokens=tokens_left)
        executor = None
        if self.jobs and self.jobs > 1:
            from synthforge.executors import executor_from

            executor = executor_from("local", graph, self.r.cache, runtime, self.jobs, None, None)
        report = build(graph, self.r.cache, only=list(keys), runtime=runtime, log=self.log, write_lockfile=False,
                       executor=executor)
        requests = tokens = 0
        for key in report.seconds:  # the entries this probe built: what it spent
            meta = self.r.cache.get(key).manifest.meta
            requests += int(meta.get("responses_generated", 0) or 0)
            tokens += int(meta.get("generated_prompt_tokens", 0) or 0) + int(meta.get("generated_completion_tokens", 0) or 0)
        measured = self.table(keys, self.search.measured_step)
        reference = self.table(keys, self.search.reference)
        options = {"cache": self.r.cache, "model": self.search.model, "seed": self.search.seed, "device": self.device}
        stats = entry_stats(measured, reference, **options)
        metrics = {k: float(v) for k, v in stats["metrics"].items() if isinstance(v, (int, float)) and v is not None}
        agreement = stats.get("label_agreement") or {}
        if agreement.get("overall") is not None:
            metrics["label_agreement"] = float(agreement["overall"])
        intervals = dict(entry_intervals(measured, reference, **options)["intervals"])
        if self.search.judge:
            judged = entry_fidelity(measured, self.table(keys, self.search.judge), **options)
            metrics.update({k: float(judged[k]) for k in NEEDS_JUDGE if judged.get(k) is not None})
            intervals.update(judged["intervals"])
        if self.search.llm_judge:
            column = graph.nodes[keys[self.search.llm_judge]].resolved.params.column
            passed = judge_pass_rate(self.table(keys, self.search.llm_judge), column, self.search.pass_score)
            metrics.update({k: float(passed[k]) for k in NEEDS_LLM_JUDGE if passed.get(k) is not None})
            intervals.update(passed["intervals"])
        rows = int(stats["metrics"].get("rows") or measured.manifest.rows)
        probe = Probe(number, settings, metrics, rows, keys, requests, tokens,
                      intervals={m: list(v) for m, v in intervals.items() if v is not None})
        for target in self.search.targets:
            if target.metric not in metrics:
                raise target.where.error(f"the probe did not measure '{target.metric}'",
                                         hint="label_agreement and fidelity need labels in the rows, the reference and the "
                                              "judge; judge_pass_rate needs rows the LLM judge saw")
        probe.violations = [t.violation(metrics[t.metric]) for t in self.search.constraints]
        probe.values = [metrics[t.metric] for t in self.search.objectives]
        return probe

    def table(self, keys: dict[str, str], name: str | None):
        """The probe's table `STEP` or `STEP.TABLE` (None for None)."""
        from synthforge.stepapi import InputTable

        if name is None:
            return None
        step, _, table = name.partition(".")
        return InputTable(self.r.cache.entry_path(keys[step]), table or "data")


def _what(error: UserError) -> str:
    """A probe recipe's error without its location (the lines of the generated probe text mean nothing to a user)."""
    field = (error.field or "").removeprefix("steps.")
    return f"{field}: {error.message}" if field else error.message


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    text = json.dumps(_thawed(value)) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."


# -- the search ------------------------------------------------------------------------------------------
@dataclass
class TuneResult:
    search: Search
    search_key: str
    probes: list[Probe]
    best: list[Probe]  # the best feasible probe, or the feasible Pareto front with two or more objectives
    stopped: str  # why the search ended
    estimate: tuple[int, int]  # requests and tokens the plan estimated for the probes still to run
    default_settings: dict[str, Any]
    recipe: Path

    def closest_miss(self) -> str | None:
        """With no feasible probe: which constraint the nearest probe missed, and by how much."""
        if self.best or not self.probes:
            return None
        near = min(self.probes, key=lambda p: sum(t.relative_miss(p.metrics[t.metric]) for t in self.search.constraints))
        misses = [f"'{t}' by {abs(v):.3g} ({t.metric} {near.metrics[t.metric]:.4g})"
                  for t, v in zip(self.search.constraints, near.violations) if v > 0]
        return f"no probe met every target; the closest, #{near.number}, missed {', '.join(misses)}"

    def to_json(self) -> dict[str, Any]:
        """The search and every probe with its metrics, 95% intervals (and their method), whether it meets the
        targets (by point estimates) and which thresholds its intervals straddle: `tune --json`."""
        search = self.search
        metrics = sorted({m for p in self.probes for m in p.metrics})
        return {
            "recipe": str(self.recipe), "step": search.step, "search": self.search_key,
            "targets": [str(t) for t in search.targets], "space": [d.describe() for d in search.space],
            "probe_rows": search.probe_rows, "reference": search.reference, "judge": search.judge,
            "llm_judge": search.llm_judge, "pass_score": search.pass_score,
            "interval_methods": interval_methods(metrics),
            "probes": [{"number": p.number, "default": p.default, "settings": {k: _thawed(v) for k, v in p.settings.items()},
                        "metrics": {k: _finite(v) for k, v in p.metrics.items()}, "intervals": p.intervals,
                        "rows": p.rows, "meets_targets": p.feasible,
                        "straddles": [str(t) for t in p.straddles(search.constraints)], "requests": p.requests,
                        "tokens": p.tokens, "keys": p.keys} for p in self.probes],
            "best": [p.number for p in self.best], "stopped": self.stopped,
        }

    def fragment(self) -> str | None:
        """The best settings as a recipe fragment to pin (the first of a Pareto front)."""
        if not self.best:
            return None
        chosen = self.best[0]
        header = (f"# tuned by `synthforge tune` (search {self.search_key[:12]}, probe #{chosen.number} of {len(self.probes)}, "
                  f"{self.search.probe_rows} rows a probe): {'; '.join(map(str, self.search.targets))}")
        return header + "\n" + fragment_yaml(self.search.step, chosen.settings)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def fragment_yaml(step: str, settings: dict[str, Any]) -> str:
    import yaml

    nested: dict[str, Any] = {}
    for name, value in settings.items():
        _set(nested, name.split("."), _plain(value))
    return yaml.safe_dump({"steps": {step: nested}}, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _plain(value: Any) -> Any:
    return _thawed(value)


def search_key(r: "OpenRecipe", search: Search, runner: ProbeRunner) -> str:
    """The study's name: the step's identity (the keys of its probe at the low end of every dimension, so pinning
    the result with --write keeps the search), the space, targets, probe size and seed."""
    from synthforge.keys import key_of

    default_keys = runner.keys(runner.graph({dim.field: dim.extremes()[0] for dim in search.space}))
    judged = {"pass score": search.pass_score} if search.pass_score is not None else {}  # absent: earlier keys stay
    return key_of({"search": "tune", "version": TUNE_VERSION, "probe keys": default_keys,
                   "space": [d.identity() for d in search.space], "targets": [str(t) for t in search.targets],
                   "probe rows": search.probe_rows, "seed": search.seed, "metrics model": search.model, **judged})


def tune(r: "OpenRecipe", search: Search, *, variant: str | None = None, device: str = "auto", progress: bool = False,
         jobs: int | None = None, log: Callable[[str], None] = lambda m: None, dry_run: bool = False) -> TuneResult:
    """Run (or resume) the search: probes until `search.probes` have completed, the budget is spent or, with
    constraints and no objective, a probe meets every target. `dry_run`: check it, estimate it, show the probes
    done so far; run none."""
    try:
        import optuna
    except ImportError:
        raise UserError("tune needs the 'optuna' package", hint="pip install 'optuna>=3.6' (scripts/setup.sh installs it)") from None

    runner = ProbeRunner(r, search, variant, device=device, progress=progress, jobs=jobs, log=lambda m: None)
    for dim in search.space:  # every end of the space makes a valid step, before any probe is built
        for value in dim.extremes():
            try:
                runner.load({dim.field: value})
            except UserError as exc:
                raise dim.where.error(f"'{dim.field}' = {_show(value)} makes an invalid step: {_what(exc)}", hint=exc.hint) from None
    key = search_key(r, search, runner)
    defaults = {dim.field: _get(r.graph.recipe.variants[0].steps[search.step].params.model_dump(mode="json"), dim.field.split("."))
                for dim in search.space}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = r.cache.shared_dir("tune")
    storage = _storage(optuna, folder / (key + ".sqlite"))
    with r.cache.flock(key):  # one process drives a study at a time; probes are shared through the cache anyway
        study = _open_study(optuna, storage, key, search, folder / (key + ".sqlite"))
        _resume(optuna, study, search, defaults)
        return _run(optuna, study, runner, search, key, defaults, log, dry_run)


def _trial_constraints(optuna: Any) -> bool:
    """Optuna 5 takes constraints from the trial (`set_constraint`); earlier versions from `constraints_func`."""
    return hasattr(optuna.trial.Trial, "set_constraint")


def _storage(optuna: Any, path: Path) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})
    except SQLAlchemyError as exc:
        raise UserError(f"the stored search {path.stem[:12]} cannot be read ({type(exc).__name__})",
                        hint=f"delete {path}: its probes are cached, so running the search again costs no request") from None


def _open_study(optuna: Any, storage: Any, key: str, search: Search, path: Path) -> Any:
    """The search's study, or a one-line error when its storage cannot be read (never a half-read study)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        study = _study(optuna, storage, key, search)
        study.sampler = _sampler(optuna, search, len(study.get_trials(deepcopy=False)))
        return study
    except SQLAlchemyError as exc:
        raise UserError(f"the stored search {key[:12]} cannot be read ({type(exc).__name__})",
                        hint=f"delete {path}: its probes are cached, so running the search again costs no request") from None


def _study(optuna: Any, storage: Any, key: str, search: Search) -> Any:
    directions = [("maximize" if t.op == "max" else "minimize") for t in search.objectives] or ["minimize"]
    return optuna.create_study(study_name=key, storage=storage, sampler=_sampler(optuna, search, 0),
                               directions=directions, load_if_exists=True)


def _sampler(optuna: Any, search: Search, trials: int) -> Any:
    """TPE for one objective (or constraints only), NSGA-II for two or more. Seeded by the search's seed and the
    trials already stored, so a resumed search does not draw again what its first process drew."""
    def constraints(trial: Any) -> list[float]:
        return trial.user_attrs.get("violations", [1.0] * len(search.constraints))

    constraints_func = constraints if search.constraints and not _trial_constraints(optuna) else None
    seed = search.seed + trials
    if len(search.objectives) >= 2:
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints_func,
                                             population_size=max(4, min(50, search.probes // 3)))
    return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints_func,
                                      n_startup_trials=max(3, min(10, search.probes // 3)))


def _resume(optuna: Any, study: Any, search: Search, defaults: dict[str, Any]) -> None:
    """A new study probes the recipe's own settings first; a killed or interrupted one re-runs the probe it was
    in, once (its responses and entries are cached, so nothing is recomputed), before asking the sampler for more."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not trials:
        study.enqueue_trial(_internal(search, defaults), user_attrs={"default": True})
        return
    resumed = {t.user_attrs.get("resumes") for t in trials}
    for trial in trials:
        killed = trial.state == TrialState.RUNNING  # the process died mid-probe
        stopped = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")  # Ctrl-C, an error
        if (killed or stopped) and trial.number not in resumed:
            if killed:
                study.tell(trial.number, state=TrialState.FAIL)
            attrs = {k: v for k, v in trial.user_attrs.items() if k != "interrupted"}
            study.enqueue_trial(trial.params, user_attrs={**attrs, "resumes": trial.number})


def _internal(search: Search, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as Optuna stores them (a choice as its index); a default that is no choice is left to the sampler."""
    internal = {}
    for dim in search.space:
        value = _frozen(settings.get(dim.field))
        if dim.choices:
            if value in dim.choices:
                internal[dim.field] = dim.choices.index(value)
        elif isinstance(value, (int, float)) and dim.low <= value <= dim.high:
            internal[dim.field] = value
    return internal


def _run(optuna: Any, study: Any, runner: ProbeRunner, search: Search, key: str, defaults: dict[str, Any],
         log: Callable[[str], None], dry_run: bool = False) -> TuneResult:
    from optuna.trial import TrialState

    def done() -> list[Any]:
        return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]

    per_probe = runner.estimate({})  # before response-cache hits: an upper bound, like a build's budget check
    left = max(0, search.probes - len(done()))
    estimate = (per_probe[0] * left, per_probe[1] * left)
    spent = _spent(done())
    if left:
        log(f"tune {search.step}: {plural(left, 'probe')} of {search.probe_rows} rows to run, at most ~{estimate[0]:,} LLM "
            f"requests and ~{estimate[1]:,} tokens (cached responses cost nothing); search {key[:12]}")
        if not _affords(search, spent, per_probe):
            what = "requests" if search.max_requests is not None and spent[0] + per_probe[0] > search.max_requests else "tokens"
            limit = search.max_requests if what == "requests" else search.max_tokens
            raise UserError(f"the budget of {limit:,} LLM {what} is spent ({spent[0 if what == 'requests' else 1]:,} used by "
                            "earlier probes)", field=f"tune.{search.step}.budget",
                            hint=f"raise the budget (--max-{what}) or lower probes")
    stopped = f"{plural(search.probes, 'probe')} run"
    if dry_run:
        stopped = (f"dry run: {plural(left, 'probe')} to run, at most ~{estimate[0]:,} LLM requests and ~{estimate[1]:,} "
                   f"tokens (budget {search.max_requests:,} requests, {search.max_tokens:,} tokens; {spent[0]:,} "
                   f"and {spent[1]:,} spent)")
    attempts = 0  # a probe Optuna refuses (a metric that is NaN on an empty pool) fails; it still counts here
    while not dry_run and len(done()) < search.probes and attempts < search.probes:
        attempts += 1
        if not search.objectives and any(_probe_of(t, search).feasible for t in done()):
            stopped = "a probe met every target"
            break
        spent = _spent(done())
        if not _affords(search, spent, per_probe):
            stopped = f"the budget would not cover another probe ({spent[0]:,} requests, {spent[1]:,} tokens spent)"
            break
        objective = _Objective(optuna, runner, search, spent, len(done()), log)
        study.optimize(objective, n_trials=1, catch=())
    probes = [_probe_of(t, search) for t in done()]
    return TuneResult(search, key, probes, best_probes(probes, search), stopped, estimate, defaults, runner.r.path)


def _spent(trials: list[Any]) -> tuple[int, int]:
    """The LLM requests and tokens the finished probes sent."""
    return sum(t.user_attrs.get("requests", 0) for t in trials), sum(t.user_attrs.get("tokens", 0) for t in trials)


def _affords(search: Search, spent: tuple[int, int], per_probe: tuple[int, int]) -> bool:
    return all(limit is None or used + need <= limit
               for limit, used, need in zip((search.max_requests, search.max_tokens), spent, per_probe))


@dataclass
class _Objective:
    """One probe for Optuna: the trial's settings built and measured; its constraints, metrics and cost stored
    on the trial (what a resumed search reads back)."""

    optuna: Any
    runner: ProbeRunner
    search: Search
    spent: tuple[int, int]
    number: int  # probes finished before this one
    log: Callable[[str], None]

    def __call__(self, trial: Any) -> Any:
        search = self.search
        settings = {dim.field: dim.suggest(trial) for dim in search.space}
        try:
            probe = self.runner.run(trial.number, settings, _left(search.max_requests, self.spent[0]),
                                    _left(search.max_tokens, self.spent[1]))
        except BaseException:  # Ctrl-C, the budget spent mid-probe, a server down: the next run takes it up again
            trial.set_user_attr("interrupted", True)
            raise
        if _trial_constraints(self.optuna):
            for index, (target, violation) in enumerate(zip(search.constraints, probe.violations)):
                trial.set_constraint(f"{index}: {target}", violation)
        for name, value in (("settings", {k: _thawed(v) for k, v in settings.items()}), ("metrics", probe.metrics),
                            ("rows", probe.rows), ("keys", probe.keys), ("requests", probe.requests),
                            ("tokens", probe.tokens), ("violations", probe.violations), ("intervals", probe.intervals)):
            trial.set_user_attr(name, value)
        self.log(f"probe {self.number + 1}/{search.probes}: {_settings_text(settings)} -> "
                 f"{', '.join(f'{m} {probe.metrics[m]:.4g}' for m in dict.fromkeys(t.metric for t in search.targets))}"
                 f"{' (meets every target)' if probe.feasible and search.constraints else ''}"
                 f"{'' if probe.requests else ' [cached]'}")
        if search.objectives:
            return probe.values if len(probe.values) > 1 else probe.values[0]
        return sum(t.relative_miss(probe.metrics[t.metric]) for t in search.constraints)


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in settings.items())


def _probe_of(trial: Any, search: Search) -> Probe:
    attrs = trial.user_attrs
    metrics = attrs.get("metrics", {})
    return Probe(trial.number, attrs.get("settings", {}), metrics, attrs.get("rows", 0), attrs.get("keys", {}),
                 attrs.get("requests", 0), attrs.get("tokens", 0), list(attrs.get("violations", [])),
                 [metrics.get(t.metric, math.nan) for t in search.objectives], default=bool(attrs.get("default")),
                 intervals=attrs.get("intervals", {}))


def best_probes(probes: list[Probe], search: Search) -> list[Probe]:
    """The best feasible probe (one objective, or none: the first to meet every target), or the Pareto front
    of the feasible probes over two or more objectives, in probe order."""
    feasible = [p for p in probes if p.feasible]
    if not feasible:
        return []
    signs = [1.0 if t.op == "max" else -1.0 for t in search.objectives]
    if not signs:
        return [feasible[0]]
    if len(signs) == 1:
        return [max(feasible, key=lambda p: (signs[0] * p.values[0], -p.number))]
    scored = [(p, [s * v for s, v in zip(signs, p.values)]) for p in feasible]

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a)) for _, b in scored)

    return [p for p, values in scored if not dominated(values)]


# -- output ----------------------------------------------------------------------------------------------
def format_result(result: TuneResult) -> str:
    """The probes as a table (settings, each target's metric, whether it met every target), the best, the fragment."""
    from synthforge.text_tables import render_table

    search = result.search
    metrics = list(dict.fromkeys(t.metric for t in search.targets))
    best = {p.number for p in result.best}
    headers = ["probe", *[d.field for d in search.space], *metrics, "rows", "meets targets", "interval straddles",
               "new requests"]
    rows = []
    for p in result.probes:
        mark = "*" if p.number in best else " "
        name = f"{mark}#{p.number}" + (" (default)" if p.default else "")
        rows.append([name, *[_show(p.settings.get(d.field)) for d in search.space],
                     *[_metric_text(p, m) for m in metrics], p.rows,
                     "yes" if p.feasible else "no", "; ".join(map(str, p.straddles(search.constraints))) or "-",
                     p.requests])
    lines = [f"tune {search.step} of {result.recipe}: {'; '.join(map(str, search.targets))}",
             f"space: {'; '.join(d.describe() for d in search.space)}; {search.probe_rows} rows a probe; search {result.search_key[:12]}"]
    if not result.probes:
        return "\n".join([*lines, f"no probe run yet; {result.stopped}"])
    lines += [render_table(headers, rows, align_right=tuple(range(1 + len(search.space), len(headers)))),
              interval_note(result.probes, metrics),
              f"stopped: {result.stopped}; {plural(sum(p.requests for p in result.probes), 'LLM request')} "
              f"and {sum(p.tokens for p in result.probes):,} tokens spent over {plural(len(result.probes), 'probe')}"]
    default = next((p for p in result.probes if p.default), None)
    if not result.best:
        lines.append(result.closest_miss())
        return "\n".join(lines)
    kind = "Pareto front" if len(search.objectives) >= 2 else "best"
    lines.append(f"{kind} (*): " + "; ".join(f"#{p.number} {_settings_text(p.settings)}" for p in result.best))
    if default is not None:
        verdict = "meets every target" if default.feasible else "misses " + ", ".join(
            str(t) for t, v in zip(search.constraints, default.violations) if v > 0)
        lines.append(f"default settings (#{default.number}): {verdict}"
                     + (f" ({', '.join(f'{m} {default.metrics[m]:.4g}' for m in metrics)})" if metrics else ""))
    lines.append("recipe fragment (--write applies it):\n" + result.fragment().rstrip())
    return "\n".join(lines)


def _metric_text(probe: Probe, metric: str) -> str:
    value, found = probe.metrics.get(metric), probe.interval(metric)
    if value is None:
        return "-"
    return f"{value:.4g}" + (f" [{found.lo:.3g}, {found.hi:.3g}]" if found else "")


def interval_note(probes: list[Probe], metrics: list[str]) -> str:
    """Which interval each shown metric has, and why (docs/tune.md#output)."""
    methods = interval_methods(metrics)
    if not any(p.intervals for p in probes):
        return "intervals: none stored (probes of an earlier version); a target is met by its point estimate"
    by_method: dict[str, list[str]] = {}
    for metric, method in methods.items():
        by_method.setdefault(method, []).append(metric)
    return ("95% intervals over the draw of a probe's rows; a target is met by its point estimate. "
            + "; ".join(f"{', '.join(names)}: {_INTERVAL_TEXT[method]}" for method, names in by_method.items()))


_INTERVAL_TEXT = {"wilson": "Wilson (a share of the rows)",
                  "jackknife": "jackknife ± t·SE (a bootstrap would repeat rows, which set metrics read as duplicates)"}


def interval_methods(metrics: list[str]) -> dict[str, str]:
    return {m: "wilson" if m in WILSON_METRICS else "jackknife" for m in metrics}


def plot_result(result: TuneResult, path: Path) -> Path | None:
    """A PNG of the probes: on the first two target metrics, or with one metric against the first numeric field
    searched; feasible probes filled, constraints dashed, the best (or the Pareto front) joined in red. None
    when there is nothing to put on two axes."""
    from synthforge.metric_registry import label

    search = result.search
    metrics = list(dict.fromkeys(t.metric for t in search.objectives + search.constraints))
    numeric = [d.field for d in search.space if not d.choices]
    if not result.probes or (len(metrics) < 2 and not numeric):
        return None
    axes = ([(m, label(m), lambda p, m=m: p.metrics[m]) for m in metrics[:2]] if len(metrics) >= 2 else
            [(numeric[0], numeric[0], lambda p: p.settings[numeric[0]]), (metrics[0], label(metrics[0]), lambda p: p.metrics[metrics[0]])])
    (x_name, x_label, x), (y_name, y_label, y) = axes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for feasible, style in ((False, {"facecolors": "none", "edgecolors": "tab:gray", "label": "misses a target"}),
                            (True, {"color": "tab:blue", "label": "meets every target"})):
        chosen = [p for p in result.probes if p.feasible == feasible]
        if chosen:
            ax.scatter([x(p) for p in chosen], [y(p) for p in chosen], **style)
    for p in result.probes:  # each probe's 95% intervals (docs/tune.md), on the axes that are metrics
        x_err, y_err = (_error_bar(p, name, at(p)) for name, at in ((x_name, x), (y_name, y)))
        if x_err is not None or y_err is not None:
            ax.errorbar([x(p)], [y(p)], xerr=x_err, yerr=y_err, fmt="none", ecolor="tab:gray", elinewidth=0.8, alpha=0.6)
    front = sorted(result.best, key=x)
    if front:
        ax.plot([x(p) for p in front], [y(p) for p in front], "o-", color="tab:red",
                label="Pareto front" if len(search.objectives) >= 2 else "best")
    for target in search.constraints:
        if target.metric in (x_name, y_name):
            (ax.axvline if target.metric == x_name else ax.axhline)(target.bound, ls="--", color="tab:orange", lw=1)
    for p in result.probes:
        if p.default:
            ax.annotate("default", (x(p), y(p)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(f"tune {search.step}: {len(result.probes)} probes of {search.probe_rows} rows (bars: 95% intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # written whole, then renamed into place
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def _error_bar(probe: Probe, metric: str, value: float) -> list[list[float]] | None:
    found = probe.interval(metric)
    return None if found is None else [[max(0.0, value - found.lo)], [max(0.0, found.hi - value)]]


# -- provenance: which search pinned a step's settings ---------------------------------------------------
# `--write` leaves `tune.STEP.pinned` in the recipe: the search's key (its study is cache/shared/tune/KEY.sqlite),
# the targets, the probe chosen and its metrics with their intervals, and the settings pinned. The `tune:` block
# never enters a key, so pinning changes exactly the keys the settings change; `report` and `diff` read the note.
def pinned_note(result: TuneResult, probe: Probe) -> dict[str, Any]:
    search = result.search
    shown = list(dict.fromkeys(t.metric for t in search.targets))
    return {"search": result.search_key, "probe": probe.number, "probes": len(result.probes),
            "probe_rows": search.probe_rows, "targets": [str(t) for t in search.targets],
            "metrics": {m: _rounded(probe.metrics.get(m)) for m in shown},
            "intervals": {m: [_rounded(v) for v in probe.intervals[m]] for m in shown if m in probe.intervals},
            "settings": {k: _plain(v) for k, v in probe.settings.items()}}


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.4g}")


def pinned_notes(recipe: "Recipe") -> dict[str, dict[str, Any]]:
    """The steps whose settings a search pinned, with its note (`tune.STEP.pinned`)."""
    notes = {}
    for step, block in (recipe.model.tune or {}).items():
        note = block.get("pinned") if isinstance(block, dict) else None
        if isinstance(note, dict) and isinstance(note.get("search"), str):
            notes[step] = note
    return notes


def edited_since(recipe: "Recipe", step: str, note: dict[str, Any]) -> list[str]:
    """The pinned settings the recipe no longer has (`FIELD pinned -> now`): edited by hand since `--write`."""
    if step not in recipe.variants[0].steps:
        return [f"step {step} is gone"]
    params = recipe.variants[0].steps[step].params.model_dump(mode="json")
    return [f"{name} {_show(value)} -> {_show(_get(params, str(name).split('.')))}"
            for name, value in (note.get("settings") if isinstance(note.get("settings"), dict) else {}).items()
            if _get(params, str(name).split(".")) != value]


def describe_pinned(note: dict[str, Any], study: Path | None = None) -> str:
    """One line: the search, the probe chosen, its metrics (and intervals) on the targets; where the study is."""
    intervals = note.get("intervals") if isinstance(note.get("intervals"), dict) else {}
    metrics = ", ".join(f"{m} {v:.4g}" + (f" [{intervals[m][0]:.3g}, {intervals[m][1]:.3g}]" if _pair(intervals.get(m)) else "")
                        for m, v in (note.get("metrics") if isinstance(note.get("metrics"), dict) else {}).items()
                        if _number(v))
    where = "" if study is None else (f"; study {study}" if study.exists() else "; its study is not in this cache")
    return (f"search {str(note['search'])[:12]}, probe #{note.get('probe')} of {note.get('probes')} "
            f"({note.get('probe_rows')} rows a probe) on {'; '.join(map(str, _listed(note.get('targets'))))}: {metrics}{where}")


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value else []


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_number, value))


def study_path(cache: Any, note: dict[str, Any]) -> Path | None:
    from synthforge.keys import is_key

    key = str(note.get("search"))
    return cache.shared_dir("tune") / f"{key}.sqlite" if is_key(key) else None


def tuned_text(recipe: "Recipe", cache: Any) -> str:
    """Which search pinned each tuned step's settings: the study, targets, probe and its metrics, and whether
    the settings were edited by hand since (the end of `synthforge report`)."""
    lines = []
    for step, note in pinned_notes(recipe).items():
        edited = edited_since(recipe, step, note)
        lines += [f"  {step}: {describe_pinned(note, study_path(cache, note))}",
                  f"    settings {'edited since: ' + ', '.join(edited) if edited else 'as pinned'}"]
    return "\n".join(["tuned steps (settings pinned by `synthforge tune --write`):", *lines]) if lines else ""


def note_tuned_steps(diff: Any, cache: Any) -> None:
    """Under each changed step of a `diff.Diff` that a search pinned on either side: which search and probe,
    and whether its settings were edited since (`tuned A/B`); a lockfile side has no recipe to read."""
    for changed in (d for d in diff.steps if d.status == "changed"):
        found = {}
        for name, graph in (("a", diff.a.graph), ("b", diff.b.graph)):
            note = pinned_notes(graph.recipe).get(changed.step) if graph is not None else None
            if note is None:
                found[name] = "not tuned" if graph is not None else "a lockfile: no recipe to read"
                continue
            edited = edited_since(graph.recipe, changed.step, note)
            found[name] = describe_pinned(note, study_path(cache, note)) + (
                f"; edited since: {', '.join(edited)}" if edited else "")
        if any(line.startswith("search ") for line in found.values()):
            changed.tuned = found


# -- --write: the best settings into the recipe ----------------------------------------------------------
def write_settings(path: Path, step: str, settings: dict[str, Any], note: dict[str, Any] | None = None) -> str:
    """Set the step's fields in the recipe file in place, line by line, so comments and layout stay: a field
    written on one line gets its new value on that line (its comment kept), a block becomes a flow value, a
    field not written is added under its parent; `note` goes to `tune.STEP.pinned`. The result is loaded
    before it replaces the file (atomically)."""
    import tempfile

    from synthforge.recipe.resolve import load_recipe, read_recipe_text

    text = read_recipe_text(path)
    for name, value in settings.items():
        text = _set_in_text(text, str(path), ["steps", step, *name.split(".")], _plain(value))
    if note is not None:
        text = _set_note(text, str(path), step, note)
    recipe = load_recipe(path, text=text)  # a broken edit is an error here, never a broken file
    written = recipe.model.steps[step]
    for name, value in settings.items():
        if _get(written, name.split(".")) != _plain(value):
            raise UserError(f"could not write {name} into {path}", file=str(path), line=recipe.line("steps", step),
                            hint="apply the printed fragment by hand")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return text


_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[^\s#:][^:#]*?|\"[^\"]*\"|'[^']*'):(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")


def _set_in_text(text: str, filename: str, path: list[str], value: Any) -> str:
    import yaml

    from synthforge.recipe.yaml_lines import load_yaml_with_lines

    data, lines = load_yaml_with_lines(text, filename)
    rows = text.split("\n")
    for depth in range(len(path), 0, -1):  # the deepest part of the path the file already writes
        line = lines.get(tuple(path[:depth]))
        if line is None:
            continue
        found = _KEY_LINE.match(rows[line - 1])
        if found and found["key"].strip("'\"") != str(path[depth - 1]):
            continue  # a key inside a flow mapping: its line starts with a parent's key
        if not found:
            break
        indent = len(found["indent"])
        end = _block_end(rows, line, indent)
        if depth == len(path):  # the field itself: its value (one line, or the block under it) becomes the new one
            rows[line - 1:end] = [f"{found['indent']}{found['key']}: {_flow(value)}{found['comment'] or ''}"]
        elif found["value"].strip():  # a parent written on one line (a flow mapping): rewrite it merged
            merged = yaml.safe_load(found["value"]) or {}
            if not isinstance(merged, dict):
                break
            _set(merged, path[depth:], value)
            rows[line - 1] = f"{found['indent']}{found['key']}: {_flow(merged)}{found['comment'] or ''}"
        else:  # a block parent: a new line under it, indented like its children
            nested: dict[str, Any] = {}
            _set(nested, path[depth:], value)
            child = next((r for r in rows[line:end] if r.strip() and not r.strip().startswith("#")), None)
            pad = " " * (len(child) - len(child.lstrip())) if child else found["indent"] + "  "
            key = path[depth]
            rows.insert(end, f"{pad}{key}: {_flow(nested[key])}")
        return "\n".join(rows)
    raise UserError(f"cannot place {'.'.join(path[2:])} in {filename}", file=filename, field=".".join(path[:2]),
                    hint="apply the printed fragment by hand")


def _set_note(text: str, filename: str, step: str, note: dict[str, Any]) -> str:
    """`tune.STEP.pinned: {...}` set in place, or a `tune:` block appended when the recipe has none for STEP."""
    from synthforge.recipe.yaml_lines import load_yaml_with_lines

    data, lines = load_yaml_with_lines(text, filename)
    if lines.get(("tune", step)) is not None:
        return _set_in_text(text, filename, ["tune", step, "pinned"], note)
    if isinstance(data, dict) and data.get("tune"):
        return _set_in_text(text, filename, ["tune", step], {"pinned": note})
    return text.rstrip("\n") + f"\n\ntune:\n  {step}:\n    pinned: {_flow(note)}\n"


def _block_end(rows: list[str], line: int, indent: int) -> int:
    """The index after the last row of the block whose key is on `line` (1-based): rows indented deeper."""
    end = line
    for index in range(line, len(rows)):
        row = rows[index]
        if row.strip() and not row.strip().startswith("#") and len(row) - len(row.lstrip()) <= indent:
            break
        if row.strip():
            end = index + 1
    return end


def _flow(value: Any) -> str:
    import yaml

    dumped = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True).strip()
    return dumped.removesuffix("...").strip()
