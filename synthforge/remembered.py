"""Remembered builds: a no-op `synthforge build` answered without resolving the recipe again.

As Gradle's configuration cache does for its build scripts: a full build that found every step cached records
everything it read while it ran (files opened, files and folders looked at, folders listed, the code it ran,
the environment, the interpreter, the working folder and its options) with each one's stamp, and the stamps of
every cache entry it found sound. A later build with the same options in which none of these changed prints
the same outcome after stat-ing them, without importing, parsing, keying or planning anything. Anything
changed, gone or unreadable, and the full build runs (and records again).

It fails closed: a recording is not kept when something it read changed while the build ran (or just before:
a racy stamp), when a module file changed after the process started, when the build ran, pulled or pushed
anything, read a remote, wrote to stdout or stderr, or when a hook could not note an access. The cache's entries,
derived records and their locks are not recorded (its entries are checked by their stamps, as a full no-op plan
checks them; `keys.CACHE_OWN`). Secrets stay
out: an environment variable named like a credential counts by its presence only, and a URL's credentials are
dropped before a value is hashed into the record's key.

Only the command line (`synthforge.cli.run`) uses it: a process that imported or patched code before it
builds (a test, a notebook) could differ from the files its modules came from.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from synthforge.keys import (CACHE_OWN, SECRET_QUERY_WORDS, credential_free_url, derived_file, file_stamp, plain_key,
                             read_record)

FORMAT = 1
ENABLED = False  # set by the command line's entry point
TOOK = "\x00took\x00"  # where a replayed summary line puts its own time
_VOLATILE_VARIABLES = frozenset({"OLDPWD", "PWD", "_", "SHLVL", "COLUMNS", "LINES"})  # the shell's, never read
_SECRET_WORDS = SECRET_QUERY_WORDS + ("pass", "session", "cookie")


def enable() -> None:
    global ENABLED
    ENABLED = True


def invocation(options: dict[str, Any]) -> list[Any]:
    """Everything outside the files that a build's outcome can depend on: the interpreter and its flags, its
    module search path, the working folder, the environment and the command's options."""
    return [FORMAT, sys.executable, sys.version, list(sys.flags), sorted(map(str, sys._xoptions.items())), sys.warnoptions,
            sys.path, os.getcwd(), _environment(),
            sorted((name, list(v) if isinstance(v, tuple) else v) for name, v in options.items())]


def _environment() -> list[list[str]]:
    shown = []
    for name, value in sorted(os.environ.items()):
        if name in _VOLATILE_VARIABLES:
            continue
        if any(word in name.lower() for word in _SECRET_WORDS):
            value = "(set)"
        elif "://" in value:
            value = credential_free_url(value)
        shown.append([name, value])
    return shown


def record_key(options: dict[str, Any]) -> str:
    """The name of the record a build with these options keeps and replays; taken once, before the build runs
    (a build may set variables, such as thread counts, and extend sys.path)."""
    return plain_key(["remembered build", invocation(options)])


# -- replaying --------------------------------------------------------------------
def replay(cache_root: str, key: str) -> str | None:
    """The remembered outcome of the build `key` (`record_key`) names when nothing it read, and no entry it
    found sound, has changed since; else None (run the full build)."""
    start = time.perf_counter()
    record = read_record(derived_file(cache_root, key))
    if record is None or record.get("format") != FORMAT:
        return None
    try:
        unchanged = (all(_stamp(path, kind) == stamp for path, kind, stamp in record["read"])
                     and all(file_stamp(os.path.join(folder, name)) == stamp
                             for folder, files in record["entries"].items() for name, stamp in files.items()))
        text = record["text"]
    except OSError:  # an entry's file is gone
        return None
    except (KeyError, TypeError, ValueError, AttributeError):  # a record of another shape
        return None
    if not unchanged or not isinstance(text, str):
        return None
    return text.replace(TOOK, f"{time.perf_counter() - start:.2f}s")


# -- stamps -------------------------------------------------------------------------
_os_stat, _os_lstat = os.stat, os.lstat


def _stamp(path: str, kind: str) -> list[Any] | None:
    """What a build could have learnt from `path` by this kind of access: a file's size, times and identity;
    a folder's identity (and, once listed, its times: adding or removing a name changes them); None if absent."""
    try:
        stat = (_os_lstat if kind == "lstat" else _os_stat)(path)
    except OSError:
        return None
    return _stamp_of(stat, kind)


