"""lockfile.py directly: reading and writing RECIPE.lock, and the reasons two sets of key components differ."""

from __future__ import annotations

import json

import pytest

from synthforge.errors import UserError
from synthforge.keys import key_of
from synthforge.lockfile import Lock, describe_changes, dict_changes, find_locks, read_lock, referenced_keys, write_lock

K1, K2, K3, K9 = (key_of(name) for name in ("k1", "k2", "k3", "k9"))  # keys as build writes them
LOCK = Lock("study", {"a": {"load": K1, "split": K2}, "b": {"load": K1, "split": K3}},
            {K1: {"step": "load", "seed": 1}, K2: {"step": "split", "seed": 1}, K3: {"step": "split", "seed": 2}})


def test_a_lock_round_trips_as_stable_sorted_json(tmp_path):
    path = tmp_path / "study.lock"
    write_lock(path, LOCK)
    assert read_lock(path) == LOCK
    data = json.loads(path.read_text())
    assert data["synthforge_lock"] == 1 and list(data) == sorted(data)
    assert path.read_text() == LOCK.to_json() and path.read_text().endswith("\n")


def test_what_is_not_a_lockfile_reads_as_none(tmp_path):
    assert read_lock(tmp_path / "missing.lock") is None
    (tmp_path / "bad.lock").write_text("{not json")
    (tmp_path / "other.lock").write_text('{"lockfile_version": 3}')  # e.g. a package manager's lock
    (tmp_path / "list.lock").write_text("[1, 2]")
    assert [read_lock(tmp_path / n) for n in ("bad.lock", "other.lock", "list.lock")] == [None, None, None]


@pytest.mark.parametrize("bad", ["../../victim", K1.upper(), K1[:31], K1 + "0", "/etc/passwd", K1[:30] + "/.", 7])
def test_a_lockfile_whose_key_is_not_a_key_is_a_located_error(tmp_path, bad):
    path = tmp_path / "evil.lock"
    write_lock(path, Lock("study", {"a": {"load": K1, "split": bad}}, {K1: {}}))
    with pytest.raises(UserError) as caught:
        read_lock(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if '"split"' in text)
    assert str(caught.value).startswith(f"{path}:{line}: variants.a.split: ") and "not a cache key" in str(caught.value)
    write_lock(path, Lock("study", {}, {bad if isinstance(bad, str) else "7": {}}))
    with pytest.raises(UserError, match="nodes: .* is not a cache key"):
        referenced_keys([path])


def test_components_for_a_step_fall_back_to_another_variant():
    assert LOCK.key_for("b", "split") == K3
    assert LOCK.components_for("b", "split") == {"step": "split", "seed": 2}
    assert LOCK.components_for("new-variant", "split") == {"step": "split", "seed": 1}  # the first variant's
    assert LOCK.components_for("a", "train") is None


def test_gc_keeps_what_any_lockfile_references(tmp_path):
    write_lock(tmp_path / "one" / "study.lock", LOCK)
    write_lock(tmp_path / "two.lock", Lock("x", {"d": {"s": K9}}, {K9: {}}))
    (tmp_path / "yarn.lock").write_text("# not ours\n")
    found = find_locks([tmp_path])
    assert sorted(p.name for p in found) == ["study.lock", "two.lock"]
    assert referenced_keys(found) == {K1, K2, K3, K9}


BEFORE = {"kind": "split", "version": "1", "params": {"test": 60, "labels": {"a": 1}},
          "inputs": {"input": "k1:data"}, "files": {}, "identity": {}, "seed": 7}


def test_describe_changes_names_each_kind_of_change_most_specific_first():
    after = {**BEFORE, "version": "2", "params": {"test": 50, "labels": {"a": 1, "b": 2}},
             "inputs": {"input": "k9:data"}, "files": {"path": "h2"}, "identity": {"model": "m2"}, "seed": 8}
    assert describe_changes(BEFORE, after) == [
        "the code of 'split' changed (version 1 to 2)",
        "field labels.b was added (2)",
        "field test changed from 60 to 50",
        "its input changed",
        "the content of the file in field path changed",
        "model was added (m2)",
        "the recipe seed changed from 7 to 8",
    ]


def test_a_changed_kind_is_the_only_reason_and_equal_components_have_none():
    assert describe_changes(BEFORE, {**BEFORE, "kind": "load", "seed": 9}) == ["its kind changed from split to load"]
    assert describe_changes(BEFORE, dict(BEFORE)) == []


