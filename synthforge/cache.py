"""The content-addressed cache and the one owner of its entry manifest.

Layout under the cache root:
  entries/<kk>/<key>/manifest.json    what, from what, which tables (with content hashes); see `Manifest`
  entries/<kk>/<key>/<table>.parquet  the main table `data` and any side tables; a table the
                                      manifest marks as a `union` of others has no file of its own
  entries/<kk>/<key>/artifacts/       files a step keeps (models, plots...), hashed in the manifest
  derived/<kk>/<key>.json             results computed later from entries (stats), under their own key
  locks/<key>.lock                    one flock per key: a key is computed once
  locks/<key>.lease                   shared flocks of running builds on what they use: gc skips those
  tmp/<owner>.<...>                   work in flight (entries being written or pulled, response snapshots),
                                      each created by `staging`/`scratch_file` under its owner's lock; a
                                      sweep deletes only what no live owner holds
  shared/                             caches below step level (responses, models)

An entry appears by an atomic rename of a finished, verified folder, so a reader sees a
whole entry or none, and never changes afterwards. Every read checks what it reads:
the manifest against its own checksum, a table against the content hash in the manifest.
Damage is a `DamagedEntry` (a one-line user error), never wrong rows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import xxhash
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthforge.errors import UserError
from synthforge.keys import checked_key, derived_file, file_stamp, hash_file, is_key, key_of, plain_key, read_record

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

DEFAULT_CACHE = "cache"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 3  # 2: typed, self-checksummed, per-table rows/columns/hash, hashed artifacts; 3: checksum over sorted JSON
ARTIFACTS = "artifacts"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHFORGE_CACHE") or DEFAULT_CACHE)


# -- storage errors --------------------------------------------------------------
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(exc: BaseException, path: Path | str) -> UserError | None:
    """A one-line error for a full disk or a read-only folder (None for any other failure)."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    text = str(exc)
    if code is None:  # polars and sqlite report the OS error in their message
        match = re.search(r"os error (\d+)", text)
        code = int(match.group(1)) if match else None
    if code is None and isinstance(exc, sqlite3.OperationalError):
        if "disk is full" in text or "disk I/O error" in text:
            code = errno.ENOSPC
        elif "readonly" in text or "unable to open" in text:
            code = errno.EROFS
    if code in _NO_SPACE:
        return UserError(f"cannot write to {path}: {os.strerror(code)}",
                         hint="free some space (or point --cache-dir / SYNTHFORGE_CACHE elsewhere), then run the same "
                              "command again: finished steps are kept")
    if code in _READ_ONLY:
        return UserError(f"cannot write to {path}: {os.strerror(code)}",
                         hint="use a writable cache folder: --cache-dir or SYNTHFORGE_CACHE")
    return None


