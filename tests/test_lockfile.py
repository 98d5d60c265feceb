"""lockfile.py directly: reading and writing RECIPE.lock, and the reasons two sets of key components differ."""

from __future__ import annotations

import json

from synthforge.lockfile import Lock, describe_changes, dict_changes, find_locks, read_lock, referenced_keys, write_lock

LOCK = Lock("study", {"a": {"load": "k1", "split": "k2"}, "b": {"load": "k1", "split": "k3"}},
            {"k1": {"step": "load", "seed": 1}, "k2": {"step": "split", "seed": 1}, "k3": {"step": "split", "seed": 2}})


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


def test_components_for_a_step_fall_back_to_another_variant():
    assert LOCK.key_for("b", "split") == "k3"
    assert LOCK.components_for("b", "split") == {"step": "split", "seed": 2}
    assert LOCK.components_for("new-variant", "split") == {"step": "split", "seed": 1}  # the first variant's
    assert LOCK.components_for("a", "train") is None


def test_gc_keeps_what_any_lockfile_references(tmp_path):
    write_lock(tmp_path / "one" / "study.lock", LOCK)
    write_lock(tmp_path / "two.lock", Lock("x", {"d": {"s": "k9"}}, {"k9": {}}))
    (tmp_path / "yarn.lock").write_text("# not ours\n")
    found = find_locks([tmp_path])
    assert sorted(p.name for p in found) == ["study.lock", "two.lock"]
    assert referenced_keys(found) == {"k1", "k2", "k3", "k9"}


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


def test_a_field_that_is_also_identity_is_one_reason_and_names_stay_lowercase():
    from synthforge.planning import as_sentence

    before = {**BEFORE, "params": {"backend": {"base_url": "http://a"}}, "identity": {"backend": {"base_url": "http://a"}}}
    after = {**BEFORE, "params": {"backend": {"base_url": "http://b"}}, "identity": {"backend": {"base_url": "http://b"}}}
    assert describe_changes(before, after) == ["field backend.base_url changed from http://a to http://b"]
    assert as_sentence(["real_emb will rebuild"]) == "real_emb will rebuild."
    assert as_sentence(["backend.prefix changed from a to b"]) == "backend.prefix changed from a to b."
    assert as_sentence(["the step is new"]) == "The step is new."
