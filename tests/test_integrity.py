"""A damaged cache never serves wrong data; gc and concurrent builds leave nothing broken."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthforge.cache import Cache, DamagedEntry, Manifest, read_manifest, verify_folder
from synthforge.keys import key_of
from tests.conftest import BASIC
from tests.fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(result) -> bool:
    lines = result.output.strip().splitlines()
    return result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output


def entry_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "entries").rglob("*") if p.suffix in (".parquet", ".json"))


def step_of_file(path: Path) -> tuple[str, str]:
    """(step, table) that reading `path` serves: a manifest serves the main table."""
    manifest = json.loads((path.parent / "manifest.json").read_text())
    return manifest["step"], path.stem if path.suffix == ".parquet" else "data"


# -- bit flips -------------------------------------------------------------------------------
@pytest.mark.integration
def test_flipped_bytes_in_tables_and_manifests_never_give_wrong_rows(cli, write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(BASIC)
    assert cli("build", recipe).exit_code == 0
    pristine = tmp_path / "pristine"
    shutil.copytree(cache_dir, pristine)
    files = entry_files(cache_dir)
    tables = {step_of_file(f) for f in files}
    original = {}
    for step, table in tables:
        out = tmp_path / f"orig-{step}-{table}.jsonl"
        assert cli("export", recipe, step, "--table", table, "--to", out).exit_code == 0
        original[(step, table)] = (out.read_bytes(), cli("show", recipe, step, "--table", table).output)

    rng = random.Random(20261125)
    outcomes = {"same rows": 0, "one-line error": 0, "silently wrong": 0}
    trials = 120
    for trial in range(trials):
        shutil.rmtree(cache_dir)
        shutil.copytree(pristine, cache_dir)
        victim = rng.choice([cache_dir / f.relative_to(pristine) if f.is_relative_to(pristine) else f
                             for f in entry_files(cache_dir)])
        step, table = step_of_file(pristine / victim.relative_to(cache_dir))
        data = bytearray(victim.read_bytes())
        position = rng.randrange(len(data))
        data[position] ^= rng.randrange(1, 256)
        victim.write_bytes(bytes(data))
        where = f"trial {trial}: {victim.name} of {step} byte {position}"
        expected_rows, expected_show = original[(step, table)]

        shown = cli("show", recipe, step, "--table", table)
        if shown.exit_code == 0:
            outcomes["same rows" if shown.output == expected_show else "silently wrong"] += 1
        else:
            assert one_line_error(shown), f"{where}: show: {shown.output}"
            outcomes["one-line error"] += 1
        out = tmp_path / "out.jsonl"
        out.unlink(missing_ok=True)
        exported = cli("export", recipe, step, "--table", table, "--to", out)
        if exported.exit_code == 0:
            outcomes["same rows" if out.read_bytes() == expected_rows else "silently wrong"] += 1
        else:
            assert one_line_error(exported), f"{where}: export: {exported.output}"
            outcomes["one-line error"] += 1
        built = cli("build", recipe)
        assert built.exit_code == 0, f"{where}: build: {built.output}"
        assert cli("export", recipe, step, "--table", table, "--to", out).exit_code == 0
        outcomes["same rows" if out.read_bytes() == expected_rows else "silently wrong"] += 1
    print(f"\n{trials} flipped bytes, show/export/build+export: {outcomes}")
    assert outcomes["silently wrong"] == 0, outcomes
    assert outcomes["one-line error"] > trials  # most flips are caught, not harmless


def test_a_damaged_entry_is_rebuilt_by_build_and_an_error_elsewhere(cli, write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    table = next(p for p in (cache_dir / "entries").rglob("train.parquet"))
    table.write_bytes(table.read_bytes()[:-30] + b"\1" * 30)
    shown = cli("show", recipe, "split", "--table", "train")
    assert one_line_error(shown) and "is damaged: table train: content hash mismatch" in shown.output
    assert "cache verify --repair" in shown.output
    assert one_line_error(cli("export", recipe, "split", "--table", "train", "--to", tmp_path / "x.csv"))
    plan = cli("plan", recipe).output
    assert "Cached entry is damaged (table train: content hash mismatch): rebuilding it." in plan
    built = cli("build", recipe)
    assert built.exit_code == 0 and "rebuilding it" in built.output
    assert cli("cache", "verify").exit_code == 0


def test_truncated_manifest_is_a_miss_for_build_and_repairable(cli, write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    manifest = next((cache_dir / "entries").rglob("manifest.json"))
    manifest.write_text(manifest.read_text()[:100])
    for args in (("show", recipe, "rows"), ("show", recipe, "split")):
        result = cli(*args)
        assert result.exit_code == 0 or one_line_error(result), result.output
    listed = cli("cache", "ls")
    assert listed.exit_code == 0 and "DAMAGED: unreadable manifest" in listed.output
    verify = cli("cache", "verify")
    assert verify.exit_code == 1 and "unreadable manifest" in verify.output
    assert cli("build", recipe).exit_code == 0  # rebuilds the damaged entry
    manifest.write_text("{")
    repaired = cli("cache", "verify", "--repair")
    assert repaired.exit_code == 1 and "removed 1 damaged" in repaired.output
    assert cli("cache", "verify").exit_code == 0


def test_a_consistently_edited_manifest_fails_verify(cli, write_recipe, data_csv, cache_dir):
    """Edits with a recomputed checksum (rows: 999, tables: {}) still disagree with the tables themselves."""
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    folder = next(p.parent for p in (cache_dir / "entries").rglob("manifest.json")
                  if json.loads(p.read_text())["step"] == "split")
    manifest = read_manifest(folder)
    fields = manifest.model_dump(mode="json")
    fields["tables"]["data"]["rows"] = 999
    (folder / "manifest.json").write_text(Manifest.seal(**fields).to_json())
    verify = cli("cache", "verify")
    assert verify.exit_code == 1 and "table data: " in verify.output and "manifest says 999" in verify.output
    fields["tables"] = {"data": fields["tables"]["data"]}
    fields["tables"]["data"]["rows"] = manifest.rows
    (folder / "manifest.json").write_text(Manifest.seal(**fields).to_json())
    verify = cli("cache", "verify")
    assert verify.exit_code == 1 and "table train: not listed in the manifest" in verify.output
    fields["tables"] = {}
    (folder / "manifest.json").write_text(json.dumps({**fields, "checksum": "0" * 32}))
    assert cli("cache", "verify").exit_code == 1


def test_install_verifies_before_renaming(tmp_path):
    from tests.helpers import fixture_entry

    import polars as pl

    cache = Cache(tmp_path / "cache")
    with cache.staging(key_of("x")) as scratch:
        good = fixture_entry(scratch / "good", {"data": pl.DataFrame({"id": ["1"], "text": ["a"]})})
        key = read_manifest(good).key
        bad = shutil.copytree(good, scratch / "bad")
        (bad / "data.parquet").write_bytes(b"PAR1 not really")
        assert verify_folder(bad, key) == ["table data: content hash mismatch"]
        with pytest.raises(DamagedEntry, match="content hash mismatch"):
            cache.install(key, bad)
        assert cache.get(key) is None
        assert cache.install(key, good) and cache.problems(key) == []
        assert not cache.install(key, shutil.copytree(cache.entry_path(key), scratch / "again"))


# -- response cache ----------------------------------------------------------------------------
GENERATE = """
name: gen
seed: 3
vars: {n: 10}
steps:
  gen:
    kind: generate
    n: ${n}
    labels: [positive, negative]
    template: "Write a {{ label }} review about {{ topic }}."
    variables: {topic: [food, travel, music, books, films, games]}
    backend: {type: openai, base_url: BASE_URL, model: fake, backoff_s: 0.01, max_retries: 2}
