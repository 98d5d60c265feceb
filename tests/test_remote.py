"""The shared remote cache against a real S3-protocol server on 127.0.0.1 (moto) and a shared folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from unittest import mock

import pytest

from synthforge.cache import Cache
from synthforge.remote import Remote
from tests.conftest import BASIC, make_rows
from tests.dropping_proxy import DroppingProxy
from tests.test_build import statuses

KEY_ID = "AKIASYNTHFORGETEST7Q"
SECRET = "sfSecret/9f2c7e1d-never-write-me"


@pytest.fixture(scope="module")
def moto_port():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()[1]
    server.stop()


@pytest.fixture
def s3_env(moto_port, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{moto_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return moto_port


def new_bucket() -> str:
    import s3fs

    bucket = f"team-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return bucket


@pytest.fixture(params=["s3", "folder"])
def remote_url(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "shared" / "remote")
    request.getfixturevalue("s3_env")
    return f"s3://{new_bucket()}/synthforge"


@pytest.fixture
def s3_url(s3_env) -> str:
    return f"s3://{new_bucket()}/synthforge"


def remote_files(url: str) -> dict[str, bytes]:
    remote = Remote(url, progress=False)
    return {path: remote.fs.cat_file(path) for path in remote.fs.find(remote.root)}


def record(url: str, key: str) -> dict:
    remote = Remote(url, progress=False)
    return json.loads(remote.fs.cat_file(remote.record_path(key)))


def graph_keys(recipe: Path) -> dict[str, str]:
    return json.loads(recipe.with_suffix(".lock").read_text())["variants"]["default"]


def test_push_then_pull_into_an_empty_cache_builds_nothing(cli, write_recipe, data_csv, tmp_path, remote_url):
    recipe = write_recipe(BASIC)
    a, b = tmp_path / "a", tmp_path / "b"
    assert statuses(cli("build", recipe, "--cache-dir", a).output) == {"rows": "built", "split": "built"}
    pushed = cli("cache", "push", recipe, "--cache-dir", a, "--remote", remote_url, "--no-progress")
    assert pushed.exit_code == 0, pushed.output
    assert "pushed 2 entries" in pushed.output

    plan = cli("plan", recipe, "--cache-dir", b, "--remote", remote_url)
    assert [line.split()[0] for line in plan.output.splitlines()[3:]] == ["pull", "pull"]
    assert "0 cached, 2 to pull from the remote, 0 to run" in plan.output  # the empty local cache has nothing
    first = cli("build", recipe, "--cache-dir", b, "--remote", remote_url, "--no-progress")
    assert statuses(first.output) == {} and "2 pulled from" in first.output, first.output
    second = cli("build", recipe, "--cache-dir", b, "--no-remote")
    assert statuses(second.output) == {"rows": "cached", "split": "cached"}
    for key in graph_keys(recipe).values():  # every table file (a split's main table is a union: no file)
        tables = sorted(p.name for p in (a / "entries" / key[:2] / key).glob("*.parquet"))
        assert tables and all((a / "entries" / key[:2] / key / t).read_bytes() == (b / "entries" / key[:2] / key / t).read_bytes()
                              for t in tables)
    again = cli("cache", "push", recipe, "--cache-dir", a, "--remote", remote_url, "--no-progress")
    assert "pushed 0 entries" in again.output and "2 already there" in again.output


def test_a_no_op_push_draws_no_progress_bar_and_imports_none(cli, write_recipe, data_csv, tmp_path):
    recipe, remote_url = write_recipe(BASIC), str(tmp_path / "remote")
    cli("build", recipe, "--cache-dir", tmp_path / "a")
    assert "pushed 2 entries" in cli("cache", "push", "--cache-dir", tmp_path / "a", "--remote", remote_url, "--no-progress").output
    code = ("import sys; from synthforge.cli import main; "
            "main(['cache', 'push', '--cache-dir', sys.argv[1], '--remote', sys.argv[2], '--no-progress'], standalone_mode=False); "
            "print('tqdm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), remote_url], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr
    assert "pushed 0 entries" in out.stdout and out.stdout.strip().splitlines()[-1] == "False", out.stdout


def test_pull_of_one_step_and_variant_and_the_small_api(cli, write_recipe, data_csv, tmp_path, remote_url):
    recipe = write_recipe(BASIC)
    a, b = tmp_path / "a", tmp_path / "b"
    cli("build", recipe, "--cache-dir", a)
    keys = graph_keys(recipe)
    remote = Remote(remote_url, progress=False)
    assert not remote.available([keys["split"]])
    assert keys["split"] in remote.push_many([keys["split"]], Cache(a)).entries
    assert remote.available([keys["split"], keys["rows"]]) == {keys["split"]}
    pulled = cli("cache", "pull", recipe, "--step", "split", "--variant", "default", "--cache-dir", b,
                 "--remote", remote_url, "--no-progress")
    assert pulled.exit_code == 0 and "pulled 1 entry" in pulled.output
    assert Cache(b).problems(keys["split"]) == [] and Cache(b).problems(keys["rows"]) is None
    assert not remote.pull_many([keys["rows"]], Cache(b)).entries and Cache(b).problems(keys["rows"]) is None
    remote.raise_failures(remote.push_many([keys["rows"]], Cache(a)))
    assert keys["rows"] in remote.pull_many([keys["rows"]], Cache(b)).entries
    with mock.patch("synthforge.remote._sound", side_effect=AssertionError("a no-op push read a local entry")):
        noop = remote.push_many([keys["rows"], keys["split"]], Cache(a))
    assert (noop.entries, noop.present, noop.missing) == ([], [keys["rows"], keys["split"]], [])
    assert Cache(b).verify(Cache(b).get(keys["rows"])) == []
    by_lock = cli("cache", "pull", recipe.with_suffix(".lock"), "--cache-dir", tmp_path / "c", "--remote", remote_url,
                  "--no-progress")
    assert by_lock.exit_code == 0 and "pulled 2 entries" in by_lock.output


def test_a_damaged_or_partial_remote_entry_is_refused_and_rebuilt(cli, write_recipe, data_csv, tmp_path, remote_url):
    recipe = write_recipe(BASIC)
    a, b = tmp_path / "a", tmp_path / "b"
    cli("build", recipe, "--cache-dir", a)
    cli("cache", "push", recipe, "--cache-dir", a, "--remote", remote_url, "--no-progress")
    keys = graph_keys(recipe)
    remote = Remote(remote_url, progress=False)
    rows_object = remote.object_path(record(remote_url, keys["rows"])["files"]["data.parquet"]["hash"])
    data = remote.fs.cat_file(rows_object)
    remote.fs.pipe_file(rows_object, data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])  # one flipped byte
    remote.fs.rm_file(remote.object_path(record(remote_url, keys["split"])["files"]["manifest.json"]["hash"]))

    pulled = cli("cache", "pull", recipe, "--cache-dir", b, "--remote", remote_url, "--no-progress")
    assert pulled.exit_code == 1 and "refused 2 damaged entries" in pulled.output
    refusals = [line for line in pulled.output.splitlines() if line.startswith("remote: refused")]
    assert len(refusals) == 2 and "does not match its hash" in " ".join(refusals) and "missing" in " ".join(refusals)
    assert list(Cache(b).entries()) == [] and not any((b / "tmp").iterdir())

    built = cli("build", recipe, "--cache-dir", b, "--remote", remote_url, "--no-progress")
    assert built.exit_code == 0 and statuses(built.output) == {"rows": "built", "split": "built"}
    assert "refused entry" in built.output
    assert cli("cache", "verify", "--cache-dir", b).exit_code == 0


def test_a_truncated_record_is_refused(cli, write_recipe, data_csv, tmp_path, s3_url):
    recipe = write_recipe(BASIC)
    a, b = tmp_path / "a", tmp_path / "b"
    cli("build", recipe, "--cache-dir", a)
    cli("cache", "push", recipe, "--cache-dir", a, "--remote", s3_url, "--no-progress")
    remote = Remote(s3_url, progress=False)
    path = remote.record_path(graph_keys(recipe)["rows"])
    remote.fs.pipe_file(path, remote.fs.cat_file(path)[:50])
    pulled = cli("cache", "pull", recipe, "--cache-dir", b, "--remote", s3_url, "--no-progress")
    assert pulled.exit_code == 1 and "damaged record" in pulled.output
    assert Cache(b).problems(graph_keys(recipe)["split"]) == [] and Cache(b).problems(graph_keys(recipe)["rows"]) is None
    escaping = record(s3_url, graph_keys(recipe)["split"])
    escaping["files"]["../../../escaped.parquet"] = escaping["files"].pop("train.parquet")  # a split entry has no data.parquet (its main table is a union)
    remote.fs.pipe_file(path, json.dumps({**escaping, "key": graph_keys(recipe)["rows"]}).encode())
    again = cli("cache", "pull", recipe, "--cache-dir", tmp_path / "c", "--remote", s3_url, "--no-progress")
    assert again.exit_code == 1 and "outside the entry" in again.output
    assert not list(tmp_path.rglob("escaped.parquet"))


@pytest.mark.integration
def test_a_connection_dropped_mid_upload_leaves_no_entry_and_push_resumes(
        cli, write_recipe, tmp_path, s3_url, s3_env, monkeypatch):
    import fsspec.config
    import s3fs

    make_rows(20000).write_csv(tmp_path / "reviews.csv")
    recipe = write_recipe(BASIC)
    a = tmp_path / "a"
    cli("build", recipe, "--cache-dir", a)
    keys = [graph_keys(recipe)["split"], graph_keys(recipe)["rows"]]  # small files first, then one of 280 kB
    total = sum(p.stat().st_size for p in a.joinpath("entries").rglob("*") if p.is_file())
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # fail fast: the test is about what a failure leaves
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {"retries": {"max_attempts": 1}}})
    with DroppingProxy(s3_env, budget=total // 2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        done = Remote(s3_url, jobs=1, progress=False).push_many(keys, Cache(a))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3_env}")
    monkeypatch.setattr("synthforge.remote.LIST_PAGE", 0)  # as on a huge remote: the resume asks per object
    assert proxy.sent > total // 2 and done.failed and done.entries, "the line was cut in the middle of the push"
    remote = Remote(s3_url, progress=False)
    assert not remote.available(done.failed)
    for path, data in remote_files(s3_url).items():
        if "/objects/" in path:
            from xxhash import xxh3_128_hexdigest

            assert xxh3_128_hexdigest(data) == path.rsplit("/", 1)[-1], "no partial object is visible"
    b = tmp_path / "b"
    assert remote.pull_many(done.failed, Cache(b)).missing == list(done.failed)

    resumed = remote.push_many(keys, Cache(a))
    assert sorted(resumed.entries) == sorted(done.failed) and not resumed.failed
    assert resumed.objects < sum(len(record(s3_url, k)["files"]) for k in keys), "finished objects are not sent again"
    assert remote.pull_many(keys, Cache(b)).entries and all(Cache(b).problems(k) == [] for k in keys)


@pytest.mark.integration
def test_two_concurrent_pushes_of_one_key_are_harmless(cli, write_recipe, data_csv, tmp_path, remote_url):
    recipe = write_recipe(BASIC)
    caches = [tmp_path / "a1", tmp_path / "a2"]
    for cache in caches:
        cli("build", recipe, "--cache-dir", cache)
    manifests = {(c / "entries").joinpath(*[k[:2], k, "manifest.json"]).read_bytes()
                 for c in caches for k in graph_keys(recipe).values()}
    assert len(manifests) == 4, "the two builds differ in bytes (timings), so the race is real"
    command = [sys.executable, "-m", "synthforge", "cache", "push", str(recipe), "--remote", remote_url, "--no-progress"]
    procs = [subprocess.Popen(command + ["--cache-dir", str(c)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=os.environ.copy()) for c in caches]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    b = tmp_path / "b"
    pulled = cli("cache", "pull", recipe, "--cache-dir", b, "--remote", remote_url, "--no-progress")
    assert pulled.exit_code == 0 and "pulled 2 entries" in pulled.output
    for key in graph_keys(recipe).values():
        assert Cache(b).verify(Cache(b).get(key)) == []
        assert (b / "entries" / key[:2] / key / "manifest.json").read_bytes() in manifests


def test_credentials_never_reach_a_written_file_or_the_output(cli, write_recipe, data_csv, tmp_path, s3_url):
    recipe = write_recipe(BASIC)
    a, b = tmp_path / "a", tmp_path / "b"
    outputs = [cli("build", recipe, "--cache-dir", a, "--push", "--remote", s3_url).output,
               cli("build", recipe, "--cache-dir", b, "--remote", s3_url).output,
               cli("plan", recipe, "--cache-dir", b, "--remote", s3_url).output,
               cli("cache", "gc", "--remote", s3_url, "--dry-run", str(tmp_path)).output]
    assert "pushed 2 entries" in outputs[0] and "2 pulled" in outputs[1]
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()] + list(remote_files(s3_url).values())
    for secret in (KEY_ID, SECRET):
        assert not any(secret.encode() in blob for blob in written)
        assert not any(secret in text for text in outputs)
    leaky = cli("cache", "push", recipe, "--cache-dir", a, "--remote", f"s3://{KEY_ID}:{SECRET}@bucket/x")
    assert leaky.exit_code == 2 and "carries credentials" in leaky.output
    assert KEY_ID not in leaky.output and SECRET not in leaky.output


def test_remote_from_pyproject_and_a_clear_error_without_one(cli, write_recipe, data_csv, tmp_path, monkeypatch):
    recipe = write_recipe(BASIC)
    monkeypatch.delenv("SYNTHFORGE_REMOTE", raising=False)
    monkeypatch.chdir(tmp_path)
    cli("build", recipe, "--cache-dir", "a")
    missing = cli("cache", "push", recipe, "--cache-dir", "a")
    assert missing.exit_code == 2 and "no remote configured" in missing.output and "[tool.synthforge]" in missing.output
    (tmp_path / "pyproject.toml").write_text('[tool.synthforge]\nremote = "team-remote"\n')
    assert "pushed 2 entries" in cli("cache", "push", recipe, "--cache-dir", "a", "--no-progress").output
    assert (tmp_path / "team-remote" / "entries").is_dir()
    monkeypatch.setenv("SYNTHFORGE_REMOTE", str(tmp_path / "other"))
    assert "pushed 2 entries" in cli("cache", "push", recipe, "--cache-dir", "a", "--no-progress").output


@pytest.mark.integration
def test_gc_removes_what_no_lockfile_references(cli, write_recipe, data_csv, tmp_path, remote_url, monkeypatch):
    keep = write_recipe(BASIC, "keep.yaml")
    drop = write_recipe(BASIC.replace("k: 10", "k: 5"), "drop.yaml")
    for recipe in (keep, drop):
        cli("build", recipe, "--cache-dir", tmp_path / "a", "--push", "--remote", remote_url)
    drop_split = graph_keys(drop)["split"]
    kept_hashes = {i["hash"] for k in graph_keys(keep).values() for i in record(remote_url, k)["files"].values()}
    drop_objects = len({i["hash"] for i in record(remote_url, drop_split)["files"].values()} - kept_hashes)
    drop.with_suffix(".lock").unlink()
    remote = Remote(remote_url, progress=False)
    before = remote_files(remote_url)
    dry = cli("cache", "gc", str(keep.with_suffix(".lock")), "--remote", remote_url, "--dry-run")
    assert "would remove 1 remote entry" in dry.output and remote_files(remote_url) == before
    young = cli("cache", "gc", str(keep.with_suffix(".lock")), "--remote", remote_url)
    assert "removed 1 remote entry and 0 unreferenced objects" in young.output  # in-flight grace period
    monkeypatch.setattr("synthforge.remote.GC_GRACE_S", -1)
    old = cli("cache", "gc", str(keep.with_suffix(".lock")), "--remote", remote_url)
    assert f"removed 0 remote entries and {drop_objects} unreferenced objects" in old.output
    assert remote.keys() == sorted(graph_keys(keep).values()) and not remote.available([drop_split])
    pulled = cli("cache", "pull", keep, "--cache-dir", tmp_path / "b", "--remote", remote_url, "--no-progress")
    assert pulled.exit_code == 0 and "pulled 2 entries" in pulled.output


# -- the per-response LLM cache travels with generate steps ----------------------------------------


GENERATE = """
name: gen
steps:
  gen:
    kind: generate
    n: {n}
    labels: [good, bad]
    template: 'a {{{{ label }}}} line about {{{{ topic }}}}'
    variables: {{topic: [tea, trains, tides]}}
    backend: {{type: openai, base_url: '{url}', model: fake-model, backoff_s: 0.01}}
