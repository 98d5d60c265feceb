"""Content addressing: the one owner of what enters a key, and of what never does.

A step's key is `key_of(step_components(...))`. Its ingredients:
  kind, version  the step kind and its code version (`Step.version`)
  params         the recipe fields as written, minus runtime-only fields
  inputs         the key (and table) of every upstream output a `Ref` field names
  files          content hashes of `FilePath` fields and of `Step.files_read` (e.g. model files),
                 remembered in the cache's derived records while a file's stat stays the same
  identity       `Step.identity`: what else decides the output: a backend's model identity,
                 declared versions (LLM sampler, metrics code), packaged dataset versions
  seed           the recipe's seed

Declared ignores: a field that changes how, not what, a step computes (batch size, device,
concurrency, timeouts, the NAME of an API key variable) is declared `Field(exclude=True)`:
the one mechanism, honoured at every depth (backend blocks too). Library versions, absolute
paths and credentials never enter a key.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import xxhash

from synthforge.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel



class DerivedRecords(Protocol):
    """Where file hashes are remembered across processes: a `cache.Cache` (its derived records)."""

    def read_derived(self, key: str) -> dict[str, Any] | None: ...

    def write_derived(self, key: str, record: dict[str, Any], entries: list[str]) -> dict[str, Any]: ...


# Files whose content defines what a model computes (config, tokenizer, weights, chat template);
# READMEs, licences and the like do not.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".gguf", ".model", ".txt", ".jinja", ".tiktoken")
SECRET_QUERY_WORDS = ("key", "token", "secret", "signature", "sig", "password", "auth", "credential")
_TOKEN_CHARS = 16  # a query value this long is scrubbed from messages whatever its name
_MIN_SECRET_CHARS = 3  # shorter values would mangle every message they were scrubbed from


def canonical(value: Any) -> Any:
    """A JSON-able form in which equal configs are equal byte for byte."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float):
        if value.is_integer() and math.isfinite(value):
            return int(value) if abs(value) < 2**53 else value
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):
        return canonical(value.model_dump(mode="json"))
    return value


def encode(value: Any) -> bytes:
    return _json(canonical(value)).encode()


def key_of(value: Any) -> str:
    return plain_key(canonical(value))


def plain_key(record: Any) -> str:
    """`key_of` of JSON as read (string keys), without `canonical`'s walk: equal to `key_of(record)` unless the
    record holds a whole-number float (which `canonical` writes as an int)."""
    return xxhash.xxh3_128_hexdigest(_json(record).encode())


# The names a cache makes under its root for its entries, derived records and their locks and leases (cache.py's
# layout, relative, "/"-separated; KEY is 32 hex digits): entries/kk/KEY/..., derived/kk/KEY.json, locks/KEY.KIND.
# Only these unmistakable shapes: a remembered build records anything else under a cache root (a project folder
# used as the cache holds the recipe and its inputs).
CACHE_OWN = re.compile(r"(entries(/[0-9a-f]{2}(/[0-9a-f]{32}(/.*)?)?)?|derived(/[0-9a-f]{2}(/[0-9a-f]{32}\.json)?)?"
                       r"|locks/[0-9a-f]{32}\.(lock|lease))/?")


def derived_file(cache_root: str | os.PathLike, key: str) -> str:
    """Where a cache keeps the derived record named `key` (see `Cache.write_derived`)."""
    return os.path.join(cache_root, "derived", key[:2], f"{checked_key(key)}.json")


def read_record(path: str) -> dict[str, Any] | None:
    """A derived record's body, or None when it is missing or not intact (its checksum is `plain_key` of the
    rest, or `key_of` when it holds a whole-number float)."""
    try:
        with open(path, "rb") as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    body = {k: v for k, v in record.items() if k != "checksum"}
    checksum = record.get("checksum")  # a record holding no whole-number float: one C-speed dump checks it
    if checksum != plain_key(body) and checksum != key_of(body):
        return None
    return record


KEY_CHARS = frozenset("0123456789abcdef")
KEY_LENGTH = 32  # what key_of returns: the hex of an xxh3-128


