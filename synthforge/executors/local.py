"""Executors on this machine: in the calling process (sequential), or a pool of spawned worker processes.

Workers are spawned, never forked: a forked child of a process that has run faiss hangs in faiss.
Workers send their bars and log lines to the parent over a queue while a step runs (progress.forward_to);
the parent draws one live line per running step and prints the log lines as they come.
Each worker receives the graph once (pool initializer), then only node keys. The workers share the
CPUs: each caps its math libraries at CPUs // jobs threads (threads beyond the cores only spin); the
sequential build caps this process the same way (all CPUs, or the user's OMP_NUM_THREADS), and idle
OpenMP threads sleep (`limit_threads`).
Workers die with the build: on Linux the kernel kills them when their parent dies (PR_SET_PDEATHSIG),
elsewhere a watchdog thread notices the parent is gone; a killed build leaves no worker spending CPU or
an LLM budget.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from synthforge import running
from synthforge.backends.devices import limit_threads, thread_budget, usable_cpus
from synthforge.executors.base import EVENTS_EVERY_S, NodeRun, execute_node, plan_width
from synthforge.progress import forward_to, settings, show_forwarded

if TYPE_CHECKING:  # pragma: no cover
    import concurrent.futures

    from synthforge.cache import Cache
    from synthforge.graph import Graph, Node
    from synthforge.stepapi import Runtime


class InlineExecutor:
    """Runs each node in this process when asked for its result: the sequential build, logs streamed live."""

    slots = 1
    model_slots = 1

    def __init__(self, graph: "Graph", cache: "Cache", runtime: "Runtime", log: Callable[[str], None]):
        self.graph, self.cache, self.runtime, self.log = graph, cache, runtime, log
        self._queued: list[tuple["Node", bool]] = []
        limit_threads(thread_budget())  # as a worker does: one pool of threads per library, idle ones asleep

    def prepare(self, nodes: list["Node"], log: Callable[[str], None], runtime: "Runtime | None" = None) -> None:
        self.runtime = runtime or self.runtime

    def submit(self, node: "Node", force: bool) -> None:
        self._queued.append((node, force))

    def wait(self) -> list[tuple[str, NodeRun | BaseException]]:
        node, force = self._queued.pop(0)
        start = time.perf_counter()
        try:
            outcome = running.run_node(self.graph, node, self.cache, self.runtime, self.log, force=force)
        except Exception as exc:  # handed to the loop, which lets running nodes finish, then raises it
            return [(node.key, exc)]
        return [(node.key, NodeRun(node.key, outcome.manifest.rows, time.perf_counter() - start, outcome.built))]

    def close(self) -> None:
        pass


_WORKER: dict[str, object] = {}


PARENT_POLL_S = 0.5  # the watchdog's interval where the kernel cannot signal a parent's death


def _init_worker(graph: "Graph", cache_root: str, runtime: "Runtime", threads: int, parent: int,
                 events, level: int, bars: bool) -> None:
    die_with_parent(parent)
    limit_threads(threads)  # workers running at once share the CPUs instead of oversubscribing them
    forward_to(events, level, bars)  # bars and log lines reach the parent while the step runs
    _WORKER.update(graph=graph, cache_root=cache_root, runtime=runtime)


def die_with_parent(parent: int) -> None:
    """Make this process end when process `parent` does (even by SIGKILL, which runs no cleanup there)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the call: no signal will come
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), name="synthforge-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # reparented: the build is gone, so is any reader of this worker's result


def _run_in_worker(key: str, force: bool) -> NodeRun:
    return execute_node(_WORKER["graph"], key, _WORKER["cache_root"], _WORKER["runtime"], force)


class ProcessExecutor:
    """Up to `jobs` nodes at once, each in a spawned worker process, at most `models` of them holding a model
    (None: no limit beyond `jobs`)."""

    def __init__(self, graph: "Graph", cache: "Cache", runtime: "Runtime", jobs: int, models: int | None = 1):
        import multiprocessing

        self.slots = jobs
        self.model_slots = models
        self.graph, self.cache, self.runtime = graph, cache, runtime
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._context = multiprocessing.get_context("spawn")
        self._events = self._context.SimpleQueue()  # workers' bars and log lines, drawn here (one line per running step)
        self._futures: dict[concurrent.futures.Future, str] = {}

    def prepare(self, nodes: list["Node"], log: Callable[[str], None], runtime: "Runtime | None" = None) -> None:
        self.runtime = runtime or self.runtime

    def _started(self) -> concurrent.futures.ProcessPoolExecutor:
        """The pool, made on the first submit: its workers get the runtime `prepare` settled."""
        import concurrent.futures

        if self._pool is None:
            threads = max(1, usable_cpus() // self.slots)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.slots, mp_context=self._context, initializer=_init_worker,
                initargs=(self.graph, str(self.cache.root.resolve()), self.runtime, threads, os.getpid(),
                          self._events, *settings()),
            )
        return self._pool

    def submit(self, node: "Node", force: bool) -> None:
        self._futures[self._started().submit(_run_in_worker, node.key, force)] = node.key

    def wait(self) -> list[tuple[str, NodeRun | BaseException]]:
        import concurrent.futures

        done: set = set()
        while not done:
            done, _ = concurrent.futures.wait(self._futures, timeout=EVENTS_EVERY_S,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            self._show_events()  # a worker's events were written before its result: all of them are here
        finished = []
        for future in done:
            key = self._futures.pop(future)
            error = future.exception()
            if isinstance(error, concurrent.futures.process.BrokenProcessPool):
                error = RuntimeError(f"a worker process died while building {key[:12]} (killed, or out of memory)")
            finished.append((key, error if error is not None else future.result()))
        return finished

    def _show_events(self) -> None:
        while not self._events.empty():
            show_forwarded(self._events.get())

    def close(self) -> None:
        # Keep reading while the pool shuts down: a worker still sending must not block on a full pipe.
        stop = threading.Event()
        reader = threading.Thread(target=self._show_events_until, args=(stop,), daemon=True)
        reader.start()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        stop.set()
        reader.join()
        self._show_events()
        self._events.close()

    def _show_events_until(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._show_events()
            stop.wait(EVENTS_EVERY_S)


class AutoExecutor:
    """`--jobs` left to the machine: a pool of min(CPUs, the plan's width) spawned workers when two or more
    steps can run at once, else this process. Spawning a worker costs a second or more (imports), which a
    chain of steps, or a single rebuilt step, never wins back."""

    def __init__(self, graph: "Graph", cache: "Cache", runtime: "Runtime", cpus: int, models: int | None = 1):
        self.graph, self.cache, self.runtime, self.cpus, self.models = graph, cache, runtime, cpus, models
        self._inner: InlineExecutor | ProcessExecutor | None = None
        self.slots, self.model_slots = 1, 1

    def prepare(self, nodes: list["Node"], log: Callable[[str], None], runtime: "Runtime | None" = None) -> None:
        self.runtime = runtime or self.runtime
        jobs = min(self.cpus, plan_width(nodes))
        if jobs > 1:
            self._inner = ProcessExecutor(self.graph, self.cache, self.runtime, jobs, self.models)
        else:
            self._inner = InlineExecutor(self.graph, self.cache, self.runtime, log)
        self.slots, self.model_slots = self._inner.slots, self._inner.model_slots

    def submit(self, node: "Node", force: bool) -> None:
        self._inner.submit(node, force)

    def wait(self) -> list[tuple[str, NodeRun | BaseException]]:
        return self._inner.wait()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
