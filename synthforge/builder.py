"""From a resolved recipe to cache entries: keys, plan (with reasons), build."""

from __future__ import annotations

import functools
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthforge import __version__
from synthforge.cache import Cache, Manifest, write_entry_files
from synthforge.executors.base import Executor, NodeRun, run_ready
from synthforge.executors.local import InlineExecutor
from synthforge.errors import UserError
from synthforge.keys import key_of, step_components
from synthforge.lockfile import Lock, read_lock, write_lock
from synthforge.recipe.fields import map_leaves
from synthforge.recipe.resolve import Recipe, RefTarget, ResolvedStep, Variant
from synthforge.steps.base import Estimate, InputTable, Runtime, StepContext

@dataclass
class Node:
    """One keyed step instance; variants whose resolved config agree share it."""

    key: str
    step: str
    resolved: ResolvedStep
    components: dict[str, Any]
    upstream: list[str]  # keys
    variants: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.resolved.kind


@dataclass
class Graph:
    recipe: Recipe
    nodes: dict[str, Node]  # key -> node, in dependency order
    keys: dict[str, dict[str, str]]  # variant -> step -> key

    def nodes_of_step(self, step: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.step == step]

    def node(self, variant: Variant, step: str) -> Node:
        return self.nodes[self.keys[variant.name][step]]

    def ancestors(self, keys: set[str]) -> set[str]:
        todo, seen = list(keys), set()
        while todo:
            key = todo.pop()
            if key not in seen:
                seen.add(key)
                todo.extend(self.nodes[key].upstream)
        return seen

    def is_chain(self) -> bool:
        """True when every node depends on the one before it (in dependency order): no two can run at once."""
        keys = list(self.nodes)
        return all(before in self.nodes[after].upstream for before, after in zip(keys, keys[1:]))

    def to_lock(self, rows: dict[str, int]) -> Lock:
        nodes = {}
        for key, node in self.nodes.items():
            nodes[key] = {"step": node.step, **node.components}
            if key in rows:
                nodes[key]["rows"] = rows[key]
        return Lock(self.recipe.name, self.keys, nodes)


def build_graph(recipe: Recipe, cache: Cache | None = None) -> Graph:
    """The recipe's keyed nodes; `cache` (optional) remembers input files' hashes across processes."""
    nodes: dict[str, Node] = {}
    keys: dict[str, dict[str, str]] = {}
    for variant in recipe.variants:
        variant_keys: dict[str, str] = {}
        for step_name in variant.order:
            resolved = variant.steps[step_name]
            components = _components(resolved, variant_keys, step_seed(variant, resolved), cache)
            key = key_of(components)
            variant_keys[step_name] = key
            if key not in nodes:
                upstream = sorted({variant_keys[s] for s in resolved.upstream()})
                nodes[key] = Node(key, step_name, resolved, components, upstream)
            nodes[key].variants.append(variant.name)
        keys[variant.name] = variant_keys
    return Graph(recipe, nodes, keys)


def step_seed(variant: Variant, resolved: ResolvedStep) -> int:
    """The replicate's seed for seeded steps; the recipe seed for steps whose output ignores it."""
    return variant.seed if resolved.step.seeded else variant.base_seed


def _components(resolved: ResolvedStep, variant_keys: dict[str, str], seed: int, cache: Cache | None = None) -> dict[str, Any]:
    """Everything a step's output depends on (see `keys.step_components`); its key is the hash of this."""
    step = resolved.step
    inputs = {
        name: map_leaves(value, lambda t: f"{variant_keys[t.step]}:{t.table}", RefTarget)
        for name, value in resolved.refs.items()
    }
    extra_files = {f"read.{i}": p for i, p in enumerate(step.files_read(resolved.run_params))}
    return step_components(resolved.kind, step.version, resolved.params, inputs, {**resolved.files, **extra_files},
                           step.identity(resolved.run_params), seed, cache)


# -- plan -----------------------------------------------------------------


@dataclass
class PlanItem:
    node: Node
    action: str  # "cached" | "run"
    reasons: list[str]
    note: str | None = None


def plan(graph: Graph, cache: Cache, only: list[str] = (), force: list[str] = ()) -> list[PlanItem]:
    _check_step_names(graph, list(only) + list(force))
    wanted = set(graph.nodes)
    if only:
        wanted = graph.ancestors({n.key for s in only for n in graph.nodes_of_step(s)})
    lock = read_lock(graph.recipe.lock_path)
    items = []
    will_run: set[str] = set()
    for key, node in graph.nodes.items():
        if key not in wanted:
            continue
        forced = node.step in force
        problems = cache.problems(key)
        if problems == [] and not forced:
            items.append(PlanItem(node, "cached", []))
            continue
        if forced:
            reasons = ["forced with --force"]
        elif problems:
            reasons = [f"cached entry is damaged ({problems[0]}): rebuilding it"]
        else:
            reasons = why_rebuild(node, graph, lock, will_run)
        will_run.add(key)
        items.append(PlanItem(node, "run", reasons, node.resolved.step.plan_note(node.resolved.run_params)))
    return items


