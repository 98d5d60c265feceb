"""Remembered builds: a no-op `synthforge build` answered without resolving the recipe again.

As Gradle's configuration cache does for its build scripts: a full build that found every step cached records
everything it read while it ran (files opened, files and folders looked at, folders listed, the code it ran,
the environment, the interpreter, the working folder and its options) with each one's stamp, and the stamps of
every cache entry it found sound. A later build with the same options in which none of these changed prints
the same outcome after stat-ing them, without importing, parsing, keying or planning anything. Anything
changed, gone or unreadable, and the full build runs (and records again).

It fails closed: a recording is not kept when something it read changed while the build ran, when the build
ran, pulled or pushed anything, read a remote, or when a hook could not note an access. The cache's own files
are not recorded (its entries are checked by their stamps, as a full no-op plan checks them). Secrets stay
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

from synthforge.keys import SECRET_QUERY_WORDS, credential_free_url, derived_file, file_stamp, plain_key, read_record

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
    return [FORMAT, sys.executable, sys.version, list(sys.flags), sorted(map(str, sys._xoptions.items())), sys.path,
            os.getcwd(), _environment(),
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
    return plain_key(["remembered build", invocation(options)])


# -- replaying --------------------------------------------------------------------
def replay(cache_root: str, options: dict[str, Any]) -> str | None:
    """The remembered outcome of this exact build when nothing it read, and no entry it found sound, has
    changed since; else None (run the full build)."""
    start = time.perf_counter()
    record = read_record(derived_file(cache_root, record_key(options)))
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
    """Whether a stamp cannot tell a later edit apart, as git's "racily clean" files: its change time has
    whole-second precision (a file system with coarse times) and is less than 2 seconds old, so an edit of
    the same size within the same tick would keep it. Such a recording is not kept; a later one is."""
    if not stamp or len(stamp) < 5:
        return False  # absent, or a folder's identity (no times)
    changed = stamp[4] if stamp[0] == "folder" else stamp[3]
    return changed % 1_000_000_000 == 0 and now_ns - changed < 2_000_000_000


# -- recording ------------------------------------------------------------------------
class Recording:
    """Notes every path this process opens, stats or lists while it is active (an audit hook for opens and
    listings; `os.stat`/`os.lstat` wrapped for looks), outside the cache root."""

    def __init__(self, cache_root: str, options: dict[str, Any]):
        self.key = record_key(options)  # now: a build may set variables (thread counts) and extend sys.path
        self.roots = {os.path.abspath(cache_root), os.path.realpath(cache_root)}  # as given, and through links
        self.inside = tuple(root + os.sep for root in self.roots)
        self.seen: dict[tuple[str, str], list[Any] | None] = {}
        self.failed = False

    def note(self, path: Any, kind: str, stat: os.stat_result | None = None) -> None:
        if self.failed:
            return  # given up: nothing will be kept
        try:
            if isinstance(path, int) or path is None and kind != "list":
                return  # a file descriptor: its path was noted when it was opened
            name = os.path.abspath(os.fsdecode(path if path is not None else "."))
            if name in self.roots or name.startswith(self.inside) or (name, kind) in self.seen:
                return
            self.seen[(name, kind)] = _stamp_of(stat, kind) if stat is not None else _stamp(name, kind)
        except Exception:  # noqa: BLE001  (a hook must never break the build it watches: give up on recording)
            self.failed = True

    def __enter__(self) -> "Recording":
        global _active
        import logging

        from synthforge.progress import LOGGER

        _install()
        _active = self
        os.stat, os.lstat = _watched(_os_stat, "stat"), _watched(_os_lstat, "lstat")
        self.logged = _Said(self)
        logging.getLogger(LOGGER).addHandler(self.logged)
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        import logging

        from synthforge.progress import LOGGER

        _active = None
        os.stat, os.lstat = _os_stat, _os_lstat
        logging.getLogger(LOGGER).removeHandler(self.logged)

    def outcome(self, entries: dict[str, dict[str, Any]], text: str) -> dict[str, Any] | None:
        """The record a replay checks, or None when something read changed while the build ran (or a hook
        failed). The code's modules are added by their files' stamps."""
        if self.failed:
            return None
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if isinstance(file, str):
                self.note(file, "stat")
        read = [[path, kind, stamp] for (path, kind), stamp in sorted(self.seen.items(), key=lambda item: item[0])]
        now = time.time_ns()
        if any(_stamp(path, kind) != stamp or racy(stamp, now) for path, kind, stamp in read):
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
        if not (isinstance(path, str) and path.endswith(".pyc") and "__pycache__" in path):  # code: by its source
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
