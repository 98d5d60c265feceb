"""Several servers of one deployment (e.g. vLLM replicas) behind one backend: balancing and failover.

Each endpoint is its own backend (`OpenAILLM`, with its own concurrency and retries) running on
its own thread. They pull chunks of requests from one shared queue, so a faster server takes
more of the work. An endpoint whose backend fails (down, or out of retries) leaves the pool and
the requests of its chunk that had no answer go back to the queue for the others; only when
every endpoint has left does the first error surface.

The pool's identity is the primary endpoint's: every replica serves the same model with the
same seeds, so which one answered never enters a cache key, and the per-response cache makes
a rerun exact whichever server answers it. `OpenAILLM.from_config` builds a pool from a backend block's `endpoints`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from synthforge.backends.llm import GenerationRequest, GenerationResponse, LLMBackend, OnResponse

CHUNK_PER_SLOT = 4  # requests an endpoint takes at a time, per unit of its concurrency


class EndpointPool:
    type = "openai"

    def __init__(self, endpoints: Sequence[LLMBackend]):
        self.endpoints = list(endpoints)
        self.retries = 0
        self.served: dict[str, int] = {}  # base URL -> responses it gave in the last generate()

    def identity(self) -> dict[str, Any]:
        return self.endpoints[0].identity()

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
        self.retries, self.served = 0, {}

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
