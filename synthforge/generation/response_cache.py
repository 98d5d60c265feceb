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

Content hashes: every row carries `hash`, the xxh3-128 of (key, text, token counts), written with
it and checked on every read. A row that fails it is a missing response: logged once per read,
requested again and replaced. A database from before content hashes gets the column on its first
open and its rows are hashed then ("adopted": damage done before that cannot be told apart); a row
without a hash after that (written by an older synthforge sharing the cache) counts as missing.
Snapshots (`snapshot`, `merge`) carry the hashes and are named by their content: a merge checks
every row and the name, and takes nothing from a snapshot that fails either.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import xxhash

from synthforge.backends.llm import GenerationRequest, GenerationResponse
from synthforge.cache import hold_lock, lock_is_held, storage_error, storage_errors
from synthforge.errors import UserError
from synthforge.keys import key_of

DB_NAME = "responses.sqlite"
WAIT_POLL_S = 0.2
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        key TEXT PRIMARY KEY,
        text TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        created REAL NOT NULL,
        hash TEXT
    )""",
    "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL)",
)


def response_key(backend_type: str, identity: dict[str, Any], request: GenerationRequest) -> str:
    parts = {
        "backend": backend_type,
        "model": identity,
        "messages": [list(m) for m in request.messages],
        "sampling": request.sampling(),
        "seed": request.seed,
    }
    if request.schema is not None:  # only then: free-text requests keep the keys they always had
        parts["schema"] = request.schema
    return key_of(parts)


_ROW = "key, text, prompt_tokens, completion_tokens, hash"


def _connect(target: str | Path, **kwargs: Any) -> sqlite3.Connection:
    """A connection whose text a damaged byte cannot make unreadable: invalid UTF-8 decodes with U+FFFD,
    so the row fails its content hash (a missing response) instead of raising mid-read."""
    db = sqlite3.connect(target, **kwargs)
    db.text_factory = lambda raw: raw.decode("utf-8", "replace")
    return db


def row_hash(key: str, text: str, prompt_tokens: int, completion_tokens: int) -> str:
    """The content hash of a response row: its key is in it, so a reply moved to another key fails too."""
    return key_of([key, text, prompt_tokens, completion_tokens])


def _sound(row: tuple) -> bool:
    key, text, prompt_tokens, completion_tokens, digest = row
    return digest is not None and digest == row_hash(key, text, prompt_tokens, completion_tokens)


class DamagedSnapshot(Exception):
    """A response snapshot that is unreadable, has a row failing its hash, or does not match its name."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _has_hashes(db: sqlite3.Connection) -> bool:
    return "hash" in {row[1] for row in db.execute("PRAGMA table_info(responses)")}


def _damaged_keys(db: sqlite3.Connection) -> list[str]:
    """Keys of rows that fail their content hash (or have none)."""
    return [row[0] for row in db.execute(f"SELECT {_ROW} FROM responses") if not _sound(row)]


def response_db_problems(folder: Path, read_only: bool = False) -> list[str]:
    """What is wrong with the response database in `folder` (empty when sound or absent): the file, then every row.

    A database from before content hashes has nothing to check its rows against: its first open adopts them.
    `read_only`: the folder cannot be written (a read-only mount), where sqlite cannot open a WAL
    database's shared memory: the file is checked as immutable instead of reported as damaged."""
    path = Path(folder) / DB_NAME
    if not path.is_file():
        return []
    try:
        with contextlib.closing(_connect(f"file:{path}?mode=ro{'&immutable=1' if read_only else ''}", uri=True)) as db:
            rows = [r[0] for r in db.execute("PRAGMA quick_check")]
            if rows != ["ok"]:
                return [f"{path.name}: {rows[0]}"]
            damaged = _damaged_keys(db) if _has_hashes(db) else []
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # sqlite's own reports may quote damaged bytes
        return [f"{path.name}: {_one_line(exc)}"]
    return [f"{path.name}: response {key[:12]} fails its content hash (requested again when needed)" for key in damaged]


