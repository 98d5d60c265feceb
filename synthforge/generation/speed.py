"""Generation speed measured on this machine, kept in the cache's shared folder for `plan`'s time estimates.

A runtime measurement, never part of a key: each generate run that decoded new tokens
records its new tokens per second for its backend and model (the latest run wins).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from synthforge.cache import Cache, atomic_write


def _path(cache: Cache, backend: str, model: str) -> Path:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{backend}-{model}")
    return cache.shared_dir("speed") / f"{name}.json"


def record(cache: Cache, backend: str, model: str, new_tokens: int, seconds: float) -> None:
    if new_tokens <= 0 or seconds <= 0:
        return
    facts = {"new_tokens_per_s": new_tokens / seconds, "new_tokens": new_tokens, "seconds": round(seconds, 3),
             "measured": time.strftime("%Y-%m-%d %H:%M")}
    atomic_write(_path(cache, backend, model), json.dumps(facts, indent=1))


def recorded(cache: Cache, backend: str, model: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(cache, backend, model).read_text())
    except (OSError, ValueError):
        return None


def estimate(cache: Cache, step: str, backend: str, model: str, rows: int, max_new_tokens: int) -> str:
    """One line for `plan`: the most new tokens a generate step decodes and how long that takes here."""
    tokens = rows * max_new_tokens
    speed = recorded(cache, backend, model)
    if speed is None:
        return (f"{step}: at most {tokens:,} new tokens from {model}; no speed recorded on this machine yet "
                "(the first build measures it)")
    minutes = tokens / speed["new_tokens_per_s"] / 60
    return (f"{step}: at most {tokens:,} new tokens from {model}, about {minutes:.1f} min at the "
            f"{speed['new_tokens_per_s']:.0f} new tokens/s measured here on {speed['measured']} "
            "(less where the response cache has rows)")
