"""The content-addressed cache.

Layout under the cache root:
  entries/<kk>/<key>/manifest.json    what, from what, how long, which versions
  entries/<kk>/<key>/<table>.parquet  the main table `data` and any side tables; a table the
                                      manifest marks as a `union` of others has no file of its own
  entries/<kk>/<key>/artifacts/       files a step keeps (models, plots...)
  locks/<key>.lock                    one flock per key: a key is computed once
  tmp/                                entries being written (renamed when done)
  shared/                             caches below step level (responses, models)

An entry appears by an atomic rename of a finished folder, so a reader sees a
whole entry or none; a build killed mid-write leaves only a tmp folder, which
`gc` sweeps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.keys import hash_file

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

DEFAULT_CACHE = "cache"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHFORGE_CACHE") or DEFAULT_CACHE)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` across processes; the OS releases it if the holder dies."""
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass
class Entry:
    key: str
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def table_path(self, table: str = "data") -> Path:
        return self.path / f"{table}.parquet"

    def scan(self, table: str = "data") -> "pl.LazyFrame":
        return scan_table(self.path, table)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def table_files(entry_dir: Path, table: str = "data") -> list[Path]:
    """The parquet files holding `table`, in row order: its own file, or those of the tables it is the union of."""
    manifest_path = Path(entry_dir) / "manifest.json"
    info = json.loads(manifest_path.read_text()).get("tables", {}).get(table, {}) if manifest_path.is_file() else {}
    parts = info.get("union") or [table]
    return [Path(entry_dir) / f"{part}.parquet" for part in parts]


def scan_table(entry_dir: Path, table: str = "data") -> "pl.LazyFrame":
    """The one way a cached table is read: lazily, so a head or a column costs only what it touches."""
    import polars as pl

    return pl.scan_parquet(table_files(entry_dir, table))


def read_table(entry_dir: Path, table: str = "data", columns: list[str] | None = None) -> "pl.DataFrame":
    frame = scan_table(entry_dir, table)
    return (frame.select(columns) if columns is not None else frame).collect()


class Cache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    # -- layout ---------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / key

    def shared_dir(self, name: str) -> Path:
        """A folder for caches below step level (per-response, converted models)."""
        path = self.root / "shared" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- reading --------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        path = self.entry_path(key)
        return Entry(key, path) if (path / "manifest.json").is_file() else None

    def has(self, key: str) -> bool:
        return (self.entry_path(key) / "manifest.json").is_file()

    def entries(self) -> Iterator[Entry]:
        base = self.root / "entries"
        if not base.is_dir():
            return
        for shard in sorted(base.iterdir()):
            for path in sorted(shard.iterdir()):
                if (path / "manifest.json").is_file():
                    yield Entry(path.name, path)

    # -- writing --------------------------------------------------------
    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Exclusive per-key lock across processes; released if the holder dies."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return file_lock(locks / f"{key}.lock")

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A scratch folder that becomes entry `key` if the block succeeds."""
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{key}."))
        try:
            yield work
            if not (work / "manifest.json").is_file():
                raise RuntimeError("entry written without a manifest")
            self._fsync_tree(work)
            final = self.entry_path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # --force: replace the old entry whole
                trash = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{key}.old."))
                os.rename(final, trash / "entry")
                os.rename(work, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(work, final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _fsync_tree(path: Path) -> None:
        for file in path.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())

    # -- maintenance ----------------------------------------------------
    def verify(self, entry: Entry) -> list[str]:
        """Problems found by re-hashing an entry's tables (empty when sound)."""
        try:
            manifest = entry.manifest
        except (OSError, ValueError) as exc:
            return [f"unreadable manifest: {exc}"]
        problems = []
        for table, info in manifest.get("tables", {}).items():
            if "union" in info:
                continue  # no file of its own: its parts are checked
            path = entry.table_path(table)
            if not path.is_file():
                problems.append(f"{table}: file missing")
            elif hash_file(path) != info.get("content_hash"):
                problems.append(f"{table}: content hash mismatch")
        return problems

    def remove(self, entry: Entry) -> None:
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        trash = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{entry.key}.gc."))
        os.rename(entry.path, trash / "entry")  # vanish atomically, then delete
        shutil.rmtree(trash, ignore_errors=True)

    def sweep_tmp(self) -> int:
        """Delete leftovers of killed builds: tmp folders whose key nobody holds the lock of."""
        tmp_root = self.root / "tmp"
        if not tmp_root.is_dir():
            return 0
        swept = 0
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        for path in tmp_root.iterdir():
            key = path.name.split(".")[0]
            with open(self.root / "locks" / f"{key}.lock", "a+") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live build is writing it
                shutil.rmtree(path, ignore_errors=True)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                swept += 1
        return swept
