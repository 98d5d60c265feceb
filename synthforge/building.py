"""Running a plan: each node computed into the cache by an executor (`running.run_node`), leases held, then the lockfile."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from synthforge.cache import Cache, EntryState
from synthforge.errors import BuildFailed, UserError
from synthforge.executors.base import Executor, Failures, NodeRun, run_ready
from synthforge.executors.local import InlineExecutor
from synthforge.graph import Graph, Node
from synthforge.keys import key_of
from synthforge.lockfile import Lock, merge_locks, read_lock, write_lock
from synthforge.planning import PlanItem, as_sentence, collector_paused, plan, planned_usage, variant_label
from synthforge.progress import LOGGER
from synthforge.stepapi import Runtime
from synthforge.text_tables import plural

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.backends.llm import RequestBudget


@dataclass
class BuildReport:
    items: list[PlanItem]
    seconds: dict[str, float] = field(default_factory=dict)  # key -> seconds spent running
    rows: dict[str, int] = field(default_factory=dict)
    contents: dict[str, str] = field(default_factory=dict)  # key -> the entry's content hash (for the lockfile)
    built_elsewhere: set[str] = field(default_factory=set)  # planned to run, but another process built it meanwhile
    failures: Failures = field(default_factory=Failures)  # keep-going: failed and skipped nodes

    def status(self, item: PlanItem) -> str:
        key = item.node.key
        if key in self.failures.errors:
            return "failed"
        if key in self.failures.skipped:
            return "skipped"
        if item.action != "run":
            return "cached"
        return "built by another process" if key in self.built_elsewhere else "built" if key in self.seconds else "not run"

    def counts(self) -> dict[str, int]:
        """How many step outputs ended in each status, in a fixed order."""
        statuses = [self.status(item) for item in self.items]
        return {name: statuses.count(name) for name in ("built", "built by another process", "cached", "failed", "skipped")
                if name in ("built", "cached") or name in statuses}

    def __repr__(self) -> str:  # a summary, not the plan's nodes (a notebook shows this for `r.build()`)
        counts = ", ".join(f"{name} {count}" for name, count in self.counts().items())
        return f"<BuildReport: {counts} in {sum(self.seconds.values()):.1f}s of step time>"

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(item.node.step)}</td><td>{len(item.node.variants)}</td><td>{self.status(item)}</td>"
            f"<td>{self.rows.get(item.node.key, '')}</td><td>{self.seconds.get(item.node.key, 0):.2f}</td></tr>"
            for item in self.items)
        head = "".join(f"<th>{name}</th>" for name in ("step", "variants", "status", "rows", "seconds"))
        return (f"<p>{html.escape(repr(self))}</p><details><summary>{len(self.items)} step outputs</summary>"
                f"<table><tr>{head}</tr>{rows}</table></details>")


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
    keep_going: bool = False,
) -> BuildReport:
    """Build what is missing; `executor` runs the nodes (default: one after another in this process).

    `keep_going`: a failing step does not stop the others; its descendants are skipped, and once every
    other step is built `BuildFailed` says how many were built, failed and skipped (no lockfile is written)."""
    items = plan(graph, cache, only, force)
    report = BuildReport(items)
    to_run = [item for item in items if item.action == "run"]
    runtime = replace(runtime, llm_budget=check_budget(graph, to_run, runtime, cache))
    lines = _BuildLines(graph, cache, to_run, report, log)
    executor = executor or InlineExecutor(graph, cache, runtime, log)
    try:
        executor.prepare([item.node for item in to_run], log, runtime)
        report.failures = run_ready([item.node for item in to_run], executor, forced=set(force),
                                    on_start=lines.started, on_done=lines.finished, on_failed=lines.failed,
                                    on_skipped=lines.skipped, on_error="keep-going" if keep_going else "stop")
    finally:
        executor.close()
        if runtime.llm_budget is not None:
            runtime.llm_budget.remove()
    if report.failures.errors:
        raise _incomplete(graph, report)
    for item in items:
        key, state = item.node.key, item.state
        if item.action == "run" or state.rows is None:  # built now (or by another process): read what it made
            entry = cache.get(key)
            state = EntryState([], entry.manifest.rows, entry.manifest.content_hash) if entry is not None else state
        if state.rows is not None:
            report.rows[key], report.contents[key] = state.rows, state.content
    if write_lockfile:
        write_recipe_lock(graph, cache, report, narrowed=bool(only) or bool(graph.recipe.overrides))
    return report


def write_recipe_lock(graph: Graph, cache: Cache, report: BuildReport, narrowed: bool) -> None:
    """Write RECIPE.lock: a full build's is exactly the recipe's nodes now; a narrowed one (`--set`, `--only`,
    the API's `set=`/`only=`) merges what it built into the lockfile, which keeps everything else."""
    path = graph.recipe.lock_path
    with collector_paused(), cache.flock(key_of(("lockfile", str(path.resolve())))):  # read, merge, write: one build at a time
        if narrowed:
            built = graph.to_lock(report.rows, report.contents, keys={item.node.key for item in report.items})
            write_lock(path, merge_locks(read_lock(path), built), cache)
        else:
            write_lock(path, graph.to_lock(report.rows, report.contents), cache)


class _BuildLines:
    """The build's log: a line when a step starts, finishes, fails or is skipped, each naming its place in the run."""

    def __init__(self, graph: Graph, cache: Cache, to_run: list[PlanItem], report: BuildReport, log: Callable[[str], None]):
        self.graph, self.cache, self.report, self.log = graph, cache, report, log
        self.position = {item.node.key: (index, item) for index, item in enumerate(to_run, 1)}
        self.first_said: dict[str, int] = {}  # reason -> the position whose line said it

    @functools.cached_property
    def lock(self) -> Lock | None:
        """The lockfile as it was before this build wrote it (read only when a step runs: a no-op build needs none)."""
        return read_lock(self.graph.recipe.lock_path)

    def where(self, node: Node) -> str:
        return f"[{self.position[node.key][0]}/{len(self.position)}] {node.step} for {variant_label(self.graph, node)}"

    def started(self, node: Node) -> None:
        """The reason a step runs, said in full once: a later step with the same reason points back to it."""
        index, item = self.position[node.key]
        reason = as_sentence(item.reasons)
        first = self.first_said.setdefault(reason, index)
        said = reason if first == index else f"the same reason as [{first}/{len(self.position)}]"
        self.log(f"▶ {self.where(node)}: {said}")

    def finished(self, node: Node, run: NodeRun) -> None:
        for line in run.log:
            self.log(f"  {node.step}: {line}")
        self.report.seconds[node.key] = run.seconds
        if not run.built:
            self.report.built_elsewhere.add(node.key)
        done = plural(run.rows, "row") + ("" if run.built else ", built by another process")
        self.log(f"✓ {self.where(node)}: {done} in {run.seconds:.1f}s{_dropped_note(self.cache, node.key)}")
        if run.built:
            self._compare_with_lock(node)

    def _compare_with_lock(self, node: Node) -> None:
        """One line when this build made other bytes for a key than the lockfile's build did."""
        before = self.lock.content_of(node.key) if self.lock else None  # read once a step has run
        entry = self.cache.get(node.key)
        if before is None or entry is None or entry.manifest.content_hash == before:
            return
        self.log(f"⚠ {node.step} for {variant_label(self.graph, node)}: output differs from the lockfile's build: "
                 f"this step is not reproducible across these settings (content {before[:12]} → "
                 f"{entry.manifest.content_hash[:12]}; see docs/recipes.md#reproducibility)")

    def failed(self, node: Node, error: BaseException) -> None:
        logging.getLogger(LOGGER).debug("%s failed", node.step, exc_info=error)
        self.log(f"✗ {self.where(node)}: {one_line(error)}")

    def skipped(self, node: Node, failed: list[str]) -> None:
        steps = sorted({self.graph.nodes[key].step for key in failed})
        self.log(f"- {self.where(node)}: skipped, waits for failed {', '.join(steps)}")


def one_line(error: BaseException) -> str:
    """A failure as one line: a user error as it reads (located), anything else with its type's name."""
    return str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}".replace("\n", " ")