@contextlib.contextmanager
def storage_errors(path: Path | str) -> Iterator[None]:
    """Turn a full disk or a read-only folder under `path` into a one-line UserError."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # OSError, sqlite3.OperationalError, polars errors naming an OS error
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from None


def _entry_states_key(remember_as: Any) -> str:
    return plain_key(["entry states", remember_as])


def atomic_write(path: Path, content: str | bytes | Callable[[BinaryIO], None]) -> None:
    """The one atomic file write: `content` (text, bytes, or a function writing into the open binary file)
    goes to a temporary file beside `path`, synced, then renamed over it; readers see the old file or the new."""
    with storage_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 applies the umask (mkstemp would make every written file 0600)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                if callable(content):
                    content(fh)
                else:
                    fh.write(content.encode() if isinstance(content, str) else content)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


# -- locks -------------------------------------------------------------------------
# Every flock of synthforge is taken here: key locks, leases, try-locks of gc and sweeps, the response
# cache's owner marks and the budget ledger's counter. The OS releases an flock when its holder dies,
# which is what lets a survivor tell a dead writer from a live one.
def _flock_mode(shared: bool, wait: bool) -> int:
    return (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """An flock on `path` across processes (exclusive unless `shared`), waited for."""
    with storage_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    with fh, descriptor_lock(fh.fileno(), shared):
        yield


@contextlib.contextmanager
def shared_file_locks(paths: Sequence[Path]) -> Iterator[None]:
    """Shared flocks on many files in one pass (a build's leases: a thousand of them for a big matrix),
    waited for; closing each descriptor releases its lock."""
    fds: list[int] = []
    try:
        for path in paths:
            with storage_errors(path.parent):
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
                except FileNotFoundError:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            fds.append(fd)
            fcntl.flock(fd, _flock_mode(shared=True, wait=True))
        yield
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def try_file_lock(path: Path, shared: bool = False) -> Iterator[bool]:
    """An flock on `path` (exclusive unless `shared`) if no one holds a conflicting one now: yields whether we
    got it. The one way to ask whether a lock's holder is alive (gc, tmp sweeps, dead converters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), _flock_mode(shared, wait=False))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def descriptor_lock(fd: int, shared: bool = False) -> Iterator[None]:
    """An flock on an open descriptor for the block (a file kept open across many short updates)."""
    fcntl.flock(fd, _flock_mode(shared, wait=True))
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def hold_lock(path: Path):
    """An exclusive flock on `path`, held until the returned file is closed or this process dies: the mark
    of a live owner that others test with `lock_is_held`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    fcntl.flock(handle.fileno(), _flock_mode(shared=False, wait=True))
    return handle


def lock_is_held(path: Path) -> bool:
    """Whether someone holds an flock on `path` now; a missing file has no holder (and is not made)."""
    try:
        with open(path, "r") as handle:
            try:
                fcntl.flock(handle.fileno(), _flock_mode(shared=True, wait=False))
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


# -- the manifest ----------------------------------------------------------------
class _Frozen(BaseModel):
    # defer_build: the validators are made at the first manifest read, not at import (~9 ms of every command's
    # start-up; a no-op build reads no manifest)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class TableInfo(_Frozen):
    rows: int = Field(ge=0, description="row count (checked against the parquet footer by verify)")
    columns: dict[str, str] = Field(description="column -> polars dtype")
    content_hash: str = Field(description="xxh3-128 of the parquet file's bytes, checked on every read")
    bytes: int = Field(ge=0, description="file size (0 for a union)")
    union: list[str] | None = Field(
        None, description="the tables this one is the union of, in row order: it has no file, its rows are stored once"
    )


class Timings(_Frozen):
    started: float = Field(description="unix time the step started")
    seconds: float = Field(ge=0, description="how long it ran")


class Manifest(_Frozen):
    """What an entry holds and what it was made of. Written once by the builder, read by everyone."""

    format: Literal[3] = Field(MANIFEST_FORMAT, description="manifest format version (older formats are cache misses)")
    key: str = Field(description="the entry's key: key_of(components)")
    step: str = Field(description="the step's name in the recipe that built it")
    kind: str = Field(description="the step kind")
    recipe: str = Field("", description="the recipe's name")
    recipe_path: str = Field("", description="the recipe file that built it")
    variants: list[str] = Field(default_factory=list, description="matrix variants sharing the entry when it was built")
    components: dict[str, Any] = Field(description="everything the key was computed from (see keys.step_components)")
    upstream: list[str] = Field(default_factory=list, description="keys of the entries it read")
    tables: dict[str, TableInfo] = Field(description="table name -> its rows, columns and content hash; always has 'data'")
    artifacts: dict[str, str] = Field(default_factory=dict, description="artifacts/ file path -> xxh3-128 content hash")
    timings: Timings
    versions: dict[str, str] = Field(default_factory=dict, description="library versions that built it (not in the key)")
    meta: dict[str, Any] = Field(default_factory=dict, description="what the step reports (metrics, counts...)")
    checksum: str = Field(description="xxh3-128 of every other field: any edit to the manifest is detected")

    @property
    def rows(self) -> int:
        return self.tables["data"].rows

    @property
    def content_hash(self) -> str:
        """One identity of the entry's output bytes: every table's and artifact's content hash (no timings, meta,
        versions or variants): two builds of a key made the same bytes exactly when these are equal."""
        return plain_key({"tables": {name: info.content_hash for name, info in self.tables.items()}, "artifacts": self.artifacts})

    @classmethod
    def seal(cls, **fields: Any) -> "Manifest":
        """A manifest with its checksum filled in (fields are made JSON-plain first)."""
        plain = json.loads(json.dumps({"format": MANIFEST_FORMAT, **fields, "checksum": ""}, default=str))
        draft = cls.model_validate(plain)
        return draft.model_copy(update={"checksum": draft.computed_checksum()})

    def computed_checksum(self) -> str:
        return _checksum_of(self.model_dump(mode="json"))

    def problems(self, key: str | None = None, full: bool = False, checksum_sound: bool = False) -> list[str]:
        """Inconsistencies inside the manifest itself (empty when sound); `full` also re-derives the key.
        `checksum_sound`: the JSON it was read from already matched its checksum (see `_read_manifest`)."""
        found = []
        if not checksum_sound and self.computed_checksum() != self.checksum:
            found.append("manifest checksum mismatch (edited or damaged)")
        if "data" not in self.tables:
            found.append("manifest lists no 'data' table")
        if key is not None and self.key != key:
            found.append(f"manifest is for key {self.key[:12]}, not this entry")
        if full and key_of(self.components) != self.key:
            found.append("manifest components do not hash to its key")
        return found

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True)


def _checksum_of(data: dict[str, Any]) -> str:
    """The checksum of a manifest's JSON form (its `checksum` field left out)."""
    data = {**data, "tables": {name: dict(info) if isinstance(info, dict) else info for name, info in data.get("tables", {}).items()}}
    data.pop("checksum", None)
    for info in data["tables"].values():  # manifests from before unions existed keep their checksum
        if isinstance(info, dict) and info.get("union") is None:
            info.pop("union", None)
    # Plain sorted JSON (C speed): the dump of a validated manifest is the same bytes after any round trip.
    return plain_key(data)


def _matches_checksum(data: dict[str, Any]) -> bool:
    """Whether a manifest's JSON as read matches its own checksum: then it is the sealed manifest's dump,
    unedited, and needs no second dump to hash. Malformed JSON does not (validation names what is wrong)."""
    try:
        return _checksum_of(data) == data.get("checksum")
    except (AttributeError, TypeError, ValueError):
        return False