def is_key(value: Any) -> bool:
    """Whether `value` has the shape of a cache key (32 lowercase hex characters): anything else
    (a path like '../x', a name with dots or slashes) must never name a cache file."""
    return isinstance(value, str) and len(value) == KEY_LENGTH and KEY_CHARS.issuperset(value)


def checked_key(value: Any, *, file: str | None = None, line: int | None = None, field: str | None = None,
                fix: str = "rebuild or re-pull to get a sound one") -> str:
    """`value` when it is a cache key, else a one-line UserError naming where it was read (and `fix`)."""
    if is_key(value):
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise UserError(f"{shown} is not a cache key", file=file, line=line, field=field,
                    hint=f"a key is 32 lowercase hex characters, as build writes them; {fix}")


HASH_WINDOW = 16 << 20  # a multiple of mmap.ALLOCATIONGRANULARITY


def hash_file(path: str | os.PathLike) -> str:
    """xxh3-128 of a file's bytes, mapped 16 MiB at a time: xxhash reads the page cache directly (no copy),
    and at most one window's pages count in the process's resident memory however large the file."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        for offset in range(0, size, HASH_WINDOW):
            with mmap.mmap(fh.fileno(), min(HASH_WINDOW, size - offset), offset=offset, access=mmap.ACCESS_READ) as window:
                digest.update(window)
    return digest.hexdigest()


_file_hashes: dict[tuple[str, int, int, int, int], str] = {}


def file_hash(path: Path, cache: "DerivedRecords | None" = None) -> str:
    """Content hash of an input file, memoized per (path, inode, mtime, ctime, size) within the process and,
    given a cache, remembered across processes in its derived records (see `_remembered_hash`)."""
    stat = os.stat(path)
    memo = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
    if memo not in _file_hashes:
        _file_hashes[memo] = _remembered_hash(Path(path), cache) if cache is not None else hash_file(path)
    return _file_hashes[memo]


def file_stamp(path: Path) -> list[int]:
    """(size, mtime, ctime, inode, device): any write to the file changes it (ctime cannot be set back)."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _remembered_hash(path: Path, cache: DerivedRecords) -> str:
    """The hash recorded for `path` while its (size, mtime, ctime, inode, device) stay the same, as DVC's
    state does (plus ctime, which no tool sets back: `touch -d`/`cp -p` restore mtime, not ctime). Missed
    is an edit that keeps the size within one ctime tick (nanoseconds on ext4/xfs); without a record a
    10M-row CSV (574 MB) is read whole by every plan, show and build (~0.1 s CPU)."""
    from synthforge.errors import UserError

    record_key = key_of(["input file", str(path.resolve())])
    stamp = file_stamp(path)
    record = cache.read_derived(record_key)
    if record is not None and record.get("stamp") == stamp and isinstance(record.get("hash"), str):
        return record["hash"]
    digest = hash_file(path)
    if file_stamp(path) == stamp:  # not changed while it was read
        try:
            cache.write_derived(record_key, {"path": str(path.resolve()), "stamp": stamp, "hash": digest}, [])
        except (OSError, UserError):  # a read-only cache: hash again next time
            pass
    return digest


# -- models ---------------------------------------------------------------------
def model_files(folder: Path) -> list[Path]:
    """The files of a model folder whose content defines the model: every user of a model keys on these."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)


def files_key(files: list[Path], root: Path | None = None) -> str:
    """One hash over named files' contents (names relative to `root`, else bare file names)."""
    return key_of([[str(p.relative_to(root)) if root else p.name, file_hash(p)] for p in files])