def _stamp_of(stat: os.stat_result, kind: str) -> list[Any]:
    mode = stat.st_mode >> 12  # the file type
    if mode == 0o04:  # a folder
        identity = ["folder", stat.st_ino, stat.st_dev]
        return identity + [stat.st_mtime_ns, stat.st_ctime_ns] if kind == "list" else identity
    return [mode, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def racy(stamp: list[Any] | None, now_ns: int) -> bool:
    """Whether a stamp taken at `now_ns` cannot tell a later edit apart, as git's "racily clean" files: its
    change time is so recent that a same-size edit within the same clock tick would keep it (less than 2 s
    old with whole-second times, a file system with coarse times; less than 50 ms old otherwise, more than a
    kernel's coarse clock tick). A recording that takes one is not kept; a later one is."""
    if not stamp or len(stamp) < 5:
        return False  # absent, or a folder's identity (no times)
    changed = stamp[4] if stamp[0] == "folder" else stamp[3]
    window = 2_000_000_000 if changed % 1_000_000_000 == 0 else 50_000_000
    return now_ns - changed < window


# -- recording ------------------------------------------------------------------------
_PROCESS_START_NS = time.time_ns()  # this process began a little earlier: the command line imports this module first


def _changed_since_start(changed_ns: int) -> bool:
    """Whether a file may have changed after this process started, so that the code it runs may be the file
    before the change: 1 s of margin for what ran before this module was imported, 1 s more for whole-second times."""
    margin = 2_000_000_000 if changed_ns % 1_000_000_000 == 0 else 1_000_000_000
    return changed_ns > _PROCESS_START_NS - margin


class Recording:
    """Notes every path this process opens, stats or lists while it is active (an audit hook for opens and
    listings; `os.stat`/`os.lstat` wrapped for looks), but the cache's own entries and records, and the code it runs:
    every module file and import folder, stamped when the recording starts (or, for a module imported later,
    when it is imported). Anything written to stdout or stderr while it records, a logged line or a warning,
    ends it: a replay would not say it again."""

    def __init__(self, cache_root: str, key: str):
        self.key = key  # record_key of the build's options
        roots = {os.path.abspath(cache_root), os.path.realpath(cache_root)}  # as given, and through links
        self.roots = tuple(root + os.sep for root in roots)
        self.seen: dict[tuple[str, str], list[Any] | None] = {}
        self.failed = False

    def note(self, path: Any, kind: str, stat: os.stat_result | None = None) -> list[Any] | None:
        """Record `path` with its stamp at its first access of this kind; the stamp recorded (None when absent,
        not recorded, or the recording has given up)."""
        if self.failed:
            return None  # given up: nothing will be kept
        try:
            if isinstance(path, int) or path is None and kind != "list":
                return None  # a file descriptor: its path was noted when it was opened
            given = os.fsdecode(path if path is not None else ".")
            # as the kernel resolves it ('link/..' is not '.'); the cache's own files by their plain path
            name = given if os.path.isabs(given) else os.path.join(os.getcwd(), given)
            if (name, kind) in self.seen:
                return self.seen[(name, kind)]
            if self._cache_own(os.path.normpath(name)):
                return None
            stamp = self.seen[(name, kind)] = _stamp_of(stat, kind) if stat is not None else _stamp(name, kind)
            if racy(stamp, time.time_ns()):
                self.failed = True
            return stamp
        except Exception:  # noqa: BLE001  (a hook must never break the build it watches: give up on recording)
            self.failed = True
            return None

    def _cache_own(self, name: str) -> bool:
        """Whether `name` is an entry's file, a derived record or a key's lock or lease (`keys.CACHE_OWN`): the
        entries are checked by their stamps; anything else under the cache root is recorded."""
        for root in self.roots:
            if name.startswith(root):
                return CACHE_OWN.fullmatch(name[len(root):].replace(os.sep, "/")) is not None
        return False

    def note_code(self) -> None:
        """The files of the modules loaded so far, and the folders imports search (a new file there could
        shadow a module imported later); a module file changed since this process began fails the recording
        (the code that runs may be the file before or after the change)."""
        try:
            modules = list(sys.modules.values())
            for folder in [*sys.path, *(p for m in modules for p in _search_path(m))]:
                if isinstance(folder, str):  # one missing now is recorded as missing: created later, it could shadow
                    self.note(folder or ".", "list" if os.path.isdir(folder or ".") else "stat")
            for module in modules:
                file = getattr(module, "__file__", None)
                stamp = self.note(file, "stat") if isinstance(file, str) else None
                if stamp is not None and _changed_since_start(stamp[3]):
                    self.failed = True
        except Exception:  # noqa: BLE001  (never break the build: give up on recording)
            self.failed = True

    def __enter__(self) -> "Recording":
        global _active
        import logging

        from synthforge.progress import LOGGER

        _install()
        self.note_code()
        _active = self
        os.stat, os.lstat = _watched(_os_stat, "stat"), _watched(_os_lstat, "lstat")
        self.streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Written(sys.stdout, self), _Written(sys.stderr, self)
        self.logged = _Said(self)
        logging.getLogger(LOGGER).addHandler(self.logged)
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        import logging

        from synthforge.progress import LOGGER

        _active = None
        os.stat, os.lstat = _os_stat, _os_lstat
        sys.stdout, sys.stderr = self.streams
        logging.getLogger(LOGGER).removeHandler(self.logged)

    def outcome(self, entries: dict[str, dict[str, Any]], text: str) -> dict[str, Any] | None:
        """The record a replay checks, or None when something read changed while the build ran (or the
        recording failed). Modules imported while it ran are added by their files' stamps."""
        self.note_code()
        if self.failed:
            return None
        read = [[path, kind, stamp] for (path, kind), stamp in sorted(self.seen.items(), key=lambda item: item[0])]
        if any(_stamp(path, kind) != stamp for path, kind, stamp in read):
            return None
        return {"format": FORMAT, "read": read, "entries": entries, "text": text}


def remember(recording: Recording, opened: Any, result: Any, only: list[str]) -> None:
    """Keep what a build read (`opened`: api.OpenRecipe, `result`: its BuildResult) for `replay`, when it
    found every step cached and pulled, pushed and said nothing."""
    from synthforge.app import build_text
    from synthforge.errors import UserError
    from synthforge.planning import plan_name

    if result.pulled or result.pushed is not None or result.built_elsewhere:
        return
    if any(item.action != "cached" for item in result.items):
        return
    keys = [item.node.key for item in result.items]
    entries = opened.cache.sound_stamps(keys, plan_name(opened.graph, only))
    record = recording.outcome(entries, build_text(opened.graph, result, took=TOOK)) if entries is not None else None
    if record is not None:
        try:
            opened.cache.write_derived(recording.key, record, keys)
        except (OSError, UserError):  # a read-only cache: no shortcut
            pass


def _search_path(module: Any) -> list[str]:
    """A package's `__path__` (some extension modules set one that is not a list of folders)."""
    path = getattr(module, "__path__", None)
    try:
        return [p for p in path if isinstance(p, str)] if path is not None else []
    except TypeError:
        return []


class _Written:
    """stdout or stderr while a build records: any write ends the recording (a warning, a library's note)."""

    def __init__(self, stream: Any, recording: Recording):
        self._stream, self._recording = stream, recording

    def write(self, text: str) -> int:
        if text:
            self._recording.failed = True
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Said:
    """A logging handler that stops the recording at the build's first line (a step starting, a warning): a
    replay would not say it, and the steps that run next need not be watched."""

    level = 0

    def __init__(self, recording: Recording):
        self.recording = recording

    def handle(self, record: Any) -> bool:
        self.recording.failed = True
        return True


_active: Recording | None = None
_installed = False


def _install() -> None:
    global _installed
    if not _installed:  # an audit hook cannot be removed: one per process, idle while nothing records
        sys.addaudithook(_audit)
        _installed = True


def _audit(event: str, args: tuple[Any, ...]) -> None:
    recording = _active
    if recording is None:
        return
    if event == "open":
        path = args[0]
        if isinstance(path, str) and path.endswith(".pyc") and os.path.basename(os.path.dirname(path)) == "__pycache__":
            # a module imported from its bytecode: its source, as the import checked it just now
            folder = os.path.dirname(os.path.dirname(path))
            recording.note(os.path.join(folder, os.path.basename(path).split(".", 1)[0] + ".py"), "stat")
        else:
            recording.note(path, "stat")
    elif event in ("os.listdir", "os.scandir"):
        recording.note(args[0], "list")


def _watched(original: Any, kind: str) -> Any:
    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        looked = "lstat" if kind == "lstat" or kwargs.get("follow_symlinks") is False else "stat"
        recording = _active
        try:
            result = original(path, *args, **kwargs)
        except OSError:
            if recording is not None and kwargs.get("dir_fd") is None:
                recording.note(path, looked)
            raise
        if recording is not None and kwargs.get("dir_fd") is None:
            recording.note(path, looked, result)
        return result

    return stat