class DamagedEntry(UserError):
    """A cache entry that cannot be trusted: reading it is an error, building over it a cache miss."""

    def __init__(self, folder: Path, problem: str, step: str | None = None):
        self.folder = Path(folder)
        self.problem = problem
        name = f"cache entry {self.folder.name[:12]}" + (f" (step {step})" if step else "")
        super().__init__(f"{name} is damaged: {problem}",
                         hint="`synthforge build` of its recipe rebuilds it; `synthforge cache verify --repair` removes it")


_checked: dict[tuple, Manifest] = {}  # (path, inode, mtime, ctime, size, ...) -> manifest checked in this process


def read_manifest(folder: Path, key: str | None = None, full: bool = False, sound_hash: str | None = None) -> Manifest:
    """The checked manifest of an entry folder, or DamagedEntry naming what is wrong.

    A manifest checked once is not checked again in this process while its file is unchanged
    (same inode, mtime, ctime and size): a build reads each several times. `sound_hash`: the xxh3-128 of manifest
    bytes remembered as matching their checksum (`Cache.file_problems`); bytes with that hash skip the check."""
    path = os.path.join(folder, MANIFEST)  # plain strings: a plan reads hundreds of these
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DamagedEntry(folder, "no manifest.json") from None
    memo = (path, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, key, full)
    manifest = _checked.get(memo)
    if manifest is None:
        if len(_checked) > 4096:
            _checked.clear()
        manifest = _checked[memo] = _read_manifest(path, folder, key, full, sound_hash)
    return manifest


