"""The LLM backend interface, the built-in backends' config blocks, and the registry of backend types.

A backend turns chat requests into responses. It reports each response as soon
as it exists (`on_response`), so the caller can commit it to the response cache
and an interrupted run loses at most the requests in flight.

A recipe's `backend:` block names a registered type (`BACKEND_TYPES`: built-ins here, plugins
through the `synthforge.backends` entry-point group): the type's backend class (a `BackendClass`,
imported only when a recipe names it) says which config class validates the block, what identity
enters keys, and how to build the backend. Implementations import this module, never the reverse.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BeforeValidator, ConfigDict, Field, SerializeAsAny, ValidationInfo, field_serializer, field_validator

from synthforge.cache import descriptor_lock
from synthforge.errors import UserError
from synthforge.plugins import Registry
from synthforge.stepapi import StepParams


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    schema: str | None = None  # a JSON Schema (canonical JSON text) the reply must follow: structured output

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


@dataclass(frozen=True)
class GenerationResponse:
    text: str
    prompt_tokens: int
    completion_tokens: int
    rejected: str | None = None  # why there is no usable text (e.g. an oversized reply); never cached


OnResponse = Callable[[int, GenerationResponse], None]
OnTokens = Callable[[int, int], None]  # (new tokens, rows finished) at a decoding step: progress within a batch

_LEDGER = struct.Struct("<QQ")  # requests sent, tokens used
_open_ledgers: dict[str, int] = {}  # path -> file descriptor, one per process
_ledger_threads = threading.Lock()  # flock excludes other processes only: threads share this process's descriptor


@dataclass(frozen=True)
class RequestBudget:
    """The LLM requests and tokens one build may spend, counted while it runs by every process of the build.

    The count lives in a 16-byte file (`path`, in the cache's shared folder, made by the builder) that each
    charge updates under an exclusive lock: steps running in parallel workers, their shards and the servers of
    an endpoint pool draw on the one count, so the cap holds for the build as a whole. A backend charges a
    request before sending it (each retry is a request) and its tokens when it is answered; once either cap is
    reached no further request goes out (`BudgetSpent`), and whatever was answered stays in the response cache.
    """

    path: str
    max_requests: int
    max_tokens: int

    @classmethod
    def create(cls, folder: Path, max_requests: int, max_tokens: int) -> "RequestBudget":
        import socket
        import tempfile

        folder.mkdir(parents=True, exist_ok=True)
        owner = f"build-{socket.gethostname()}-"  # the folder may be shared by the hosts of a cluster
        _remove_dead_builds(folder, owner)
        fd, path = tempfile.mkstemp(dir=folder, prefix=f"{owner}{os.getpid()}-", suffix=".budget")
        with os.fdopen(fd, "wb") as fh:
            fh.write(_LEDGER.pack(0, 0))
        return cls(path, max_requests, max_tokens)

    def remove(self) -> None:
        with _ledger_threads:
            fd = _open_ledgers.pop(self.path, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def take(self, count: int = 1) -> int:
        """Count up to `count` requests about to be sent; how many may go (at least one), or BudgetSpent
        (nothing counted) if either cap is reached."""
        granted = 0

        def more(requests: int, tokens: int) -> tuple[int, int]:
            nonlocal granted
            if requests >= self.max_requests or tokens >= self.max_tokens:
                raise BudgetSpent.of(self, requests, tokens)
            granted = min(count, self.max_requests - requests)
            return requests + granted, tokens

        self._update(more)
        return granted

    def spent_error(self) -> "BudgetSpent":
        """The error for a caller that got fewer requests than it asked for and has sent them."""
        return BudgetSpent.of(self, *self.spent())

    def spend_tokens(self, tokens: int) -> None:
        """Count the tokens (prompt + new) of an answered request."""
        if tokens > 0:
            self._update(lambda requests, used: (requests, used + tokens))

    def spent(self) -> tuple[int, int]:
        return self._update(lambda requests, tokens: (requests, tokens))

    def _update(self, change: Callable[[int, int], tuple[int, int]]) -> tuple[int, int]:
        with _ledger_threads:
            fd = _open_ledgers.get(self.path)
            if fd is None:
                fd = _open_ledgers[self.path] = os.open(self.path, os.O_RDWR)
            with descriptor_lock(fd):
                counts = change(*_LEDGER.unpack(os.pread(fd, _LEDGER.size, 0)))
                os.pwrite(fd, _LEDGER.pack(*counts), 0)
                return counts


def _remove_dead_builds(folder: Path, owner: str) -> None:
    """Drop the counts of this host's builds that were killed (their process is gone) before removing theirs."""
    for path in folder.glob(f"{owner}*.budget"):
        pid = path.name[len(owner):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class BudgetSpent(UserError):
    """The build's LLM budget is spent: no further request is sent (made by `of`; pickles like any UserError)."""

    @classmethod
    def of(cls, budget: RequestBudget, requests: int, tokens: int) -> "BudgetSpent":
        if requests >= budget.max_requests:
            option, counted = "requests", f"{requests:,} of {budget.max_requests:,} requests (retries included)"
        else:
            option, counted = "tokens", f"{tokens:,} of {budget.max_tokens:,} tokens"
        return cls(f"LLM budget spent: {counted} used, no more are sent; every answered response is kept in the "
                   "response cache", hint=f"raise budget.max_{option} or --max-{option}; a rerun resumes from the cached responses")


class ChargedUpFront:
    """A backend that does not charge the budget itself (`use_budget`): each generate() call is charged its
    requests before it starts (only those that fit are sent); tokens as responses arrive."""

    def __init__(self, backend: "LLMBackend", budget: RequestBudget):
        self._backend, self._budget = backend, budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None,
                 on_tokens: OnTokens | None = None) -> list[GenerationResponse]:
        granted = self._budget.take(len(requests)) if requests else 0

        def counted(index: int, response: GenerationResponse) -> None:
            self._budget.spend_tokens(response.prompt_tokens + response.completion_tokens)
            if on_response is not None:
                on_response(index, response)

        responses = self._backend.generate(requests[:granted], on_response=counted, on_tokens=on_tokens)
        if granted < len(requests):
            raise self._budget.spent_error()
        return responses


class LLMBackend(Protocol):
    type: str

    def identity(self) -> dict[str, Any]:
        """What makes this model this model (enters every response's cache key)."""
        ...

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None,
                 on_tokens: OnTokens | None = None) -> list[GenerationResponse]:
        """One response per request, in request order; `on_response(i, r)` fires as each arrives.

        A backend that decodes rows in batches also reports `on_tokens` as tokens appear (others may ignore it).
        A backend may also have `use_budget(budget: RequestBudget)`: then it charges each request as it sends it
        (retries included) and stops at the cap (`make_backend` calls it).
        """
        ...

    # Optional capabilities (a backend without one behaves as its default; callers go through the
    # functions below, never getattr):
    #   load() -> None                 load the model now (default: on first generate)
    #   status() -> dict               a live status for progress bars, e.g. the current concurrency (default: {})
    #   batches_of(requests) -> list[list[int]]  the indices it decodes together, in its order (default: no batches)
    #   retries: int, rate_limited: int, events: list[dict]  spent in the last generate() (default: 0, 0, [])


