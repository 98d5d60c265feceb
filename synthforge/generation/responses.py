"""Every request's response for one run of an LLM step (`generate`, `judge`): the orchestration around a backend.

`StepResponses` builds the step's backend at the runtime settings it resolved, opens the per-response cache
and answers `fetch(requests, phase)`: cached responses first; prompts another process is already requesting
are waited for, not requested again; the rest are claimed and generated in shards (whole decoding batches
for a batching backend), each response committed to the cache as it arrives, so a killed run resumes from
the last one. It counts what it did (cache hits, generated tokens, retries, rate limits) for the step's meta.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from synthforge.backends.llm import (
    BackendParams, GenerationRequest, GenerationResponse, attempts_spent, backend_status, decode_batches, load_model,
)
from synthforge.stepapi import StepContext
from synthforge.text_tables import plural

COUNTERS = ("responses_cached", "responses_generated", "responses_from_other_process", "generated_prompt_tokens",
            "generated_completion_tokens", "retries", "rate_limited")


class StepResponses:
    """A step's backend and response cache for one run (a context manager: the cache is open inside `with`)."""

    def __init__(self, ctx: StepContext, config: BackendParams, *, device: str | None = None,
                 batch_size: int | None = None, concurrency: int | None = None):
        from synthforge.backends.llm import make_backend

        self.ctx, self.config = ctx, config
        runtime = ctx.runtime
        self.backend_options = {
            "config": config,
            "models_dir": ctx.cache.shared_dir("models"),
            "device": runtime.resolve("device", device, getattr(config, "device", None), default="auto"),
            "batch_size": runtime.resolve("batch_size", batch_size, getattr(config, "batch_size", None)),
            "concurrency": runtime.resolve("concurrency", concurrency, getattr(config, "concurrency", None)),
            "log": ctx.log,
            "budget": runtime.llm_budget,
        }
        self.backend = make_backend(**self.backend_options)
        self.stats: Counter = Counter()
        self.endpoint_events: list[dict[str, Any]] = []  # a pool's endpoints leaving and rejoining
        self.cache = None

    def __enter__(self) -> "StepResponses":
        from synthforge.generation.response_cache import ResponseCache

        self.cache = ResponseCache(self.ctx.cache.shared_dir("responses"), log=self.ctx.log).__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.cache.__exit__(*exc_info)
        self.cache = None

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

    def counters(self) -> dict[str, Any]:
        """What this run did, for the step's meta (endpoint events only when there were some)."""
        counted = {name: self.stats[name] for name in COUNTERS}
        return {**counted, **({"endpoint_events": self.endpoint_events} if self.endpoint_events else {})}

    def fetch(self, requests: list[GenerationRequest], phase: str) -> list[GenerationResponse]:
        """Every request's response, in order: from the cache, else from the backend (cached as it arrives).

        Prompts another process is already requesting are waited for, not requested again."""
        from synthforge.backends.llm import request_identity
        from synthforge.generation.response_cache import response_key

        if not requests:
            return []
        cache = self.cache
        identity = self.backend.identity()
        keys = [response_key(self.backend.type, request_identity(self.backend, identity, request), request)
                for request in requests]
        responses: list[GenerationResponse | None] = [None] * len(requests)
        hits = cache.get_many(keys)
        missing = []
        for i, key in enumerate(keys):
            if key in hits:
                responses[i] = hits[key]
            else:
                missing.append(i)
        self.stats["responses_cached"] += len(requests) - len(missing)
        while missing:
            mine = cache.claim(keys[i] for i in missing)
            self._generate_missing([i for i in missing if keys[i] in mine], requests, keys, responses, phase)
            others = [i for i in missing if keys[i] not in mine]
            if not others:
                break
            self.ctx.log(f"{self.ctx.step}: waiting for {plural(len(others), phase + ' response')} another process is requesting")
            arrived = cache.wait_for(keys[i] for i in others)
            for i in others:
                if keys[i] in arrived:
                    responses[i] = arrived[keys[i]]
                    self.stats["responses_from_other_process"] += 1
            missing = [i for i in others if keys[i] not in arrived]  # claimed again next round
        return responses

    def _generate_missing(self, missing: list[int], requests: list[GenerationRequest], keys: list[str],
                          responses: list, phase: str) -> None:
        from synthforge.progress import progress
        from synthforge.sharding import run_shards, shard_rows

        if not missing:
            return
        if not self.ctx.runtime.ray:  # on Ray the shard actors load the model
            load_model(self.backend)  # before the bar opens, so the model's status lines come first
        missing, shards = self._shards(missing, requests, shard_rows(self.ctx.runtime))
        with progress(len(missing), f"{self.ctx.step}: {phase}", "rows", enabled=self.ctx.runtime.progress) as bar:
            streaming = {"on": False}  # once the backend reports tokens as they decode, rows count when they end

            def decoded(new_tokens: int, finished_rows: int) -> None:
                streaming["on"] = True
                bar.update(finished_rows, tokens=new_tokens)

            def arrived(position: int, response: GenerationResponse) -> None:
                i = missing[position]
                if response.rejected is None:
                    self.cache.put(keys[i], response)  # committed now: a killed run resumes from here
                responses[i] = response
                self.stats["responses_generated"] += 1
                self.stats["generated_prompt_tokens"] += response.prompt_tokens
                self.stats["generated_completion_tokens"] += response.completion_tokens
                if not streaming["on"]:
                    bar.update(1, status=backend_status(self.backend), tokens=response.completion_tokens)

            def shard_done(shard: int, result: tuple[list[GenerationResponse], int, int, list]) -> None:
                shard_responses, retries, rate_limited, endpoint_events = result
                self.stats["retries"] += retries
                self.stats["rate_limited"] += rate_limited
                self.endpoint_events += endpoint_events
                if self.ctx.runtime.ray:  # in-process shards report each response as it arrives
                    for j, response in enumerate(shard_responses):
                        arrived(shards[shard].start + j, response)

            started = time.perf_counter()
            worker = GenerationWorker(self.backend_options, self.backend, on_tokens=decoded)
            payloads = [[requests[missing[position]] for position in rows] for rows in shards]
            run_shards(self.ctx.runtime, worker, payloads, shard_done,
                       on_item=lambda shard, j, response: arrived(shards[shard].start + j, response))
            self._record_speed(sum(responses[i].completion_tokens for i in missing), time.perf_counter() - started)

    def _shards(self, missing: list[int], requests: list[GenerationRequest], size: int) -> tuple[list[int], list[range]]:
        """`missing` cut into shards of about `size` rows. A backend that decodes in batches (`batches_of`)
        gets shards of whole batches in its batch order, so every row meets the batch-mates it meets
        unsharded and the merged output does not depend on the shard size."""
        from synthforge.sharding import shard_ranges, whole_group_ranges

        batches = decode_batches(self.backend, [requests[i] for i in missing]) if len(missing) > size else None
        if batches is None:
            return missing, shard_ranges(len(missing), size)
        ordered = [missing[i] for batch in batches for i in batch]
        return ordered, whole_group_ranges([len(batch) for batch in batches], size)

    def _record_speed(self, new_tokens: int, seconds: float) -> None:
        from synthforge.generation import speed

        speed.record(self.ctx.cache, self.backend.type, self.config.model_label(), new_tokens, seconds)


class GenerationWorker:
    """Generates one shard of requests; builds its backend (and loads the model) on first use in a process."""

    def __init__(self, backend_options: dict[str, Any], backend=None, on_tokens=None):
        self.backend_options = backend_options
        self.backend = backend  # the step's own backend, when the shards run in its process
        self.on_tokens = on_tokens  # the step's progress bar, likewise

    def __getstate__(self) -> dict[str, Any]:
        # Another process (a Ray actor) builds its own backend and logs to its own output.
        return {"backend_options": {**self.backend_options, "log": print}, "backend": None, "on_tokens": None}

    def __call__(self, requests: list[GenerationRequest], on_item=None) -> tuple[list[GenerationResponse], int, int, list]:
        """The shard's responses in request order, the retries they took, the rate limits (429/503) met and
        the endpoints that left or rejoined a pool meanwhile."""
        from synthforge.backends.llm import make_backend

        if self.backend is None:
            self.backend = make_backend(**self.backend_options)
        responses = self.backend.generate(requests, on_response=on_item, on_tokens=self.on_tokens)
        return (responses, *attempts_spent(self.backend))
