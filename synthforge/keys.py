"""Content addressing: canonical encoding of a step's config and xxh3-128 keys."""

from __future__ import annotations

import json
import math
import mmap
import os
from pathlib import Path
from typing import Any

import xxhash


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
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_of(value: Any) -> str:
    return xxhash.xxh3_128_hexdigest(encode(value))


def hash_file(path: str | os.PathLike) -> str:
    """xxh3-128 of a file's bytes; mmap lets xxhash read the page cache directly."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return xxhash.xxh3_128_hexdigest(b"")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return xxhash.xxh3_128_hexdigest(mm)