def repair_response_db(folder: Path) -> str:
    """Fix what `response_db_problems` found: a damaged file is moved aside, damaged rows deleted; says what it did."""
    path = Path(folder) / DB_NAME
    try:
        with contextlib.closing(_connect(path, timeout=60, isolation_level=None)) as db:
            if [r[0] for r in db.execute("PRAGMA quick_check")] == ["ok"]:
                db.execute("PRAGMA busy_timeout=60000")
                damaged = _damaged_keys(db)
                for chunk in _chunks(damaged):
                    db.execute(f"DELETE FROM responses WHERE key IN ({_marks(chunk)})", chunk)
                return f"removed {len(damaged)} damaged LLM responses (requested again when needed)"
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        pass
    return f"moved the damaged response cache aside to {move_aside(folder)}"


def snapshot_name(path: Path) -> str:
    """A snapshot's content name: xxh3-128 over its rows' (key, content hash), sorted by key.

    DamagedSnapshot when the file is damaged, predates content hashes, or any row fails its hash."""
    try:
        with contextlib.closing(_connect(f"file:{path}?mode=ro", uri=True)) as db:
            if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise DamagedSnapshot("integrity check failed")
            if not _has_hashes(db):
                raise DamagedSnapshot("its rows have no content hashes (written by an older synthforge)")
            digest = xxhash.xxh3_128()
            for row in db.execute(f"SELECT {_ROW} FROM responses ORDER BY key"):
                if not _sound(row):
                    raise DamagedSnapshot(f"response {row[0][:12]} fails its content hash")
                digest.update(f"{row[0]} {row[4]}\n".encode())
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # sqlite's own reports may quote damaged bytes
        raise DamagedSnapshot(f"unreadable ({type(exc).__name__})") from None
    return digest.hexdigest()


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
        self.log = log
        with storage_errors(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            self._owner_lock = self._hold_owner_lock()
        try:
            self._db = self._open_when_free()
        except sqlite3.DatabaseError as exc:
            if storage_error(exc, self.folder) is not None:
                raise storage_error(exc, self.folder) from None
            if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                raise UserError(f"the response cache {self.path} stayed locked for a minute",
                                hint="another synthforge process holds it: let it finish, then rerun") from None
            aside = move_aside(self.folder)
            log(f"warning: the response cache {self.path} is damaged ({exc}); moved it to {aside.name} "
                "and started a fresh one (responses will be requested again)")
            self._db = self._open()

    def _open_when_free(self, patience_s: float = 60.0) -> sqlite3.Connection:
        """`_open`, waiting while another process holds a lock: a busy database (switching to WAL can report
        "database is locked" past the busy timeout) is not a damaged one, and must never be moved aside
        from under the process that holds it."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(WAIT_POLL_S)

    def _open(self) -> sqlite3.Connection:
        db = _connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            with storage_errors(self.folder):
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
                db.execute("PRAGMA busy_timeout=60000")
                for statement in _SCHEMA:
                    db.execute(statement)
            try:
                check = [r[0] for r in db.execute("PRAGMA quick_check")]
            except UnicodeDecodeError:  # sqlite's report quotes damaged bytes
                check = ["quick_check reports damage"]
            if check != ["ok"]:
                raise sqlite3.DatabaseError(check[0])
            with storage_errors(self.folder):
                self._adopt_unhashed(db)
            db.execute(f"SELECT {_ROW} FROM responses LIMIT 0")  # a damaged schema fails here, not mid-build
        except BaseException:
            db.close()
            raise
        return db

    def _adopt_unhashed(self, db: sqlite3.Connection) -> None:
        """Give a database from before content hashes its `hash` column, hashing the rows it holds (once)."""
        if _has_hashes(db):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if not _has_hashes(db):  # another process may have migrated it while we waited
                db.execute("ALTER TABLE responses ADD COLUMN hash TEXT")
                rows = db.execute("SELECT key, text, prompt_tokens, completion_tokens FROM responses").fetchall()
                db.executemany("UPDATE responses SET hash = ? WHERE key = ?", [(row_hash(*row), row[0]) for row in rows])
                if rows:
                    self.log(f"response cache: {len(rows)} responses from before content hashes adopted "
                             "(hashed now; damage done before this cannot be detected)")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _hold_owner_lock(self):
        """An flock held while this cache is open: other processes see our claims as alive."""
        return hold_lock(self.folder / "owners" / f"{self.owner}.lock")

    def _owner_alive(self, owner: str) -> bool:
        if owner == self.owner:
            return True
        path = self.folder / "owners" / f"{owner}.lock"
        if lock_is_held(path):
            return True
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead owner's file
        return False

    # -- reading --------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, GenerationResponse]:
        """The sound responses to `keys`; a row failing its content hash is missing (and one warning line)."""
        found, damaged = self._read(keys)
        if damaged:
            self.log(f"warning: the response cache {self.path}: {len(damaged)} cached responses fail their content "
                     f"hash (first {damaged[0][:12]}); requesting them again")
        return found

    def _read(self, keys: Iterable[str]) -> tuple[dict[str, GenerationResponse], list[str]]:
        """(sound responses by key, keys whose rows fail their content hash)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, GenerationResponse] = {}
        damaged: list[str] = []
        with self._damage_is_an_error():
            for chunk in _chunks(keys):
                for row in self._db.execute(f"SELECT {_ROW} FROM responses WHERE key IN ({_marks(chunk)})", chunk):
                    if _sound(row):
                        found[row[0]] = GenerationResponse(*row[1:4])
                    else:
                        damaged.append(row[0])
        return found, damaged

    @contextlib.contextmanager
    def _damage_is_an_error(self):
        """Damage sqlite finds mid-read (past the checks at open): a one-line error, never a partial answer."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # busy, locked, full disk...: not damage
                raise
            raise UserError(f"the response cache {self.path} is damaged ({_one_line(exc)})",
                            hint="run `synthforge cache verify --repair` (it moves the database aside), then build again") from None

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
                answered = set(self._read(chunk)[0])  # a damaged row is no answer: claim it and ask again
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
                    f"INSERT OR REPLACE INTO responses ({_ROW}, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (key, response.text, response.prompt_tokens, response.completion_tokens,
                     row_hash(key, response.text, response.prompt_tokens, response.completion_tokens), time.time()),
                )
            self._db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))

    # -- snapshots (the remote cache's unit of sharing) ------------------------------
    def snapshot(self, target: Path) -> str:
        """Write the sound responses to a new database at `target`; returns its content name (`snapshot_name`)."""
        with contextlib.closing(_connect(target)) as copy:
            self._db.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            copy.execute("DELETE FROM claims")
            damaged = _damaged_keys(copy)
            for chunk in _chunks(damaged):
                copy.execute(f"DELETE FROM responses WHERE key IN ({_marks(chunk)})", chunk)
            copy.commit()
        return snapshot_name(target)

    def merge(self, snapshot: Path, name: str) -> int:
        """Add a snapshot's responses that this cache lacks (or holds damaged); rows added.

        Every row of the snapshot is checked against its content hash and the whole against `name`
        first: a snapshot failing either adds nothing (DamagedSnapshot)."""
        if snapshot_name(snapshot) != name:
            raise DamagedSnapshot("its rows do not match its name")
        with contextlib.closing(_connect(f"file:{snapshot}?mode=ro", uri=True)) as source:
            rows = source.execute(f"SELECT {_ROW}, created FROM responses").fetchall()
        with storage_errors(self.folder), self._transaction():
            have = set(self._read([row[0] for row in rows])[0])
            new = [row for row in rows if row[0] not in have and _sound(row[:5])]
            self._db.executemany(f"INSERT OR REPLACE INTO responses ({_ROW}, created) VALUES (?, ?, ?, ?, ?, ?)", new)
        return len(new)

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


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if isinstance(exc, sqlite3.DatabaseError) and str(exc) else type(exc).__name__


def _chunks(keys: list[str], size: int = 400) -> list[list[str]]:
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def _marks(chunk: list[str]) -> str:
    return ",".join("?" * len(chunk))
