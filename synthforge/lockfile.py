"""RECIPE.lock: the key of every step of every variant, and what each key was made of.

Build writes it next to the recipe; users commit it. `plan` reads it to say *why*
a step will rebuild (`describe_changes`, which `diff` shares); `cache gc` keeps what
any lockfile references. Each node also records `content`, the content hash of the entry
built for its key: a rebuild that makes other bytes for that key says so (not reproducible).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthforge.cache import atomic_write
from synthforge.errors import UserError
from synthforge.keys import DerivedRecords, checked_key, file_stamp, is_key, key_of, plain_key

LOCK_FORMAT = 1


@dataclass
class Lock:
    recipe: str = ""
    variants: dict[str, dict[str, str]] = field(default_factory=dict)  # variant -> step -> key
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> components (+ step, rows, content)

    def key_for(self, variant: str, step: str) -> str | None:
        return self.variants.get(variant, {}).get(step)

    def components_for(self, variant: str, step: str) -> dict[str, Any] | None:
        """The last build's components for this step: same variant, else any variant of the step."""
        key = self.key_for(variant, step)
        if key is None:
            key = next((steps[step] for steps in self.variants.values() if step in steps), None)
        return self.nodes.get(key) if key else None

    def content_of(self, key: str) -> str | None:
        """The content hash of the entry the lockfile's build made for `key` (None: not recorded)."""
        return self.nodes.get(key, {}).get("content")

    def data(self) -> dict[str, Any]:
        return {"synthforge_lock": LOCK_FORMAT, "recipe": self.recipe, "variants": self.variants, "nodes": self.nodes}

    def to_json(self) -> str:
        return json.dumps(self.data(), indent=1, sort_keys=True) + "\n"


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human reasons why two sets of key components differ, most specific first."""
    reasons = []
    if before.get("kind") != after.get("kind"):
        return [f"its kind changed from {before.get('kind')} to {after.get('kind')}"]
    if before.get("version") != after.get("version"):
        reasons.append(f"the code of '{after['kind']}' changed (version {before.get('version')} to {after.get('version')})")
    params = dict_changes(before.get("params", {}), after.get("params", {}))
    reasons += [_changed(f"field {path}", old, new) for path, old, new in params]
    for name, old, new in dict_changes(before.get("inputs", {}), after.get("inputs", {})):
        reasons.append(input_changed(name.split(".")[0]))
    for name, old, new in dict_changes(before.get("files", {}), after.get("files", {})):
        reasons.append(_file_changed(name))
    for name, old, new in dict_changes(before.get("identity", {}), after.get("identity", {})):
        if (name, old, new) not in params:  # a field that is also the backend's identity (base_url): said once
            reasons.append(_changed(name, old, new))
    if before.get("seed") != after.get("seed"):
        reasons.append(_changed("the recipe seed", _short(before.get("seed", _MISSING)), _short(after.get("seed", _MISSING))))
    return list(dict.fromkeys(reasons))


_MISSING = "(unset)"


def input_changed(field_name: str) -> str:
    """'its input changed' for the field named `input`, else "its input 'real' changed"."""
    return "its input changed" if field_name == "input" else f"its input '{field_name}' changed"


def _file_changed(label: str) -> str:
    if label.startswith("read."):  # Step.files_read: a model's or a tool's files, not named by a field
        return "a file the step reads (a model's or data file not named in the recipe) changed content"
    return f"the content of the file in field {label} changed"


def _changed(what: str, old: str, new: str) -> str:
    """A value's change in words; a value one side lacks is 'added' or 'removed', not '(unset)' or 'None'."""
    if old == _MISSING:
        return f"{what} was added ({_words(new)})"
    if new == _MISSING:
        return f"{what} was removed (was {_words(old)})"
    return f"{what} changed from {_words(old)} to {_words(new)}"


def _words(value: str) -> str:
    return "none" if value == "None" else value