def credential_free_url(url: str) -> str:
    """An endpoint as it may enter a key or a manifest: no user:password@, no secret query parameters."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not any(word in k.lower() for word in SECRET_QUERY_WORDS)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def shown_url(url: str) -> str:
    """An endpoint as messages and logs name it: scheme, host, port and path; no credentials, no query at all."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def url_secrets(url: str) -> list[str]:
    """The values in a URL that a message must never quote (as written and decoded): user:password@ and the
    values of query parameters named like a credential or long enough to be a token."""
    parts = urlsplit(url)
    found = [parts.username, parts.password]
    for pair in parts.query.split("&"):
        name, _, raw = pair.partition("=")
        decoded = unquote_plus(raw)
        if any(word in unquote_plus(name).lower() for word in SECRET_QUERY_WORDS) or len(decoded) >= _TOKEN_CHARS:
            found += [raw, decoded]
    return sorted({value for value in found if value and len(value) >= _MIN_SECRET_CHARS}, key=len, reverse=True)


# -- runtime-only fields --------------------------------------------------------
def key_params(params: "BaseModel") -> dict[str, Any]:
    """A step's params as they enter its key: every field but the runtime-only (`exclude=True`) ones."""
    return params.model_dump(mode="json")


def runtime_fields(model: type["BaseModel"], prefix: str = "") -> list[str]:
    """Dotted names of the runtime-only fields of a params model, nested models included."""
    found = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if info.exclude:
            found.append(path)
            continue
        for sub in model_types(info.annotation):
            found += [f for f in runtime_fields(sub, f"{path}.") if f not in found]
    return found


def model_types(annotation: Any) -> list[type]:
    """The pydantic models inside a field's annotation (through Optional, unions, lists and dicts; a backend block
    stands for every registered backend config)."""
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a backend block: its registered configs
        return annotation.registered_models() if hasattr(annotation, "registered_models") else [annotation]
    return [t for arg in get_args(annotation) for t in model_types(arg)]


# -- a step's key -----------------------------------------------------------------
def step_components(kind: str, version: str, params: "BaseModel", inputs: dict[str, Any],
                    files: dict[str, Path], identity: dict[str, Any], seed: int, cache: "DerivedRecords | None" = None) -> dict[str, Any]:
    """Everything a step's output depends on; its key is `key_of` of this (`cache` remembers file hashes)."""
    return with_inputs(config_components(kind, version, params, files, identity, cache), inputs, seed)


def config_components(kind: str, version: str, params: "BaseModel", files: dict[str, Path], identity: dict[str, Any],
                      cache: "Cache | None" = None) -> dict[str, Any]:
    """The components a step's config alone decides: the same for every node of one resolved step, so a
    graph computes them once (`with_inputs` adds each node's upstream keys and seed)."""
    return {
        "kind": kind,
        "version": version,
        "params": key_params(params),
        "inputs": {},
        "files": {label: file_hash(path, cache) for label, path in files.items()},
        "identity": identity,
        "seed": None,
    }


def with_inputs(config: dict[str, Any], inputs: dict[str, Any], seed: int) -> dict[str, Any]:
    """A node's components: its step's `config_components` with its upstream keys and seed."""
    return {**config, "inputs": inputs, "seed": seed}


def node_keyer(config: dict[str, Any]) -> Callable[[dict[str, Any], int], str]:
    """`lambda inputs, seed: key_of(with_inputs(config, inputs, seed))` for the many nodes of one step (450
    variants share a few), with the config's part of the bytes encoded once: `encode` of a dict is its items in
    sorted key order, so the node's bytes are the config's JSON around those of its inputs and seed."""
    if sorted(config) != _CONFIG_PARTS:
        return lambda inputs, seed: key_of(with_inputs(config, inputs, seed))
    plain = canonical(config)
    head = f'{{"files":{_json(plain["files"])},"identity":{_json(plain["identity"])},"inputs":'
    middle = f',"kind":{_json(plain["kind"])},"params":{_json(plain["params"])},"seed":'
    tail = f',"version":{_json(plain["version"])}}}'
    return lambda inputs, seed: xxhash.xxh3_128_hexdigest(f"{head}{_json(canonical(inputs))}{middle}{_json(canonical(seed))}{tail}".encode())


_CONFIG_PARTS = ["files", "identity", "inputs", "kind", "params", "seed", "version"]  # config_components' keys, sorted


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