def load_model(backend: LLMBackend) -> None:
    """Load `backend`'s model now, if it has one to load (so its status lines come before a progress bar)."""
    load = getattr(backend, "load", None)
    if load is not None:
        load()


def backend_status(backend: LLMBackend) -> dict[str, Any]:
    """The backend's live status for a progress bar (e.g. the HTTP backend's current concurrency), or {}."""
    status = getattr(backend, "status", None)
    return status() if status is not None else {}


def decode_batches(backend: LLMBackend, requests: Sequence[GenerationRequest]) -> list[list[int]] | None:
    """The batches (request indices) a batching backend decodes together, in its order; None if it does not batch."""
    batches_of = getattr(backend, "batches_of", None)
    return batches_of(requests) if batches_of is not None else None


def attempts_spent(backend: LLMBackend) -> tuple[int, int, list[dict[str, Any]]]:
    """What the last generate() call spent: retries, rate limits met (429/503), endpoints leaving or rejoining."""
    return getattr(backend, "retries", 0), getattr(backend, "rate_limited", 0), list(getattr(backend, "events", []))


class BackendParams(StepParams):
    """Base of every backend's config block: `type` names a registered backend type."""

    loads_model: ClassVar[bool] = False  # holds a heavy model in this process (executors run few such steps at once)
    structured_output: ClassVar[bool] = False  # honours a request's JSON Schema (GenerationRequest.schema)

    type: str = Field(description="the name of a registered backend type, e.g. transformers or openai")

    def model_label(self) -> str:
        """The model, as plan's time estimate and the measured speeds name it (the type if there is no `model`)."""
        return str(getattr(self, "model", self.type))

    @classmethod
    def model_for(cls, data: Any) -> type[StepParams]:
        """The config class that validates `data`: its type's (error hints list that class's fields)."""
        if cls is BackendParams and isinstance(data, dict) and str(data.get("type")) in BACKEND_TYPES.targets:
            return backend_class(str(data["type"])).Config
        return cls

    @classmethod
    def registered_models(cls) -> list[type[StepParams]]:
        """Every config class a `backend:` block may hold (plugins included): walked for runtime-only fields."""
        if cls is not BackendParams:
            return [cls]
        return [backend_class(name).Config for name in BACKEND_TYPES.names()]


