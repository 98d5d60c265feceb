"""The fault suite: seeded byte flips and truncations in response rows, response snapshots and artifacts.

Every damaged item must be detected (re-requested, rebuilt or refused with one line): 0 silently wrong
results. Most trials use the direct read path (what `build` goes through); some go through `build`/`plan`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from synthforge.cache import Cache, DamagedEntry, artifact_path
from synthforge.generation.response_cache import (
    DB_NAME,
    DamagedSnapshot,
    ResponseCache,
    response_db_problems,
    row_hash,
    snapshot_name,
)
from tests.conftest import BASIC
from tests.fake_openai_server import FakeOpenAIServer

TRIALS = 120

GENERATE = """
name: gen
seed: 3
steps:
  gen:
    kind: generate
    n: 12
    labels: [positive, negative]
    template: "Write a {{ label }} review about {{ topic }}."
    variables: {topic: [food, travel, music, books, films, games]}
    backend: {type: openai, base_url: BASE_URL, model: fake, backoff_s: 0.01, max_retries: 2}
"""


def all_rows(db_path: Path) -> dict[str, tuple]:
    with sqlite3.connect(db_path) as db:
        return {row[0]: row[1:4] for row in db.execute("SELECT key, text, prompt_tokens, completion_tokens FROM responses")}


def flip_inside(data: bytearray, needle: bytes, rng: random.Random) -> int:
    """XOR one byte inside the first occurrence of `needle` (a stored reply) with a non-zero mask; its offset."""
    start = data.index(needle)
    position = start + rng.randrange(len(needle))
    data[position] ^= rng.randrange(1, 256)
    return position


def served(folder: Path, keys: list[str], log: list[str]) -> dict[str, tuple] | str:
    """What the response cache hands out for `keys`, or why it refused the whole database (detected)."""
    try:
        with ResponseCache(folder, log=log.append) as cache:
            return {key: tuple(r) for key, r in ((k, (v.text, v.prompt_tokens, v.completion_tokens))
                                                  for k, v in cache.get_many(keys).items())}
    except sqlite3.DatabaseError as exc:  # noqa: PERF203
        return f"refused: {exc}"


@pytest.fixture
def built_responses(cli, write_recipe, cache_dir):
    with FakeOpenAIServer(latency_s=0.0) as server:
        recipe = write_recipe(GENERATE.replace("BASE_URL", server.base_url))
        assert cli("build", recipe).exit_code == 0
        yield server, recipe, cache_dir / "shared" / "responses"


# -- response rows -------------------------------------------------------------------------------
def test_flipped_bytes_in_response_rows_are_never_served(built_responses, tmp_path):
    _, _, folder = built_responses
    db = folder / DB_NAME
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    original = all_rows(db)
    pristine = db.read_bytes()
    keys = sorted(original)
    rng = random.Random(20261204)
    outcomes = {"served intact": 0, "detected": 0, "silently wrong": 0}
    for trial in range(TRIALS):
        work = tmp_path / f"trial-{trial}"
        work.mkdir()
        data = bytearray(pristine)
        victim = rng.choice(keys)
        position = flip_inside(data, original[victim][0].encode(), rng)
        (work / DB_NAME).write_bytes(bytes(data))
        log: list[str] = []
        answer = served(work, keys, log)
        if isinstance(answer, str):
            outcomes["detected"] += 1
            continue
        wrong = [key for key, row in answer.items() if row != original[key]]
        outcomes["silently wrong"] += len(wrong)
        assert not wrong, f"trial {trial}: byte {position} of {victim[:12]}: served {answer[wrong[0]]!r}"
        missing = set(keys) - set(answer)
        assert missing == {victim}, f"trial {trial}: the damaged row must be missing, and only it"
        assert len([line for line in log if "fail their content hash" in line]) == 1, log
        assert response_db_problems(work), f"trial {trial}: cache verify must name the damaged row"
        outcomes["detected"] += 1
        shutil.rmtree(work)
    print(f"\nresponse rows, {TRIALS} flips: {outcomes}")
    assert outcomes["silently wrong"] == 0 and outcomes["detected"] == TRIALS


def test_flipped_bytes_anywhere_in_the_response_database_never_serve_a_wrong_reply(tmp_path):
    from synthforge.backends.llm import GenerationResponse
    from synthforge.errors import UserError

    source = tmp_path / "source"
    with ResponseCache(source) as cache:
        for i in range(150):
            cache.put(f"k{i:04d}", GenerationResponse(f"reply number {i} " * (1 + i % 7), 5, 6))
    with contextlib.closing(sqlite3.connect(source / DB_NAME)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    original = all_rows(source / DB_NAME)
    pristine = (source / DB_NAME).read_bytes()
    rng = random.Random(99)
    outcomes = {"intact": 0, "missing, asked again": 0, "moved aside": 0, "one-line error": 0, "silently wrong": 0}
    for trial in range(TRIALS):
        work = tmp_path / f"trial-{trial}"
        work.mkdir()
        data = bytearray(pristine)
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        (work / DB_NAME).write_bytes(bytes(data))
        log: list[str] = []
        try:
            with ResponseCache(work, log=log.append) as cache:
                got = cache.get_many(sorted(original))
                claimed = cache.claim(sorted(original))
        except UserError as exc:
            assert "\n" not in str(exc) and "damaged" in str(exc)
            outcomes["one-line error"] += 1
            continue
        wrong = [key for key, response in got.items()
                 if (response.text, response.prompt_tokens, response.completion_tokens) != original[key]]
        outcomes["silently wrong"] += len(wrong)
        assert claimed == set(original) - set(got), f"trial {trial}: every reply not served is requested again"
        if any("moved it to" in line for line in log):
            outcomes["moved aside"] += 1
        else:
            outcomes["intact" if len(got) == len(original) else "missing, asked again"] += 1
    print(f"\nresponse database, {TRIALS} flips anywhere: {outcomes}")
    assert outcomes["silently wrong"] == 0


def test_a_damaged_response_is_requested_again_by_build_and_repaired_by_verify(built_responses, cli, tmp_path):
    server, recipe, folder = built_responses
    db = folder / DB_NAME
    out = tmp_path / "gen.jsonl"
    assert cli("export", recipe, "gen", "--to", out).exit_code == 0
    expected = out.read_bytes()
    rng = random.Random(7)
    for trial in range(6):
        original = all_rows(db)
        victim = rng.choice(sorted(original))
        with sqlite3.connect(db) as conn:  # an edit sqlite's own checks cannot see
            text = original[victim][0]
            conn.execute("UPDATE responses SET text = ? WHERE key = ?", (text[:-1] + chr(ord(text[-1]) ^ 1), victim))
        verify = cli("cache", "verify")
        assert verify.exit_code == 1 and "fails its content hash" in verify.output, verify.output
        before = len(server.requests)
        rebuilt = cli("build", recipe, "--force", "gen")
        assert rebuilt.exit_code == 0, rebuilt.output
        assert "1 cached responses fail their content hash" in rebuilt.output
        assert len(server.requests) == before + 1, "exactly the damaged response is requested again"
        out.unlink()
        assert cli("export", recipe, "gen", "--to", out).exit_code == 0
        assert out.read_bytes() == expected, f"trial {trial}: the rebuilt rows differ"
        assert cli("cache", "verify").exit_code == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE responses SET prompt_tokens = prompt_tokens + 1")
    repaired = cli("cache", "verify", "--repair")
    assert f"removed {len(original)} damaged LLM responses" in repaired.output, repaired.output
    assert cli("cache", "verify").exit_code == 0


def test_a_database_from_before_content_hashes_is_adopted_once(tmp_path):
    folder = tmp_path / "responses"
    folder.mkdir()
    with sqlite3.connect(folder / DB_NAME) as db:
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
                   "completion_tokens INTEGER NOT NULL, created REAL NOT NULL)")
        db.execute("INSERT INTO responses VALUES ('k1', 'an old reply', 3, 4, 0)")
    assert response_db_problems(folder) == []
    log: list[str] = []
    with ResponseCache(folder, log=log.append) as cache:
        assert cache.get_many(["k1"])["k1"].text == "an old reply"
    assert len(log) == 1 and "1 responses from before content hashes adopted" in log[0]
    with ResponseCache(folder, log=log.append):
        pass
    assert len(log) == 1, "adopted once"
    with sqlite3.connect(folder / DB_NAME) as db:  # a row an older synthforge writes afterwards: no hash
        db.execute("INSERT INTO responses (key, text, prompt_tokens, completion_tokens, created) VALUES ('k2', 'x', 1, 1, 0)")
    with ResponseCache(folder, log=log.append) as cache:
        assert set(cache.get_many(["k1", "k2"])) == {"k1"} and cache.claim(["k1", "k2"]) == {"k2"}


# -- response snapshots ----------------------------------------------------------------------------
def test_flipped_or_edited_response_snapshots_are_refused_whole(built_responses, tmp_path):
    _, _, folder = built_responses
    original = all_rows(folder / DB_NAME)
    pristine_path = tmp_path / "snapshot.sqlite"
    with ResponseCache(folder) as cache:
        name = cache.snapshot(pristine_path)
    assert snapshot_name(pristine_path) == name
    pristine = pristine_path.read_bytes()
    rng = random.Random(42)
    outcomes = {"refused": 0, "merged intact": 0, "silently wrong": 0}
    for trial in range(TRIALS):
        tampered = tmp_path / f"snap-{trial}.sqlite"
        data = bytearray(pristine)
        how = trial % 3
        if how == 0:  # anywhere in the file
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        elif how == 1:  # inside a reply
            flip_inside(data, original[rng.choice(sorted(original))][0].encode(), rng)
        tampered.write_bytes(bytes(data))
        if how == 2:  # an edit that passes sqlite's integrity_check
            with contextlib.closing(sqlite3.connect(tampered)) as db, db:
                victim = rng.choice(sorted(original))
                db.execute("UPDATE responses SET text = text || ? WHERE key = ?", (rng.choice(["!", " ", "x"]), victim))
        local = tmp_path / f"local-{trial}"
        try:
            with ResponseCache(local) as cache:
                cache.merge(tampered, name)
                got = {k: (v.text, v.prompt_tokens, v.completion_tokens) for k, v in cache.get_many(sorted(original)).items()}
        except DamagedSnapshot:
            outcomes["refused"] += 1
            assert all_rows(local / DB_NAME) == {}, "a refused snapshot merges nothing"
            continue
        wrong = [key for key in got if got[key] != original[key]]
        outcomes["silently wrong"] += len(wrong)
        outcomes["merged intact"] += 1
        assert not wrong and set(got) == set(original), f"trial {trial} ({how}): merged {wrong[:1]}"
    print(f"\nresponse snapshots, {TRIALS} flips and edits: {outcomes}")
    assert outcomes["silently wrong"] == 0 and outcomes["refused"] >= 2 * TRIALS // 3


def test_a_tampered_remote_snapshot_is_refused_and_never_served(built_responses, cli, tmp_path):
    from synthforge.remote import Remote

    server, recipe, folder = built_responses
    remote = Remote(str(tmp_path / "remote"), progress=False)
    pushed = cli("cache", "push", recipe, "--remote", tmp_path / "remote", "--no-progress")
    assert pushed.exit_code == 0, pushed.output
    [path] = (tmp_path / "remote" / "responses").glob("*.sqlite")
    name = path.stem
    rng = random.Random(5)
    for trial in range(4):
        shutil.copy(path, tmp_path / "good.sqlite")
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            key, text = rng.choice(db.execute("SELECT key, text FROM responses").fetchall())
            db.execute("UPDATE responses SET text = ? WHERE key = ?", (text.replace("seed", "SEED"), key))
        other = Cache(tmp_path / f"other-{trial}")
        log: list[str] = []
        assert remote.pull_responses(other, [name], log.append) == 0
        assert len(log) == 1 and f"refused response snapshot {name[:12]}" in log[0] and "content hash" in log[0], log
        assert all_rows(other.shared_dir("responses") / DB_NAME) == {}
        shutil.copy(tmp_path / "good.sqlite", path)
    good = Cache(tmp_path / "good-cache")
    assert remote.pull_responses(good, [name]) == len(all_rows(folder / DB_NAME))


# -- artifacts -----------------------------------------------------------------------------------
MODEL = BASIC + """  model:
    kind: keep_model
    input: split.train
    size: 20000
  use:
    kind: use_model
    input: model
