"""What keeps a cached build fast without weakening it: work shared by variants done once, table and artifact
files checked at plan time through remembered stamps (and in full whenever they are read), no numpy to plan."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import synthforge.cache as cache_module
from synthforge.building import build
from synthforge.cache import Cache, DamagedEntry
from synthforge.errors import UserError
from synthforge.generation import prompts
from synthforge.graph import build_graph
from synthforge.planning import plan
from synthforge.recipe import resolve
from synthforge.recipe.resolve import load_recipe
from synthforge.stepapi import Runtime
from tests.conftest import BASIC

MATRIX = BASIC.replace("vars:\n  k: 10\n", "vars:\n  k: 10\nmatrix:\n  k: [4, 6, 8]\n")
ROOT = Path(__file__).resolve().parents[1]


def built(recipe: Path, cache_dir: Path):
    graph = build_graph(load_recipe(recipe))
    cache = Cache(cache_dir)
    build(graph, cache, runtime=Runtime(progress=False), log=lambda m: None)
    return graph, cache


def counting_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hashed: list[str] = []
    real = cache_module.hash_file
    monkeypatch.setattr(cache_module, "hash_file", lambda path: hashed.append(Path(path).name) or real(path))
    return hashed


def test_replicate_seeds_are_numpys_seed_sequence_without_numpy():
    import numpy as np

    draw = random.Random(0)
    for _ in range(5000):
        base, replicate = draw.choice([0, 1, 2**31 - 1, draw.randrange(2**31)]), draw.randrange(1, 1000)
        expected = int(np.random.SeedSequence([base & 0xFFFFFFFF, replicate]).generate_state(1)[0]) & 0x7FFFFFFF
        assert resolve.replicate_seed(base, replicate) == expected
    assert resolve.replicate_seed(7, 0) == 7


def test_planning_a_replicated_study_imports_no_numpy():
    code = ("import sys; from synthforge.recipe.resolve import load_recipe; "
            "r = load_recipe('recipes/diversity_study.yaml'); assert len(r.variants) == 450; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# What only running work needs: a cached build must not pay for importing it.
LAZY_MODULES = ("asyncio", "multiprocessing", "concurrent.futures", "tomllib")
GENERATE = """
  gen:
    kind: generate
    n: 2
    labels: [good, bad]
    template: 'Write a {{ label }} review.'
    backend: {type: openai, base_url: 'URL', model: m, concurrency: 1}