"""


def _build(recipe: Path, cache_dir: Path, *extra: str, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "SYNTHFORGE_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT),
                   "SYNTHFORGE_PLUGINS": "tests.plugin_steps", **env}
    return subprocess.Popen([sys.executable, "-m", "synthforge", "build", str(recipe), "--no-progress", *extra],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_corrupt_response_db_is_found_moved_aside_and_generation_starts_fresh(cli, write_recipe, cache_dir):
    with FakeOpenAIServer(latency_s=0.0) as server:
        recipe = write_recipe(GENERATE.replace("BASE_URL", server.base_url))
        assert cli("build", recipe).exit_code == 0
        db = cache_dir / "shared" / "responses" / "responses.sqlite"
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        db.write_bytes(b"this is not a database" * 100)
        verify = cli("cache", "verify")
        assert verify.exit_code == 1 and "responses.sqlite" in verify.output
        again = cli("build", recipe, "--force", "gen")
        assert again.exit_code == 0 and "response cache" in again.output and "damaged" in again.output
        assert "moved it to responses.sqlite.damaged-" in again.output
        db.write_bytes(b"still not a database" * 100)
        repaired = cli("cache", "verify", "--repair")
        assert "moved the damaged response cache aside" in repaired.output
        assert cli("cache", "verify").exit_code == 0


def test_empty_responses_are_requested_again_on_force(cli, write_recipe, cache_dir):
    with FakeOpenAIServer(latency_s=0.0) as server:
        server.reply = lambda messages, seed: "" if "food" in messages[-1]["content"] else f"fine text {seed}"
        recipe = write_recipe(GENERATE.replace("BASE_URL", server.base_url))
        assert cli("build", recipe).exit_code == 0
        empties = sum("food" in body["messages"][-1]["content"] for body in server.requests)
        assert empties > 0
        before = len(server.requests)
        assert cli("build", recipe, "--force", "gen").exit_code == 0
        asked_again = server.requests[before:]
        assert len(asked_again) == empties and all("food" in b["messages"][-1]["content"] for b in asked_again)


@pytest.mark.integration
def test_overlapping_generates_request_each_prompt_once(write_recipe, cache_dir, tmp_path):
    with FakeOpenAIServer(latency_s=0.01) as server:
        text = GENERATE.replace("BASE_URL", server.base_url)
        small = write_recipe(text.replace("n: 10", "n: 300"), "small.yaml")
        large = write_recipe(text.replace("n: 10", "n: 350"), "large.yaml")
        procs = [_build(small, cache_dir), _build(large, cache_dir)]
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        prompts = [(json.dumps(b["messages"]), b.get("seed")) for b in server.requests]
        print(f"\noverlapping n=300 and n=350: {len(prompts)} requests for {len(set(prompts))} unique prompts")
        assert len(set(prompts)) == 350 and len(prompts) == 350


# -- gc and concurrency ---------------------------------------------------------------------------
SLOW = BASIC + "  slow:\n    kind: slow\n    input: split.train\n"


@pytest.mark.integration
def test_gc_during_a_build_deletes_nothing_the_build_uses(write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(SLOW)
    nothing_referenced = tmp_path / "no-lockfiles"
    nothing_referenced.mkdir()
    build = _build(recipe, cache_dir, SF_TEST_SLEEP="2")
    gc_runs, kept = 0, 0
    from synthforge import api
    from synthforge.app import cache_gc_text

    while build.poll() is None:
        report = cache_gc_text(api.gc([nothing_referenced], cache_dir=cache_dir))
        kept += "in use by a running build" in report
        gc_runs += 1
        time.sleep(0.05)
    out, err = build.communicate()
    print(f"\ngc ran {gc_runs} times during the build; {kept} runs kept entries in use")
    assert build.returncode == 0, err
    assert gc_runs > 5 and kept > 0
    assert [line.split()[3] for line in out.splitlines()[2:5]] == ["built"] * 3  # rows, split, slow: no crash


def test_gc_between_the_build_and_its_closing_reads_removes_nothing(cli, write_recipe, data_csv, cache_dir, tmp_path,
                                                                  monkeypatch):
    """The command keeps its leases until it has read back what it built (rows, selection warnings)."""
    from synthforge import api, app

    nothing_referenced = tmp_path / "no-lockfiles"
    nothing_referenced.mkdir()
    reports: list[str] = []
    real_warnings = api.selection_warnings

    def gc_then_warnings(graph, cache, *args, **kwargs):
        reports.append(app.cache_gc_text(api.gc([nothing_referenced], cache_dir=cache_dir)))
        return real_warnings(graph, cache, *args, **kwargs)

    monkeypatch.setattr(api, "selection_warnings", gc_then_warnings)
    result = cli("build", write_recipe(BASIC), "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "removed 0 entries" in reports[0] and "kept 2 in use" in reports[0]
    assert len(list(Cache(cache_dir).entries())) == 2


def test_a_build_that_waited_for_another_reports_cached(write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(SLOW)
    release = tmp_path / "release"
    first = _build(recipe, cache_dir, SF_TEST_RELEASE=str(release))
    while not (cache_dir / "tmp").exists() or not list((cache_dir / "tmp").glob("*/started")):
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = _build(recipe, cache_dir)
    for line in second.stderr:  # the second plans to run `slow`, then waits for the first's lock
        if line.startswith("▶") and " slow " in line:
            break
    release.touch()
    out, rest = second.communicate(timeout=120)
    err = line + rest
    first.communicate(timeout=120)
    assert second.returncode == 0, err
    slow_row = next(line for line in out.splitlines() if line.startswith("slow"))
    assert "cached (built by another process)" in slow_row and "built by another process" in err


def test_dead_tmp_folders_and_partial_model_conversions_are_swept(cli, write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(BASIC)
    dead = cache_dir / "tmp" / "0123abcd.deadbeef"
    dead.mkdir(parents=True)
    (dead / "data.parquet").write_bytes(b"half")
    assert cli("build", recipe).exit_code == 0
    assert not dead.exists()  # swept by the next build
    partial = cache_dir / "shared" / "models" / ".smollm2-135m-instruct.x1y2"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 1024)
    assert "swept 1 leftover" in cli("cache", "gc", tmp_path).output
    assert not partial.exists()


# -- disk full, read-only -------------------------------------------------------------------------
def _limited_build(recipe: Path, cache_dir: Path, limit_bytes: int) -> subprocess.CompletedProcess:
    """A build whose writes fail past `limit_bytes` per file (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC)."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    environment = {**os.environ, "SYNTHFORGE_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "synthforge", "build", str(recipe), "--no-progress"], env=environment,
                          capture_output=True, text=True, preexec_fn=limit, timeout=120)


