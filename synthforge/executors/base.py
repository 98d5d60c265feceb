"""The executor contract and the one loop that feeds it: hand over every node whose upstream is built."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from synthforge import running
from synthforge.cache import Cache
from synthforge.progress import LOGGER, forwarding

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.graph import Graph, Node
    from synthforge.stepapi import Runtime


EVENTS_EVERY_S = 0.2  # how often a parent shows what its workers sent (bars, log lines) while it waits for them


@dataclass
class NodeRun:
    """What came of running one node: its rows, wall time, whether this run built it (False: another
    process did while it waited for the key's lock), and what the step logged."""

    key: str
    rows: int
    seconds: float
    built: bool = True
    log: list[str] = field(default_factory=list)


class Executor(Protocol):
    slots: int  # how many nodes may run at once
    model_slots: int | None  # how many of them may hold a heavy model at once (None: the executor's resources decide)

    def prepare(self, nodes: list["Node"], log: Callable[[str], None], runtime: "Runtime | None" = None) -> None:
        """Called once with every node the build will run, before the first `submit`; `runtime` (when given)
        replaces the one the executor was made with: the builder's adds the build's LLM budget."""
        ...

    def submit(self, node: "Node", force: bool) -> None:
        """Start running `node` (its upstream entries exist)."""
        ...

    def wait(self) -> list[tuple[str, NodeRun | BaseException]]:
        """Block until at least one submitted node finished; each finished key with its outcome or error."""
        ...

    def close(self) -> None: ...


def execute_node(graph: "Graph", key: str, cache_root: str | Path, runtime: "Runtime", force: bool) -> NodeRun:
    """Run one node in a worker (a spawned process or a Ray task). Its log lines reach the parent as they
    happen when the worker forwards (`progress.forward_to`), else they travel back with the outcome."""
    node = graph.nodes[key]
    lines: list[str] = []
    log = (lambda line: logging.getLogger(LOGGER).info(f"  {node.step}: {line}")) if forwarding() else lines.append
    start = time.perf_counter()
    outcome = running.run_node(graph, node, Cache(cache_root), runtime, log, force=force)
    return NodeRun(key, outcome.manifest.rows, time.perf_counter() - start, outcome.built, lines)


@dataclass
class Failures:
    """What a keep-going run could not build: failed nodes with their errors, and skipped nodes with the
    failed ancestors they wait for (keys)."""

    errors: dict[str, BaseException] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)


ON_ERROR = ("stop", "keep-going")


def run_ready(
    nodes: list["Node"],
    executor: Executor,
    *,
    forced: set[str],
    on_start: Callable[["Node"], None],
    on_done: Callable[["Node", NodeRun], None],
    on_error: str = "stop",
    on_failed: Callable[["Node", BaseException], None] = lambda node, error: None,
    on_skipped: Callable[["Node", list[str]], None] = lambda node, failed: None,
) -> Failures:
    """Run `nodes` (in dependency order) on `executor`, each once everything upstream of it is built.

    Nodes are handed over in recipe order among the ready ones, so a run with one slot is the
    sequential build. What a failure stops is `on_error`'s to say, here for every executor:
    "stop": nothing new starts; running nodes finish (and stay cached), then the first error is raised.
    "keep-going": the failed node's descendants are skipped (`on_skipped`), every other node still
    runs; the failures are returned.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    pending = {node.key: node for node in nodes}
    running: dict[str, "Node"] = {}
    failures = Failures()
    stop = on_error == "stop"
    while (pending and not (stop and failures.errors)) or running:
        if not (stop and failures.errors):
            _skip_descendants_of_failures(pending, failures, on_skipped)
            _start_ready(pending, running, executor, forced, on_start)
        if not running:
            break
        for key, outcome in executor.wait():
            node = running.pop(key)
            if not isinstance(outcome, BaseException):
                on_done(node, outcome)
                continue
            failures.errors[key] = outcome
            if not stop:
                on_failed(node, outcome)
    if stop and failures.errors:
        raise next(iter(failures.errors.values()))
    return failures


def _skip_descendants_of_failures(pending: dict[str, "Node"], failures: Failures,
                                  on_skipped: Callable[["Node", list[str]], None]) -> None:
    """Drop every pending node downstream of a failed one (pending is in dependency order: one pass)."""
    for key, node in list(pending.items()):
        failed = {ancestor for up in node.upstream
                  for ancestor in ([up] if up in failures.errors else failures.skipped.get(up, []))}
        if failed:
            del pending[key]
            failures.skipped[key] = sorted(failed)
            on_skipped(node, failures.skipped[key])


def _start_ready(pending: dict[str, "Node"], running: dict[str, "Node"], executor: Executor, forced: set[str],
                 on_start: Callable[["Node"], None]) -> None:
    models_running = sum(_loads_model(n) for n in running.values())
    for key, node in list(pending.items()):
        if len(running) >= executor.slots:
            return
        if any(up in pending or up in running for up in node.upstream):
            continue
        if _loads_model(node) and executor.model_slots is not None and models_running >= executor.model_slots:
            continue
        del pending[key]
        running[key] = node
        models_running += _loads_model(node)
        on_start(node)
        executor.submit(node, node.step in forced)


def plan_width(nodes: list["Node"]) -> int:
    """The most of `nodes` that can ever run at once: the largest count at one depth of their DAG
    (depth counted over `nodes` only; what is not in the list is already built)."""
    depth: dict[str, int] = {}
    for node in nodes:  # dependency order: upstream nodes come first
        depth[node.key] = 1 + max((depth[up] for up in node.upstream if up in depth), default=0)
    counts: dict[int, int] = {}
    for level in depth.values():
        counts[level] = counts.get(level, 0) + 1
    return max(counts.values(), default=0)


def _loads_model(node: "Node") -> bool:
    return node.resolved.step.loads_model(node.resolved.run_params)