"""


@pytest.mark.integration
def test_pushing_generate_shares_responses_so_raising_n_generates_only_new_rows(
        cli, write_recipe, tmp_path, remote_url):
    from tests.fake_openai_server import FakeOpenAIServer

    a, b = tmp_path / "a", tmp_path / "b"
    with FakeOpenAIServer(slow_s=1.0) as server:
        recipe = write_recipe(GENERATE.format(n=6, url=server.base_url))
        cli("build", recipe, "--cache-dir", a, "--push", "--remote", remote_url, "--no-progress")
        assert len(server.requests) == 6
        local_b = b / "shared" / "responses"
        recipe.write_text(GENERATE.format(n=10, url=server.base_url))
        raised = cli("build", recipe, "--cache-dir", b, "--remote", remote_url, "--no-progress")
        assert raised.exit_code == 0 and "merged 6 LLM responses" in raised.output, raised.output
        assert len(server.requests) == 10, "only the 4 new rows reached the model"
        assert (local_b / "merged_snapshots.txt").is_file()
        cli("cache", "push", recipe, "--cache-dir", b, "--remote", remote_url, "--no-progress")
        recipe.write_text(GENERATE.format(n=6, url=server.base_url))
        back = cli("cache", "pull", recipe, "--cache-dir", b, "--remote", remote_url, "--no-progress")
        assert back.exit_code == 0 and "pulled 1 entry" in back.output
        import sqlite3

        rows = sqlite3.connect(local_b / "responses.sqlite").execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert rows == 10, "merging an older snapshot adds nothing and removes nothing"


def test_a_judge_entry_travels_with_its_responses_so_a_forced_rejudge_elsewhere_asks_nothing(
        cli, write_recipe, data_csv, tmp_path):
    """The step kind says what travels (`Step.carries_responses`), not a special case for generate."""
    from tests.fake_openai_server import FakeOpenAIServer
    from tests.test_judge import score_by_length

    remote = str(tmp_path / "shared" / "remote")
    with FakeOpenAIServer() as server:
        server.reply_body = score_by_length
        recipe = write_recipe(BASIC + (
            "  judged:\n    kind: judge\n    input: rows\n    n: 5\n"
            "    template: \"Rate this {{ label }} review:\\n{{ text }}\"\n"
            f"    backend: {{type: openai, base_url: \"{server.base_url}\", model: judge-model, backoff_s: 0.01}}\n"))
        pushed = cli("build", recipe, "--cache-dir", tmp_path / "a", "--push", "--remote", remote, "--no-progress")
        assert pushed.exit_code == 0 and len(server.requests) == 5, pushed.output
        again = cli("build", recipe, "--cache-dir", tmp_path / "b", "--remote", remote, "--force", "judged",
                    "--no-progress")
        assert again.exit_code == 0 and "merged 5 LLM responses" in again.output, again.output
        assert statuses(again.output)["judged"] == "built" and len(server.requests) == 5  # answered from the snapshot


def test_an_unreachable_remote_is_one_line_and_a_build_goes_on_without_it(
        cli, write_recipe, data_csv, tmp_path, s3_env, monkeypatch):
    import socket

    import fsspec.config
    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {"retries": {"max_attempts": 1}}})
    recipe = write_recipe(BASIC)
    built = cli("build", recipe, "--cache-dir", tmp_path / "a", "--remote", "s3://nowhere/x", "--no-progress")
    assert built.exit_code == 0 and statuses(built.output) == {"rows": "built", "split": "built"}
    assert "remote s3://nowhere/x:" in built.output and "building without it" in built.output
    plan = cli("plan", recipe, "--cache-dir", tmp_path / "b", "--remote", "s3://nowhere/x")
    assert plan.exit_code == 0 and "not marking remote steps: remote s3://nowhere/x:" in plan.output
    pushed = cli("cache", "push", recipe, "--cache-dir", tmp_path / "a", "--remote", "s3://nowhere/x")
    assert pushed.exit_code == 2 and pushed.output.startswith("error: remote s3://nowhere/x:")
    assert len(pushed.output.strip().splitlines()) == 1 and "Traceback" not in pushed.output


# -- nothing outside the cache is touched ------------------------------------------------------------


def files_outside(root: Path, cache: Path) -> dict[str, bytes]:
    """Every file under `root` but outside `cache`, with its bytes."""
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and cache not in p.parents}


PATH_LIKE_KEYS = ["../../victim", "../victim", "..", ".", "/tmp", "victim", "a/../../victim", "0" * 31, "0" * 33,
                  "A" * 32, "g" * 32, "0" * 30 + "/.", "0" * 16 + "/../" + "0" * 12, "0" * 32 + "\n", ""]


def test_path_like_keys_in_a_lockfile_are_one_line_errors_and_touch_nothing(cli, write_recipe, data_csv, tmp_path):
    """`cache pull evil.lock` whose key is '../../victim' once wrote outside the cache and rmtree'd a folder."""
    recipe = write_recipe(BASIC)
    a, b = tmp_path / "a", tmp_path / "b"
    cli("build", recipe, "--cache-dir", a, "--push", "--remote", tmp_path / "remote")
    for folder in (tmp_path / "victim.pull", tmp_path / "victim", tmp_path / "a" / "victim.pull"):  # where '../../victim' led
        folder.mkdir(parents=True)
        (folder / "keep.txt").write_text("a user's file")
    (tmp_path / "evil").mkdir()
    before = files_outside(tmp_path, b)
    real = graph_keys(recipe)
    for trial, bad in enumerate(PATH_LIKE_KEYS):
        lock = json.loads(recipe.with_suffix(".lock").read_text())
        lock["variants"]["default"]["split"] = bad
        evil = tmp_path / "evil" / f"{trial}.lock"
        evil.write_text(json.dumps(lock, indent=1))
        pulled = cli("cache", "pull", evil, "--cache-dir", b, "--remote", tmp_path / "remote", "--no-progress")
        assert pulled.exit_code == 2, (bad, pulled.output)
        lines = pulled.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {evil}:") and "variants.default.split" in lines[0]
        assert "not a cache key" in lines[0] and "Traceback" not in pulled.output
        evil.unlink()
    assert files_outside(tmp_path, b) == before  # nothing written, nothing removed
    assert not b.exists() or not [p for p in b.rglob("*") if p.is_file()]
    assert cli("cache", "pull", recipe.with_suffix(".lock"), "--cache-dir", b, "--remote", tmp_path / "remote",
               "--no-progress").exit_code == 0
    assert all(Cache(b).problems(key) == [] for key in real.values())