"""


@pytest.fixture
def model_build(cli, write_recipe, data_csv, cache_dir, monkeypatch):
    import synthforge.steps as steps_module

    monkeypatch.setattr(steps_module.KINDS, "targets", dict(steps_module.KINDS.targets))  # later tests: real kinds only
    steps_module.register("keep_model", "tests.plugin_steps:KeepModelStep")
    steps_module.register("use_model", "tests.plugin_steps:UseModelStep")
    recipe = write_recipe(MODEL)
    built = cli("build", recipe)
    assert built.exit_code == 0, built.output
    from synthforge.api import open as open_recipe

    key = open_recipe(recipe, cache_dir=cache_dir).key("model")
    return recipe, Cache(cache_dir), key


def damage(path: Path, rng: random.Random, keep_mtime: bool) -> str:
    """Flip a byte or truncate; with `keep_mtime` the file's mtime is set back (only its ctime tells)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    if rng.random() < 0.25:
        cut = rng.randrange(len(data))
        data = data[:cut]
        what = f"truncated to {cut}"
    else:
        position = rng.randrange(len(data))
        data[position] ^= rng.randrange(1, 256)
        what = f"byte {position} flipped"
    with open(path, "r+b") as fh:  # in place: same inode
        fh.write(data)
        fh.truncate()
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return what


