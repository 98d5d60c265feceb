"""Where the nodes of a build run: in this process, in a local pool of spawned processes, or on Ray.

The builder decides what runs and in which order (`base.run_ready`: a node is handed over once
everything upstream of it is built); an executor only runs `running.run_node` for one node
somewhere and hands back what came of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from synthforge.errors import UserError
from synthforge.executors.base import Executor, NodeRun, run_ready

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.cache import Cache
    from synthforge.graph import Graph
    from synthforge.stepapi import Runtime

__all__ = ["Executor", "NodeRun", "executor_from", "run_ready"]


def executor_from(kind: str, graph: "Graph", cache: "Cache", runtime: "Runtime", jobs: int | None, address: str | None,
                  models: int | None) -> Executor | None:
    """The executor `build --executor/--jobs/--address` asked for; None is the sequential in-process build.

    `models=None`: one heavy model at a time on a GPU; on the CPU one per worker, since each worker
    already runs on its own share of the cores."""
    from synthforge.backends.devices import accelerator_present, usable_cpus
    from synthforge.executors.local import AutoExecutor, ProcessExecutor

    if kind == "ray":
        from synthforge.executors.ray_executor import RayExecutor

        return RayExecutor(graph, cache, runtime, address=address, cpus=jobs)
    if address:
        raise UserError("--address is for the Ray executor", field="--address", hint="add --executor ray")
    if models is None and accelerator_present(runtime.device):
        models = 1
    if jobs is None:
        return AutoExecutor(graph, cache, runtime, usable_cpus(), models)
    return ProcessExecutor(graph, cache, runtime, jobs, models) if jobs > 1 else None