class BackendClass(Protocol):
    """What a backend type registers: its config class, its identity without loading, and its factory."""

    Config: ClassVar[type[BackendParams]]

    @classmethod
    def identity_of(cls, config: Any) -> dict[str, Any]:
        """What decides the outputs, without loading the model: enters the generate step's key."""
        ...

    # optional: `card_facts(config) -> {"model_id": ..., "quantization": ...}` for dataset cards (model_card_facts)
    # optional: `structured_identity_of(config)` (and the backend's `structured_identity()`): what decodes under a
    # schema (a library and its version), added to the identity only where a schema is used (backend_identity)

    @classmethod
    def from_config(cls, config: Any, *, models_dir: Path | None, device: str, batch_size: int | None,
                    concurrency: int | None, log: Callable[[str], None]) -> LLMBackend:
        """The backend at the runtime settings the step resolved (command line > step > backend block > default)."""
        ...


class TransformersBackendConfig(BackendParams):
    loads_model: ClassVar[bool] = True
    structured_output: ClassVar[bool] = True  # decoded under the schema (backends/constrained.py, xgrammar)

    type: Literal["transformers"] = Field(description="`transformers`: a local Hugging Face model run in this process")
    model: str = Field(
        "smollm2", description="`smollm2` (the packaged SmolLM2-135M-Instruct) or a local model folder; its files' "
        "content enters the key"
    )
    gguf_file: str | None = Field(None, description="a GGUF file inside `model` to load instead of its safetensors")
    batch_size: int = Field(
        default=8, ge=1, exclude=True, description="prompts decoded together, a positive integer; runtime-only, never in a key"
    )
    device: str = Field(
        default="auto", exclude=True,
        description="`auto` (cuda in bf16 when present, else cpu in fp32), cpu, cuda:0...; runtime-only, never in a key",
    )