def test_several_tables_of_one_input_are_one_reason():
    before = {**BEFORE, "inputs": {"inputs": {"real": "k1:train", "synthetic": "k2:data"}}}
    after = {**BEFORE, "inputs": {"inputs": {"real": "k3:train", "synthetic": "k4:data"}}}
    assert describe_changes(before, after) == ["its input 'inputs' changed"]


def test_reasons_name_no_placeholder_values_or_file_labels():
    before = {**BEFORE, "files": {"read.0": "h1"}, "identity": {"seed": None, "gone": "x"}}
    after = {**BEFORE, "files": {"read.0": "h2"}, "identity": {"seed": 3}}
    reasons = describe_changes(before, after)
    assert reasons == ["a file the step reads (a model's or data file not named in the recipe) changed content",
                       "gone was removed (was x)", "seed changed from none to 3"]
    assert not any("(unset)" in r or "None" in r or "read.0" in r for r in reasons)


def test_dict_changes_walks_nested_dicts_and_shortens_long_values():
    assert dict_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": None}}) == [
        ("a.c", "2", "3"), ("a.d", "(unset)", "None")]
    assert dict_changes({"a": 1}, {"a": [1]}) == [("a", "1", "[1]")]
    (path, old, new), = dict_changes({"t": "x" * 100}, {"t": "y"})
    assert path == "t" and old == "x" * 57 + "..." and len(old) == 60 and new == "y"
    assert dict_changes({1: "a"}, {1: "a"}) == []


def test_a_narrowed_build_merges_into_the_lockfile_and_gc_keeps_what_the_full_build_wrote(
        cli, write_recipe, data_csv, cache_dir, tmp_path):
    import synthforge as sf
    from tests.conftest import BASIC

    recipe = write_recipe(BASIC + "matrix:\n  k: [5, 10, 20]\n")
    lock_path = recipe.with_suffix(".lock")
    assert cli("build", recipe).exit_code == 0
    full = json.loads(lock_path.read_text())
    assert len(full["variants"]) == 3 and len(full["nodes"]) == 4  # one load, three splits
    for narrowing in (("--set", "k=5"), ("--only", "rows"), ("--set", "k=10", "--only", "split"), ("--set", "seed=8")):
        assert cli("build", recipe, *narrowing).exit_code == 0
        after = json.loads(lock_path.read_text())
        assert set(full["nodes"]) <= set(after["nodes"]) and set(after["variants"]) == set(full["variants"]), narrowing
        dry = cli("cache", "gc", tmp_path, "--dry-run").output
        assert "would remove 0 entries" in dry, (narrowing, dry)
    reseeded = json.loads(lock_path.read_text())
    assert len(reseeded["nodes"]) > 4 and reseeded["variants"] != full["variants"]  # seed=8's keys are the last build's
    sf.open(recipe, set={"k": 20}, cache_dir=cache_dir).build(progress=False)
    assert set(json.loads(lock_path.read_text())["nodes"]) == set(reseeded["nodes"]) | set(full["nodes"])

    assert cli("build", recipe).exit_code == 0  # a full build writes exactly the recipe's nodes again
    assert json.loads(lock_path.read_text())["nodes"].keys() == full["nodes"].keys()
    dry = cli("cache", "gc", tmp_path, "--dry-run").output.splitlines()
    doomed = set(reseeded["nodes"]) - set(full["nodes"])
    assert dry[0].split() == ["step", "variant", "key", "MB"] and f"would remove {len(doomed)} entries" in dry[-1]
    listed = {line.split()[-2]: line.split()[0] for line in dry[2:-1]}
    assert listed == {key: reseeded["nodes"][key]["step"] for key in doomed}
    assert all(("k=" in line) or line.split()[0] == "rows" for line in dry[2:-1])


def test_a_field_that_is_also_identity_is_one_reason_and_names_stay_lowercase():
    from synthforge.planning import as_sentence

    before = {**BEFORE, "params": {"backend": {"base_url": "http://a"}}, "identity": {"backend": {"base_url": "http://a"}}}
    after = {**BEFORE, "params": {"backend": {"base_url": "http://b"}}, "identity": {"backend": {"base_url": "http://b"}}}
    assert describe_changes(before, after) == ["field backend.base_url changed from http://a to http://b"]
    assert as_sentence(["real_emb will rebuild"]) == "real_emb will rebuild."
    assert as_sentence(["backend.prefix changed from a to b"]) == "backend.prefix changed from a to b."
    assert as_sentence(["the step is new"]) == "The step is new."
