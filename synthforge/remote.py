"""A shared remote cache: entries as content-addressed objects in object storage or a shared folder.

Layout under the remote URL (s3://bucket/prefix, gs://..., az://..., or a folder path):
  objects/<hh>/<hash>           one file of an entry, named by the xxh3-128 of its bytes (immutable)
  entries/<kk>/<key>.json       the commit record of entry <key>: its files and their hashes
  responses/<name>.sqlite       snapshots of the per-response LLM cache, named by their content (every
                                row's key and content hash), checked row by row before a merge

A push uploads the objects first and the record last, so an entry exists on the remote only once
all its bytes do; two pushes of one key write complete objects and either record, both sound. A pull
downloads into the local cache's tmp/ folder, checks every file against its hash and the tables
against the manifest, and only then renames the folder into place. Storage goes through fsspec;
credentials and endpoints come from each backend's own configuration and never reach a record.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthforge.cache import Cache, DamagedEntry, Entry, atomic_write
from synthforge.errors import UserError
from synthforge.keys import checked_key, hash_file, is_key
from synthforge.text_tables import plural

RECORD_FORMAT = 1
DEFAULT_JOBS = 16
LIST_PAGE = 1000  # names one listing request returns (S3, GCS, Azure)
GC_GRACE_S = 3600  # objects younger than this may belong to a push in flight: gc keeps them
LOCK_BATCH = 256  # keys a pull holds the locks of at once (one open file each)
_BACKEND_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
_MERGED_SNAPSHOTS = "merged_snapshots.txt"


# -- where the remote is ---------------------------------------------------


def remote_url(option: str | None, start: Path | None = None) -> str | None:
    """--remote (or $SYNTHFORGE_REMOTE, which click folds into it), else [tool.synthforge] remote."""
    if option:
        return option
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file():
            import tomllib

            try:
                config = tomllib.loads(pyproject.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise UserError(f"cannot read [tool.synthforge]: {exc}", file=str(pyproject)) from None
            url = config.get("tool", {}).get("synthforge", {}).get("remote")
            if url:
                return url
    return None


def open_remote(url: str | None, jobs: int = DEFAULT_JOBS, progress: bool = True) -> "Remote":
    if not url:
        raise UserError("no remote configured", field="--remote",
                        hint="pass --remote URL, set SYNTHFORGE_REMOTE, or add remote = \"...\" under [tool.synthforge] in pyproject.toml")
    return Remote(url, jobs=jobs, progress=progress)


def _check_url(url: str) -> None:
    """Refuse a URL that carries credentials or a query string (before anything is imported or contacted)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    authority = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if "@" in authority or ":" in authority:  # user:secret@bucket (a secret may hold '/': look before the first one)
        raise UserError(f"the remote URL carries credentials ({parts.scheme}://...)", field="--remote",
                        hint="give credentials through the backend's own configuration (AWS env vars or profile, gcloud, az login)")
    if "://" in url and ("?" in url or "#" in url):  # ?secret=... would be echoed and become part of object names
        raise UserError(f"the remote URL carries a query string or fragment ({parts.scheme}://...)", field="--remote",
                        hint="give the URL as scheme://bucket/prefix only; credentials and options go in the backend's own "
                             "configuration (AWS env vars or profile, gcloud, az login)")


def _filesystem(url: str) -> tuple[Any, str]:
    from urllib.parse import urlsplit

    from fsspec.core import url_to_fs

    _check_url(url)
    parts = urlsplit(url)
    try:
        fs, root = url_to_fs(url, skip_instance_cache=True)  # fresh listings; endpoint from the current env
    except ImportError:
        extra = _BACKEND_EXTRAS.get(parts.scheme, parts.scheme)
        raise UserError(f"no storage backend installed for {parts.scheme}:// remotes", field="--remote",
                        hint=f"pip install 'synthforge[{extra}]'") from None
    except ValueError as exc:
        raise UserError(f"cannot use remote {url!r}: {exc}", field="--remote") from None
    return fs, root.rstrip("/")


# -- transfers -------------------------------------------------------------


