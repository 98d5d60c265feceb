"""What a build would do, and why: each node cached or to run, with reasons read against the lockfile."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from synthforge.cache import Cache, EntryState
from synthforge.errors import UserError, did_you_mean
from synthforge.graph import Graph, Node
from synthforge.lockfile import Lock, describe_changes, dict_changes, input_changed, read_lock
from synthforge.recipe.resolve import RefTarget
from synthforge.stepapi import Estimate
from synthforge.text_tables import plural


@dataclass
class PlanItem:
    node: Node
    action: str  # "cached" | "run"
    reasons: list[str]
    note: str | None = None
    state: EntryState = EntryState(None)  # a cached item's rows and content hash, as checked by the plan


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a build is planned: resolving, keying and checking a study's 992
    entries allocate many long-lived objects and make almost no cycles, and the collector's passes over them
    were ~7% of a cached build. The collector's state is restored after (steps run with it on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan(graph: Graph, cache: Cache, only: list[str] = (), force: list[str] = ()) -> list[PlanItem]:
    """Every wanted node (all, or what `only` needs): cached, or to run with the reasons why."""
    with collector_paused():
        return _plan(graph, cache, only, force)


def _plan(graph: Graph, cache: Cache, only: list[str], force: list[str]) -> list[PlanItem]:
    check_step_names(graph, list(only) + list(force))
    wanted = set(graph.nodes)
    if only:
        wanted = graph.ancestors({n.key for s in only for n in graph.nodes_of_step(s)})
    lock = functools.cache(lambda: read_lock(graph.recipe.lock_path))  # read only when something will run
    items = []
    will_run: set[str] = set()
    states = cache.entry_states([key for key in graph.nodes if key in wanted], plan_name(graph, only))
    for key, node in graph.nodes.items():
        if key not in wanted:
            continue
        forced = node.step in force
        problems = states[key].problems
        if problems == [] and not forced:
            items.append(PlanItem(node, "cached", [], state=states[key]))
            continue
        if forced:
            reasons = ["forced with --force"]
        elif problems:
            reasons = [f"cached entry is damaged ({problems[0]}): rebuilding it"]
        else:
            reasons = why_rebuild(node, graph, lock(), will_run)
        will_run.add(key)
        items.append(PlanItem(node, "run", reasons, node.resolved.step.plan_note(node.resolved.run_params)))
    return items


def plan_name(graph: Graph, only: list[str]) -> list[Any]:
    """What names a plan's remembered entry states: the recipe file, its overrides and --only."""
    return [str(graph.recipe.lock_path.resolve()), repr(sorted(graph.recipe.overrides.items())), sorted(only)]


def check_step_names(graph: Graph, names: list[str]) -> None:
    """A clear error for a name given to --only or --force that is not a step of the recipe."""
    steps = list(graph.recipe.model.steps)
    for name in names:
        if name not in steps:
            raise UserError(f"no step '{name}' in {graph.recipe.path}", hint=did_you_mean(name, steps) or f"steps: {', '.join(steps)}")


def why_rebuild(node: Node, graph: Graph, lock: Lock | None, will_run: set[str]) -> list[str]:
    """Why a node that is not cached will run: what changed since the lockfile's build of its step."""
    if lock is None:
        return [f"never built here, and there is no lockfile yet (build writes {graph.recipe.lock_path.name})"]
    before = lock.components_for(node.variants[0], node.step)
    if before is None:
        return ["the step is new (the lockfile does not have it)"]
    changed_inputs = {name.split(".")[0] for name, _, _ in dict_changes(before.get("inputs", {}), node.components.get("inputs", {}))}
    input_reasons = {input_changed(name) for name in changed_inputs}
    reasons = [r for r in describe_changes(before, node.components) if r not in input_reasons]
    reasons += [_input_reason(node, graph, name, will_run) for name in sorted(changed_inputs)]
    if not reasons:
        return ["not built here yet (the lockfile records a build elsewhere)"]
    return reasons


def _input_reason(node: Node, graph: Graph, field_name: str, will_run: set[str]) -> str:
    """Why input `field_name` changed, naming only the upstream steps that this input reads."""
    variant_keys = graph.keys[node.variants[0]]
    targets = sorted({t.step for t in _ref_targets(node.resolved.refs.get(field_name))})
    rebuilding = [step for step in targets if variant_keys[step] in will_run]
    which = "its input" if field_name == "input" else f"its input '{field_name}'"
    if rebuilding:  # the step name comes second: as_sentence capitalises the first letter
        return f"{which} changes: {' and '.join(rebuilding)} will rebuild"
    return f"{which} ({', '.join(targets) or 'none'}) changed"


def as_sentence(reasons: list[str]) -> str:
    """Reasons joined into one sentence: 'Field n changed from 8 to 4; its input changed.'"""
    text = "; ".join(reasons)
    if not text:
        return ""
    first = text.split(" ", 1)[0]
    plain_word = first.isalpha() and first.islower()  # not a name such as real_emb or backend.base_url
    return (text[:1].upper() + text[1:] if plain_word else text) + "."


def _ref_targets(value: Any) -> list[RefTarget]:
    if isinstance(value, RefTarget):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _ref_targets(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _ref_targets(v)]
    return []


def variant_label(graph: Graph, node: Node) -> str:
    """Which variants a node serves, in words: 'all 25 variants', 'diversity=0.5 (5 variants)' or one name."""
    variants = graph.recipe.variants
    if len(node.variants) == len(variants):
        return "all variants" if len(variants) > 1 else variants[0].name
    if len(node.variants) == 1:
        return node.variants[0]
    mine = [v.matrix_values for v in variants if v.name in set(node.variants)]
    shared = {k: v for k, v in mine[0].items() if all(m.get(k) == v for m in mine)}
    common = ",".join(f"{k}={v}" for k, v in shared.items())
    return f"{common or 'several'} ({plural(len(node.variants), 'variant')})"


def planned_usage(items: list[PlanItem]) -> list[tuple[PlanItem, Estimate]]:
    """The LLM estimate of every item that will run and asks an LLM."""
    estimates = [(item, item.node.resolved.step.estimate(item.node.resolved.run_params)) for item in items]
    return [(item, estimate) for item, estimate in estimates if item.action == "run" and estimate is not None]
