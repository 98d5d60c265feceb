"""The executor contract and the one loop that feeds it: hand over every node whose upstream is built."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.builder import Graph, Node
    from synthforge.stepapi import Runtime


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

    def submit(self, node: "Node", force: bool) -> None:
        """Start running `node` (its upstream entries exist)."""
        ...

    def wait(self) -> list[tuple[str, NodeRun | BaseException]]:
        """Block until at least one submitted node finished; each finished key with its outcome or error."""
        ...

    def close(self) -> None: ...


def execute_node(graph: "Graph", key: str, cache_root: str | Path, runtime: "Runtime", force: bool) -> NodeRun:
    """Run one node in a worker (a spawned process or a Ray task); its log lines travel back with the outcome."""
    from synthforge.builder import run_node
    from synthforge.cache import Cache

    lines: list[str] = []
    start = time.perf_counter()
    outcome = run_node(graph, graph.nodes[key], Cache(cache_root), runtime, lines.append, force=force)
    return NodeRun(key, outcome.manifest.rows, time.perf_counter() - start, outcome.built, lines)


def run_ready(
    nodes: list["Node"],
    executor: Executor,
    *,
    forced: set[str],
    on_start: Callable[["Node"], None],
    on_done: Callable[["Node", NodeRun], None],
) -> None:
    """Run `nodes` (in dependency order) on `executor`, each once everything upstream of it is built.

    Nodes are handed over in recipe order among the ready ones, so a run with one slot is the
    sequential build. After a failure nothing new starts; running nodes finish (and stay cached),
    then the first error is raised.
    """
    pending = {node.key: node for node in nodes}
    running: dict[str, "Node"] = {}
    error: BaseException | None = None
    while (pending and error is None) or running:
        if error is None:
            _start_ready(pending, running, executor, forced, on_start)
        for key, outcome in executor.wait():
            node = running.pop(key)
            if isinstance(outcome, BaseException):
                error = error or outcome
            else:
                on_done(node, outcome)
    if error is not None:
        raise error


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


def _loads_model(node: "Node") -> bool:
    return node.resolved.step.loads_model(node.resolved.run_params)
