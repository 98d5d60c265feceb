"""A per-response LLM cache: sqlite in WAL mode, one commit per response, shared by processes.

Keys are xxh3-128 of (backend type, model identity, messages, sampling settings,
row seed), so an interrupted generation resumes where it stopped, and any
recipe asking the same model the same thing reuses the answer. WAL lets several
processes read while one writes; `busy_timeout` makes writers queue, not fail.

Claims: before requesting a response, a process claims its key; another process
that needs the same key waits for the answer instead of asking again. A claim
belongs to an owner that holds an flock while it lives, so the claims of a dead
process are taken over. Empty responses are not kept: the next run asks again.
A damaged database is moved aside (with a warning) and a fresh one started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from synthforge.backends.llm import GenerationRequest, GenerationResponse
from synthforge.cache import storage_error, storage_errors
from synthforge.keys import key_of

DB_NAME = "responses.sqlite"
WAIT_POLL_S = 0.2
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        key TEXT PRIMARY KEY,
        text TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        created REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL)",
)


def response_key(backend_type: str, identity: dict[str, Any], request: GenerationRequest) -> str:
    return key_of({
        "backend": backend_type,
        "model": identity,
        "messages": [list(m) for m in request.messages],
        "sampling": request.sampling(),
        "seed": request.seed,
    })


def response_db_problems(folder: Path, read_only: bool = False) -> list[str]:
    """What is wrong with the response database in `folder` (empty when sound or absent).

    `read_only`: the folder cannot be written (a read-only mount), where sqlite cannot open a WAL
    database's shared memory: the file is checked as immutable instead of reported as damaged."""
    path = Path(folder) / DB_NAME
    if not path.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro{'&immutable=1' if read_only else ''}", uri=True)) as db:
            rows = [r[0] for r in db.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        return [f"{path.name}: {exc}"]
    return [] if rows == ["ok"] else [f"{path.name}: {rows[0]}"]


def move_aside(folder: Path) -> Path:
    """Rename a damaged response database (and its WAL files) out of the way; returns its new name."""
    path = Path(folder) / DB_NAME
    aside = path.with_name(f"{DB_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


class ResponseCache:
    def __init__(self, folder: Path, log: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        with storage_errors(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            self._owner_lock = self._hold_owner_lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if storage_error(exc, self.folder) is not None:
                raise storage_error(exc, self.folder) from None
            aside = move_aside(self.folder)
            log(f"warning: the response cache {self.path} is damaged ({exc}); moved it to {aside.name} "
                "and started a fresh one (responses will be requested again)")
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            with storage_errors(self.folder):
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
                db.execute("PRAGMA busy_timeout=60000")
                for statement in _SCHEMA:
                    db.execute(statement)
            check = [r[0] for r in db.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise sqlite3.DatabaseError(check[0])
        except BaseException:
            db.close()
            raise
        return db

    def _hold_owner_lock(self):
        """An flock held while this cache is open: other processes see our claims as alive."""
        owners = self.folder / "owners"
        owners.mkdir(exist_ok=True)
        handle = open(owners / f"{self.owner}.lock", "a+")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        return handle

    def _owner_alive(self, owner: str) -> bool:
        if owner == self.owner:
            return True
        path = self.folder / "owners" / f"{owner}.lock"
        try:
            with open(path, "r") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead owner's file
        return False

    # -- reading --------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, GenerationResponse]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, GenerationResponse] = {}
        for chunk in _chunks(keys):
            rows = self._db.execute(
                f"SELECT key, text, prompt_tokens, completion_tokens FROM responses WHERE key IN ({_marks(chunk)})", chunk)
            for key, text, prompt_tokens, completion_tokens in rows:
                found[key] = GenerationResponse(text, prompt_tokens, completion_tokens)
        return found

    # -- claims ---------------------------------------------------------------
    def claim(self, keys: Iterable[str]) -> set[str]:
        """Claim the keys nobody alive has claimed and that have no response yet; returns those we hold."""
        keys = list(dict.fromkeys(keys))
        with storage_errors(self.folder), self._transaction():
            for chunk in _chunks(keys):
                others = self._db.execute(
                    f"SELECT key, owner FROM claims WHERE owner != ? AND key IN ({_marks(chunk)})", [self.owner, *chunk]).fetchall()
                dead = {owner for owner in {o for _, o in others} if not self._owner_alive(owner)}
                stale = [key for key, owner in others if owner in dead]
                if stale:
                    self._db.execute(f"DELETE FROM claims WHERE key IN ({_marks(stale)})", stale)
                answered = {r[0] for r in self._db.execute(f"SELECT key FROM responses WHERE key IN ({_marks(chunk)})", chunk)}
                now = time.time()
                self._db.executemany("INSERT OR IGNORE INTO claims VALUES (?, ?, ?)",
                                     [(key, self.owner, now) for key in chunk if key not in answered])
            return {key for chunk in _chunks(keys) for (key,) in self._db.execute(
                f"SELECT key FROM claims WHERE owner = ? AND key IN ({_marks(chunk)})", [self.owner, *chunk])}

    def wait_for(self, keys: Iterable[str]) -> dict[str, GenerationResponse]:
        """The responses to `keys` that live owners answer; returns early when a key loses its owner (claim it then)."""
        waiting = set(keys)
        found: dict[str, GenerationResponse] = {}
        while waiting:
            found.update(self.get_many(waiting))
            waiting -= set(found)
            if not waiting:
                break
            claimed = {key: owner for chunk in _chunks(sorted(waiting)) for key, owner in self._db.execute(
                f"SELECT key, owner FROM claims WHERE key IN ({_marks(chunk)})", chunk)}
            alive = {owner: self._owner_alive(owner) for owner in set(claimed.values())}
            orphans = {key for key in waiting if key not in claimed or not alive[claimed[key]]}
            if orphans:
                found.update(self.get_many(orphans))  # answered just before its claim went away
                return found
            time.sleep(WAIT_POLL_S)
        return found

    def release(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))

    # -- writing --------------------------------------------------------------
    def put(self, key: str, response: GenerationResponse) -> None:
        """Keep a response (an empty one is not kept: it is requested again next time) and drop our claim."""
        with storage_errors(self.folder), self._transaction():
            if response.text.strip():
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                    (key, response.text, response.prompt_tokens, response.completion_tokens, time.time()),
                )
            self._db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.release()
        self._db.close()
        self._owner_lock.close()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / "owners" / f"{self.owner}.lock").unlink()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunks(keys: list[str], size: int = 400) -> list[list[str]]:
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def _marks(chunk: list[str]) -> str:
    return ",".join("?" * len(chunk))
