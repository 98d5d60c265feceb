"""cache.py directly: how entries are written, installed and replaced, and what counts as damaged."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import polars as pl
import pytest

from synthforge.cache import Cache, DamagedEntry, atomic_write, read_manifest, write_entry_files
from synthforge.keys import key_of

COMPONENTS = {"kind": "fixture", "n": 1}
KEY = key_of(COMPONENTS)


def write_rows(folder: Path, ids: list[str], components: dict = COMPONENTS):
    """An entry of `components`' key holding one row per id."""
    frame = pl.DataFrame({"id": ids, "text": [f"text {i}" for i in ids]})
    return write_entry_files(folder, {"data": frame}, key=key_of(components), step="s", kind="fixture",
                             components=components, timings={"started": 0.0, "seconds": 0.0})


def ids_in(cache: Cache, key: str = KEY) -> list[str]:
    return cache.get(key).read_table()["id"].to_list()


def test_writing_installs_a_sound_entry_and_leaves_no_scratch(tmp_path):
    cache = Cache(tmp_path / "cache")
    assert cache.problems(KEY) is None
    with cache.writing(KEY) as work:
        write_rows(work, ["a", "b"])
    assert cache.problems(KEY) == [] and ids_in(cache) == ["a", "b"]
    assert list((cache.root / "tmp").iterdir()) == []


def test_a_failed_block_installs_nothing(tmp_path):
    cache = Cache(tmp_path / "cache")
    with pytest.raises(RuntimeError), cache.writing(KEY) as work:
        write_rows(work, ["a"])
        raise RuntimeError("the step failed")
    assert cache.get(KEY) is None and list((cache.root / "tmp").iterdir()) == []


def test_install_keeps_a_sound_entry_unless_replace(tmp_path):
    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["old"])
    with cache.staging(KEY) as newer:
        write_rows(newer, ["new"])
        assert cache.install(KEY, newer) is False and ids_in(cache) == ["old"]
        assert cache.install(KEY, newer, replace=True) is True and ids_in(cache) == ["new"]
    assert not newer.exists() and [p.name for p in (cache.root / "tmp").iterdir()] == []


def test_install_replaces_a_damaged_entry_without_being_asked(tmp_path):
    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["old"])
    (cache.entry_path(KEY) / "data.parquet").write_bytes(b"garbage")
    assert cache.problems(KEY) == ["table data: content hash mismatch"]
    with cache.staging(KEY) as fresh:
        write_rows(fresh, ["fresh"])
        assert cache.install(KEY, fresh) is True and cache.problems(KEY) == [] and ids_in(cache) == ["fresh"]


def test_install_refuses_a_folder_for_another_key(tmp_path):
    cache = Cache(tmp_path / "cache")
    with cache.staging(KEY) as folder, pytest.raises(DamagedEntry, match="manifest is for key"):
        write_rows(folder, ["a"], components={"kind": "fixture", "n": 2})
        cache.install(KEY, folder)
    assert cache.get(KEY) is None


def test_concurrent_writers_of_one_key_under_its_lock_build_it_once(tmp_path):
    """The builder's pattern (run_node): lock the key, write only if it is still missing."""
    cache = Cache(tmp_path / "cache")
    barrier, built = threading.Barrier(4), []

    def writer(name: str) -> None:
        barrier.wait()
        with cache.flock(KEY):
            if cache.problems(KEY) == []:
                return
            with cache.writing(KEY) as work:
                write_rows(work, [name])
            built.append(name)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and ids_in(cache) == built
    assert cache.problems(KEY) == [] and list((cache.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("damage, problem", [
    (lambda m: m.unlink(), "no manifest.json"),
    (lambda m: m.write_text(m.read_text()[:40]), "unreadable manifest (JSONDecodeError)"),
    (lambda m: m.write_text(m.read_text().replace('"n": 1', '"n": 2')), "manifest checksum mismatch (edited or damaged)"),
    (lambda m: m.write_text(json.dumps({**json.loads(m.read_text()), "format": 2})),
     "manifest format 2, expected 3 (written by another synthforge version)"),
    (lambda m: m.write_text(json.dumps({k: v for k, v in json.loads(m.read_text()).items() if k != "tables"})),
     "invalid manifest: tables: Field required"),
])
def test_a_damaged_manifest_is_named_and_never_served(tmp_path, damage, problem):
    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["a"])
    damage(cache.entry_path(KEY) / "manifest.json")
    assert cache.problems(KEY) == [problem]
    with pytest.raises(DamagedEntry, match="is damaged"):
        cache.get(KEY).read_table()


def test_a_leased_entry_is_not_removed(tmp_path):
    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["a"])
    entry = cache.get(KEY)
    with cache.lease([KEY]):
        assert cache.remove(entry) is False and cache.get(KEY) is not None
    assert cache.remove(entry) is True and cache.get(KEY) is None


