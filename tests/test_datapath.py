"""The vectorized data path gives the same answers as the plain per-row code it replaced."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import xxhash

from synthforge import metrics
from synthforge.cache import Cache, read_table
from synthforge.steps.rows import _hex64, id_order, label_codes, rank_within_groups, stable_ids
from synthforge.steps.split import SplitStep, _ascending
from tests.conftest import BASIC
from tests.helpers import make_ctx, write_entry


def per_row_ids(texts: list[str], labels: list[str], prefix: str = "") -> list[str]:
    """The per-row loop stable_ids replaced (ids must not change)."""
    seen: dict[str, int] = {}
    ids = []
    for text, label in zip(texts, labels):
        base = prefix + xxhash.xxh3_64_hexdigest(f"{label}\x1f{text}".encode())
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.append(base if count == 0 else f"{base}~{count}")
    return ids


def test_stable_ids_match_the_per_row_hash():
    rng = np.random.default_rng(0)
    texts = [f"t{v} é\x1f" if v % 7 else "" for v in rng.integers(0, 50, size=2000)]
    labels = [f"l{v}" for v in rng.integers(0, 3, size=2000)]
    assert stable_ids(texts, labels).to_list() == per_row_ids(texts, labels)
    assert stable_ids(pl.Series(texts), pl.Series(labels), prefix="g-").to_list() == per_row_ids(texts, labels, "g-")
    assert stable_ids([], []).to_list() == []


def test_hex64_is_xxhash_hexdigest_at_the_edges():
    values = np.array([0, 1, 0xFF, 1 << 63, (1 << 64) - 1, 0x0123456789ABCDEF], dtype=np.uint64)
    assert _hex64(values).to_list() == [f"{int(v):016x}" for v in values]
    assert _hex64(np.zeros(0, dtype=np.uint64)).to_list() == []


def test_split_parts_in_ascending_order_without_sorting_each():
    pool = np.random.default_rng(1).permutation(1000)
    parts = {"train": pool[:600], "test": pool[600:700], "validation": pool[700:700]}  # 300 positions in no part
    assert {name: rows.tolist() for name, rows in _ascending(parts, 1000).items()} == {
        name: np.sort(rows).tolist() for name, rows in parts.items()}


def test_rank_within_groups():
    assert rank_within_groups(np.array([3, 1, 3, 3, 1, 2])).tolist() == [0, 0, 1, 2, 1, 0]
    assert rank_within_groups(np.array([], dtype=np.int64)).tolist() == []


@pytest.mark.parametrize("ids", [
    ["0123456789abcdef~2", "0123456789abcdef~10", "0123456789abcdef", "0123456789abcdee", "0123456789abcdef~2"],
    ["b", "a", "ab", "a~1", "0123456789abcdef", "0123456789ABCDEF", "é", "", "a"],  # not all hex: the string sort
    [],
])
def test_id_order_is_the_string_order_with_ties_in_row_order(ids):
    expected = sorted(range(len(ids)), key=lambda i: (ids[i].encode(), i))
    assert id_order(pl.Series(ids, dtype=pl.String)).tolist() == expected


def test_id_order_of_stable_ids_with_repeats():
    texts = [f"t{v}" for v in np.random.default_rng(2).integers(0, 300, size=3000)]
    ids = stable_ids(texts, ["x"] * len(texts)).to_list()
    assert id_order(pl.Series(ids)).tolist() == sorted(range(len(ids)), key=lambda i: (ids[i], i))


def test_label_codes_are_narrow_and_sorted():
    names, codes = label_codes(pl.Series(["b", "a", "c", "a"]))
    assert (names, codes.tolist(), codes.dtype) == (["a", "b", "c"], [1, 0, 2, 0], np.uint8)
    names, codes = label_codes(pl.Series([f"l{i:04}" for i in range(300)]))
    assert codes.dtype == np.uint16 and codes.tolist() == list(range(300))


def per_label_take(pool, count, labels):
    """The per-label loop of split's stratified draw before vectorizing (label strings, np.unique)."""
    names, sizes = np.unique(labels[pool], return_counts=True)
    exact = sizes * count / sizes.sum()
    quotas = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - quotas), kind="stable")[: count - quotas.sum()]:
        quotas[index] += 1
    chosen = np.concatenate([pool[labels[pool] == name][:quota] for name, quota in zip(names, quotas)])
    return chosen, pool[~np.isin(pool, chosen)]