def checked_base_url(value: str, field: str) -> str:
    """An http(s) URL without user:password@ (refused, never echoed: credentials belong in api_key_env)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise UserError("credentials in base_url are refused", field=field,
                        hint="remove user:password@ and name the variable holding the key in api_key_env")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        from synthforge.keys import shown_url

        raise UserError(f"base_url must be an http(s) URL, got '{shown_url(value)}'", field=field,
                        hint="e.g. http://127.0.0.1:8000/v1")
    return value


class EndpointConfig(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [{"base_url": "http://127.0.0.1:8001/v1", "concurrency": 4}]})

    base_url: str = Field(description="the URL of another server of the same deployment, e.g. http://gpu2:8000/v1")
    concurrency: int | None = Field(
        default=None, ge=1, description="the most requests in flight to this server (default: the backend's concurrency)"
    )

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return checked_base_url(value, "backend.endpoints.base_url")


class OpenAIBackendConfig(BackendParams):
    structured_output: ClassVar[bool] = True  # sent as response_format (vLLM, llama.cpp's server, OpenAI)

    type: Literal["openai"] = Field(description="`openai`: any OpenAI-compatible chat completions server (vLLM, llama.cpp...)")
    base_url: str = Field(
        description="the server's http(s) URL, e.g. http://127.0.0.1:8000/v1 (POSTs go to <base_url>/chat/completions); "
        "no user:password@, the key goes in api_key_env"
    )
    model: str = Field(description="the model name the server serves; it enters every response key with base_url")
    response_format: Literal["json_schema", "json_object"] = Field(
        default="json_schema", exclude_if=lambda value: value == "json_schema",
        description="how a field's JSON Schema is sent: json_schema ({type: json_schema, json_schema: {name, schema}}: "
        "OpenAI, vLLM, llama.cpp's llama-server) or json_object ({type: json_object, schema}: llama-cpp-python's "
        "server); json_object enters the step's key and each structured response's key",
    )
    api_key_env: str | None = Field(
        default=None, exclude=True,
        description="the NAME of the environment variable holding the API key; runtime-only, never in a key",
    )
    concurrency: int = Field(
        default=8, ge=1, exclude=True,
        description="the most requests in flight (fewer while rate limited); runtime-only, never in a key",
    )
    timeout_s: float = Field(
        default=60.0, gt=0, exclude=True,
        description="seconds one whole attempt may take, however slowly bytes arrive; runtime-only, never in a key",
    )
    max_retries: int = Field(
        default=5, ge=0, exclude=True,
        description="retries per request on 429/5xx, timeouts, lost connections or bad JSON; runtime-only, never in a key",
    )
    backoff_s: float = Field(
        default=0.5, ge=0, exclude=True,
        description="seconds before the first retry, doubled each time (jittered); runtime-only, never in a key",
    )
    max_retry_after_s: float = Field(
        default=60.0, ge=0, exclude=True,
        description="the most seconds a server's Retry-After is obeyed; runtime-only, never in a key",
    )
    endpoints: list[str | EndpointConfig] = Field(
        default_factory=list, exclude=True,
        description="more servers of the same deployment (URLs or {base_url, concurrency}) that requests are balanced "
        "over with base_url, moving to the others when one is down; runtime-only, never in a key",
    )

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return checked_base_url(value, "backend.base_url")

    @field_validator("endpoints")
    @classmethod
    def _endpoints_without_credentials(cls, value: list) -> list:
        for index, endpoint in enumerate(value):
            if isinstance(endpoint, str):
                checked_base_url(endpoint, f"backend.endpoints.{index}")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):  # never echo it: may be a key
            raise UserError("api_key_env must be the NAME of an environment variable, not a key",
                            field="backend.api_key_env", hint="e.g. api_key_env: OPENAI_API_KEY")
        return value

    @field_serializer("base_url")
    def _without_credentials(self, url: str) -> str:
        """Dumps feed keys and lockfiles: never a user:password@ or a secret query parameter."""
        from synthforge.keys import credential_free_url

        return credential_free_url(url)


# type -> "module:Class" of its BackendClass. Add a line here (or an entry point) for a new backend.
BACKEND_TYPES = Registry("synthforge.backends", "backend type", {
    "transformers": "synthforge.backends.transformers_llm:TransformersLLM",
    "openai": "synthforge.backends.openai_llm:OpenAILLM",
})


def register_backend(type_name: str, target: str) -> None:
    """Add a backend type ("module:Class" of a BackendClass); plugin modules call this when imported."""
    BACKEND_TYPES.register(type_name, target)


def backend_class(type_name: str) -> type[BackendClass]:
    return BACKEND_TYPES.load(type_name)


def _registered_config(value: Any, info: ValidationInfo) -> Any:
    """Validate a `backend:` block with its type's config class (errors keep their field paths)."""
    if isinstance(value, BackendParams):
        return value
    if not isinstance(value, dict):
        raise ValueError("a backend block is a mapping with a 'type', e.g. {type: transformers}")
    if "type" not in value:
        raise UserError("missing 'type'", field=info.field_name,
                        hint=f"add e.g. 'type: transformers' (types: {', '.join(BACKEND_TYPES.names())})")
    try:
        config_class = backend_class(str(value["type"])).Config
    except UserError as exc:
        exc.field = f"{info.field_name}.type"
        raise
    return config_class.model_validate(value)


