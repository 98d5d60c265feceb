"""Generation through any OpenAI-compatible `/v1/chat/completions` endpoint.

Requests run concurrently on httpx's async client. One attempt is bounded as a whole by
`timeout_s` (a server trickling bytes cannot stretch it) and reads at most MAX_RESPONSE_BYTES.
429, 5xx, timeouts, refused or dropped connections and malformed JSON are retried, at most
`max_retries` times per request: after the server's `Retry-After` (capped at `max_retry_after_s`)
when it sends one, else after a jittered exponential backoff. `AdaptiveConcurrency` halves the
requests in flight on rate limits and raises them again as requests succeed.

The API key is read from the environment variable the recipe names (stripped; refused if it
holds whitespace or non-ASCII inside), sent only in the Authorization header, and every error
text that may carry server output goes through `scrub` before it is cut short.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from synthforge.backends.llm import (
    BudgetSpent, EndpointConfig, GenerationRequest, GenerationResponse, LLMBackend, OnResponse, OpenAIBackendConfig,
    RequestBudget,
)
from synthforge.errors import UserError
from synthforge.keys import credential_free_url, shown_url, url_secrets

CONNECTIONS_PER_POOL = 8
RETRY_STATUSES = frozenset({408, 409, 425, 429})  # plus every 5xx
RATE_LIMIT_STATUSES = frozenset({429, 503})  # the ones that may carry Retry-After
MAX_RESPONSE_BYTES = 1_000_000  # a chat reply is kilobytes; more is a broken server, not a row
ERROR_BODY_CHARS = 200  # of a server's error body quoted in a message (after scrubbing)
MAX_BACKOFF_S = 60.0

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;}]+")


def scrub(text: str, secrets: Sequence[str | None]) -> str:
    """`text` without any of `secrets` (nor their JSON-escaped forms) and without any bearer token."""
    for secret in filter(None, secrets):
        text = text.replace(secret, "***").replace(json.dumps(secret)[1:-1], "***")
    return _BEARER.sub(r"\1***", text)


class RetryableError(Exception):
    """A failure worth another try (rate limit, server error, timeout, lost connection, garbage)."""

    def __init__(self, message: str, *, retry_after: float | None = None, rate_limited: bool = False,
                 unreachable: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.unreachable = unreachable


class AdaptiveConcurrency:
    """The one place that decides how many requests are in flight.

    A rate limit halves the limit, once per round (answers to requests sent before the cut do
    not cut again); `limit` successes in a row raise it by one, up to `maximum`.
    """

    def __init__(self, maximum: int, on_change: Callable[[int, int], None] | None = None):
        import asyncio

        self.maximum = maximum
        self.limit = maximum
        self.in_flight = 0
        self.trace = [maximum]  # every limit taken, in order
        self._round = 0
        self._successes = 0
        self._on_change = on_change
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        """Wait for a free slot; returns the round the request was sent in."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            return self._round

    async def release(self, sent_in_round: int, outcome: str) -> None:
        async with self._changed:
            self.in_flight -= 1
            if outcome == "rate_limited" and sent_in_round == self._round:
                self._set(max(1, self.limit // 2))
            elif outcome == "ok":
                self._successes += 1
                if self._successes >= self.limit and self.limit < self.maximum:
                    self._set(self.limit + 1)
            self._changed.notify_all()

    def _set(self, limit: int) -> None:
        if self._on_change is not None:
            self._on_change(self.limit, limit)
        self.limit, self._successes, self._round = limit, 0, self._round + 1
        self.trace.append(limit)


class OpenAILLM:
    type = "openai"
    Config = OpenAIBackendConfig

    @classmethod
    def identity_of(cls, config: OpenAIBackendConfig) -> dict[str, str]:
        return endpoint_identity(config.base_url, config.model)

    @classmethod
    def card_facts(cls, config: OpenAIBackendConfig) -> dict[str, str]:
        return {"model_id": config.model, "quantization": "as the server runs it (not visible to a client)"}

    @classmethod
    def from_config(cls, config: OpenAIBackendConfig, *, concurrency: int, log: Callable[[str], None] = print,
                    **_device_settings) -> LLMBackend:
        """One server at `concurrency` (resolved by the step), or a pool over it and `endpoints` (each at its
        own concurrency, else the backend's); device settings do not apply to a server."""
        if not config.endpoints:
            return cls.one_server(config, concurrency, log)
        from synthforge.backends.endpoint_pool import EndpointPool

        servers = [(config.base_url, concurrency)]
        for extra in config.endpoints:
            extra = extra if isinstance(extra, EndpointConfig) else EndpointConfig(base_url=extra)
            servers.append((extra.base_url, extra.concurrency or config.concurrency))
        return EndpointPool([cls.one_server(config.model_copy(update={"base_url": url, "endpoints": []}), slots, log)
                             for url, slots in servers], log)

    @classmethod
    def one_server(cls, config: OpenAIBackendConfig, concurrency: int, log: Callable[[str], None] = print) -> "OpenAILLM":
        """One OpenAI-compatible server (`config.base_url`) at `concurrency` requests in flight."""
        return cls(config.base_url, config.model, api_key_env=config.api_key_env, concurrency=concurrency,
                   timeout_s=config.timeout_s, max_retries=config.max_retries, backoff_s=config.backoff_s,
                   max_retry_after_s=config.max_retry_after_s, response_format=config.response_format, log=log)

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, concurrency: int = 8,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 0.5, max_retry_after_s: float = 60.0,
                 response_format: str = "json_schema", log: Callable[[str], None] | None = None):
        self.base_url = base_url.rstrip("/")
        self.shown_url = shown_url(base_url)  # what every message and log line names: no query, no credentials
        self.model = model
        self.api_key_env = api_key_env
        self.api_key = read_api_key(api_key_env)
        self.secrets = [self.api_key, *url_secrets(base_url)]
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.response_format = response_format
        self.log = log or (lambda message: None)
        self.retries = 0  # retries spent in the last generate() call
        self.rate_limited = 0  # 429/503 answers in the last generate() call
        self.limiter: AdaptiveConcurrency | None = None
        self.budget: RequestBudget | None = None

    def use_budget(self, budget: RequestBudget) -> None:
        """Charge every attempt (retries too) to the build's budget before it is sent."""
        self.budget = budget

    @property
    def url(self) -> str:
        """The endpoint as messages name it (the request goes to `request_url`, query included)."""
        return f"{self.shown_url}/chat/completions"

    def request_url(self):
        """`/chat/completions` joined onto the base URL's path; its query string stays the request's query."""
        import httpx

        base = httpx.URL(self.base_url)
        return base.copy_with(path=base.path.rstrip("/") + "/chat/completions")

    def identity(self) -> dict[str, Any]:
        return endpoint_identity(self.base_url, self.model)

    def structured_identity(self) -> dict[str, str]:
        """Added to a structured response's key: the schema's wire form, where it is not the default (a server
        that ignores a form it does not know answers free text, which must not be served for the other form)."""
        return {} if self.response_format == "json_schema" else {"response_format": self.response_format}

    def status(self) -> dict[str, Any]:
        """What the progress line shows: the requests allowed in flight now."""
        return {"concurrency": self.limiter.limit} if self.limiter else {}

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None,
                 on_tokens=None) -> list[GenerationResponse]:
        """Responses arrive one by one under concurrency: `on_response` is the progress (`on_tokens` is not used)."""
        self.retries = self.rate_limited = 0
        try:
            return _run_coroutine(self._generate_all(requests, on_response))
        except UserError as exc:
            exc.message = self.scrub(exc.message)
            exc.hint = self.scrub(exc.hint) if exc.hint else exc.hint
            raise

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def _server_text(self, body: str) -> str:
        """Server output fit for a message: scrubbed first, then cut (cutting first could split a key)."""
        text = " ".join(self.scrub(body).split())
        return text if len(text) <= ERROR_BODY_CHARS else text[:ERROR_BODY_CHARS] + "..."

    async def _generate_all(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None) -> list[GenerationResponse]:
        import asyncio
        import httpx

        results: list[GenerationResponse | None] = [None] * len(requests)
        pending = iter(range(len(requests)))
        self.limiter = AdaptiveConcurrency(self.concurrency, self._log_concurrency)
        self._target = self.request_url()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # httpx's pool costs CPU per request in proportion to its size, so high concurrency
        # uses several small pools (measured: one 64-connection pool is ~6x slower than 8 of 8).
        pools = [
            httpx.AsyncClient(timeout=self.timeout_s, headers=headers,
                              limits=httpx.Limits(max_connections=CONNECTIONS_PER_POOL, max_keepalive_connections=CONNECTIONS_PER_POOL))
            for _ in range(-(-self.concurrency // CONNECTIONS_PER_POOL))
        ]

        spent: list[BudgetSpent] = []

        async def worker(client) -> None:
            for index in pending:  # workers share one iterator: each request is taken once
                try:
                    results[index] = await self._with_retries(client, requests[index])
                except BudgetSpent as exc:  # this worker stops; the others finish what they have sent (it is paid for)
                    spent.append(exc)
                    return
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
        if spent:
            raise spent[0]
        return results  # type: ignore[return-value]

    def _log_concurrency(self, old: int, new: int) -> None:
        why = "rate limited" if new < old else "requests succeed"
        self.log(f"{self.shown_url}: {why}, concurrency {old} -> {new}")

    async def _with_retries(self, client, request: GenerationRequest) -> GenerationResponse:
        """One request: attempts within the concurrency limit, waits between them outside it."""
        import asyncio

        started = time.monotonic()
        for attempt in range(self.max_retries + 1):
            sent_in = await self.limiter.acquire()
            outcome = "ok"
            try:
                if self.budget is not None:
                    self.budget.take(1)
                response = await self._attempt(client, request)
                if self.budget is not None:
                    self.budget.spend_tokens(response.prompt_tokens + response.completion_tokens)
                return response
            except RetryableError as exc:
                outcome = "rate_limited" if exc.rate_limited else "failed"
                self.rate_limited += exc.rate_limited
                if attempt >= self.max_retries:
                    raise self._gave_up(exc, attempt + 1, time.monotonic() - started) from None
                retry_after = exc.retry_after
            finally:
                await self.limiter.release(sent_in, outcome)
            self.retries += 1
            await asyncio.sleep(self._delay(attempt + 1, retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        # jittered exponential backoff; randomness here only spaces out retries, never output
        return min(self.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()), MAX_BACKOFF_S)

    def _gave_up(self, exc: RetryableError, attempts: int, seconds: float) -> UserError:
        if exc.unreachable:
            return UserError(f"cannot reach {self.url}: {exc} ({attempts} attempts in {seconds:.1f}s)",
                             field="backend.base_url", hint="is the server running?")
        return UserError(f"{self.url} still failing after {attempts} attempts: {exc}", field="backend",
                         hint="raise backend.max_retries or check the server")

    async def _attempt(self, client, request: GenerationRequest) -> GenerationResponse:
        """One HTTP attempt, bounded as a whole by timeout_s."""
        import asyncio
        import httpx

        try:
            async with asyncio.timeout(self.timeout_s):
                async with client.stream("POST", self._target, json=self._payload(request)) as reply:
                    return await self._read(reply)
        except TimeoutError:
            raise RetryableError(f"no complete answer within timeout_s={self.timeout_s:g}s") from None
        except httpx.ConnectError as exc:
            raise RetryableError(self._server_text(_reason(exc)), unreachable=True) from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {self._server_text(str(exc))}") from None

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        payload = {
            "model": self.model,
            "messages": request.chat(),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_new_tokens,
            "seed": request.seed,
        }
        if request.schema is not None:  # structured output: the form the server reads (backend.response_format)
            schema = json.loads(request.schema)
            payload["response_format"] = ({"type": "json_object", "schema": schema} if self.response_format == "json_object"
                                          else {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}})
        return payload

    async def _read(self, reply) -> GenerationResponse:
        status = reply.status_code
        if status >= 400:
            body = self._server_text((await _read_capped(reply, 64_000))[0].decode("utf-8", "replace"))
            if status in RETRY_STATUSES or status >= 500:
                retry_after = parse_retry_after(reply.headers.get("retry-after")) if status in RATE_LIMIT_STATUSES else None
                raise RetryableError(f"HTTP {status}: {body}", retry_after=retry_after,
                                     rate_limited=status in RATE_LIMIT_STATUSES)
            hint = f"check the key in ${self.api_key_env}" if status in (401, 403) and self.api_key_env else None
            raise UserError(f"{self.url} answered HTTP {status}: {body}", field="backend", hint=hint)
        content, complete = await _read_capped(reply, MAX_RESPONSE_BYTES)
        if not complete:
            return GenerationResponse("", 0, 0, rejected=f"response larger than {MAX_RESPONSE_BYTES:,} bytes")
        return _parse(content)


async def _read_capped(reply, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether that was all of it."""
    declared = reply.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return b"", False
    chunks, size = [], 0
    async for chunk in reply.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
        chunks.append(chunk)
    return b"".join(chunks), True


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def endpoint_identity(base_url: str, model: str) -> dict[str, str]:
    """The model name and the endpoint without credentials: what keys an HTTP backend's outputs."""
    return {"base_url": credential_free_url(base_url), "model": model}


def _run_coroutine(coroutine):
    """asyncio.run, also from code already inside an event loop (notebooks): then on a helper thread."""
    import asyncio

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


def read_api_key(api_key_env: str | None) -> str | None:
    """The key in $api_key_env, stripped (keys read from files end in a newline); never echoed in an error."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise UserError(f"environment variable {api_key_env} is not set (or blank)", field="backend.api_key_env",
                        hint=f"export {api_key_env}=<your key>")
    bad = next((i for i, c in enumerate(key) if not "!" <= c <= "~"), None)
    if bad is not None:
        what = "whitespace" if key[bad].isspace() else "a non-ASCII or control character"
        raise UserError(f"the value of {api_key_env} has {what} at position {bad + 1} of {len(key)}",
                        field="backend.api_key_env", hint=f"set {api_key_env} to the key alone")
    return key