@dataclass
class Transfer:
    """What one push or pull did."""

    entries: list[str] = field(default_factory=list)  # keys moved
    present: list[str] = field(default_factory=list)  # keys already there
    missing: list[str] = field(default_factory=list)  # keys neither side has
    refused: dict[str, str] = field(default_factory=dict)  # key -> why (damaged or partial on the remote)
    failed: dict[str, str] = field(default_factory=dict)  # key -> error (connection, permissions)
    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def summary(self, verb: str) -> str:
        rate = self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        text = (f"{verb} {plural(len(self.entries), 'entry', 'entries')} ({plural(self.objects, 'object')}, {self.bytes / 1e6:.1f} MB in "
                f"{self.seconds:.1f}s, {rate:.1f} MB/s); {len(self.present)} already there")
        if self.missing:
            text += f"; {len(self.missing)} not {'built in this cache' if verb == 'pushed' else 'on the remote'}"
        return text


class _Bar:
    """A progress bar over bytes (MB/s) that also counts objects; thread safe."""

    def __init__(self, desc: str, objects: int, total_bytes: int, enabled: bool):
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self._objects, self._done = objects, 0
        self._bar = tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1000,
                         disable=not enabled or objects == 0, dynamic_ncols=True, leave=True)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += 1
            self._bar.set_postfix_str(f"objects {self._done}/{self._objects}", refresh=False)
            self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