def test_the_cache_refuses_a_key_that_is_not_one_as_a_last_line_of_defence(tmp_path):
    from synthforge.errors import UserError

    cache = Cache(tmp_path / "cache")
    remote = Remote(str(tmp_path / "remote"), progress=False)
    for bad in PATH_LIKE_KEYS:
        for path_of in (cache.entry_path, cache.derived_path):
            with pytest.raises(UserError, match="not a cache key"):
                path_of(bad)
        for hold in (cache.flock, cache.staging, lambda key: cache.lease([key])):
            with pytest.raises(UserError, match="not a cache key"), hold(bad):
                pass
        for move in (remote.pull_many, remote.push_many):
            with pytest.raises(UserError, match="not a cache key"):
                move([bad], cache)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*victim*"))


PLANTED_NAMES = ["a\\..\\..\\x", ".x", ".data.parquet", "./x", "x/../../y", "../x", "/abs/x", "artifacts/../../../z",
                 "extra.txt", "artifacts/extra", "sub/.hidden", "a//b", "data.parquet/", "sub/x.parquet", "x\x00y"]


def test_a_record_that_plants_files_the_manifest_does_not_list_installs_nothing(cli, write_recipe, data_csv, tmp_path):
    """A pulled entry holds exactly its manifest's files: a record naming any other file is refused, whole."""
    recipe = write_recipe(BASIC)
    remote_dir = tmp_path / "remote"
    cli("build", recipe, "--cache-dir", tmp_path / "a", "--push", "--remote", remote_dir)
    remote = Remote(str(remote_dir), progress=False)
    key = graph_keys(recipe)["rows"]
    sound = record(str(remote_dir), key)
    caches = tmp_path / "pulls"
    before = files_outside(tmp_path, caches)
    for trial, name in enumerate(PLANTED_NAMES):
        planted = {**sound, "files": {**sound["files"], name: sound["files"]["manifest.json"]}}
        remote.fs.pipe_file(remote.record_path(key), json.dumps(planted).encode())
        cache = caches / str(trial)
        pulled = cli("cache", "pull", recipe, "--step", "rows", "--cache-dir", cache, "--remote", remote_dir, "--no-progress")
        assert pulled.exit_code == 1 and "refused 1 damaged entries" in pulled.output, (name, pulled.output)
        assert Cache(cache).get(key) is None and not any((cache / "tmp").glob("*")), name
    for field, value in (("hash", "../../../../outside"), ("hash", sound["files"]["manifest.json"]["hash"].upper()),
                         ("bytes", -1), ("bytes", "12")):  # an object path outside the remote, a size that is no size
        planted = {**sound, "files": {**sound["files"], "manifest.json": {**sound["files"]["manifest.json"], field: value}}}
        remote.fs.pipe_file(remote.record_path(key), json.dumps(planted).encode())
        pulled = cli("cache", "pull", recipe, "--step", "rows", "--cache-dir", caches / field, "--remote", remote_dir,
                     "--no-progress")
        assert pulled.exit_code == 1 and "damaged record" in pulled.output, (field, value, pulled.output)
    remote.fs.pipe_file(remote.record_path(key), json.dumps({**sound, "responses": "../../x"}).encode())
    pulled = cli("cache", "pull", recipe, "--step", "rows", "--cache-dir", caches / "responses", "--remote", remote_dir,
                 "--no-progress")
    assert pulled.exit_code == 1 and "damaged record" in pulled.output
    assert files_outside(tmp_path, caches) == {**before, **files_outside(remote_dir, caches)}  # only the records changed
    remote.fs.pipe_file(remote.record_path(key), json.dumps(sound).encode())
    assert cli("cache", "pull", recipe, "--step", "rows", "--cache-dir", caches / "ok", "--remote", remote_dir,
               "--no-progress").exit_code == 0
    assert Cache(caches / "ok").verify(Cache(caches / "ok").get(key)) == []