def _read_manifest(path: str, folder: Path, key: str | None, full: bool, sound_hash: str | None = None) -> Manifest:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DamagedEntry(folder, "no manifest.json") from None
    except OSError as exc:
        raise DamagedEntry(folder, f"unreadable manifest ({type(exc).__name__})") from None
    if sound_hash is not None and xxhash.xxh3_128_hexdigest(raw) == sound_hash:
        with contextlib.suppress(ValidationError):  # (pydantic's JSON parser refusing what json reads: the long way)
            manifest = Manifest.model_validate_json(raw)
            problems = manifest.problems(key, full, checksum_sound=True)
            if problems:
                raise DamagedEntry(folder, problems[0], manifest.step)
            return manifest
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DamagedEntry(folder, f"unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format", 1) if isinstance(data, dict) else "?"
        raise DamagedEntry(folder, f"manifest format {found}, expected {MANIFEST_FORMAT} (written by another synthforge version)")
    sound = _matches_checksum(data)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DamagedEntry(folder, f"invalid manifest: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    problems = manifest.problems(key, full, checksum_sound=sound)
    if problems:
        raise DamagedEntry(folder, problems[0], manifest.step)
    return manifest


def describe_table(path: Path) -> TableInfo:
    """Rows, columns and content hash of a parquet file, from the file itself."""
    import polars as pl

    columns = {name: str(dtype) for name, dtype in pl.read_parquet_schema(path).items()}
    rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    return TableInfo(rows=rows, columns=columns, content_hash=hash_file(path), bytes=path.stat().st_size)


def hash_artifacts(folder: Path) -> dict[str, str]:
    root = Path(folder) / ARTIFACTS
    if not root.is_dir():
        return {}
    return {str(p.relative_to(folder)): hash_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


# Cached tables are read whole or by head, never filtered by value: no statistics. zstd level 1 compresses
# these tables about as well as the default level 3 (within 2%) at about 75% of the CPU time.
PARQUET_WRITE = {"statistics": False, "compression": "zstd", "compression_level": 1}


def write_entry_files(folder: Path, tables: dict[str, "pl.DataFrame"], **fields: Any) -> Manifest:
    """Write an entry's tables and its sealed manifest into `folder` (not yet in the cache).

    Without a `data` table, the main table is the union of `tables` in their order (each row stored once).
    """
    folder = Path(folder)
    infos = {}
    for name, frame in tables.items():
        path = folder / f"{name}.parquet"
        with storage_errors(folder):
            frame.write_parquet(path, **PARQUET_WRITE)
        infos[name] = TableInfo(rows=frame.height, columns={c: str(t) for c, t in frame.schema.items()},
                                content_hash=hash_file(path), bytes=path.stat().st_size).model_dump()
    if "data" not in infos:
        infos = {"data": union_info(infos), **infos}
    manifest = Manifest.seal(**fields, tables=infos, artifacts=hash_artifacts(folder))
    with storage_errors(folder):
        (folder / MANIFEST).write_text(manifest.to_json())
    return manifest


def union_info(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Manifest info of a main table that is the union of side tables (read through their files)."""
    first = next(iter(parts.values()))
    return TableInfo(rows=sum(info["rows"] for info in parts.values()), columns=first["columns"],
                     content_hash=key_of([info["content_hash"] for info in parts.values()]), bytes=0,
                     union=list(parts)).model_dump()


def _union_problems(name: str, info: TableInfo, tables: dict[str, TableInfo]) -> list[str]:
    """A union table's rows, columns and hash against its parts' (which are checked against their files)."""
    missing = [part for part in info.union or [] if part not in tables]
    if missing:
        return [f"table {name}: its part {part} is not in the manifest" for part in missing]
    parts = [tables[part] for part in info.union or []]
    rows = sum(part.rows for part in parts)
    problems = [f"table {name}: {rows} rows, manifest says {info.rows}"] if rows != info.rows else []
    if any(part.columns != info.columns for part in parts):
        problems.append(f"table {name}: columns differ from its parts'")
    if key_of([part.content_hash for part in parts]) != info.content_hash:
        problems.append(f"table {name}: content hash differs from its parts'")
    return problems


def table_problems(folder: Path, manifest: Manifest, full: bool) -> list[str]:
    """Tables (and, when `full`, rows, columns, the table list and artifacts) against the manifest."""
    folder = Path(folder)
    problems = []
    for name, info in manifest.tables.items():
        path = folder / f"{name}.parquet"
        if info.union is not None:  # no file of its own: its parts are checked as tables
            problems += _union_problems(name, info, manifest.tables) if full else []
            continue
        if not path.is_file():
            problems.append(f"table {name}: file missing")
        elif path.stat().st_size != info.bytes or hash_file(path) != info.content_hash:
            problems.append(f"table {name}: content hash mismatch")
        elif full:
            try:
                actual = describe_table(path)
            except Exception as exc:  # an unreadable parquet footer
                problems.append(f"table {name}: unreadable ({type(exc).__name__})")
                continue
            if actual.rows != info.rows:
                problems.append(f"table {name}: {actual.rows} rows, manifest says {info.rows}")
            if actual.columns != info.columns:
                problems.append(f"table {name}: columns differ from the manifest")
    if full:
        extra = sorted(p.stem for p in folder.glob("*.parquet") if p.stem not in manifest.tables)
        problems += [f"table {name}: not listed in the manifest" for name in extra]
        found = hash_artifacts(folder)
        for rel in sorted(set(found) | set(manifest.artifacts)):
            if found.get(rel) != manifest.artifacts.get(rel):
                problems.append(f"{rel}: " + ("missing" if rel not in found else "not listed" if rel not in manifest.artifacts
                                               else "content hash mismatch"))
        problems += [f"{rel}: not listed in the manifest" for rel in _unlisted_files(folder, manifest)]
    return problems


def _unlisted_files(folder: Path, manifest: Manifest) -> list[str]:
    """Files of an entry folder that the checks above do not cover (not a table, not the manifest, not
    under artifacts/): an entry holds exactly the manifest's files, so each is a problem."""
    unlisted = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if rel == MANIFEST or rel.startswith(f"{ARTIFACTS}/") or ("/" not in rel and rel.endswith(".parquet")):
            continue
        unlisted.append(rel)
    return sorted(unlisted)


def _drop_scratch(folder: Path) -> None:
    """Delete files a step left in its work folder that its manifest does not list (scratch, markers):
    an entry holds exactly the manifest's files. A folder without a sound manifest is left for `install` to refuse."""
    try:
        manifest = read_manifest(folder)
    except DamagedEntry:
        return
    for rel in _unlisted_files(folder, manifest):
        (folder / rel).unlink()


def verify_folder(folder: Path, key: str | None = None, full: bool = True) -> list[str]:
    """Every problem of an entry folder (empty when sound): manifest, tables, rows, columns, artifacts."""
    try:
        manifest = read_manifest(folder, key, full)
    except DamagedEntry as exc:
        return [exc.problem]
    return table_problems(folder, manifest, full)


def check_table(manifest: Manifest, table: str) -> None:
    """A clear error for a table the step does not have (`--table` on the command line)."""
    if table not in manifest.tables:
        raise UserError(f"step '{manifest.step}' has no table '{table}'", field="--table",
                        hint=f"tables: {', '.join(manifest.tables)}")


def scan_table(folder: Path, table: str = "data") -> "pl.LazyFrame":
    """The one way a cached table is read: its files' bytes are checked against the manifest's
    content hashes (DamagedEntry otherwise), then scanned lazily, so a head or a column reads only that."""
    import polars as pl

    manifest = read_manifest(folder)
    check_table(manifest, table)
    parts = manifest.tables[table].union or [table]
    checked = manifest.model_copy(update={"tables": {part: manifest.tables[part] for part in parts if part in manifest.tables}})
    problems = table_problems(folder, checked, full=False)
    if problems:
        raise DamagedEntry(folder, problems[0], manifest.step)
    return pl.scan_parquet([Path(folder) / f"{part}.parquet" for part in parts])


def artifact_path(folder: Path, relative: str) -> Path:
    """The one way a step (or a user) reads an entry's artifact: every file under `relative` (a file or a folder
    of `artifacts/`) is hashed in full and checked against the manifest first (DamagedEntry otherwise)."""
    manifest = read_manifest(folder)
    prefix = relative.rstrip("/")
    wanted = {rel: digest for rel, digest in manifest.artifacts.items() if rel == prefix or rel.startswith(prefix + "/")}
    if not wanted:
        raise UserError(f"step '{manifest.step}' has no artifact '{relative}'",
                        hint=f"artifacts: {', '.join(sorted(manifest.artifacts)) or 'none'}")
    for rel, digest in sorted(wanted.items()):
        path = Path(folder) / rel
        if not path.is_file():
            raise DamagedEntry(folder, f"{rel}: missing", manifest.step)
        if hash_file(path) != digest:
            raise DamagedEntry(folder, f"{rel}: content hash mismatch", manifest.step)
    target = Path(folder) / prefix
    planted = sorted(str(p.relative_to(folder)) for p in target.rglob("*") if p.is_file()) if target.is_dir() else []
    unlisted = [rel for rel in planted if rel not in wanted]
    if unlisted:
        raise DamagedEntry(folder, f"{unlisted[0]}: not listed in the manifest", manifest.step)
    return target


def read_table(entry: "Entry | Path", table: str = "data", columns: Sequence[str] | None = None) -> "pl.DataFrame":
    """One table of an entry (or an entry folder) as polars, its bytes checked against the manifest (see
    `scan_table`): the one place a table is read whole, for steps, commands and users (`synthforge.read_table`)."""
    frame = scan_table(entry.path if isinstance(entry, Entry) else entry, table)
    return (frame.select(list(columns)) if columns is not None else frame).collect()


def _entry_files(manifest: Manifest) -> dict[str, tuple[str, int | None, str | None]]:
    """Every file of an entry the manifest hashes: relative path -> (content hash, size if known, table name)."""
    files: dict[str, tuple[str, int | None, str | None]] = {
        f"{name}.parquet": (info.content_hash, info.bytes, name) for name, info in manifest.tables.items() if info.union is None}
    files.update({rel: (digest, None, None) for rel, digest in manifest.artifacts.items()})
    return files


def sound_manifest_hash(folder: Path) -> str | None:
    """The xxh3-128 of an entry's manifest bytes if they match their own checksum (None otherwise): what
    `read_manifest` may trust later without decoding and hashing the JSON again."""
    try:
        with open(os.path.join(folder, MANIFEST), "rb") as fh:
            raw = fh.read()
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    return xxhash.xxh3_128_hexdigest(raw) if isinstance(data, dict) and _matches_checksum(data) else None


def _stamps(folder: Path, manifest: Manifest) -> dict[str, list[int]] | None:
    """The stamp of every file the manifest hashes (None when one is missing)."""
    try:
        return {rel: file_stamp(Path(folder) / rel) for rel in sorted(_entry_files(manifest))}
    except (FileNotFoundError, NotADirectoryError):
        return None


def _stamps_key(key: str) -> str:
    """The derived record of an entry's remembered file stamps."""
    return plain_key(["file stamps", key])


@dataclass(frozen=True)
class EntryState:
    """What a plan needs of a key's entry: None when not cached, else its problems (empty: sound), and for a
    sound one its rows and content hash (`Manifest.rows`, `Manifest.content_hash`: what the lockfile records)."""

    problems: list[str] | None
    rows: int | None = None
    content: str | None = None


@dataclass
class Entry:
    key: str
    path: Path

    @property
    def manifest(self) -> Manifest:
        """The checked manifest (DamagedEntry when it cannot be trusted)."""
        return read_manifest(self.path, self.key)

    def table_path(self, table: str = "data") -> Path:
        """The parquet file of a table the entry has (UserError for one it lacks; a union table has none)."""
        check_table(self.manifest, table)
        return self.path / f"{table}.parquet"

    def scan(self, table: str = "data") -> "pl.LazyFrame":
        return scan_table(self.path, table)

    def read_table(self, table: str = "data", columns: Sequence[str] | None = None) -> "pl.DataFrame":
        return read_table(self, table, columns)

    def artifact(self, relative: str) -> Path:
        """The path of an artifact file or folder (`artifacts/...`), after its every file hashed as the manifest says."""
        return artifact_path(self.path, relative)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class Cache:

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self._leased: set[str] = set()  # keys this Cache object holds a lease on now
        self._locked: dict[tuple[str, int], int] = {}  # (key, thread) -> depth of the key locks this object holds
        self._entry_paths: dict[str, Path] = {}  # key -> its folder (a plan asks for each several times)

    def __getstate__(self) -> dict[str, Any]:
        # leases and locks are this process's: a copy elsewhere holds none
        return {**self.__dict__, "_leased": set(), "_locked": {}}

    # -- layout (every path named by a key refuses anything that is not one: no '../x') ------------
    def entry_path(self, key: str) -> Path:
        path = self._entry_paths.get(key)
        if path is None:
            path = self._entry_paths[key] = self.root / "entries" / key[:2] / checked_key(key)
        return path

    def _lock_path(self, key: str, kind: str = "lock") -> Path:
        return self.root / "locks" / f"{checked_key(key)}.{kind}"

    @property
    def read_only(self) -> bool:
        """Whether the cache folder exists but cannot be written (a read-only mount, or no permission)."""
        return self.root.is_dir() and not os.access(self.root, os.W_OK)

    def read_only_error(self, action: str) -> UserError:
        return UserError(f"the cache {self.root} is read-only: {action} needs to write to it",
                         hint="make the folder writable, or use a writable cache folder: --cache-dir or SYNTHFORGE_CACHE")

    def _ensure_root(self) -> None:
        """Create the cache folder on first write; a new one gets a `.gitignore` of `*` (as DVC does), so a cache
        inside a checkout is never committed. A folder that already exists is left as it is."""
        if self.root.is_dir():
            return
        with storage_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / ".gitignore", "# synthforge cache (recreated by builds): never commit it\n*\n")

    def shared_dir(self, name: str) -> Path:
        """A folder for caches below step level (per-response, converted models)."""
        self._ensure_root()
        path = self.root / "shared" / name
        with storage_errors(path):
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _tmp_root(self) -> Path:
        self._ensure_root()
        tmp_root = self.root / "tmp"
        with storage_errors(self.root):
            tmp_root.mkdir(parents=True, exist_ok=True)
        return tmp_root

    # -- reading --------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry of `key` if its folder exists (its manifest is checked when read)."""
        path = self.entry_path(key)
        return Entry(key, path) if path.is_dir() else None

    def problems(self, key: str) -> list[str] | None:
        """None when `key` is not cached; else what is wrong with its entry (empty: sound).

        Checks the manifest, and every table and artifact file against its content hash through the
        remembered stamps (`file_problems`): what plan and build ask before they count an entry as cached.
        Reading a table (`scan_table`) or an artifact (`artifact_path`) hashes it in full again."""
        path = self.entry_path(key)
        remembered = self.read_derived(_stamps_key(key)) or {}
        try:
            manifest = read_manifest(path, key, sound_hash=remembered.get("manifest"))
        except DamagedEntry as exc:
            return [exc.problem] if path.is_dir() else None
        return self.file_problems(key, manifest, remembered)

    def entry_states(self, keys: Sequence[str], remember_as: Any) -> dict[str, "EntryState"]:
        """`problems` of many keys, with each sound entry's rows and content hash, through one derived record
        (`remember_as` names it: a plan of one recipe). An entry whose manifest and files all keep the stamps
        the record holds from when they last checked sound is sound without being opened (the stamp rule of
        `file_problems`, extended to the manifest: any write changes its ctime); any other gets the full
        `problems` check. A no-op plan of 992 entries then reads one record instead of 992 manifests and
        992 stamp records."""
        record_key = _entry_states_key(remember_as)
        known = (self.read_derived(record_key) or {}).get("entries", {})
        states, sound = {}, {}
        for key in keys:
            seen = known.get(key)
            if seen is not None and self._stamps_unchanged(key, seen):
                states[key], sound[key] = EntryState([], seen["rows"], seen["content"]), seen
                continue
            states[key], remembered = self._checked_state(key)
            if remembered is not None:
                sound[key] = remembered
        if sound != known:
            with contextlib.suppress(OSError, UserError):  # a read-only cache: check each entry again next time
                self.write_derived(record_key, {"entries": sound}, sorted(sound))
        return states

    def sound_stamps(self, keys: Sequence[str], remember_as: Any) -> dict[str, dict[str, Any]] | None:
        """Per entry folder, the stamps of its manifest and files as `entry_states` (under `remember_as`) last
        found them sound, or None when it holds no such stamps for one of `keys`: what a remembered build
        (synthforge.remembered) checks in place of a plan."""
        known = (self.read_derived(_entry_states_key(remember_as)) or {}).get("entries", {})
        if not all(key in known for key in keys):
            return None
        return {str(self.entry_path(key)): {MANIFEST: known[key]["manifest"], **known[key]["files"]} for key in keys}

    def _stamps_unchanged(self, key: str, seen: dict[str, Any]) -> bool:
        folder = str(self.entry_path(key))
        try:
            return (file_stamp(os.path.join(folder, MANIFEST)) == seen["manifest"]
                    and all(file_stamp(os.path.join(folder, rel)) == stamp for rel, stamp in seen["files"].items()))
        except (OSError, KeyError, TypeError, AttributeError):  # a gone file, or a record of another shape
            return False

    def _checked_state(self, key: str) -> tuple["EntryState", dict[str, Any] | None]:
        """The full check of one entry, and what `entry_states` may remember of it: its stamps, rows and
        content hash when it is sound and nothing of it changed while it was checked (else None)."""
        before = self._entry_stamps(key)
        problems = self.problems(key)
        if problems != []:
            return EntryState(problems), None
        manifest = read_manifest(self.entry_path(key), key)  # checked just now: memoized in this process
        state = EntryState([], manifest.rows, manifest.content_hash)
        if before is None or self._entry_stamps(key) != before:
            return state, None
        return state, {**before, "rows": state.rows, "content": state.content}

    def _entry_stamps(self, key: str) -> dict[str, Any] | None:
        """The stamps of an entry's manifest and of every file it hashes (None when one is missing or damaged)."""
        folder = self.entry_path(key)
        try:
            manifest_stamp, files = file_stamp(os.path.join(folder, MANIFEST)), _stamps(folder, read_manifest(folder, key))
        except (OSError, DamagedEntry):
            return None
        return {"manifest": manifest_stamp, "files": files} if files is not None else None

    def file_problems(self, key: str, manifest: Manifest, remembered: dict[str, Any] | None = None) -> list[str]:
        """The entry's table and artifact files against the manifest's hashes, cheaply: a file whose stamp (size,
        mtime, ctime, inode, device) is the one remembered when it last hashed sound is not read again; any
        write to it changes the stamp and forces a full hash. The stamps are a derived record (gc drops it with
        the entry), written when the entry is installed and whenever a file hashed sound under a new stamp."""
        folder = str(self.entry_path(key))
        if remembered is None:
            remembered = self.read_derived(_stamps_key(key)) or {}
        known = remembered.get("stamps", {})
        stamps, problems = {}, []
        for rel, (digest, size, name) in sorted(_entry_files(manifest).items()):
            path = os.path.join(folder, rel)
            try:
                stamp = file_stamp(path)
            except (FileNotFoundError, NotADirectoryError):
                problems.append(f"table {name}: file missing" if name else f"{rel}: missing")
                continue
            if known.get(rel) != stamp:
                if (size is not None and stamp[0] != size) or hash_file(path) != digest:
                    problems.append(f"table {name}: content hash mismatch" if name else f"{rel}: content hash mismatch")
                    continue
                if file_stamp(path) != stamp:  # written while it was read: hash it again next time
                    continue
            stamps[rel] = stamp
        if not problems and (stamps != known or "manifest" not in remembered):
            self._remember_stamps(key, stamps)
        return problems

    def _remember_stamps(self, key: str, stamps: dict[str, list[int]]) -> None:
        """Remember the files' stamps and the hash of the manifest's bytes as they hashed sound."""
        record: dict[str, Any] = {"stamps": stamps}
        manifest_hash = sound_manifest_hash(self.entry_path(key))
        if manifest_hash is not None:
            record["manifest"] = manifest_hash
        with contextlib.suppress(OSError, UserError):  # a read-only cache: hash again next time
            self.write_derived(_stamps_key(key), record, [key])

    def entries(self) -> Iterator[Entry]:
        """Every entry folder, sound or not."""
        base = self.root / "entries"
        if not base.is_dir():
            return
        for shard in sorted(base.iterdir()):
            for path in sorted(shard.iterdir()):
                if path.is_dir() and is_key(path.name):
                    yield Entry(path.name, path)

    # -- writing --------------------------------------------------------
    @contextlib.contextmanager
    def flock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes; released if the holder dies.
        Reentrant within one thread of this object (a build holding it around `writing`)."""
        held = (checked_key(key), threading.get_ident())
        if held in self._locked:
            self._locked[held] += 1
            try:
                yield
            finally:
                self._locked[held] -= 1
            return
        self._ensure_root()
        with file_lock(self._lock_path(key)):
            self._locked[held] = 1
            try:
                yield
            finally:
                del self._locked[held]

    @contextlib.contextmanager
    def lease(self, keys: Iterable[str]) -> Iterator[None]:
        """Protect entries a build writes or reads from `gc` while the block runs (shared, many holders).
        Nested leases on keys this object already holds take nothing more (a command around its build)."""
        new = sorted(set(keys) - self._leased)
        self._ensure_root()
        with shared_file_locks([self._lock_path(key, "lease") for key in new]):
            self._leased.update(new)
            try:
                yield
            finally:
                self._leased.difference_update(new)

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A scratch folder that becomes entry `key` (verified, replacing any old one) if the block succeeds."""
        with self.staging(key) as work:
            with storage_errors(self.root):
                yield work
                _drop_scratch(work)
            self.install(key, work, replace=True)

    @contextlib.contextmanager
    def staging(self, key: str, resumable: str | None = None) -> Iterator[Path]:
        """A folder under tmp/ to assemble entry `key` in (then `install` it), held under the key's lock
        for the whole block, so no sweep deletes it while it is in use.

        A fresh folder, removed at the end; with `resumable`, the fixed folder tmp/<key>.<resumable>,
        kept when the block leaves it (an interrupted pull resumes from it; a sweep deletes it once no
        one holds the lock)."""
        with self.flock(key):
            tmp_root = self._tmp_root()
            with storage_errors(self.root):
                if resumable is None:
                    folder = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{key}."))
                else:
                    folder = tmp_root / f"{key}.{resumable}"
                    folder.mkdir(exist_ok=True)
            try:
                yield folder
            finally:
                if resumable is None and folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def scratch_file(self, purpose: str, suffix: str = "") -> Iterator[Path]:
        """A fresh file path tmp/<purpose>.<uuid><suffix> (e.g. a response snapshot in transit), deleted at the
        end. The block holds a shared lock on `purpose`: many may be in flight, and a sweep deletes none of them."""
        if not purpose.isidentifier() or is_key(purpose):
            raise ValueError(f"a scratch purpose is a plain name, not {purpose!r}")
        with file_lock(self.root / "locks" / f"{purpose}.lock", shared=True):
            path = self._tmp_root() / f"{purpose}.{uuid.uuid4().hex}{suffix}"
            try:
                yield path
            finally:
                for made in path.parent.glob(f"{path.name}*"):  # and what it brought along (sqlite's -wal, -shm)
                    made.unlink(missing_ok=True)

    def install(self, key: str, folder: Path, replace: bool = False) -> bool:
        """Verify an entry folder (manifest, hashes, rows, columns, table list), then rename it into place.

        `folder` must be on the cache's file system (e.g. from `staging()`). An existing sound
        entry is kept unless `replace`; a damaged one is replaced. Returns whether `folder` was
        installed. Raises DamagedEntry (and installs nothing) when `folder` is not sound.
        Callers hold `flock(key)` (`staging` does): two unlocked installs of one key can collide on the rename."""
        folder, stamps = Path(folder), None
        with contextlib.suppress(DamagedEntry):  # taken before the files are hashed, compared after
            stamps = _stamps(folder, read_manifest(folder))
        problems = verify_folder(folder, key)
        if problems:
            raise DamagedEntry(folder, problems[0])
        with storage_errors(self.root):
            self._fsync_tree(folder)
            final = self.entry_path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                if not replace and not verify_folder(final, key, full=False):
                    return False
                trash = Path(tempfile.mkdtemp(dir=self._tmp_root(), prefix=f"{key}.old."))  # under the caller's lock
                os.rename(final, trash / "entry")
                os.rename(folder, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(folder, final)
        if stamps is not None and _stamps(final, read_manifest(final)) == stamps:  # untouched since it hashed sound
            self._remember_stamps(key, stamps)
        return True

    @staticmethod
    def _fsync_tree(path: Path) -> None:
        for file in path.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())

    # -- derived results (computed later from entries, never written into them) --------
    def derived_path(self, key: str) -> Path:
        return Path(self._derived_file(key))

    def _derived_file(self, key: str) -> str:
        return derived_file(self.root, key)

    def read_derived(self, key: str) -> dict[str, Any] | None:
        """A derived record, or None when missing or not intact (it is then recomputed)."""
        return read_record(self._derived_file(key))

    def write_derived(self, key: str, record: dict[str, Any], entries: list[str]) -> dict[str, Any]:
        """Store `record` (JSON-plain) under `key`; `entries` are the keys it was computed from (gc drops it with them)."""
        plain = json.loads(json.dumps({**record, "derived_from": sorted(entries)}))
        plain["checksum"] = plain_key(plain)  # JSON as read back: what read_record checks first
        self._ensure_root()
        atomic_write(self.derived_path(key), json.dumps(plain, sort_keys=True, separators=(",", ":")))  # C-speed
        return plain

    # -- maintenance ----------------------------------------------------
    def verify(self, entry: Entry) -> list[str]:
        """Problems of an entry (empty when sound): manifest, table hashes, rows, columns, table list, artifacts."""
        return verify_folder(entry.path, entry.key)

    def remove(self, entry: Entry) -> bool:
        """Remove an entry unless a running build holds a lease on it or someone writes or pulls it now;
        returns whether it was removed."""
        with try_file_lock(self._lock_path(entry.key, "lease")) as unleased, try_file_lock(self._lock_path(entry.key)) as free:
            if not (unleased and free):
                return False
            trash = Path(tempfile.mkdtemp(dir=self._tmp_root(), prefix=f"{entry.key}.gc."))
            os.rename(entry.path, trash / "entry")  # vanish atomically, then delete
            shutil.rmtree(trash, ignore_errors=True)
        return True

    def sweep_tmp(self) -> int:
        """Delete leftovers of dead writers: whatever is in tmp/ whose owner (a key, or a `scratch_file`
        purpose) nobody holds the lock of. Every tmp path is made under its owner's lock, so nothing in flight goes."""
        self._ensure_root()
        tmp_root = self.root / "tmp"
        if not tmp_root.is_dir():
            return 0
        swept = 0
        for path in list(tmp_root.iterdir()):
            owner = path.name.split(".")[0]
            owned = is_key(owner) or owner.isidentifier()  # else no writer of this version made it: nobody to ask
            with try_file_lock(self.root / "locks" / f"{owner if owned else 'unowned'}.lock") as free:
                if free:  # else a live writer holds it
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                    swept += 1
        return swept

    def sweep_shared_partials(self) -> int:
        """Delete dead half-made folders in the shared caches. The convention every shared cache that assembles
        a folder follows (e.g. a converted model): it is made as shared/<name>/.<owner>.<anything> while its maker
        holds the flock shared/<name>/<owner>.lock, then renamed into place; one whose lock is free is dead."""
        shared = self.root / "shared"
        swept = 0
        for path in sorted(shared.glob("*/.*")) if shared.is_dir() else []:
            owner = path.name[1:].split(".")[0]
            if not path.is_dir() or not owner:
                continue
            with try_file_lock(path.parent / f"{owner}.lock") as free:
                if free:
                    shutil.rmtree(path, ignore_errors=True)
                    swept += 1
        return swept

    def sweep_derived(self, keep: set[str]) -> int:
        """Delete derived records computed from an entry that is no longer kept."""
        swept = 0
        for path in list((self.root / "derived").glob("*/*.json")):
            try:
                sources = json.loads(path.read_text()).get("derived_from", [])
            except (OSError, ValueError, AttributeError):
                sources = [None]
            if not set(sources) <= keep:
                path.unlink(missing_ok=True)
                swept += 1
        return swept

