"""Generation through any OpenAI-compatible `/v1/chat/completions` endpoint.

Requests run concurrently (bounded by a semaphore) on httpx's async client.
429, 5xx, timeouts, dropped connections and malformed JSON are retried with
exponential backoff, at most `max_retries` times per request. The API key is
read from the environment variable the recipe names; its value is sent only in
the Authorization header and is scrubbed from every message we raise.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Sequence
from typing import Any

from synthforge.backends.llm import GenerationRequest, GenerationResponse, OnResponse
from synthforge.errors import UserError
from synthforge.keys import credential_free_url

CONNECTIONS_PER_POOL = 8
RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx


class RetryableError(Exception):
    """A failure worth another try (rate limit, server error, timeout, garbage)."""


class OpenAILLM:
    type = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, concurrency: int = 8,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = _read_api_key(api_key_env)
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.retries = 0  # retries spent in the last generate() call

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def identity(self) -> dict[str, Any]:
        return endpoint_identity(self.base_url, self.model)

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None,
                 on_tokens=None) -> list[GenerationResponse]:
        """Responses arrive one by one under concurrency: `on_response` is the progress (`on_tokens` is not used)."""
        self.retries = 0
        try:
            return _run_coroutine(self._generate_all(requests, on_response))
        except UserError as exc:
            exc.message = self.redact(exc.message)
            raise

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    async def _generate_all(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None) -> list[GenerationResponse]:
        import httpx

        results: list[GenerationResponse | None] = [None] * len(requests)
        pending = iter(range(len(requests)))
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # httpx's pool costs CPU per request in proportion to its size, so high concurrency
        # uses several small pools (measured: one 64-connection pool is ~6x slower than 8 of 8).
        pools = [
            httpx.AsyncClient(timeout=self.timeout_s, headers=headers,
                              limits=httpx.Limits(max_connections=CONNECTIONS_PER_POOL, max_keepalive_connections=CONNECTIONS_PER_POOL))
            for _ in range(-(-self.concurrency // CONNECTIONS_PER_POOL))
        ]

        async def worker(client) -> None:
            for index in pending:  # workers share one iterator: each request is taken once
                results[index] = await self._with_retries(client, requests[index])
                if on_response is not None:
                    on_response(index, results[index])

        workers = [asyncio.create_task(worker(pools[w // CONNECTIONS_PER_POOL])) for w in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:  # one failure stops the rest; finished responses were already reported
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for client in pools:
                await client.aclose()
        return results  # type: ignore[return-value]

    async def _with_retries(self, client, request: GenerationRequest) -> GenerationResponse:
        attempt = 0
        while True:
            try:
                return await self._post(client, request)
            except RetryableError as exc:
                if attempt >= self.max_retries:
                    raise UserError(f"{self.url} still failing after {attempt + 1} attempts: {exc}",
                                    field="backend", hint="raise backend.max_retries or check the server") from None
                attempt += 1
                self.retries += 1
                # jittered exponential backoff; randomness here only spaces out retries, never output
                await asyncio.sleep(self.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()))

    async def _post(self, client, request: GenerationRequest) -> GenerationResponse:
        import httpx

        payload = {
            "model": self.model,
            "messages": request.chat(),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_new_tokens,
            "seed": request.seed,
        }
        try:
            reply = await client.post(self.url, json=payload)
        except httpx.ConnectError as exc:
            raise UserError(f"cannot reach {self.url}: {_reason(exc)}", field="backend.base_url",
                            hint="is the server running?") from None
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None
        if reply.status_code in RETRY_STATUSES or reply.status_code >= 500:
            raise RetryableError(f"HTTP {reply.status_code}")
        if reply.status_code >= 400:
            raise UserError(f"{self.url} answered HTTP {reply.status_code}: {reply.text[:200]}", field="backend")
        return _parse(reply.content)


def endpoint_identity(base_url: str, model: str) -> dict[str, str]:
    """The model name and the endpoint without credentials: what keys an HTTP backend's outputs."""
    return {"base_url": credential_free_url(base_url), "model": model}


def _run_coroutine(coroutine):
    """asyncio.run, also from code already inside an event loop (notebooks): then on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _parse(body: bytes) -> GenerationResponse:
    try:
        data = json.loads(body)
        text = data["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RetryableError(f"malformed response ({type(exc).__name__})") from None
    usage = data.get("usage") or {}
    return GenerationResponse(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))


def _reason(exc: Exception) -> str:
    """The root cause of a connect error, in words (httpx wraps it in "All connection attempts failed")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _read_api_key(api_key_env: str | None) -> str | None:
    if not api_key_env:
        return None
    value = os.environ.get(api_key_env)
    if not value:
        raise UserError(f"environment variable {api_key_env} is not set", field="backend.api_key_env",
                        hint=f"export {api_key_env}=<your key>")
    return value
