"""A per-response LLM cache: sqlite in WAL mode, one commit per response.

Keys are xxh3-128 of (backend type, model identity, messages, sampling settings,
row seed), so an interrupted generation resumes where it stopped, and any
recipe asking the same model the same thing reuses the answer. WAL lets several
processes read while one writes; `busy_timeout` makes writers queue, not fail.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from synthforge.backends.llm import GenerationRequest, GenerationResponse
from synthforge.keys import key_of

DB_NAME = "responses.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def response_key(backend_type: str, identity: dict[str, Any], request: GenerationRequest) -> str:
    return key_of({
        "backend": backend_type,
        "model": identity,
        "messages": [list(m) for m in request.messages],
        "sampling": request.sampling(),
        "seed": request.seed,
    })


class ResponseCache:
    def __init__(self, folder: Path):
        self.path = Path(folder) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.execute(_SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, GenerationResponse]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, GenerationResponse] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._db.execute(
                f"SELECT key, text, prompt_tokens, completion_tokens FROM responses WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, text, prompt_tokens, completion_tokens in rows:
                found[key] = GenerationResponse(text, prompt_tokens, completion_tokens)
        return found

    def put(self, key: str, response: GenerationResponse) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
            (key, response.text, response.prompt_tokens, response.completion_tokens, time.time()),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
