"""Remembered builds (synthforge.remembered): a no-op `synthforge build` replayed only while nothing it read,
no entry it found sound and none of its options or environment has changed; anything else runs the full build.

Each build runs as the command line does, in a fresh process; the process says at exit which path it took
(a replay imports no graph, recipe or planning code)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthforge import remembered
from tests.conftest import BASIC, make_rows

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: print('path:', 'full' if 'synthforge.graph' in sys.modules else 'replayed', file=sys.stderr))\n"
         "from synthforge.cli import run\n"
         "sys.argv = ['synthforge'] + sys.argv[1:]\n"
         "run()\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_rows().write_csv(tmp_path / "reviews.csv")
    (tmp_path / "recipe.yaml").write_text(BASIC.lstrip())
    return tmp_path


def synthforge(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run `synthforge ARGS` in `project`: its stdout, and which path it took ('full' or 'replayed')."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SYNTHFORGE_CACHE": str(project / "cache"), **(env or {})}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=project, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr.strip().splitlines()[-1].removeprefix("path: ")


def summary(out: str) -> str:
    """The build's summary line (after its table of steps)."""
    return next(line for line in out.splitlines() if line.startswith("built "))


def untimed(out: str) -> str:
    return re.sub(r" in [0-9.]+s;", " in (time);", out)


