"""Nodes as Ray tasks, on a local Ray instance or a cluster (`--address`).

Every worker reads and writes the same cache folder (it must be visible at the same path on
every Ray node) and takes the same per-key lock as a local build, so a node whose entry appears
while it waits is not recomputed. Ray retries a task whose worker died (`max_retries`); a step's
output depends only on its key, so a retried node writes the same bytes.

Resources per node: row-parallel steps (generate, embed) ask for no CPU themselves, because their
shards run on an actor pool that holds the devices (see synthforge.sharding); other steps that
load a model ask for a GPU when the cluster has one; everything else asks for one CPU.
Row-parallel steps run on the driver's Ray node: the per-response cache is sqlite in WAL mode,
which needs every process that opens it on one host.
Tasks send their bars and log lines to the driver through a Ray queue while they run, as local workers do.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from synthforge.errors import UserError
from synthforge.executors.base import EVENTS_EVERY_S, NodeRun, execute_node
from synthforge.progress import forward_to, settings, show_forwarded

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.cache import Cache
    from synthforge.graph import Graph, Node
    from synthforge.stepapi import Runtime

TASK_RETRIES = 3  # retries of a node whose worker process died (Ray's own retry)
INSTALL_HINT = "pip install 'synthforge[ray]'"


def execute_forwarding(events, settings: tuple[int, bool], *args) -> NodeRun:
    """`execute_node` in a Ray task whose bars and log lines go to the driver as they happen."""
    forward_to(events, *settings)
    return execute_node(*args)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed", field="--executor", hint=INSTALL_HINT) from None
    return ray


def node_resources(node: "Node", gpus: bool) -> dict[str, float]:
    step, params = node.resolved.step, node.resolved.run_params
    if step.row_parallel:
        return {"num_cpus": 0}
    if gpus and step.loads_model(params):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1}


class RayExecutor:
    """Hands every ready node to Ray at once: Ray queues them by the resources they ask for."""

    slots = sys.maxsize
    model_slots = None  # GPUs and CPUs are Ray's to count

    def __init__(self, graph: "Graph", cache: "Cache", runtime: "Runtime", address: str | None = None,
                 cpus: int | None = None):
        ray = self.ray = import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.gpus = runtime.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
        self._graph = ray.put(graph)
        self._cache_root = str(cache.root.resolve())
        self._runtime = replace(runtime, ray=True)
        from ray.util.queue import Queue

        self._events = Queue()  # tasks' bars and log lines, shown here while they run (progress.forward_to)
        self._task = ray.remote(execute_forwarding)
        self._refs: dict[Any, str] = {}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._on_driver_node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)

    def prepare(self, nodes: list["Node"], log: Callable[[str], None]) -> None:
        pass

    def submit(self, node: "Node", force: bool) -> None:
        placement = {"scheduling_strategy": self._on_driver_node} if node.resolved.step.row_parallel else {}
        task = self._task.options(**node_resources(node, self.gpus), **placement, max_retries=TASK_RETRIES,
                                  name=f"synthforge {node.step} {node.key[:12]}")
        self._refs[task.remote(self._events, settings(), self._graph, node.key, self._cache_root, self._runtime, force)] = node.key

    def wait(self) -> list[tuple[str, NodeRun | BaseException]]:
        ready: list = []
        while not ready:
            ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=EVENTS_EVERY_S)
            self._show_events()  # a task's events were put (and acknowledged) before it returned
        finished = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                finished.append((key, self.ray.get(ref)))
            except self.ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                finished.append((key, cause))
            except self.ray.exceptions.RayError as exc:  # retries spent, node lost...
                finished.append((key, RuntimeError(f"Ray could not build {key[:12]}: {exc}")))
        return finished

    def _show_events(self) -> None:
        size = self._events.qsize()
        for event in self._events.get_nowait_batch(size) if size else []:
            show_forwarded(event)

    def close(self) -> None:
        for ref in self._refs:
            self.ray.cancel(ref)
        self._show_events()
        self._events.shutdown()
        if self._owns_ray:
            self.ray.shutdown()