@pytest.mark.parametrize("tail", ["?secret=sfQuerySecret42", "#sfQuerySecret42", "?x=1&token=sfQuerySecret42"])
def test_a_query_string_or_fragment_in_the_remote_url_is_refused_without_echoing_it(cli, write_recipe, data_csv, tmp_path,
                                                                                    tail):
    recipe = write_recipe(BASIC)
    for command in (("cache", "push", recipe), ("build", recipe, "--push"), ("cache", "pull", recipe),
                    ("cache", "gc", "--dry-run")):
        refused = cli(*command, "--cache-dir", tmp_path / "a", "--remote", f"s3://bucket/x{tail}")
        assert refused.exit_code == 2 and "carries a query string or fragment" in refused.output, refused.output
        assert "sfQuerySecret42" not in refused.output and len(refused.output.strip().splitlines()) == 1


def test_pulling_from_a_bucket_or_prefix_that_does_not_exist_is_one_line_exit_2(cli, write_recipe, data_csv, tmp_path,
                                                                                s3_env):
    recipe = write_recipe(BASIC)
    cli("build", recipe, "--cache-dir", tmp_path / "a")
    bucket = new_bucket()
    for url in (f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", f"s3://{bucket}/no-such-prefix", str(tmp_path / "nowhere")):
        pulled = cli("cache", "pull", recipe, "--cache-dir", tmp_path / "b", "--remote", url, "--no-progress")
        assert pulled.exit_code == 2 and "does not exist" in pulled.output, pulled.output
        assert len(pulled.output.strip().splitlines()) == 1 and "not on the remote" not in pulled.output
    pushed = cli("cache", "push", recipe, "--cache-dir", tmp_path / "a", "--remote", f"s3://{bucket}/team", "--no-progress")
    assert pushed.exit_code == 0, pushed.output  # a first push creates the prefix
    pulled = cli("cache", "pull", recipe, "--cache-dir", tmp_path / "b", "--remote", f"s3://{bucket}/team", "--no-progress")
    assert pulled.exit_code == 0 and "pulled 2 entries" in pulled.output
    built = cli("build", recipe, "--cache-dir", tmp_path / "c", "--remote", f"s3://{bucket}/elsewhere", "--no-progress")
    assert built.exit_code == 0 and "does not exist" in built.output and "building without it" in built.output


def _sweep_in_another_process(cache_dir: Path) -> int:
    code = "import sys; from synthforge.cache import Cache; print(Cache(sys.argv[1]).sweep_tmp())"
    done = subprocess.run([sys.executable, "-c", code, str(cache_dir)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_sweep_during_a_pull_deletes_nothing_in_flight(cli, write_recipe, data_csv, tmp_path, monkeypatch):
    """Every tmp path is made under its owner's lock: a concurrent build's or gc's sweep_tmp leaves transfers alone."""
    recipe = write_recipe(BASIC)
    a, b, remote_dir = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    cli("build", recipe, "--cache-dir", a, "--push", "--remote", remote_dir)
    (b / "tmp").mkdir(parents=True)
    (b / "tmp" / f"{'0' * 32}.pull").mkdir()  # a dead pull's leftover: the one thing a sweep may take
    real_download, swept = Remote._download_object, []

    def download_then_sweep(self, item, target):
        size = real_download(self, item, target)
        swept.append(_sweep_in_another_process(b))  # the file is in tmp/<key>.pull now, its entry not yet installed
        return size

    monkeypatch.setattr(Remote, "_download_object", download_then_sweep)
    remote = Remote(str(remote_dir), progress=False, jobs=1)
    done = remote.pull_many(graph_keys(recipe).values(), Cache(b))
    assert sorted(done.entries) == sorted(graph_keys(recipe).values()) and not done.refused and not done.failed
    assert swept[0] == 1 and set(swept[1:]) == {0}, swept
    assert all(Cache(b).verify(entry) == [] for entry in Cache(b).entries())


def test_a_sweep_during_a_response_snapshot_transfer_deletes_nothing_in_flight(tmp_path, monkeypatch):
    from synthforge.backends.llm import GenerationResponse
    from synthforge.generation.response_cache import ResponseCache
    from synthforge.remote import Transfer

    a, b = Cache(tmp_path / "a"), Cache(tmp_path / "b")
    responses = ResponseCache(a.shared_dir("responses"))
    for n in range(5):
        responses.put(f"prompt-{n}", GenerationResponse(f"answer {n}", 3, 2))
    responses.close()
    remote = Remote(str(tmp_path / "remote"), progress=False)
    real_put, real_get, swept = remote._put_atomic, remote.fs.get_file, []

    def put_after_a_sweep(source, target):
        swept.append(_sweep_in_another_process(a.root))
        return real_put(source, target)

    def get_then_sweep(source, target, **kwargs):
        real_get(source, target, **kwargs)
        swept.append(_sweep_in_another_process(b.root))

    monkeypatch.setattr(remote, "_put_atomic", put_after_a_sweep)
    monkeypatch.setattr(remote.fs, "get_file", get_then_sweep)
    name = remote._push_responses(a, Transfer())
    assert name and remote.pull_responses(b, [name]) == 5
    assert swept == [0, 0]
    assert not list((a.root / "tmp").iterdir()) and not list((b.root / "tmp").iterdir())


SHARED_TABLES = BASIC.replace("    label_column: stars\n", "    label_column: stars\n    limit: ${cap}\n") + "matrix:\n  cap: [1000, 2000]\n"


def _counting_downloads(monkeypatch) -> list[str]:
    """The objects a pull downloads (fs.get_file calls), by hash."""
    fetched: list[str] = []
    real = Remote._fetch

    def counted(self, digest, path, name):
        fetched.append(digest)
        return real(self, digest, path, name)

    monkeypatch.setattr(Remote, "_fetch", counted)
    return fetched


@pytest.mark.parametrize("batch", [256, 1])
def test_a_pull_downloads_each_object_once_however_many_entries_hold_it(cli, write_recipe, data_csv, tmp_path,
                                                                         remote_url, monkeypatch, batch):
    """Both caps exceed the data: the two load entries (and the two splits) hold byte-identical tables under
    different keys. Each object comes down once; its other places are checked copies, within a batch of
    locked keys or (batch 1) from the entry an earlier batch installed."""
    recipe = write_recipe(SHARED_TABLES)
    assert cli("build", recipe, "--cache-dir", tmp_path / "a", "--push", "--remote", remote_url).exit_code == 0
    keys = sorted({key for variant in json.loads(recipe.with_suffix(".lock").read_text())["variants"].values()
                   for key in variant.values()})
    files = [info["hash"] for key in keys for info in record(remote_url, key)["files"].values()]
    assert len(keys) == 4 and len(set(files)) < len(files)  # shared objects, else this test shows nothing
    monkeypatch.setattr("synthforge.remote.LOCK_BATCH", batch)
    fetched = _counting_downloads(monkeypatch)
    done = Remote(remote_url, progress=False).pull_many(keys, Cache(tmp_path / "b"))
    assert sorted(done.entries) == keys and not done.refused and not done.failed
    assert sorted(fetched) == sorted(set(files)) and done.objects == len(set(files))
    assert all(Cache(tmp_path / "b").verify(entry) == [] for entry in Cache(tmp_path / "b").entries())


def test_a_damaged_shared_object_refuses_every_entry_that_holds_it(cli, write_recipe, data_csv, tmp_path):
    recipe, remote_dir = write_recipe(SHARED_TABLES), tmp_path / "remote"
    assert cli("build", recipe, "--cache-dir", tmp_path / "a", "--push", "--remote", remote_dir).exit_code == 0
    loads = sorted({variant["rows"] for variant in json.loads(recipe.with_suffix(".lock").read_text())["variants"].values()})
    shared = record(str(remote_dir), loads[0])["files"]["data.parquet"]["hash"]
    assert record(str(remote_dir), loads[1])["files"]["data.parquet"]["hash"] == shared
    target = next(remote_dir.rglob(shared))
    target.write_bytes(target.read_bytes()[:-1] + b"!")
    done = Remote(str(remote_dir), progress=False).pull_many(loads, Cache(tmp_path / "b"))
    assert sorted(done.refused) == loads and not done.entries
    assert all("data.parquet does not match its hash" in why for why in done.refused.values())


def test_a_copy_source_that_went_bad_is_downloaded_instead(cli, write_recipe, data_csv, tmp_path, monkeypatch):
    """An entry installed by an earlier batch can be damaged or collected before a later batch copies from it:
    the copy is checked, and the object is downloaded instead."""
    recipe, remote_dir = write_recipe(SHARED_TABLES), tmp_path / "remote"
    assert cli("build", recipe, "--cache-dir", tmp_path / "a", "--push", "--remote", remote_dir).exit_code == 0
    loads = sorted({variant["rows"] for variant in json.loads(recipe.with_suffix(".lock").read_text())["variants"].values()})
    monkeypatch.setattr("synthforge.remote.LOCK_BATCH", 1)
    real_install, b = Remote._install, Cache(tmp_path / "b")

    def install_then_damage(cache, key, staging, done):
        real_install(cache, key, staging, done)
        table = cache.entry_path(key) / "data.parquet"
        os.chmod(table, 0o644)
        table.write_bytes(b"not the table")

    monkeypatch.setattr(Remote, "_install", staticmethod(install_then_damage))
    fetched = _counting_downloads(monkeypatch)
    done = Remote(str(remote_dir), progress=False).pull_many(loads, b)
    shared = record(str(remote_dir), loads[0])["files"]["data.parquet"]["hash"]
    assert sorted(done.entries) == loads and fetched.count(shared) == 2