def _check_step_names(graph: Graph, names: list[str]) -> None:
    from synthforge.errors import did_you_mean

    steps = list(graph.recipe.model.steps)
    for name in names:
        if name not in steps:
            raise UserError(f"no step '{name}' in {graph.recipe.path}", hint=did_you_mean(name, steps) or f"steps: {', '.join(steps)}")


def why_rebuild(node: Node, graph: Graph, lock: Lock | None, will_run: set[str]) -> list[str]:
    if lock is None:
        return [f"never built here, and there is no lockfile yet (build writes {graph.recipe.lock_path.name})"]
    before = lock.components_for(node.variants[0], node.step)
    if before is None:
        return ["the step is new (the lockfile does not have it)"]
    changed_inputs = {name.split(".")[0] for name, _, _ in dict_changes(before.get("inputs", {}), node.components.get("inputs", {}))}
    reasons = [r for r in describe_changes(before, node.components) if not r.startswith("input ")]
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
    if rebuilding:
        return f"{' and '.join(rebuilding)} will rebuild, which changes {which}"
    return f"{which} ({', '.join(targets) or 'none'}) changed"


def as_sentence(reasons: list[str]) -> str:
    """Reasons joined into one sentence: 'Field n changed from 8 to 4; its input changed.'"""
    text = "; ".join(reasons)
    return (text[:1].upper() + text[1:] + ".") if text else ""


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
    return f"{common or 'several'} ({len(node.variants)} variants)"


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human reasons why two sets of key components differ, most specific first."""
    reasons = []
    if before.get("kind") != after.get("kind"):
        return [f"its kind changed from {before.get('kind')} to {after.get('kind')}"]
    if before.get("version") != after.get("version"):
        reasons.append(f"the code of '{after['kind']}' changed (version {before.get('version')} to {after.get('version')})")
    reasons += [f"field {path} changed from {old} to {new}" for path, old, new in dict_changes(before.get("params", {}), after.get("params", {}))]
    for name, old, new in dict_changes(before.get("inputs", {}), after.get("inputs", {})):
        reasons.append(f"input {name.split('.')[0]} changed")
    for name, old, new in dict_changes(before.get("files", {}), after.get("files", {})):
        reasons.append(f"the content of file {name} changed")
    for name, old, new in dict_changes(before.get("identity", {}), after.get("identity", {})):
        reasons.append(f"{name} changed from {old} to {new}")
    if before.get("seed") != after.get("seed"):
        reasons.append(f"the recipe seed changed from {before.get('seed')} to {after.get('seed')}")
    return list(dict.fromkeys(reasons))


_MISSING = "(unset)"


def dict_changes(before: Any, after: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for k in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{k}" if path else str(k)
            changes += dict_changes(before.get(k, _MISSING), after.get(k, _MISSING), sub)
        return changes
    return [] if before == after else [(path, _short(before), _short(after))]


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


# -- build ----------------------------------------------------------------


@dataclass
class BuildReport:
    items: list[PlanItem]
    seconds: dict[str, float] = field(default_factory=dict)  # key -> seconds spent running
    rows: dict[str, int] = field(default_factory=dict)
    built_elsewhere: set[str] = field(default_factory=set)  # planned to run, but another process built it meanwhile


def _holding_leases(build_fn):
    """Sweep dead writers' tmp folders, then hold a lease on every key of the graph while building:
    `cache gc` leaves alone what the build writes and reads."""

    @functools.wraps(build_fn)
    def leased(graph: Graph, cache: Cache, **kwargs: Any) -> BuildReport:
        cache.sweep_tmp()
        with cache.lease(graph.nodes):
            return build_fn(graph, cache, **kwargs)

    return leased


@_holding_leases
def build(
    graph: Graph,
    cache: Cache,
    *,
    only: list[str] = (),
    force: list[str] = (),
    runtime: Runtime = Runtime(),
    log: Callable[[str], None] = print,
    write_lockfile: bool = True,
    executor: Executor | None = None,
) -> BuildReport:
    """Build what is missing; `executor` runs the nodes (default: one after another in this process)."""
    items = plan(graph, cache, only, force)
    report = BuildReport(items)
    to_run = [item for item in items if item.action == "run"]
    check_budget(graph, to_run, runtime)
    position = {item.node.key: (index, item) for index, item in enumerate(to_run, 1)}

    def where(node: Node) -> str:
        return f"[{position[node.key][0]}/{len(to_run)}] {node.step} for {variant_label(graph, node)}"

    def started(node: Node) -> None:
        log(f"▶ {where(node)}: {as_sentence(position[node.key][1].reasons)}")

    def finished(node: Node, run: NodeRun) -> None:
        for line in run.log:
            log(f"  {node.step}: {line}")
        report.seconds[node.key] = run.seconds
        if not run.built:
            report.built_elsewhere.add(node.key)
        done = "rows" if run.built else "rows, built by another process"
        log(f"✓ {where(node)}: {run.rows} {done} in {run.seconds:.1f}s{_dropped_note(cache, node.key)}")

    executor = executor or InlineExecutor(graph, cache, runtime, log)
    try:
        run_ready([item.node for item in to_run], executor, forced=set(force), on_start=started, on_done=finished)
    finally:
        executor.close()
    for item in items:
        entry = cache.get(item.node.key)
        if entry is not None:
            report.rows[item.node.key] = entry.manifest.rows
    if write_lockfile:
        write_lock(graph.recipe.lock_path, graph.to_lock(report.rows))
    return report


def planned_usage(items: list[PlanItem]) -> list[tuple[PlanItem, Estimate]]:
    """The LLM estimate of every item that will run and asks an LLM."""
    estimates = [(item, item.node.resolved.step.estimate(item.node.resolved.run_params)) for item in items]
    return [(item, estimate) for item, estimate in estimates if item.action == "run" and estimate is not None]


def check_budget(graph: Graph, items: list[PlanItem], runtime: Runtime) -> None:
    """Refuse, before any work, a build that plans more LLM requests or tokens than its budget."""
    usage = planned_usage(items)
    budget = graph.recipe.model.budget
    limits = {"requests": (runtime.max_requests, budget.max_requests), "tokens": (runtime.max_tokens, budget.max_tokens)}
    for what, (override, recipe_limit) in limits.items():
        limit = recipe_limit if override is None else override
        total = sum(getattr(estimate, what) for _, estimate in usage)
        if total <= limit:
            continue
        item, biggest = max(usage, key=lambda pair: getattr(pair[1], what))
        raise UserError(
            f"the build plans ~{total:,} LLM {what} (this step ~{getattr(biggest, what):,}), over the budget of {limit:,}",
            file=str(graph.recipe.path), line=graph.recipe.line("steps", item.node.step), field=f"steps.{item.node.step}",
            hint=f"lower n, or raise budget.max_{what} in the recipe or --max-{what} on the command line")


def _dropped_note(cache: Cache, key: str) -> str:
    """Rows a step dropped (blank texts, duplicates...), for its build line."""
    from synthforge.steps.rows import describe_dropped

    entry = cache.get(key)
    dropped = entry.manifest.meta.get("dropped") if entry is not None else None
    return f" ({describe_dropped(dropped)})" if dropped and any(dropped.values()) else ""


@dataclass
class NodeOutcome:
    manifest: Manifest
    built: bool  # False: another process built it while we waited for its lock


def run_node(graph: Graph, node: Node, cache: Cache, runtime: Runtime, log: Callable[[str], None], force: bool = False) -> NodeOutcome:
    """Compute one node into the cache, unless another process did while we waited for its lock.

    A damaged entry counts as missing: it is rebuilt and replaced."""
    with cache.lock(node.key):
        if not force and cache.problems(node.key) == []:
            return NodeOutcome(cache.get(node.key).manifest, built=False)
        with cache.writing(node.key) as work:
            ctx = StepContext(
                step=node.step,
                recipe=graph.recipe.name,
                params=node.resolved.run_params,
                seed=node.components["seed"],
                key=node.key,
                inputs=_inputs(graph, node, cache),
                workdir=work,
                cache=cache,
                runtime=runtime,
                log=log,
            )
            started = time.time()
            try:
                result = node.resolved.step.run(ctx)
            except UserError as exc:
                raise _locate(exc, graph.recipe, node) from None
            manifest = write_entry(work, node, graph.recipe, result, started)
    return NodeOutcome(manifest, built=True)


def _inputs(graph: Graph, node: Node, cache: Cache) -> dict[str, Any]:
    variant_keys = graph.keys[node.variants[0]]
    return {
        name: map_leaves(value, lambda t: InputTable(cache.entry_path(variant_keys[t.step]), t.table), RefTarget)
        for name, value in node.resolved.refs.items()
    }


def _locate(exc: UserError, recipe: Recipe, node: Node) -> UserError:
    if exc.file:
        return exc
    field = exc.field.split(".")[0] if exc.field else None
    path = ("steps", node.step) + ((field,) if field else ())
    exc.field = ".".join(("steps", node.step) + ((exc.field,) if exc.field else ()))
    return exc.located(str(recipe.path), recipe.line(*path))


def write_entry(work: Path, node: Node, recipe: Recipe, result: Any, started: float) -> Manifest:
    """The step's tables and its manifest, written into the scratch folder `work` (cache.py owns the format)."""
    return write_entry_files(
        work,
        {"data": result.data, **result.tables} if result.data is not None else dict(result.tables),
        key=node.key,
        step=node.step,
        kind=node.kind,
        recipe=recipe.name,
        recipe_path=str(recipe.path),
        variants=node.variants,
        components=node.components,
        upstream=node.upstream,
        timings={"started": started, "seconds": round(time.time() - started, 3)},
        versions=library_versions(),
        meta=result.meta,
    )


def library_versions() -> dict[str, str]:
    versions = {"synthforge": __version__, "python": platform.python_version()}
    for name in ("polars", "numpy", "torch", "transformers", "faiss", "httpx"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return versions