@pytest.mark.parametrize("stratify", [True, False])
def test_split_matches_the_per_label_loop_and_stores_rows_once(tmp_path, stratify):
    rng = np.random.default_rng(1)
    n = 997
    labels = np.array(["b", "a", "c", "d"])[np.minimum(rng.geometric(0.4, size=n) - 1, 3)]
    frame = pl.DataFrame({"id": [f"{i:04d}" for i in range(n)], "text": [f"t{i}" for i in range(n)], "label": labels})
    step, ctx = make_ctx(SplitStep, tmp_path, {"input": write_entry(tmp_path, "rows", frame)}, seed=3,
                         test=0.2, validation=55, stratify=stratify)
    result = step.run(ctx)
    assert result.data is None and list(result.tables) == ["train", "test", "validation"]
    # the old algorithm, on the same permutation
    pool = np.random.default_rng([3, 0x5B117]).permutation(n)
    sorted_labels = frame.sort("id")["label"].to_numpy()
    if stratify:
        test, pool = per_label_take(pool, 199, sorted_labels)
        validation, train = per_label_take(pool, 55, sorted_labels)
    else:
        test, validation, train = pool[:199], pool[199:254], pool[254:]
    ids = frame.sort("id")["id"].to_numpy()
    for name, rows in (("train", train), ("test", test), ("validation", validation)):
        assert result.tables[name]["id"].to_list() == ids[np.sort(rows)].tolist()
        counts = result.tables[name]["label"].value_counts().sort("label")
        assert result.meta["label_counts"][name] == dict(counts.iter_rows())


