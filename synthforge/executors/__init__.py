"""Where the nodes of a build run: in this process, in a local pool of spawned processes, or on Ray.

The builder decides what runs and in which order (`base.run_ready`: a node is handed over once
everything upstream of it is built); an executor only runs `building.run_node` for one node
somewhere and hands back what came of it.
"""

from __future__ import annotations

from synthforge.executors.base import Executor, NodeRun, run_ready

__all__ = ["Executor", "NodeRun", "run_ready"]