def dict_changes(before: Any, after: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every leaf that differs between two nested dicts: (dotted path, old, new), values shortened for messages."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for k in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{k}" if path else str(k)
            changes += dict_changes(before.get(k, _MISSING), after.get(k, _MISSING), sub)
        return changes
    return [] if before == after else [(path, _short(before), _short(after))]


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def read_lock(path: Path) -> Lock | None:
    """The lockfile at `path`; None when there is none (or the file is no lockfile). A lockfile whose keys
    are not keys (a '../x' would name a path outside the cache) is a UserError naming the line."""
    try:
        text, data = _parsed(path)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or "synthforge_lock" not in data:
        return None
    lock = Lock(data.get("recipe", ""), data.get("variants", {}), data.get("nodes", {}))
    _check_keys(lock, path, text)
    return lock


_parsed_files: dict[tuple[str, int, int, int, int], tuple[str, Any]] = {}


def _parsed(path: Path) -> tuple[str, Any]:
    """A lockfile's text and JSON, parsed once per process while its file is unchanged (same inode, mtime, ctime
    and size): a build that runs steps reads it three times (plan, build lines, the unchanged-lockfile check)."""
    stat = os.stat(path)
    memo = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
    if memo not in _parsed_files:
        text = path.read_text()
        _parsed_files.clear()  # one lockfile at a time is read again: keep only the latest
        _parsed_files[memo] = text, json.loads(text)
    return _parsed_files[memo]


_REWRITE = "restore the lockfile from git, or delete it (the next full build writes a new one)"


def _check_keys(lock: Lock, path: Path, text: str) -> None:
    """Every key a lockfile names has a key's shape (keys.checked_key), located at its line."""
    def where(*needles: Any) -> int | None:
        """The line of the first needle found: `"name": value`, else the value alone."""
        for needle in needles:
            found = text.find(needle)
            if found >= 0:
                return text.count("\n", 0, found) + 1
        return None

    if not isinstance(lock.variants, dict) or not all(isinstance(steps, dict) for steps in lock.variants.values()):
        raise UserError("'variants' is not a mapping of variant -> step -> key", file=str(path), field="variants",
                        hint=_REWRITE)
    if not isinstance(lock.nodes, dict):
        raise UserError("'nodes' is not a mapping of key -> components", file=str(path), field="nodes", hint=_REWRITE)
    for variant, steps in lock.variants.items():
        for step, key in steps.items():
            if not is_key(key):  # the line is looked for only then: finding it scans the whole text
                line = where(f"{json.dumps(step)}: {json.dumps(key)}", json.dumps(key))
                checked_key(key, file=str(path), line=line, field=f"variants.{variant}.{step}", fix=_REWRITE)
    for key in lock.nodes:
        if not is_key(key):
            checked_key(key, file=str(path), line=where(f"{json.dumps(key)}: "), field="nodes", fix=_REWRITE)


def write_lock(path: Path, lock: Lock, records: DerivedRecords | None = None) -> None:
    """Write the lockfile, unless the file already holds exactly this lock: a no-op build rewrites nothing
    (comparing the hashes of compact JSON, C speed; the indented text is made only for a write). `records`
    (the cache) remembers the hash of the file's content while its stamp stays the same, so a no-op build of
    a 1.5 MB lockfile does not parse it again."""
    digest = plain_key(lock.data())
    if _holds(path, digest, records):
        return
    atomic_write(path, lock.to_json())


def _holds(path: Path, digest: str, records: DerivedRecords | None) -> bool:
    """Whether the lockfile at `path` is the lock whose compact JSON hashes to `digest`."""
    record_key = key_of(["lockfile content", "plain_key", str(path.resolve())])  # the digest is plain_key of the JSON
    try:
        stamp = file_stamp(path)
        remembered = records.read_derived(record_key) if records is not None else None
        if remembered is not None and remembered.get("stamp") == stamp:
            return remembered.get("digest") == digest
        found = plain_key(_parsed(path)[1])
    except (OSError, ValueError):  # no lockfile yet, or not JSON: write it
        return False
    if records is not None and file_stamp(path) == stamp:  # unchanged while it was read
        with contextlib.suppress(OSError, UserError):  # a read-only cache: parse it again next time
            records.write_derived(record_key, {"stamp": stamp, "digest": found}, [])
    return found == digest


def merge_locks(old: Lock | None, new: Lock) -> Lock:
    """`new` (a narrowed build's lock) merged into `old`: the steps it built replace theirs, every other
    variant, step and node is kept, so gc keeps what the full build wrote. Only a full build drops keys."""
    if old is None:
        return new
    variants = {variant: dict(steps) for variant, steps in old.variants.items()}
    for variant, steps in new.variants.items():
        variants.setdefault(variant, {}).update(steps)
    return Lock(new.recipe, variants, {**old.nodes, **new.nodes})


def referenced_keys(lock_paths: list[Path]) -> set[str]:
    keys: set[str] = set()
    for path in lock_paths:
        lock = read_lock(path)
        if lock:
            keys.update(lock.nodes)
    return keys


def find_locks(roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        candidates = [root] if root.is_file() else sorted(root.rglob("*.lock"))
        found.extend(p for p in candidates if read_lock(p) is not None)
    return found