def remembered_build(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Build, then build again (a no-op, which records), and check that a third build replays; its stdout."""
    synthforge(project, "build", "recipe.yaml", *args, env=env)
    recorded, path = synthforge(project, "build", "recipe.yaml", *args, env=env)
    assert path == "full" and summary(recorded).startswith("built 0, cached 2")
    replayed, path = synthforge(project, "build", "recipe.yaml", *args, env=env)
    assert path == "replayed" and untimed(replayed) == untimed(recorded)
    return replayed


def test_a_no_op_build_is_replayed_with_the_same_outcome(project: Path):
    out = remembered_build(project)
    assert summary(out).startswith("built 0, cached 2 in ") and summary(out).endswith("; lockfile recipe.lock")
    assert "rows     " in out.splitlines()[2]  # the table of steps, as the full build prints it


@pytest.mark.parametrize("change", ["recipe", "input", "entry table", "entry gone", "lockfile"])
def test_any_change_to_what_the_build_read_runs_the_full_build(project: Path, change: str):
    remembered_build(project)
    cache = project / "cache"
    if change == "recipe":
        (project / "recipe.yaml").write_text(BASIC.lstrip().replace("k: 10", "k: 12"))
    elif change == "input":
        rows = make_rows()
        rows.with_columns(rows["review"].str.replace("scene", "shot")).write_csv(project / "reviews.csv")
    elif change == "entry table":
        table = next(cache.glob("entries/*/*/data.parquet"))
        raw = bytearray(table.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        table.write_bytes(bytes(raw))
    elif change == "entry gone":
        shutil.rmtree(next(cache.glob("entries/*/*")))
    else:
        (project / "recipe.lock").unlink()
    out, path = synthforge(project, "build", "recipe.yaml")
    assert path == "full"
    expected = {"recipe": "built 1, cached 1", "input": "built 2, cached 0", "entry table": "built 1, cached 1",
                "entry gone": "built 1, cached 1", "lockfile": "built 0, cached 2"}[change]
    assert summary(out).startswith(expected), out
    assert (project / "recipe.lock").exists()


def test_options_and_environment_name_the_record(project: Path):
    remembered_build(project)
    assert synthforge(project, "build", "recipe.yaml", env={"SYNTHFORGE_SOMETHING": "1"})[1] == "full"
    assert synthforge(project, "build", "recipe.yaml", "--recheck")[1] == "full"
    assert synthforge(project, "build", "recipe.yaml", "-v")[1] == "full"
    assert synthforge(project, "build", "recipe.yaml")[1] == "replayed"
    assert synthforge(project, "build", "recipe.yaml", "--set", "k=12")[1] == "full"  # other options: their own record
    # which built a step and rewrote the lockfile: the next plain build reads it again
    assert synthforge(project, "build", "recipe.yaml")[1] == "full"


def test_a_change_to_any_module_the_build_ran_runs_the_full_build(project: Path):
    plugins = project / "plugins"
    plugins.mkdir()
    module = plugins / "copy_plugin.py"
    module.write_text("from synthforge.steps import register\nfrom tests.plugin_steps import SlowStep\n\n\n"
                      "class CopyStep(SlowStep):\n    kind = 'copy'\n\n\nregister('copy', 'copy_plugin:CopyStep')\n")
    (project / "recipe.yaml").write_text(BASIC.lstrip() + "  copy:\n    kind: copy\n    input: split\n")
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{plugins}", "SYNTHFORGE_PLUGINS": "copy_plugin"}
    time.sleep(1.1)  # code changed less than 1 s before a build started is not trusted (it may have run either version)
    synthforge(project, "build", "recipe.yaml", env=env)
    assert synthforge(project, "build", "recipe.yaml", env=env)[1] == "full"
    assert synthforge(project, "build", "recipe.yaml", env=env)[1] == "replayed"
    os.utime(module)  # any write to a module's file changes its stamp (ctime)
    out, path = synthforge(project, "build", "recipe.yaml", env=env)
    assert path == "full" and summary(out).startswith("built 0, cached 3")
    assert synthforge(project, "build", "recipe.yaml", env=env)[1] == "full"  # changed since it started: not kept


def test_a_cache_kept_inside_the_project_still_records_the_recipe(project: Path):
    env = {"SYNTHFORGE_CACHE": str(project)}  # the project folder is the cache root: only its own folders are skipped
    synthforge(project, "build", "recipe.yaml", env=env)
    synthforge(project, "build", "recipe.yaml", env=env)
    assert synthforge(project, "build", "recipe.yaml", env=env)[1] == "replayed"
    (project / "recipe.yaml").write_text(BASIC.lstrip().replace("k: 10", "k: 12"))
    out, path = synthforge(project, "build", "recipe.yaml", env=env)
    assert path == "full" and summary(out).startswith("built 1, cached 1")


def test_a_build_that_ran_anything_is_not_remembered(project: Path):
    synthforge(project, "build", "recipe.yaml")
    (project / "recipe.yaml").write_text(BASIC.lstrip().replace("k: 10", "k: 12"))
    out, path = synthforge(project, "build", "recipe.yaml")
    assert path == "full" and summary(out).startswith("built 1")
    assert synthforge(project, "build", "recipe.yaml")[1] == "full"  # the first no-op records
    assert synthforge(project, "build", "recipe.yaml")[1] == "replayed"


def test_secrets_count_by_presence_only(project: Path):
    remembered_build(project, env={"OPENAI_API_KEY": "sk-first-secret-value", "HTTP_PROXY": "http://u:hunter2@proxy:3128"})
    assert synthforge(project, "build", "recipe.yaml",
                      env={"OPENAI_API_KEY": "sk-second-secret-value", "HTTP_PROXY": "http://u:other@proxy:3128"})[1] == "replayed"
    assert synthforge(project, "build", "recipe.yaml", env={"HTTP_PROXY": "http://u:x@proxy:3128"})[1] == "full"  # no key set
    for record in (project / "cache" / "derived").rglob("*.json"):
        text = record.read_text()
        assert "secret-value" not in text and "hunter2" not in text


# -- the recorder, in process --------------------------------------------------------
@pytest.fixture
def code_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, the test modules may have been edited just before pytest started (the subprocess tests
    check that rule for real)."""
    monkeypatch.setattr(remembered, "_changed_since_start", lambda changed_ns: False)


def test_the_recording_notes_looks_listings_and_opens_and_fails_closed_on_change(tmp_path: Path, code_unchanged: None):
    cache, folder, missing, read = tmp_path / "cache", tmp_path / "models", tmp_path / "later.txt", tmp_path / "in.txt"
    folder.mkdir()
    read.write_text("a")
    time.sleep(0.06)  # a stamp less than 50 ms old is racy: the recording would give up at once
    with remembered.Recording(str(cache), remembered.record_key({})) as recording:
        assert not missing.exists()
        os.listdir(folder)
        read.read_text()
        (cache / "entries" / "ab").exists()  # the cache's own folders: checked by entry stamps, not recorded
        (cache / "recipe.yaml").exists()  # anything else under its root (a cache kept in the project): recorded
        (cache / "shared" / "reviews.csv").exists()  # even in a folder named like one of the cache's
        (cache / "locks" / "reviews.csv").exists()
        (cache / "locks" / f"{'a' * 32}.lease").exists()  # a lease: the cache's own
        (tmp_path / "cache-beside").exists()  # a sibling whose name starts like the cache's: recorded
    seen = {Path(path).name: (kind, stamp) for (path, kind), stamp in recording.seen.items()}
    assert seen["cache-beside"] == ("stat", None) and seen["recipe.yaml"] == ("stat", None)
    assert [kind for (path, kind) in recording.seen if Path(path).name == "reviews.csv"] == ["stat", "stat"]
    assert not any(Path(path).suffix == ".lease" for path, _ in recording.seen)
    assert seen["later.txt"] == ("stat", None) and seen["models"][0] == "list" and seen["in.txt"][1] is not None
    assert not any("entries" in Path(path).parts for path, _ in recording.seen)
    assert recording.outcome({}, "text") is not None
    for change in (lambda: missing.write_text("now here"), lambda: (folder / "new.bin").write_text("w"),
                   lambda: read.write_text("b")):
        time.sleep(0.06)
        with remembered.Recording(str(cache), remembered.record_key({})) as again:
            missing.exists(), os.listdir(folder), read.read_text()
        change()
        assert again.outcome({}, "text") is None


def test_the_recording_restores_stat_and_fails_closed_when_the_build_logged(tmp_path: Path, code_unchanged: None):
    import logging

    from synthforge.progress import LOGGER

    stat, lstat, streams = os.stat, os.lstat, (sys.stdout, sys.stderr)
    with remembered.Recording(str(tmp_path / "cache"), remembered.record_key({})) as quiet:
        pass
    assert quiet.outcome({}, "text") is not None
    with remembered.Recording(str(tmp_path / "cache"), remembered.record_key({})) as recording:
        logging.getLogger(LOGGER).warning("warning: something a replay would not say")
    assert (os.stat, os.lstat, sys.stdout, sys.stderr) == (stat, lstat, *streams)
    assert recording.outcome({}, "text") is None
    for stream in ("stdout", "stderr"):  # a library's print or a Python warning: a replay would not show it
        with remembered.Recording(str(tmp_path / "cache"), remembered.record_key({})) as printed:
            print("FutureWarning: something", file=getattr(sys, stream))
        assert printed.outcome({}, "text") is None


def test_the_recording_covers_the_code_and_the_folders_imports_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "fresh_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / "not-yet"))  # created later, a module there would shadow
    import fresh_module  # noqa: F401  (written just now, after this process started)

    time.sleep(0.06)
    with remembered.Recording(str(tmp_path / "cache"), remembered.record_key({})) as recording:
        pass
    assert (str(tmp_path), "list") in recording.seen  # a module file added here later could shadow one imported later
    assert recording.seen[(str(tmp_path / "not-yet"), "stat")] is None
    assert recording.outcome({}, "text") is None  # the code may be the file before or after the change
    monkeypatch.setattr(remembered, "_changed_since_start", lambda changed_ns: False)
    with remembered.Recording(str(tmp_path / "cache"), remembered.record_key({})) as again:
        pass
    assert again.outcome({}, "text") is not None
    assert (str(Path(remembered.__file__)), "stat") in again.seen


def test_a_stamp_a_coarse_file_system_gave_just_now_is_racy_and_not_kept():
    now = 1_800_000_000 * 10**9 + 500_000_000
    coarse, fine = 1_800_000_000 * 10**9, 1_800_000_000 * 10**9 + 123_456_789
    assert remembered.racy([8, 10, coarse, coarse, 1, 2], now)  # whole seconds, half a second old
    assert not remembered.racy([8, 10, fine, fine, 1, 2], now)  # nanosecond times tell every write apart
    assert not remembered.racy([8, 10, coarse - 5 * 10**9, coarse - 5 * 10**9, 1, 2], now)  # seconds old
    assert remembered.racy(["folder", 1, 2, coarse, coarse], now) and not remembered.racy(["folder", 1, 2], now)
    assert not remembered.racy(None, now)


def test_the_record_is_named_by_the_interpreters_warning_options(monkeypatch: pytest.MonkeyPatch):
    plain = remembered.record_key({"recipe": "r.yaml"})
    monkeypatch.setattr(sys, "warnoptions", ["error::DeprecationWarning"])  # python -W: a warning may fail the build
    assert remembered.record_key({"recipe": "r.yaml"}) != plain


def test_what_counts_as_the_caches_own_is_what_the_cache_makes(tmp_path: Path):
    from synthforge.cache import MANIFEST, Cache
    from synthforge.keys import CACHE_OWN

    cache, key = Cache(tmp_path / "cache"), "0123456789abcdef" * 2
    made = [cache.entry_path(key) / MANIFEST, cache.entry_path(key) / "data.parquet", cache.derived_path(key),
            cache._lock_path(key, "lease"), cache._lock_path(key)]
    assert all(CACHE_OWN.fullmatch(path.relative_to(cache.root).as_posix()) for path in made)