def test_a_nested_lease_keeps_the_outer_one_until_the_outer_block_ends(tmp_path):
    import pickle

    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["a"])
    entry = cache.get(KEY)
    with cache.lease([KEY]):
        with cache.lease([KEY, key_of("other")]):
            assert pickle.loads(pickle.dumps(cache))._leased == set()  # a copy elsewhere holds no lease
        assert cache.remove(entry) is False  # the inner block's end released nothing of the outer lease
    assert cache.remove(entry) is True


def test_sweep_removes_scratch_of_dead_writers_only(tmp_path):
    cache = Cache(tmp_path / "cache")
    dead_key, live_key = key_of("dead"), key_of("live")
    with cache.staging(dead_key, resumable="pull") as dead:  # kept after its writer is gone, as a killed pull leaves it
        pass
    with cache.staging(live_key) as live, cache.scratch_file("responses", ".sqlite") as snapshot:
        snapshot.write_bytes(b"in flight")
        assert cache.sweep_tmp() == 1
        assert live.exists() and snapshot.exists()
    assert not dead.exists()


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "recipe.lock"
    atomic_write(path, "one")
    atomic_write(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["recipe.lock"]


def test_a_manifest_read_twice_is_checked_against_its_current_bytes(tmp_path):
    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["a"])
    manifest_path = cache.entry_path(KEY) / "manifest.json"
    assert read_manifest(cache.entry_path(KEY), KEY).key == KEY
    # a longer value: the size differs even if the clock has not ticked since the first read
    manifest_path.write_text(manifest_path.read_text().replace('"n": 1', '"n": 10'))
    with pytest.raises(DamagedEntry, match="checksum mismatch"):
        read_manifest(cache.entry_path(KEY), KEY)


def test_an_entry_holds_exactly_its_manifest_files(tmp_path):
    """What a step leaves beside its tables and artifacts is dropped; a folder from elsewhere holding more is refused."""
    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["a"])
        (work / "scratch.bin").write_bytes(b"left behind")
        (work / "notes").mkdir()
        (work / "notes" / ".hidden").write_text("x")
    assert sorted(p.name for p in cache.entry_path(KEY).rglob("*") if p.is_file()) == ["data.parquet", "manifest.json"]
    assert cache.verify(cache.get(KEY)) == []
    other = key_of({"kind": "fixture", "n": 3})
    with cache.staging(other) as folder:
        write_rows(folder, ["b"], components={"kind": "fixture", "n": 3})
        (folder / ".data.parquet").write_bytes((folder / "data.parquet").read_bytes())
        with pytest.raises(DamagedEntry, match="not listed in the manifest"):
            cache.install(other, folder)
    assert cache.get(other) is None


def test_derived_records_read_back_whole_and_damaged_ones_do_not(tmp_path):
    """A record is checked against its checksum at C speed when it is its own canonical form, and through
    `key_of` otherwise (a whole-number float is written as such but keyed as an int); any edit is refused."""
    cache = Cache(tmp_path / "cache")
    plain, floats = key_of("plain record"), key_of("record with floats")
    cache.write_derived(plain, {"stamps": {"data.parquet": [1, 2, 3]}, "name": "é"}, [KEY])
    cache.write_derived(floats, {"seconds": 2.0, "share": 0.5}, [KEY])
    assert cache.read_derived(plain)["stamps"] == {"data.parquet": [1, 2, 3]}
    assert cache.read_derived(floats)["seconds"] == 2.0
    for key in (plain, floats):
        path = cache.derived_path(key)
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "derived_from": []}))
        assert cache.read_derived(key) is None


def test_a_manifest_remembered_sound_skips_its_json_check_until_its_bytes_change(tmp_path, monkeypatch):
    import xxhash

    from synthforge import cache as cache_module

    cache = Cache(tmp_path / "cache")
    with cache.writing(KEY) as work:
        write_rows(work, ["a"])
    manifest_path = cache.entry_path(KEY) / "manifest.json"
    remembered = cache.read_derived(cache_module._stamps_key(KEY))
    assert remembered["manifest"] == xxhash.xxh3_128_hexdigest(manifest_path.read_bytes())
    cache_module._checked.clear()
    with monkeypatch.context() as patched:  # the remembered bytes: no JSON checksum computed
        patched.setattr(cache_module, "_checksum_of", lambda data: pytest.fail("checksum recomputed"))
        assert cache.problems(KEY) == []
    manifest_path.write_text(manifest_path.read_text().replace('"n": 1', '"n": 10'))
    assert cache.problems(KEY) == ["manifest checksum mismatch (edited or damaged)"]