def _incomplete(graph: Graph, report: BuildReport) -> BuildFailed:
    """The summary of a keep-going build some of whose steps failed: exit code 2 when each was a user error, else 1."""
    errors = report.failures.errors
    failed_steps = ", ".join(sorted({graph.nodes[key].step for key in errors}))
    counts = f"{len(report.seconds)} built, {len(errors)} failed, {len(report.failures.skipped)} skipped"
    all_user = all(isinstance(error, UserError) for error in errors.values())
    return BuildFailed(f"build incomplete: {counts} (failed: {failed_steps}; the ✗ lines above say why)",
                       exit_code=2 if all_user else 1, report=report)


def check_budget(graph: Graph, items: list[PlanItem], runtime: Runtime, cache: Cache | None = None) -> "RequestBudget | None":
    """Refuse, before any work, a build that plans more LLM requests or tokens than its budget; else, when the
    build asks an LLM and `cache` is given, the budget its backends charge every request to while it runs."""
    usage = planned_usage(items)
    budget = graph.recipe.model.budget
    limits = {}
    for what in ("requests", "tokens"):
        limit = limits[what] = runtime.resolve(f"max_{what}", getattr(budget, f"max_{what}"))
        total = sum(getattr(estimate, what) for _, estimate in usage)
        if total <= limit:
            continue
        item, biggest = max(usage, key=lambda pair: getattr(pair[1], what))
        raise UserError(
            f"the build plans ~{total:,} LLM {what} (this step ~{getattr(biggest, what):,}), over the budget of {limit:,}",
            file=str(graph.recipe.path), line=graph.recipe.line("steps", item.node.step), field=f"steps.{item.node.step}",
            hint=f"lower n, or raise budget.max_{what} in the recipe or --max-{what} on the command line")
    if not usage or cache is None:
        return None
    from synthforge.backends.llm import RequestBudget  # only when the build asks an LLM

    return RequestBudget.create(cache.shared_dir("budgets"), limits["requests"], limits["tokens"])


def _dropped_note(cache: Cache, key: str) -> str:
    """Rows a step dropped (blank texts, duplicates...), for its build line."""
    from synthforge.steps.rows import describe_dropped

    entry = cache.get(key)
    dropped = entry.manifest.meta.get("dropped") if entry is not None else None
    return f" ({describe_dropped(dropped)})" if dropped and any(dropped.values()) else ""
