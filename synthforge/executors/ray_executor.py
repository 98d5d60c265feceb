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

A killed driver leaves nothing running. On a cluster (`--address`) Ray ends a dead driver's job: its tasks
and actors are killed. A local instance this build started is watched by a reaper process (Linux): it
notes the driver's descendants (Ray's servers, agents, workers) twice a second and kills them the moment
its pipe from the driver closes without a goodbye, as it does when the driver dies, SIGKILL included
(Ray's own reaper stops its servers, but its agents lived on and its workers took seconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
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
        self._reaper = None
        if self._owns_ray:
            ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            self._reaper = None if address else start_reaper()
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

    def prepare(self, nodes: list["Node"], log: Callable[[str], None], runtime: "Runtime | None" = None) -> None:
        if runtime is not None:
            self._runtime = replace(runtime, ray=True)  # progress kept: bars reach the driver through the queue

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
        if self._reaper is not None:
            stop_reaper(self._reaper)


# -- the reaper of a local Ray instance --------------------------------------------------------------
REAPER_POLL_S = 0.5
_GOODBYE = b"q"  # the driver closing down in order: nothing to kill


def start_reaper() -> subprocess.Popen | None:
    """A helper process that kills this process's descendants once this process dies (Linux; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    code = f"from synthforge.executors.ray_executor import reap; reap({os.getpid()})"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_reaper(reaper: subprocess.Popen) -> None:
    try:
        reaper.stdin.write(_GOODBYE)
        reaper.stdin.close()
    except OSError:
        pass
    reaper.wait()


def reap(driver: int) -> None:
    """The reaper's body: remember `driver`'s descendants until stdin closes; without a goodbye, kill them."""
    import select

    known: dict[int, str] = {}  # pid -> start time, so that a pid reused by an unrelated process is spared
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], REAPER_POLL_S)
        if ready:
            if os.read(sys.stdin.fileno(), 1) == _GOODBYE:
                return
            break  # end of file: the driver is gone
        known.update(_descendants(driver, _process_table()))
    table = _process_table()
    for pid in list(known):  # what they started since the last look, reparented or not
        known.update(_descendants(pid, table))
    for pid, started in known.items():
        if pid != os.getpid() and table.get(pid, (None, None))[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), fields[19].decode())
    return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found[pid] = table[pid][1]
        stack.extend(children.get(pid, []))
    return found