def test_flipped_or_truncated_artifacts_are_never_used(model_build):
    _, cache, key = model_build
    folder = cache.entry_path(key)
    files = sorted(p for p in (folder / "artifacts").rglob("*") if p.is_file())
    pristine = {p: p.read_bytes() for p in files}
    rng = random.Random(34)
    outcomes = {"detected": 0, "silently wrong": 0}
    for trial in range(TRIALS):
        assert cache.problems(key) == [], f"trial {trial}: the restored entry is sound (stamps remembered)"
        victim = rng.choice(files)
        what = damage(victim, rng, keep_mtime=trial % 2 == 0)
        where = f"trial {trial}: {victim.name} {what}"
        problems = cache.problems(key)
        with pytest.raises(DamagedEntry, match="content hash mismatch"):
            artifact_path(folder, "artifacts/model")
        if problems:
            outcomes["detected"] += 1
        else:
            outcomes["silently wrong"] += 1
        assert problems == [f"artifacts/model/{victim.name}: content hash mismatch"], where
        victim.write_bytes(pristine[victim])
    print(f"\nartifacts, {TRIALS} flips and truncations: {outcomes}")
    assert outcomes == {"detected": TRIALS, "silently wrong": 0}
    (folder / "artifacts" / "model" / "extra.safetensors").write_bytes(b"planted weights")
    with pytest.raises(DamagedEntry, match="extra.safetensors: not listed in the manifest"):
        artifact_path(folder, "artifacts/model")