def test_a_full_disk_gives_one_line_and_no_half_entry(write_recipe, data_csv, cache_dir):
    recipe = write_recipe(BASIC)
    failed = _limited_build(recipe, cache_dir, 4096)
    assert failed.returncode == 2, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write to ") and "File too large" in last and "free some space" in last
    assert "Traceback" not in failed.stderr
    assert all(not verify for verify in [Cache(cache_dir).verify(e) for e in Cache(cache_dir).entries()])
    assert not list((cache_dir / "tmp").iterdir())
    done = _limited_build(recipe, cache_dir, 1 << 30)
    assert done.returncode == 0, done.stderr


def _read_only_run(cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`synthforge ARGS` with `cache_dir` read-only for it (a read-only bind mount as root, else chmod)."""
    environment = {**os.environ, "SYNTHFORGE_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "synthforge", *map(str, args)]
    if os.geteuid() == 0:  # root writes through permissions: mount the cache read-only in a private namespace
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
            pytest.skip("running as root without mount namespaces: cannot make a read-only folder")
        command = ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{cache_dir}" "{cache_dir}" && exec "$@"', "sh",
                   *command]
    else:
        os.chmod(cache_dir, 0o555)
    try:
        return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(cache_dir, 0o755)


def test_a_read_only_cache_gives_one_line(write_recipe, data_csv, tmp_path):
    recipe = write_recipe(BASIC)
    cache_dir = tmp_path / "ro-cache"
    cache_dir.mkdir()
    result = _read_only_run(cache_dir, "build", recipe, "--no-progress")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write to {cache_dir}") and "writable cache folder" in last
    assert "Traceback" not in result.stderr


def test_a_read_only_cache_is_verified_as_it_is_and_never_repaired(tmp_path):
    """A sound WAL response database on a read-only mount is not 'damaged'; nothing suggests or runs a repair."""
    import polars as pl

    from synthforge.backends.llm import GenerationResponse
    from synthforge.cache import write_entry_files
    from synthforge.generation.response_cache import ResponseCache

    cache_dir = tmp_path / "ro-cache"
    cache = Cache(cache_dir)
    components = {"kind": "generate", "fixture": 1}
    with cache.writing(key_of(components)) as work:
        write_entry_files(work, {"data": pl.DataFrame({"id": ["1"], "text": ["a"], "label": ["x"]})}, key=key_of(components),
                          step="gen", kind="generate", components=components, timings={"started": 0.0, "seconds": 0.0})
    responses = ResponseCache(cache.shared_dir("responses"))
    responses.put("prompt", GenerationResponse("an answer", 3, 2))
    responses.close()
    database = cache_dir / "shared" / "responses" / "responses.sqlite"
    for args in (("cache", "verify"), ("cache", "verify", "--repair")):
        checked = _read_only_run(cache_dir, *args)
        assert checked.returncode == 0 and "1 entry verified, all sound" in checked.stdout, checked.stdout + checked.stderr
    assert database.is_file() and not list(database.parent.glob("*.damaged-*"))
    pushed = _read_only_run(cache_dir, "cache", "push", "--remote", tmp_path / "remote", "--no-progress")
    assert pushed.returncode == 2 and "Traceback" not in pushed.stderr
    last = pushed.stderr.strip().splitlines()[-1]
    assert f"the cache {cache_dir} is read-only" in last and "credentials" not in last
    table = next(cache_dir.rglob("data.parquet"))
    table.write_bytes(table.read_bytes()[:-9] + b"XXXXXXXXX")  # real damage in a read-only cache
    for args in (("cache", "verify"), ("cache", "verify", "--repair")):
        checked = _read_only_run(cache_dir, *args)
        assert checked.returncode == 1 and "content hash mismatch" in checked.stdout
        assert "is read-only, so nothing was removed" in checked.stdout and "--repair" not in checked.stdout
    assert table.is_file() and database.is_file()


def test_claims_wait_for_live_owners_and_take_over_from_dead_ones(tmp_path):
    from synthforge.backends.llm import GenerationResponse
    from synthforge.generation.response_cache import ResponseCache

    first, second = ResponseCache(tmp_path, log=print), ResponseCache(tmp_path, log=print)
    assert first.claim(["a", "b", "c"]) == {"a", "b", "c"}
    assert second.claim(["a", "b", "c", "d"]) == {"d"}  # a live owner holds a, b, c
    first.put("a", GenerationResponse("answer a", 1, 1))
    first.put("b", GenerationResponse("", 1, 0))  # empty: not kept, claim dropped
    assert set(second.wait_for(["a", "b", "c"])) == {"a"}  # b lost its owner: returns so it can be claimed
    assert second.claim(["b", "c"]) == {"b"}
    first._owner_lock.close()  # the owner dies without releasing its claims
    assert second.claim(["c"]) == {"c"}
    second.close()