def test_split_entry_has_no_duplicated_main_table(cli, write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    entry = next(e for e in Cache(cache_dir).entries() if e.manifest.kind == "split")
    manifest = entry.manifest
    assert manifest.tables["data"].union == ["train", "test", "validation"] and manifest.tables["data"].bytes == 0
    assert not (entry.path / "data.parquet").exists()
    whole = read_table(entry.path)
    parts = [read_table(entry.path, t) for t in ("train", "test", "validation")]
    assert whole.equals(pl.concat(parts)) and whole.height == manifest.rows
    assert entry.scan().head(3).collect().equals(whole.head(3))
    assert f"table data: {whole.height} rows" in cli("show", recipe, "split").output
    cli("export", recipe, "split", "--to", tmp_path / "all.jsonl")
    exported = pl.read_ndjson(tmp_path / "all.jsonl")
    assert exported["id"].to_list() == whole["id"].to_list()
    assert "all sound" in cli("cache", "verify").output


def test_a_damaged_part_of_a_union_is_never_read(cli, write_recipe, data_csv, cache_dir):
    from synthforge.cache import DamagedEntry

    cli("build", write_recipe(BASIC))
    entry = next(e for e in Cache(cache_dir).entries() if e.manifest.kind == "split")
    part = entry.path / "test.parquet"
    part.chmod(0o644)
    part.write_bytes(part.read_bytes()[:-9] + b"012345678")
    with pytest.raises(DamagedEntry, match="table test: content hash mismatch"):
        read_table(entry.path)
    with pytest.raises(DamagedEntry):
        entry.scan("test")
    assert any("test" in problem for problem in Cache(cache_dir).verify(entry))


def test_show_reads_head_and_labels_of_a_table(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    out = cli("show", recipe, "split", "--table", "test").output
    assert "table test: 60 rows" in out and "labels: " in out and "=20" in out


def per_text_distinct(texts: list[str], n: int) -> float:
    seen, count = set(), 0
    for text in texts:
        tokens = str(text).lower().split()
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        seen.update(grams)
        count += len(grams)
    return len(seen) / count if count else 0.0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_distinct_n_matches_the_per_text_loop(n):
    rng = np.random.default_rng(2)
    words = np.array(["The", "cat", "sat", "on", "a", "mat", "DOG"])
    texts = ["  ".join(rng.choice(words, size=rng.integers(0, 6))) + ("\tend" if i % 3 else "") for i in range(300)]
    assert metrics.distinct_n(texts, n) == pytest.approx(per_text_distinct(texts, n))
    assert metrics.distinct_n(pl.Series(texts), n) == pytest.approx(per_text_distinct(texts, n))


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_dcscore_sample_estimate_is_within_its_standard_error(tau):
    x = unit_rows(3000, 8, seed=4)
    exact = metrics.dcscore_estimate(x, tau=tau)
    assert exact.method == "exact" and exact.standard_error == 0.0
    sampled = metrics.dcscore_estimate(x, tau=tau, exact_max_rows=1000, sample_rows=400, seed=5)
    assert sampled.method.startswith("sample of 400 rows") and sampled.standard_error > 0
    assert abs(sampled.value - exact.value) < 4 * sampled.standard_error
    assert metrics.dcscore_estimate(x, tau=tau, exact_max_rows=1000, sample_rows=400, seed=5) == sampled  # seeded


def test_dcscore_blocks_do_not_change_the_terms():
    x = unit_rows(300, 5, seed=6)
    rows = np.arange(300)
    assert np.allclose(metrics._dcscore_terms(x, rows, 0.5, chunk=7), metrics._dcscore_terms(x, rows, 0.5), rtol=1e-9)


def test_big_tables_record_their_metric_methods():
    methods = metrics.metric_methods(metrics.DCSCORE_EXACT_MAX_ROWS + 1, reference_rows=10)
    assert "sampled rows" in methods["dcscore"] and methods["mmd_rbf"].startswith(f"{metrics.MMD_MAX_ROWS} sampled")
    assert metrics.metric_methods(100)["dcscore"] == "exact" and "mmd_rbf" not in metrics.metric_methods(100)


def test_metrics_reuse_a_unit_matrix_without_copying():
    from synthforge.selection import as_unit_rows

    x = unit_rows(50, 4)
    assert as_unit_rows(x) is x
    assert as_unit_rows(x * 2) is not x and np.allclose(as_unit_rows(x * 2), x, atol=1e-6)


def test_select_meta_records_metric_methods(tmp_path):
    from synthforge.steps.select import SelectStep

    x = unit_rows(40, 6, seed=7)
    frame = pl.DataFrame({"id": [str(i) for i in range(40)], "text": [f"row {i}" for i in range(40)]}).with_columns(
        pl.Series("embedding", x, dtype=pl.Array(pl.Float32, 6)))
    step, ctx = make_ctx(SelectStep, tmp_path, {"input": write_entry(tmp_path, "emb", frame), "reference": None},
                         n=10, method="kcenter")
    meta = step.run(ctx).meta
    assert meta["metric_methods"]["dcscore"] == "exact" and "dcscore_se" not in meta["metrics"]
    json.dumps(meta)


def test_hash_file_maps_windows_to_the_one_shot_digest(tmp_path, monkeypatch):
    from synthforge import keys

    import mmap

    window = mmap.ALLOCATIONGRANULARITY
    monkeypatch.setattr(keys, "HASH_WINDOW", window)  # several windows and a short last one
    data = bytes(range(256)) * (window * 7 // 512)
    for size in (0, 1, window, window + 1, len(data)):
        path = tmp_path / f"f{size}"
        path.write_bytes(data[:size])
        assert keys.hash_file(path) == xxhash.xxh3_128_hexdigest(data[:size])


def test_blank_texts_are_exactly_those_strip_empties():
    from synthforge.steps.load import _usable_rows

    texts = [" \t\n", "", " a ", "\u00a0\u2003", "\u200b", "\ufeff", "\x1c\x85", None, "x"]
    frame = pl.DataFrame({"text": texts, "label": ["l"] * len(texts)})
    kept, dropped = _usable_rows(frame)
    stripped = pl.Series(texts).str.strip_chars().to_list()  # the expression it replaced (\x1c counts as text there)
    expected = [t for t, s in zip(texts, stripped) if s]
    assert kept["text"].to_list() == expected and dropped["blank_text"] == len(texts) - len(expected)


def test_streamed_exports_hold_the_table_and_its_provenance(cli, write_recipe, data_csv, cache_dir, tmp_path):
    import pyarrow.parquet as pq

    recipe = write_recipe(BASIC)
    assert cli("build", recipe).exit_code == 0
    table = read_table(next(e.path for e in Cache(cache_dir).entries() if e.manifest.step == "split"), "train")
    for fmt, read in (("parquet", pl.read_parquet), ("jsonl", pl.read_ndjson), ("csv", pl.read_csv)):
        out = cli("export", recipe, "split", "--table", "train", "--to", tmp_path / f"train.{fmt}")
        assert out.exit_code == 0 and f"wrote {table.height} rows" in out.output
        assert read(tmp_path / f"train.{fmt}").select(table.columns).equals(table), fmt
    facts = json.loads(pq.read_metadata(tmp_path / "train.parquet").metadata[b"synthforge"])
    assert facts["rows"] == table.height and facts["table"] == "train"
    assert facts["label_counts"] == dict(sorted(table["label"].value_counts().iter_rows()))


def test_input_file_hashes_are_remembered_in_the_cache_until_the_file_changes(write_recipe, data_csv, tmp_path, monkeypatch):
    import os

    from synthforge import api, keys

    recipe = write_recipe(BASIC)
    hashed = []
    real_hash = keys.hash_file
    monkeypatch.setattr(keys, "hash_file", lambda path: hashed.append(path) or real_hash(path))

    def key_in_a_new_process() -> str:
        keys._file_hashes.clear()  # the in-process memo: as if another process opened the recipe
        return api.open(recipe, cache_dir=tmp_path / "cache").graph.keys["default"]["rows"]

    first = key_in_a_new_process()
    assert key_in_a_new_process() == first and len(hashed) == 1  # the record answered
    stat = os.stat(data_csv)
    edited = data_csv.read_bytes().replace(b"a", b"b", 1)
    data_csv.write_bytes(edited)
    os.utime(data_csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, mtime put back: ctime still moves
    assert key_in_a_new_process() != first and len(hashed) == 2
    for record in (tmp_path / "cache" / "derived").rglob("*.json"):
        record.write_text(record.read_text().replace(real_hash(data_csv)[:8], "00000000"))  # a tampered record
    from synthforge.graph import build_graph
    from synthforge.recipe.resolve import load_recipe

    assert key_in_a_new_process() == build_graph(load_recipe(recipe)).keys["default"]["rows"] and len(hashed) == 3
