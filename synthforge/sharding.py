"""Shards of row-parallel steps (generate, embed): contiguous row ranges that workers share.

A step splits its rows into shards of `Runtime.shard_rows` rows and hands each to a
`ShardWorker`: a picklable object that loads its model on first use and turns one
shard's payload into one shard's result. Shards run one after another in the step's
process or, under the Ray executor, on a Ray actor pool (one model per actor, a GPU
each when the cluster has GPUs; Ray restarts a dead actor and retries its shard).
The step stores each finished shard where a rerun finds it (`ShardStore`, or the
per-response cache for `generate`) and merges the results in row order, so a failure
loses at most the shards in flight and the merged output does not depend on the
shard size.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from synthforge.cache import Cache
    from synthforge.stepapi import Runtime

DEFAULT_SHARD_ROWS = 4096
ACTOR_RESTARTS = 3  # a killed actor is restarted and its shard retried this many times

OnItem = Callable[[int, Any], None]


class ShardWorker(Protocol):
    def __call__(self, payload: Any, on_item: OnItem | None = None) -> Any:
        """One shard's result; `on_item(j, item)` may report its j-th item early (in-process only)."""
        ...


def shard_ranges(total: int, shard_rows: int, align: int = 1) -> list[range]:
    """Contiguous ranges covering 0..total, each `shard_rows` long (rounded up to a multiple of `align`)."""
    size = max(align, -(-shard_rows // align) * align)
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def whole_group_ranges(group_sizes: Sequence[int], shard_rows: int) -> list[range]:
    """Contiguous ranges of whole groups (e.g. decoding batches) covering every row: a shard closes before a
    group that would take it past `shard_rows` rows (a group larger than that is a shard of its own)."""
    ranges: list[range] = []
    start = end = 0
    for size in group_sizes:
        if end > start and end + size - start > shard_rows:
            ranges.append(range(start, end))
            start = end
        end += size
    if end > start:
        ranges.append(range(start, end))
    return ranges


def shard_rows(runtime: "Runtime") -> int:
    return runtime.resolve("shard_rows", default=DEFAULT_SHARD_ROWS)


def run_shards(runtime: "Runtime", worker: ShardWorker, payloads: Sequence[Any],
               on_done: Callable[[int, Any], None], on_item: Callable[[int, int, Any], None] | None = None) -> None:
    """Compute every payload's result with `worker` and report it as `on_done(shard, result)`.

    In-process, shards run in order and `on_item(shard, j, item)` reports items as they exist;
    on Ray they run on an actor pool and finish in any order.
    """
    if not payloads:
        return
    if runtime.ray:
        _run_on_ray(runtime, worker, payloads, on_done)
        return
    for shard, payload in enumerate(payloads):
        report = (lambda j, item, shard=shard: on_item(shard, j, item)) if on_item else None
        on_done(shard, worker(payload, report))


class _ShardActor:
    """Holds one worker (and so one loaded model) for the actor's life."""

    def __init__(self, worker: ShardWorker):
        self.worker = worker

    def run(self, shard: int, payload: Any) -> tuple[int, Any]:
        return shard, self.worker(payload)


def _run_on_ray(runtime: "Runtime", worker: ShardWorker, payloads: Sequence[Any], on_done: Callable[[int, Any], None]) -> None:
    import ray
    from ray.util import ActorPool

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if runtime.device != "cpu" else 0
    per_actor = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
    capacity = gpus or max(1, int(resources.get("CPU", 1)))
    actor_class = ray.remote(_ShardActor).options(**per_actor, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
    actors = [actor_class.remote(worker) for _ in range(min(len(payloads), capacity))]
    try:
        pool = ActorPool(actors)
        for shard, result in pool.map_unordered(lambda actor, item: actor.run.remote(*item), list(enumerate(payloads))):
            on_done(shard, result)
    finally:
        for actor in actors:
            ray.kill(actor)


class ShardStore:
    """Finished array shards of one step output under shared/shards/<key>/, each written atomically."""

    def __init__(self, cache: "Cache", key: str):
        self.folder = cache.shared_dir("shards") / key

    def path(self, rows: range) -> Path:
        return self.folder / f"{rows.start:012d}-{rows.stop:012d}.npy"

    def load(self, rows: range) -> "np.ndarray | None":
        import numpy as np

        path = self.path(rows)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # damaged: recompute rather than serve it
        return array if len(array) == len(rows) else None

    def save(self, rows: range, array: "np.ndarray") -> None:
        import numpy as np

        from synthforge.cache import atomic_write

        atomic_write(self.path(rows), lambda fh: np.save(fh, array, allow_pickle=False))

    def discard(self) -> None:
        """Drop the shards once the step's output holds them all."""
        shutil.rmtree(self.folder, ignore_errors=True)