def test_a_damaged_artifact_is_rebuilt_by_build_and_an_error_when_read(model_build, cli):
    recipe, cache, key = model_build
    folder = cache.entry_path(key)
    files = sorted(p for p in (folder / "artifacts").rglob("*") if p.is_file())
    pristine = {p.relative_to(folder): p.read_bytes() for p in files}
    rng = random.Random(11)
    for trial in range(8):
        damage(rng.choice(sorted(cache.entry_path(key).joinpath("artifacts").rglob("*.*"))), rng, keep_mtime=True)
        planned = cli("plan", recipe)
        assert "damaged" in planned.output and "content hash mismatch" in planned.output, planned.output
        from synthforge.api import open as open_recipe

        with pytest.raises(DamagedEntry):
            open_recipe(recipe, cache_dir=cache.root).artifact("model")
        rebuilt = cli("build", recipe)
        assert rebuilt.exit_code == 0 and "▶" in rebuilt.output and "model" in rebuilt.output, rebuilt.output
        assert "not reproducible" not in rebuilt.output, "the fake model is bit-stable"
        now = {p.relative_to(cache.entry_path(key)): p.read_bytes()
               for p in cache.entry_path(key).joinpath("artifacts").rglob("*") if p.is_file()}
        assert now == pristine, f"trial {trial}: the rebuilt artifacts differ"
        assert "4 cached, 0 to run" in cli("plan", recipe).output


def test_a_locked_response_cache_is_waited_for_never_moved_aside(tmp_path, monkeypatch):
    """Switching to WAL can report "database is locked" past the busy timeout while another worker holds the
    database: that is not damage, and moving the file aside broke the other worker ("no such table")."""
    import sqlite3

    from synthforge.generation import response_cache
    from synthforge.generation.response_cache import ResponseCache

    ResponseCache(tmp_path).close()
    real_open, tries = ResponseCache._open, []

    def busy_twice(self):
        tries.append(1)
        if len(tries) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real_open(self)

    monkeypatch.setattr(ResponseCache, "_open", busy_twice)
    monkeypatch.setattr(response_cache, "WAIT_POLL_S", 0.01)
    logged = []
    ResponseCache(tmp_path, log=logged.append).close()
    assert len(tries) == 3 and not logged
    assert sorted(p.name for p in tmp_path.iterdir() if "aside" in p.name or "damaged" in p.name) == []
