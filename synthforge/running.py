"""Computing one node into the cache: its step run under the key's lock, its tables and manifest written
into a staging folder and renamed into place. Below the executors (which run it somewhere) and the builder."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from synthforge.cache import Cache, Manifest, write_entry_files
from synthforge.errors import UserError
from synthforge.graph import Graph, Node
from synthforge.planning import variant_label
from synthforge.progress import labelled
from synthforge.recipe.fields import map_leaves
from synthforge.recipe.resolve import Recipe, RefTarget
from synthforge.stepapi import InputTable, Runtime, StepContext
from synthforge.version import __version__


@dataclass
class NodeOutcome:
    manifest: Manifest
    built: bool  # False: another process built it while we waited for its lock


def run_node(graph: Graph, node: Node, cache: Cache, runtime: Runtime, log: Callable[[str], None], force: bool = False) -> NodeOutcome:
    """Compute one node into the cache, unless another process did while we waited for its lock.

    A damaged entry counts as missing: it is rebuilt and replaced."""
    with cache.flock(node.key):
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
            several = len(graph.recipe.variants) > 1
            try:
                with labelled(variant_label(graph, node) if several else None):
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