# A `backend:` block: any registered type's config (dumped as that class, so keys see all of its fields).
BackendConfig = Annotated[SerializeAsAny[BackendParams], BeforeValidator(_registered_config)]

# A step that asks an LLM may override its backend's runtime settings (never in a key).
BatchSizeOverride = Annotated[int | None, Field(
    ge=1, exclude=True,
    description="prompts per model batch, overriding the backend's batch_size; runtime-only, never in a key")]
ConcurrencyOverride = Annotated[int | None, Field(
    ge=1, exclude=True,
    description="requests in flight to an HTTP backend, overriding the backend's concurrency; runtime-only, never in a key")]
DeviceOverride = Annotated[str | None, Field(
    exclude=True,
    description="the device of a local model, e.g. cpu or cuda:0, overriding the backend's device; runtime-only, never in a key")]


def backend_identity(config: BackendParams, structured: bool = False) -> dict[str, Any]:
    """What decides a backend's outputs, without loading it: enters the generate step's key.

    The same facts as `LLMBackend.identity()` (which keys each response), plus the backend type; with
    `structured` (a reply follows a schema), what decodes under the schema where the type says (keys without
    a schema stay as they were)."""
    identity = {"type": config.type, **backend_class(config.type).identity_of(config)}
    return {**identity, **structured_identity(config)} if structured else identity


def structured_identity(config: BackendParams) -> dict[str, Any]:
    """What decodes under a schema on this backend type (none: a server does it, and its identity says so);
    raises a UserError where the type cannot (a missing library)."""
    describe = getattr(backend_class(config.type), "structured_identity_of", None)
    return describe(config) if describe is not None else {}


def request_identity(backend: LLMBackend, identity: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
    """The backend's `identity()` as one response's key holds it (`backend_identity`'s rule, per request)."""
    structured = getattr(backend, "structured_identity", None)
    if request.schema is not None and structured is not None:
        return {**identity, **structured()}
    return identity


def model_card_facts(config: BackendParams) -> dict[str, str]:
    """The generator as a dataset card names it: its full model id and quantization, from the backend type's
    optional `card_facts(config)` (no model is loaded); a type without one is named by its model label."""
    describe = getattr(backend_class(config.type), "card_facts", None)
    return describe(config) if describe is not None else {"model_id": config.model_label()}


def make_backend(config: BackendParams, *, models_dir=None, device: str, batch_size: int | None,
                 concurrency: int | None, log: Callable[[str], None] = print, budget: RequestBudget | None = None) -> LLMBackend:
    """Build the backend a recipe asked for, at the runtime settings its step resolved (`Runtime.resolve`):
    `device` and `batch_size` for transformers, `concurrency` for openai; no fallback of its own. With the build's
    `budget`, a backend that has `use_budget(budget)` charges each request it sends; any other is `ChargedUpFront`."""
    backend = backend_class(config.type).from_config(config, models_dir=models_dir, device=device, batch_size=batch_size,
                                                     concurrency=concurrency, log=log)
    if budget is None:
        return backend
    if hasattr(backend, "use_budget"):
        backend.use_budget(budget)
        return backend
    return ChargedUpFront(backend, budget)