class Remote:
    """A remote cache at `url`; all transfers are parallel (`jobs` objects at once) and resumable."""

    def __init__(self, url: str, jobs: int = DEFAULT_JOBS, progress: bool = True):
        _check_url(url)
        self.url = url
        self.jobs = max(1, jobs)
        self.progress = progress
        self._connection: tuple[Any, str] | None = None
        self._connecting = threading.Lock()

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, made on first use: importing and configuring a cloud backend (s3fs,
        aiobotocore, certificates) costs about a second, which a command with nothing to ask never pays."""
        return self._connected()[0]

    @property
    def root(self) -> str:
        return self._connected()[1]

    def _connected(self) -> tuple[Any, str]:
        with self._connecting:
            if self._connection is None:
                self._connection = _filesystem(self.url)
            return self._connection

    @property
    def _local(self) -> bool:
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # -- layout ------------------------------------------------------------
    def record_path(self, key: str) -> str:
        return f"{self.root}/entries/{key[:2]}/{checked_key(key)}.json"

    def object_path(self, digest: str) -> str:
        return f"{self.root}/objects/{digest[:2]}/{digest}"

    def snapshot_path(self, name: str) -> str:
        return f"{self.root}/responses/{name}.sqlite"

    def available(self, keys: Iterable[str]) -> set[str]:
        with self._reachable():
            return self._present(f"{self.root}/entries", list(dict.fromkeys(keys)), self.record_path)

    def _present(self, folder: str, names: list[str], path_of: Callable[[str], str]) -> set[str]:
        """Which of `names` exist under `folder`, in the fewest requests (as DVC, the folder's size is estimated
        from one shard): one listing per shard (prefix) the names fall in, run in parallel; one listing of the
        whole folder when it is small; one question per name when the shards are much larger than the question."""
        if not names:
            return set()
        self.fs.invalidate_cache()
        if len(names) == 1:
            return {names[0]} if self.fs.exists(path_of(names[0])) else set()
        shards: dict[str, list[str]] = {}
        for name in names:
            shards.setdefault(path_of(name).rsplit("/", 1)[0], []).append(name)
        first, *rest = shards
        listed = {first: self._listing(first)}
        asked = [name for shard in rest for name in shards[shard]]
        costs = {"shards": len(rest) * _pages(len(listed[first])), "folder": _pages(len(listed[first]) * 256),
                 "names": len(asked)}
        cheapest = min(costs, key=costs.get) if rest else "none"
        if cheapest == "names":
            found = {name for name, there in zip(asked, self._map(lambda n: self.fs.exists(path_of(n)), asked)) if there}
            listed.update({shard: {path_of(n).rsplit("/", 1)[-1] for n in shards[shard] if n in found} for shard in rest})
        elif cheapest == "folder":
            try:
                everything = {path.rsplit("/", 1)[-1] for path in self.fs.find(folder)}
            except FileNotFoundError:
                everything = set()
            listed.update({shard: everything for shard in rest})
        elif cheapest == "shards":
            listed.update(zip(rest, self._map(self._listing, rest)))
        return {name for shard, members in shards.items() for name in members
                if path_of(name).rsplit("/", 1)[-1] in listed[shard]}

    def _listing(self, shard: str) -> set[str]:
        """The names in one shard folder (empty when it does not exist)."""
        try:
            return {path.rsplit("/", 1)[-1] for path in self.fs.ls(shard, detail=False)}
        except FileNotFoundError:
            return set()

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Storage that cannot be reached or read (endpoint, credentials, bucket) is one line, not a traceback."""
        try:
            yield
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"remote {self.url}: {_one_line(exc)}",
                            hint="check the endpoint and credentials in the backend's own configuration") from None

    # -- push --------------------------------------------------------------
    def push_many(self, keys: Iterable[str], cache: Cache) -> Transfer:
        start = time.perf_counter()
        done = Transfer()
        wanted = list(dict.fromkeys(checked_key(key) for key in keys))
        # the remote first (a listing per shard): only the entries it lacks are checked here, so a no-op push
        # reads no local entry
        on_remote = self.available(wanted)
        done.present = [key for key in wanted if key in on_remote]
        done.missing = [key for key in wanted if key not in on_remote and not _sound(cache, key)]
        unsound = set(done.missing)
        records = {key: _record_of(cache.get(key)) for key in wanted if key not in on_remote and key not in unsound}
        generated = [key for key, record in records.items() if _carries_responses(record["kind"])]
        if generated and cache.read_only:  # its responses go up with it, through a snapshot in the cache's tmp/
            first = records[generated[0]]
            raise cache.read_only_error(f"pushing {first['kind']} step '{first['step']}' (its LLM responses)")
        if generated:
            try:
                snapshot = self._push_responses(cache, done)
            except Exception as exc:  # noqa: BLE001  (such an entry goes up only with its responses)
                done.failed.update({key: _one_line(exc) for key in generated})
                records = {key: record for key, record in records.items() if key not in generated}
            else:
                for key in generated:
                    records[key]["responses"] = snapshot
        uploads = {info["hash"]: (cache.entry_path(key) / rel, info["bytes"])
                   for key, record in records.items() for rel, info in record["files"].items()}
        with self._reachable():
            there = self._present(f"{self.root}/objects", list(uploads), self.object_path)
        commit = _when_complete({key: {i["hash"] for i in record["files"].values()} for key, record in records.items()},
                                lambda key: self._write_record(key, records[key], done))
        for digest in there:  # from an earlier, interrupted push or another entry
            commit(digest)
        missing = {digest: item for digest, item in uploads.items() if digest not in there}
        errors, objects, nbytes = self._transfer("push", missing, self._upload_object, on_done=commit)
        done.objects, done.bytes = done.objects + objects, done.bytes + nbytes
        for key, record in records.items():
            lost = [errors[info["hash"]] for info in record["files"].values() if info["hash"] in errors]
            if lost:
                done.failed[key] = lost[0]
        done.seconds = time.perf_counter() - start
        return done

    def _write_record(self, key: str, record: dict[str, Any], done: Transfer) -> None:
        try:
            self._write_atomic(self.record_path(key), json.dumps(record, indent=1, sort_keys=True).encode())
        except Exception as exc:  # noqa: BLE001  (reported per entry; a rerun resumes)
            done.failed[key] = _one_line(exc)
        else:
            done.entries.append(key)

    def _upload_object(self, digest: str, source: tuple[Path, int]) -> int:
        path, size = source
        self._put_atomic(path, self.object_path(digest))
        return size

    def _put_atomic(self, source: Path, target: str) -> None:
        """Object stores publish an upload only when it completes; a folder needs temp + rename."""
        if not self._local:
            self.fs.put_file(str(source), target)
            return
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        partial = f"{target}.{uuid.uuid4().hex}.partial"
        try:
            self.fs.put_file(str(source), partial)
            self.fs.mv(partial, target)
        finally:
            if self.fs.exists(partial):
                self.fs.rm_file(partial)

    def _write_atomic(self, target: str, data: bytes) -> None:
        if not self._local:
            self.fs.pipe_file(target, data)
            return
        atomic_write(Path(target), data)

    # -- pull --------------------------------------------------------------
    def pull_many(self, keys: Iterable[str], cache: Cache, log: Callable[[str], None] = lambda m: None) -> Transfer:
        start = time.perf_counter()
        done = Transfer()
        wanted = list(dict.fromkeys(checked_key(key) for key in keys))
        done.present = [key for key in wanted if _sound(cache, key)]
        records: dict[str, dict[str, Any]] = {}
        fetch = [key for key in wanted if key not in done.present]
        with self._reachable():
            if fetch:
                self._require_root()
            found = self._map(self._read_record, fetch)
        for key, record in zip(fetch, found):
            if record is None:
                done.missing.append(key)
            elif isinstance(record, str):
                done.refused[key] = record
            else:
                records[key] = record
        ordered = sorted(records)  # every pull locks keys in one order: two pulls never wait on each other
        installed: dict[str, Path] = {}  # object hash -> a file of an entry this pull installed (a later batch copies it)
        for first in range(0, len(ordered), LOCK_BATCH):
            batch = {key: records[key] for key in ordered[first:first + LOCK_BATCH]}
            self._pull_locked(batch, cache, done, installed)
            installed.update({info["hash"]: cache.entry_path(key) / rel for key in done.entries if key in batch
                              for rel, info in batch[key]["files"].items()})
        snapshots = {records[key]["responses"] for key in done.entries if records[key].get("responses")}
        for key, why in done.refused.items():
            log(f"remote: refused entry {key[:12]}: {why} (not installed; a build recomputes it)")
        if snapshots:
            self.pull_responses(cache, sorted(snapshots), log, done)
        done.seconds = time.perf_counter() - start
        return done

    def _pull_locked(self, records: dict[str, dict[str, Any]], cache: Cache, done: Transfer,
                     installed: dict[str, Path]) -> None:
        """Download and install entries, each into its staging folder under its key's lock (held throughout:
        no sweep deletes a transfer in flight, and a build of the key waits for it, then finds it cached).

        Each object is downloaded once, however many entries hold it (variants share tables): its other
        places get checked local copies, as do objects an earlier batch of this pull installed."""
        with contextlib.ExitStack() as stack:
            staging = {key: stack.enter_context(cache.staging(key, resumable="pull")) for key in records}
            for key in [key for key in records if _sound(cache, key)]:  # another process got it while we waited
                done.present.append(key)
                del records[key]
            places: dict[str, list[Path]] = {}
            names: dict[str, str] = {}  # the object's name in the first entry that holds it, for messages
            sizes: dict[str, int] = {}
            for key, record in records.items():
                _keep_only(staging[key], set(record["files"]))
                for rel, info in record["files"].items():
                    places.setdefault(info["hash"], []).append(staging[key] / rel)
                    names.setdefault(info["hash"], rel)
                    sizes[info["hash"]] = info["bytes"]
            downloads = {digest: (paths, names[digest], installed.get(digest), sizes[digest]) for digest, paths in places.items()}
            install = _when_complete({key: {info["hash"] for info in record["files"].values()} for key, record in records.items()},
                                     lambda key: self._install(cache, key, staging[key], done))
            errors, objects, nbytes = self._transfer("pull", downloads, self._download_object, on_done=install)
            done.objects, done.bytes = done.objects + objects, done.bytes + nbytes
            for key, record in records.items():
                problems = [errors[info["hash"]] for info in record["files"].values() if info["hash"] in errors]
                if not problems:
                    continue
                damaged = problems[0].startswith("damaged")
                (done.refused if damaged else done.failed)[key] = problems[0]
                if damaged:
                    shutil.rmtree(staging[key], ignore_errors=True)

    def _require_root(self) -> None:
        """A pull from a bucket or prefix that does not exist is a mistake (a typo), not 'nothing there'."""
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            raise UserError(f"remote {self.url} does not exist (no bucket, folder or prefix there)", field="--remote",
                            hint="check the URL for a typo; a first `synthforge cache push` creates a new remote")

    @staticmethod
    def _install(cache: Cache, key: str, staging: Path, done: Transfer) -> None:
        refusal = _install_verified(cache, key, staging)
        if refusal:
            done.refused[key] = refusal
        else:
            done.entries.append(key)

    def _read_record(self, key: str) -> dict[str, Any] | str | None:
        """The record of `key`, None when absent, or why it is unusable."""
        try:
            raw = self.fs.cat_file(self.record_path(key))
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            files = record["files"]
            ok = (record.get("key") == key and "manifest.json" in files
                  and (record.get("responses") is None or is_key(record["responses"]))
                  and all(isinstance(info, dict) and is_key(info.get("hash")) and type(info.get("bytes")) is int
                          and info["bytes"] >= 0 and _inside(rel) for rel, info in files.items()))
        except (ValueError, AttributeError, KeyError, TypeError):
            ok = False
        return record if ok else "damaged record (unreadable, for another key, or naming files outside the entry)"

    def _download_object(self, digest: str, target: tuple[list[Path], str, Path | None, int]) -> int:
        """Put object `digest` at every path of `target`, each checked against the hash before it appears:
        from a copy left by an earlier, interrupted pull, from a file this pull installed, else downloaded
        once; bytes downloaded."""
        paths, name, installed, size = target
        have = next((path for path in paths if path.is_file() and hash_file(path) == digest), None)
        if have is None and installed is not None and _copy_checked(installed, paths[0], digest):
            have = paths[0]
        downloaded = 0
        if have is None:
            self._fetch(digest, paths[0], name)
            have, downloaded = paths[0], size
        for path in paths:
            if path != have and not (path.is_file() and hash_file(path) == digest) and not _copy_checked(have, path, digest):
                raise OSError(f"could not copy {name} within the cache")
        return downloaded

    def _fetch(self, digest: str, path: Path, name: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            self.fs.get_file(self.object_path(digest), str(partial))
        except FileNotFoundError:
            raise _Damaged(f"damaged: object {name} is missing on the remote") from None
        if hash_file(partial) != digest:
            partial.unlink()
            raise _Damaged(f"damaged: {name} does not match its hash")
        os.replace(partial, path)

    # -- shared machinery ----------------------------------------------------
    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        from concurrent.futures import ThreadPoolExecutor

        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return list(pool.map(fn, items))

    def _transfer(self, desc: str, items: dict[Any, Any], move: Callable[[Any, Any], int],
                  on_done: Callable[[Any], None] = lambda ident: None) -> tuple[dict[Any, str], int, int]:
        """Run `move(id, item)` on every item in parallel: errors by id (one line each), objects and bytes moved."""
        if not items:  # a no-op push or pull: no bar (tqdm) and no pool to import
            return {}, 0, 0
        from concurrent.futures import ThreadPoolExecutor

        total = sum(item[-1] for item in items.values())
        bar = _Bar(desc, len(items), total, self.progress)
        errors: dict[Any, str] = {}
        moved = [0, 0]
        lock = threading.Lock()

        def one(pair: tuple[Any, Any]) -> None:
            ident, item = pair
            try:
                nbytes = move(ident, item)
            except Exception as exc:  # noqa: BLE001  (connection, permission, damage: reported per object)
                errors[ident] = _one_line(exc)
                return
            with lock:
                moved[0] += nbytes > 0
                moved[1] += nbytes
            bar.advance(item[-1])
            on_done(ident)

        try:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                list(pool.map(one, items.items()))
        finally:
            bar.close()
        return errors, moved[0], moved[1]

    @staticmethod
    def raise_failures(done: Transfer) -> None:
        if done.failed:
            key, why = next(iter(done.failed.items()))
            raise UserError(f"remote transfer of {plural(len(done.failed), 'entry', 'entries')} failed ({key[:12]}: {why})",
                            hint="check the connection and credentials, then rerun: finished objects are kept")

    # -- the per-response LLM cache -----------------------------------------
    def _push_responses(self, cache: Cache, done: Transfer) -> str | None:
        """Upload a snapshot of the local response cache (if new); its name, or None when there is none."""
        from synthforge.generation.response_cache import DB_NAME, ResponseCache

        folder = cache.root / "shared" / "responses"
        if not (folder / DB_NAME).is_file():
            return None
        with cache.scratch_file("responses", ".sqlite") as snapshot:
            with ResponseCache(folder) as responses:
                name = responses.snapshot(snapshot)
            path = self.snapshot_path(name)
            if not self.fs.exists(path):
                self._put_atomic(snapshot, path)
                done.objects, done.bytes = done.objects + 1, done.bytes + snapshot.stat().st_size
            return name

    def pull_responses(self, cache: Cache, names: list[str] | None = None, log: Callable[[str], None] = lambda m: None,
                       done: Transfer | None = None) -> int:
        """Merge response snapshots (all on the remote when `names` is None) into the local cache; rows added.

        A snapshot whose rows fail their content hashes or its name is refused whole (a line in the log)."""
        from synthforge.generation.response_cache import DamagedSnapshot, ResponseCache

        folder = cache.shared_dir("responses")
        merged_file = folder / _MERGED_SNAPSHOTS
        merged = set(merged_file.read_text().split()) if merged_file.is_file() else set()
        if names is None:
            names = self._snapshot_names()
        added = 0
        for name in names:
            if name in merged:
                continue
            try:
                with cache.scratch_file("responses", ".sqlite") as local:
                    with self._reachable():
                        self.fs.get_file(self.snapshot_path(name), str(local))
                    if done is not None:
                        done.objects, done.bytes = done.objects + 1, done.bytes + local.stat().st_size
                    with ResponseCache(folder, log=log) as responses:
                        added += responses.merge(local, name)
            except DamagedSnapshot as exc:
                log(f"remote: refused response snapshot {name[:12]}: {exc} (nothing of it merged)")
                continue
            except FileNotFoundError:
                log(f"remote: refused response snapshot {name[:12]}: missing on the remote")
                continue
            with open(merged_file, "a") as fh:
                fh.write(name + "\n")
        return added

    def _snapshot_names(self) -> list[str]:
        with self._reachable():
            try:
                paths = self.fs.ls(f"{self.root}/responses", detail=False)
            except FileNotFoundError:
                return []
        names = [p.rsplit("/", 1)[-1].removesuffix(".sqlite") for p in paths]
        return [n for n in names if is_key(n)]

    # -- gc ------------------------------------------------------------------
    def keys(self) -> list[str]:
        self.fs.invalidate_cache()
        try:
            paths = self.fs.find(f"{self.root}/entries")
        except FileNotFoundError:
            return []
        names = (p.rsplit("/", 1)[-1].removesuffix(".json") for p in paths if p.endswith(".json"))
        return sorted(name for name in names if is_key(name))  # anything else is no record of ours: never touched

    def gc(self, keep: set[str], dry_run: bool) -> tuple[int, int, int]:
        """Remove records not in `keep`, then objects and snapshots no kept record names; (entries, objects, bytes)."""
        with self._reachable():
            return self._collect(keep, dry_run)

    def _collect(self, keep: set[str], dry_run: bool) -> tuple[int, int, int]:
        doomed = [key for key in self.keys() if key not in keep]
        kept = [r for r in self._map(self._read_record, [k for k in self.keys() if k in keep]) if isinstance(r, dict)]
        if not dry_run:
            self._map(lambda key: self.fs.rm_file(self.record_path(key)), doomed)
        live = {info["hash"] for record in kept for info in record["files"].values()}
        live_snapshots = {record["responses"] for record in kept if record.get("responses")}
        now = time.time()
        stale = []
        for folder, alive in ((f"{self.root}/objects", lambda p: p.rsplit("/", 1)[-1] in live),
                              (f"{self.root}/responses", lambda p: p.rsplit("/", 1)[-1].removesuffix(".sqlite") in live_snapshots)):
            try:
                listing = self.fs.find(folder, detail=True)
            except FileNotFoundError:
                continue
            stale += [(p, info.get("size", 0)) for p, info in listing.items()
                      if not alive(p) and now - _modified(info) > GC_GRACE_S]
        if not dry_run:
            self._map(lambda item: self.fs.rm_file(item[0]), stale)
        return len(doomed), len(stale), sum(size for _, size in stale)


class _Damaged(Exception):
    """A remote object that is missing or does not hash to its name."""


def _pages(names: int) -> float:
    """Listing requests that return `names` names (LIST_PAGE 0: listings are too costly to consider)."""
    return -(-max(1, names) // LIST_PAGE) if LIST_PAGE > 0 else float("inf")


def _one_line(exc: Exception) -> str:
    if isinstance(exc, _Damaged):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _when_complete(groups: dict[str, set[Any]], then: Callable[[str], None]) -> Callable[[Any], None]:
    """A callback for each finished item; runs `then(group)` once every item of a group has finished."""
    waiting = {group: set(items) for group, items in groups.items()}
    owners: dict[Any, list[str]] = {}
    for group, items in waiting.items():
        for item in items:
            owners.setdefault(item, []).append(group)
    lock = threading.Lock()

    def finished(item: Any) -> None:
        ready = []
        with lock:
            for group in owners.get(item, []):
                waiting[group].discard(item)
                if not waiting[group]:
                    ready.append(group)
                    del waiting[group]
        for group in ready:
            then(group)

    return finished


def _inside(relative: str) -> bool:
    """A record's file name is a plain relative path inside the entry folder: no absolute path, no '..' or '.'
    part, no empty part, no backslash, no hidden name (a '.x' could pass for a partial download)."""
    if not isinstance(relative, str) or not relative or "\\" in relative or "\0" in relative:
        return False
    return all(part and not part.startswith(".") for part in relative.split("/"))


def _copy_checked(source: Path, path: Path, digest: str) -> bool:
    """Copy `source` to `path` if the copy hashes to `digest` (False, and nothing at `path`, otherwise: the
    source may have gone, as an entry another process collected)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, partial)
        if hash_file(partial) == digest:
            os.replace(partial, path)
            return True
    except OSError:
        pass
    partial.unlink(missing_ok=True)
    return False


def _keep_only(staging: Path, names: set[str]) -> None:
    """Remove files a resumed staging folder holds that the record does not name (from an older record)."""
    for path in [p for p in staging.rglob("*") if p.is_file()]:
        if path.relative_to(staging).as_posix() not in names:
            path.unlink()


def _modified(info: dict[str, Any]) -> float:
    """Modification time (epoch seconds) from an fsspec listing; now when the backend gives none."""
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "timestamp"):
        return value.timestamp()
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def _carries_responses(kind: str) -> bool:
    """Whether entries of this step kind travel with a snapshot of the LLM response cache (the kind says so)."""
    from synthforge.steps import KINDS

    try:
        return bool(getattr(KINDS.load(kind), "carries_responses", False))
    except UserError:  # a plugin kind not installed here: its entry travels alone
        return False


def _record_of(entry: Entry) -> dict[str, Any]:
    """The commit record of a local entry: every file with its hash and size."""
    manifest = entry.manifest
    files = {}
    for path in sorted(p for p in entry.path.rglob("*") if p.is_file()):
        files[path.relative_to(entry.path).as_posix()] = {"hash": hash_file(path), "bytes": path.stat().st_size}
    return {"synthforge_remote": RECORD_FORMAT, "key": entry.key, "step": manifest.step, "kind": manifest.kind,
            "files": files}


# -- local install (verification and the atomic rename are cache.py's) --------------------


def _sound(cache: Cache, key: str) -> bool:
    return cache.problems(key) == []


def _install_verified(cache: Cache, key: str, staging: Path) -> str | None:
    """Install a downloaded entry if it is sound (Cache.install verifies it, the exact file list included);
    why not, otherwise. The caller holds the key's lock (`Cache.staging`)."""
    try:
        cache.install(key, staging)
    except DamagedEntry as exc:
        return exc.problem
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return None
