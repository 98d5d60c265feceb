"""Several servers of one deployment (e.g. vLLM replicas) behind one backend: balancing and failover.

Each endpoint is its own backend (`OpenAILLM`, with its own concurrency and retries) running on
its own thread. They pull chunks of requests from one shared queue, so a faster server takes
more of the work. An endpoint whose backend fails (down, or out of retries) leaves the pool and
the requests of its chunk that had no answer go back to the queue for the others; only when
every endpoint has left does the first error surface. Leaving and rejoining (at the next batch) are logged
and kept in `events`, which `generate` records in its meta (`endpoint_events`).

The pool's identity is the primary endpoint's: every replica serves the same model with the
same seeds, so which one answered never enters a cache key, and the per-response cache makes
a rerun exact whichever server answers it. `OpenAILLM.from_config` builds a pool from a backend block's `endpoints`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from synthforge.backends.llm import GenerationRequest, GenerationResponse, LLMBackend, OnResponse

CHUNK_PER_SLOT = 4  # requests an endpoint takes at a time, per unit of its concurrency


class EndpointPool:
    type = "openai"

    def __init__(self, endpoints: Sequence[LLMBackend], log: Callable[[str], None] = print):
        self.endpoints = list(endpoints)
        self.retries = 0
        self.served: dict[str, int] = {}  # base URL -> responses it gave in the last generate()
        self.log = log
        self.left: set[str] = set()  # endpoints that left the pool in an earlier generate(): they rejoin the next
        self.events: list[dict[str, Any]] = []  # endpoints leaving and rejoining, for the step's meta

    def identity(self) -> dict[str, Any]:
        return self.endpoints[0].identity()

    def structured_identity(self) -> dict[str, Any]:
        return self.endpoints[0].structured_identity()

    def use_budget(self, budget) -> None:
        """Every endpoint charges the one budget (`RequestBudget`) for each request it sends."""
        for endpoint in self.endpoints:
            endpoint.use_budget(budget)

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None,
                 on_tokens=None) -> list[GenerationResponse]:
        """`on_tokens` is ignored: these backends report whole responses."""
        results: list[GenerationResponse | None] = [None] * len(requests)
        queue = deque(range(len(requests)))
        changed = threading.Condition()  # guards everything below; signalled when a chunk ends
        in_flight = [0]  # chunks being served: their unanswered requests may come back to the queue
        errors: list[BaseException] = []
        self.retries, self.served, self.events = 0, {}, []
        for name in sorted(self.left):
            self._event(name, "rejoined", f"endpoint {name} rejoins the pool (it left in an earlier batch)")
        self.left.clear()

        def take(size: int) -> list[int]:
            with changed:
                while not queue and in_flight[0]:
                    changed.wait()
                chunk = [queue.popleft() for _ in range(min(size, len(queue)))]
                in_flight[0] += bool(chunk)
                return chunk

        def serve(endpoint) -> None:
            name = endpoint.identity().get("base_url", repr(endpoint))
            size = max(1, getattr(endpoint, "concurrency", 1) * CHUNK_PER_SLOT)
            while chunk := take(size):

                def answered(j: int, response: GenerationResponse, chunk=chunk) -> None:
                    with changed:  # one caller at a time: on_response commits to the cache and moves a progress bar
                        results[chunk[j]] = response
                        self.served[name] = self.served.get(name, 0) + 1
                        if on_response is not None:
                            on_response(chunk[j], response)

                failed = None
                try:
                    endpoint.generate([requests[i] for i in chunk], on_response=answered)
                except Exception as exc:  # this endpoint leaves the pool; the others take its unanswered requests
                    failed = exc
                with changed:
                    self.retries += getattr(endpoint, "retries", 0)
                    if failed is not None:
                        errors.append(failed)
                        queue.extend(i for i in chunk if results[i] is None)
                        self.left.add(name)
                        remaining = len(self.endpoints) - len(self.left)
                        self._event(name, "left", f"endpoint {name} leaves the pool ({_one_line(failed)}); "
                                    f"{remaining} of {len(self.endpoints)} serve the rest", error=_one_line(failed))
                    in_flight[0] -= 1
                    changed.notify_all()
                if failed is not None:
                    return

        threads = [threading.Thread(target=serve, args=(e,), daemon=True) for e in self.endpoints]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if any(r is None for r in results):
            raise errors[0]
        return results  # type: ignore[return-value]

    def _event(self, name: str, event: str, message: str, **extra: str) -> None:
        self.events.append({"endpoint": name, "event": event, "at": round(time.time(), 3), **extra})
        self.log(message)


def _one_line(error: BaseException) -> str:
    """An endpoint's failure, short: its type and first line (the backend's errors carry no secrets)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]