"""


def test_a_cached_build_imports_no_event_loop_pool_or_toml_parser(write_recipe, data_csv, cache_dir, tmp_path):
    from click.testing import CliRunner

    from synthforge.cli import main
    from tests.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:  # gone before the cached build: it must not be asked
        recipe = write_recipe(MATRIX + GENERATE.replace("URL", server.base_url))
        first = CliRunner().invoke(main, ["build", str(recipe), "-q"], catch_exceptions=False)
        assert first.exit_code == 0, first.output
    code = ("import sys; from synthforge.cli import main; "
            "main(['build', sys.argv[1], '--no-progress'], standalone_mode=False); "
            f"print(sorted(m for m in {LAZY_MODULES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(recipe)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "SYNTHFORGE_CACHE": str(cache_dir)})
    assert out.returncode == 0, out.stderr
    assert "built 0, cached 5" in out.stdout, out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_variants_sharing_their_steps_check_refs_and_order_them_once(write_recipe, data_csv, monkeypatch):
    ordered = []
    real = resolve._topological_order
    monkeypatch.setattr(resolve, "_topological_order", lambda recipe, steps: ordered.append(1) or real(recipe, steps))
    recipe = load_recipe(write_recipe(MATRIX.replace("seed: 7\n", "seed: 7\nreplicates: 2\n")))
    assert len(recipe.variants) == 6 and len(ordered) == 3  # the replicates of a k share its steps
    assert all(v.order == ["rows", "split"] for v in recipe.variants)


def test_variants_that_agree_on_a_step_share_its_resolution_and_key(write_recipe, data_csv, monkeypatch):
    calls = []
    real = resolve._resolve_step
    monkeypatch.setattr(resolve, "_resolve_step", lambda recipe, name, config: calls.append(name) or real(recipe, name, config))
    recipe = load_recipe(write_recipe(MATRIX))
    assert sorted(calls) == ["rows", "split", "split", "split"]  # load is the same for the 3 variants
    assert len({id(v.steps["rows"]) for v in recipe.variants}) == 1
    graph = build_graph(recipe)
    assert len(graph.nodes) == 4 and len({keys["rows"] for keys in graph.keys.values()}) == 1


def test_a_template_is_parsed_once_and_its_refusal_raised_every_time(monkeypatch):
    prompts._template_refusal.cache_clear()
    parsed = []
    real = prompts._parse
    monkeypatch.setattr(prompts, "_parse", lambda source, field: parsed.append(source) or real(source, field))
    for _ in range(3):
        prompts.check_template("Write about {{ topic }}.", "template", {"topic"})
    assert parsed == ["Write about {{ topic }}."]
    errors = []
    for _ in range(2):
        with pytest.raises(UserError) as caught:
            prompts.check_template("Write about {{ topik }}.", "template", {"topic"})
        errors.append(caught.value)
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])
    assert "template: template uses 'topik'" in str(errors[1]) and "did you mean 'topic'" in str(errors[1])
    with pytest.raises(UserError, match="nested loops run"):  # the operation budget's static check is kept
        prompts.check_template("{% for a in range(3000) %}{% for b in range(3000) %}x{% endfor %}{% endfor %}",
                               "template", set())


def test_plan_hashes_each_file_once_then_trusts_its_remembered_stamp(write_recipe, data_csv, cache_dir, monkeypatch):
    graph, cache = built(write_recipe(MATRIX), cache_dir)
    hashed = counting_hashes(monkeypatch)
    assert all(item.action == "cached" for item in plan(graph, cache))
    assert hashed == []  # stamps were remembered when the entries were installed
    split = graph.nodes[graph.keys["k=4"]["split"]]
    entry = cache.get(split.key)
    frame = entry.read_table("train")  # reading still hashes the table in full
    assert hashed == ["train.parquet"] and frame.height > 0


def test_any_write_to_a_table_is_caught_at_plan_time_and_a_rebuild_follows(write_recipe, data_csv, cache_dir, monkeypatch):
    graph, cache = built(write_recipe(MATRIX), cache_dir)
    key = graph.keys["k=6"]["split"]
    path = cache.entry_path(key) / "train.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, and the mtime put back: only the ctime and the bytes tell
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hashed = counting_hashes(monkeypatch)
    assert cache.problems(key) == ["table train: content hash mismatch"]
    assert hashed == ["train.parquet"]
    items = {item.node.key: item for item in plan(graph, cache)}
    assert items[key].action == "run" and "damaged" in items[key].reasons[0]
    assert [i.action for k, i in items.items() if k != key] == ["cached"] * 3


def test_a_stamp_is_trusted_only_at_plan_time_never_on_read(write_recipe, data_csv, cache_dir):
    """A remembered stamp that no longer matches the bytes (forged here: ctime cannot be set back) fools
    plan, never a read: every step reads its inputs through scan_table, which hashes them."""
    graph, cache = built(write_recipe(MATRIX), cache_dir)
    key = graph.keys["k=8"]["split"]
    path = cache.entry_path(key) / "test.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    stamps = cache_module._stamps(cache.entry_path(key), cache.get(key).manifest)
    cache._remember_stamps(key, stamps)
    assert cache.problems(key) == []
    with pytest.raises(DamagedEntry, match="content hash mismatch"):
        cache.get(key).read_table("test")


def test_a_missing_table_or_a_changed_size_is_found_without_hashing(write_recipe, data_csv, cache_dir, monkeypatch):
    graph, cache = built(write_recipe(MATRIX), cache_dir)
    first, second = graph.keys["k=4"]["split"], graph.keys["k=6"]["split"]
    (cache.entry_path(first) / "train.parquet").unlink()
    with open(cache.entry_path(second) / "test.parquet", "ab") as fh:
        fh.write(b"x")
    hashed = counting_hashes(monkeypatch)
    assert cache.problems(first) == ["table train: file missing"]
    assert cache.problems(second) == ["table test: content hash mismatch"]
    assert hashed == []


def test_a_cached_build_of_a_recipe_without_levels_reads_no_manifest_for_warnings(write_recipe, data_csv, cache_dir, monkeypatch):
    from synthforge import api

    graph, cache = built(write_recipe(MATRIX), cache_dir)
    monkeypatch.setattr(Cache, "get", lambda self, key: pytest.fail("selection_warnings read an entry"))
    assert api.selection_warnings(graph, cache) == []


def test_a_remote_is_asked_one_listing_per_shard_in_parallel_not_one_question_per_object(tmp_path, monkeypatch):
    import synthforge.remote as remote_module
    from synthforge.keys import key_of

    remote = remote_module.Remote(str(tmp_path / "remote"), progress=False)
    assert remote._connection is None  # nothing imported or contacted until a question is asked
    names = sorted(key_of(i) for i in range(400))
    path_of = remote.object_path
    for name in names[:300]:
        Path(path_of(name)).parent.mkdir(parents=True, exist_ok=True)
        Path(path_of(name)).write_text("x")
    asked = {"ls": 0, "exists": 0, "find": 0}
    for method in asked:
        real = getattr(remote.fs, method)
        monkeypatch.setattr(remote.fs, method, lambda *a, _real=real, _m=method, **k: asked.__setitem__(_m, asked[_m] + 1) or _real(*a, **k))
    wanted = [n for n in names if n[:2] in ("0a", "1b", "2c", "ff")] + names[:3]
    shards = {n[:2] for n in wanted}
    monkeypatch.setattr(remote_module, "LIST_PAGE", 2)  # a big remote: listing it all would take many pages
    assert remote._present(f"{remote.root}/objects", wanted, path_of) == set(wanted) & set(names[:300])
    assert asked == {"ls": len(shards), "exists": 0, "find": 0}
    asked.update(ls=0)
    monkeypatch.setattr(remote_module, "LIST_PAGE", 1000)  # a small remote: one listing of the folder
    assert remote._present(f"{remote.root}/objects", wanted, path_of) == set(wanted) & set(names[:300])
    assert asked["find"] == 1 and asked["exists"] == 0  # (a local folder's find walks it with ls)


def test_a_fully_cached_build_with_a_remote_never_connects(write_recipe, data_csv, cache_dir, tmp_path):
    from synthforge.api import OpenRecipe
    from synthforge.remote import Remote

    graph, cache = built(write_recipe(MATRIX), cache_dir)
    remote = Remote(str(tmp_path / "remote"), progress=False)
    OpenRecipe(graph, cache).build(remote=remote, log=lambda m: None)
    assert remote._connection is None


def test_a_sequential_build_caps_its_threads_as_a_worker_does_and_keeps_the_users_settings(
        write_recipe, data_csv, cache_dir, monkeypatch):
    from synthforge.backends.devices import THREAD_LIBRARY_VARIABLES, THREADS_VARIABLE

    for name in (THREADS_VARIABLE, *THREAD_LIBRARY_VARIABLES, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice: kept, and the step's budget
    seen = {}
    real = Cache.writing

    def writing(self, key):
        seen.update({name: os.environ.get(name) for name in (THREADS_VARIABLE, "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")})
        return real(self, key)

    monkeypatch.setattr(Cache, "writing", writing)
    built(write_recipe(BASIC), cache_dir)
    assert seen == {THREADS_VARIABLE: "1", "OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    from synthforge.backends.devices import limit_threads

    limit_threads(2)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_no_op_build_leaves_the_lockfile_untouched_and_a_changed_one_is_rewritten(write_recipe, data_csv, cache_dir):
    recipe = write_recipe(MATRIX)
    graph, cache = built(recipe, cache_dir)
    lock = recipe.with_suffix(".lock")
    before = lock.stat()
    built(recipe, cache_dir)
    assert (lock.stat().st_ino, lock.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    text = lock.read_text()
    lock.write_text(text.replace(graph.keys["k=4"]["split"], graph.keys["k=6"]["split"], 1))
    built(recipe, cache_dir)
    assert lock.read_text() == text


def test_an_edited_manifest_is_found_by_its_checksum(write_recipe, data_csv, cache_dir):
    import json

    graph, cache = built(write_recipe(MATRIX), cache_dir)
    key = graph.keys["k=8"]["split"]
    path = cache.entry_path(key) / "manifest.json"
    data = json.loads(path.read_text())
    data["tables"]["train"]["rows"] += 1
    path.write_text(json.dumps(data))
    assert cache.problems(key) == ["manifest checksum mismatch (edited or damaged)"]


def test_a_no_op_plan_reads_no_manifest_once_the_entry_states_are_remembered(write_recipe, data_csv, cache_dir, monkeypatch):
    graph, cache = built(write_recipe(MATRIX), cache_dir)
    first = {item.node.key: item.state for item in plan(graph, cache)}  # checks each entry, remembers the states
    monkeypatch.setattr(cache_module, "read_manifest", lambda *a, **k: pytest.fail("a manifest was read"))
    monkeypatch.setattr(Cache, "problems", lambda self, key: pytest.fail("an entry was checked one by one"))
    items = plan(graph, cache)
    assert [item.action for item in items] == ["cached"] * 4
    assert {item.node.key: item.state for item in items} == first
    monkeypatch.undo()
    for key, state in first.items():
        manifest = cache.get(key).manifest
        assert (state.problems, state.rows, state.content) == ([], manifest.rows, manifest.content_hash)


@pytest.mark.parametrize("damage", ["manifest", "table"])
def test_remembered_entry_states_still_catch_any_write_to_a_manifest_or_table(damage, write_recipe, data_csv, cache_dir):
    graph, cache = built(write_recipe(MATRIX), cache_dir)
    plan(graph, cache)  # the states are remembered
    key = graph.keys["k=6"]["split"]
    path = cache.entry_path(key) / ("manifest.json" if damage == "manifest" else "train.parquet")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, and the mtime put back: only the ctime and the bytes tell
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    items = {item.node.key: item for item in plan(graph, cache)}
    assert items[key].action == "run" and "damaged" in items[key].reasons[0]
    assert [i.action for k, i in items.items() if k != key] == ["cached"] * 3


def test_a_gone_entry_is_not_cached_whatever_its_remembered_state(write_recipe, data_csv, cache_dir):
    import shutil

    graph, cache = built(write_recipe(MATRIX), cache_dir)
    plan(graph, cache)
    key = graph.keys["k=8"]["split"]
    shutil.rmtree(cache.entry_path(key))
    items = {item.node.key: item for item in plan(graph, cache)}
    assert items[key].action == "run" and items[key].state.problems is None


def test_every_node_key_is_key_of_its_components_for_every_step_kind_of_the_study():
    from synthforge.keys import key_of

    graph = build_graph(load_recipe(ROOT / "recipes" / "diversity_study.yaml"))
    assert len(graph.nodes) == 992 and len({node.kind for node in graph.nodes.values()}) == 7
    assert all(key_of(node.components) == key for key, node in graph.nodes.items())


def test_a_no_op_build_does_not_parse_the_lockfile_once_its_content_is_remembered(write_recipe, data_csv, cache_dir, monkeypatch):
    from synthforge import lockfile

    recipe = write_recipe(MATRIX)
    built(recipe, cache_dir)
    built(recipe, cache_dir)  # parses the lockfile once and remembers what it holds
    lock = recipe.with_suffix(".lock")
    text, before = lock.read_text(), lock.stat()
    monkeypatch.setattr(lockfile, "_parsed", lambda path: pytest.fail("the lockfile was parsed"))
    built(recipe, cache_dir)
    assert lock.read_text() == text and lock.stat().st_mtime_ns == before.st_mtime_ns


def test_an_edit_to_a_remembered_lockfile_is_rewritten_even_with_its_size_and_mtime_kept(write_recipe, data_csv, cache_dir):
    recipe = write_recipe(MATRIX)
    graph, _ = built(recipe, cache_dir)
    built(recipe, cache_dir)  # the lockfile's content is remembered
    lock = recipe.with_suffix(".lock")
    text, before = lock.read_text(), lock.stat()
    first, second = graph.keys["k=4"]["split"], graph.keys["k=6"]["split"]
    lock.write_text(text.replace(first, second, 1))  # same size
    os.utime(lock, ns=(before.st_atime_ns, before.st_mtime_ns))
    built(recipe, cache_dir)
    assert lock.read_text() == text


def test_an_input_file_rewritten_with_its_size_and_mtime_kept_is_hashed_again_in_the_same_process(tmp_path):
    from synthforge.keys import file_hash

    path = tmp_path / "rows.csv"
    path.write_text("text,label\na,x\n")
    first, stat = file_hash(path), path.stat()
    path.write_text("text,label\nb,x\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_hash(path) != first


def test_planning_pauses_the_cyclic_collector_and_restores_its_state(write_recipe, data_csv, cache_dir, monkeypatch):
    import gc

    graph, cache = built(write_recipe(MATRIX), cache_dir)
    seen = []
    real = Cache.entry_states
    monkeypatch.setattr(Cache, "entry_states", lambda self, *a: seen.append(gc.isenabled()) or real(self, *a))
    plan(graph, cache)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        plan(graph, cache)
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()


def test_selection_warnings_are_remembered_for_the_entries_and_contents_they_were_read_from(write_recipe, data_csv, cache_dir,
                                                                                            monkeypatch):
    from synthforge import api
    from synthforge.steps.split import SplitStep

    graph, cache = built(write_recipe(MATRIX), cache_dir)
    monkeypatch.setattr(SplitStep, "reports_selection", True)  # split's entries stand in for a selecting step's
    reads: list[str] = []
    real_get = Cache.get
    monkeypatch.setattr(Cache, "get", lambda self, key: reads.append(key) or real_get(self, key))
    contents = {item.node.key: item.state.content for item in plan(graph, cache)}
    splits = {key for key, node in graph.nodes.items() if node.step == "split"}
    assert api.selection_warnings(graph, cache, "k", contents) == [] and set(reads) == splits
    reads.clear()
    assert api.selection_warnings(graph, cache, "k", contents) == [] and reads == []  # remembered
    changed = {**contents, next(iter(splits)): "another content hash"}  # a rebuild that made other bytes
    assert api.selection_warnings(graph, cache, "k", changed) == [] and set(reads) == splits
    reads.clear()
    missing = {k: v for k, v in contents.items() if k not in splits}  # not built: nothing is remembered
    api.selection_warnings(graph, cache, "k", missing)
    api.selection_warnings(graph, cache, "k", missing)
    assert len(reads) == 2 * len(splits)
