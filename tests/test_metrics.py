"""Diversity and shift metrics against reference implementations and hand-made cases."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import scipy.linalg

from synthforge import metrics
from synthforge.cache import Cache
from synthforge.stats import entry_stats, format_stats
from synthforge.stepapi import InputTable
from tests.helpers import fixture_entry


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n, d", [(50, 8), (30, 64)])  # n > d uses the d x d Gram, n < d the n x n one
def test_vendi_matches_vendi_score_package(n, d):
    from vendi_score import vendi

    x = unit_rows(n, d)
    expected = vendi.score_K(x.astype(np.float64) @ x.T.astype(np.float64))
    assert metrics.vendi(x) == pytest.approx(expected, rel=1e-5)


def test_vendi_counts_distinct_items():
    basis = np.eye(5, dtype=np.float32)
    assert metrics.vendi(np.repeat(basis, 4, axis=0)) == pytest.approx(5.0, rel=1e-6)
    assert metrics.vendi(np.repeat(basis[:1], 20, axis=0)) == pytest.approx(1.0, rel=1e-6)


def naive_dcscore(x: np.ndarray, tau: float) -> float:
    k = x.astype(np.float64) @ x.T.astype(np.float64) / tau
    p = np.exp(k) / np.exp(k).sum(axis=1, keepdims=True)
    return float(np.trace(p))


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_dcscore_matches_formula_in_chunks(tau):
    x = unit_rows(37, 6, seed=1)
    assert metrics.dcscore(x, tau=tau, chunk=5) == pytest.approx(naive_dcscore(x, tau), rel=1e-6)


def test_mean_cosine_distance_closed_form_matches_pairs():
    x = unit_rows(40, 5, seed=2)
    sims = x @ x.T
    pairs = sims[~np.eye(len(x), dtype=bool)]
    assert metrics.mean_cosine_distance(x) == pytest.approx(float((1 - pairs).mean()), abs=1e-6)
    assert metrics.mean_cosine_distance(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-6)


def test_distinct_n_hand_cases():
    texts = ["the cat sat", "The cat ran"]
    assert metrics.distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice
    assert metrics.distinct_n(["a"], 2) == 0.0


def test_cluster_entropy_low_for_one_topic_high_for_many():
    rng = np.random.default_rng(3)
    centres = unit_rows(8, 16, seed=4)
    spread = centres[rng.integers(8, size=400)] + 0.05 * rng.standard_normal((400, 16))
    one_topic = centres[[0] * 400] + 0.05 * rng.standard_normal((400, 16))
    pool = np.concatenate([spread, one_topic])
    assert metrics.cluster_entropy(spread, k=8, basis=spread) > 0.9
    assert metrics.cluster_entropy(one_topic, k=8, basis=spread) < 0.1
    assert metrics.cluster_entropy(spread, k=8, basis=pool) > metrics.cluster_entropy(one_topic, k=8, basis=pool) + 0.3


def test_mmd_near_zero_for_same_distribution_and_grows_with_shift():
    x, y = unit_rows(300, 8, seed=5), unit_rows(300, 8, seed=6)
    shifted = y + np.array([1.5] + [0] * 7, dtype=np.float32)
    assert abs(metrics.mmd_rbf(x, y)) < 0.01
    assert metrics.mmd_rbf(x, shifted) > 0.1


def test_mmd_subsampling_is_seeded():
    x, y = unit_rows(500, 8, seed=7), unit_rows(500, 8, seed=8) + 0.3
    assert metrics.mmd_rbf(x, y, seed=1, max_rows=100) == metrics.mmd_rbf(x, y, seed=1, max_rows=100)
    assert metrics.mmd_rbf(x, y, seed=1, max_rows=100) != metrics.mmd_rbf(x, y, seed=2, max_rows=100)


def test_frechet_matches_scipy_sqrtm_and_is_zero_on_itself():
    x, y = unit_rows(200, 6, seed=9), unit_rows(150, 6, seed=10) + 0.2
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    x64, y64 = x.astype(np.float64), yu.astype(np.float64)
    sx, sy = np.cov(x64, rowvar=False), np.cov(y64, rowvar=False)
    expected = ((x64.mean(0) - y64.mean(0)) ** 2).sum() + np.trace(sx + sy - 2 * scipy.linalg.sqrtm(sx @ sy).real)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-5)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_nn_real_similarity():
    ref = np.eye(4, dtype=np.float32)
    assert metrics.nn_real_similarity(ref[:2], ref) == pytest.approx(1.0)
    halfway = np.array([[1, 1, 0, 0]], dtype=np.float32)  # cos 45 degrees to e1 and e2
    assert metrics.nn_real_similarity(halfway, ref) == pytest.approx(math.sqrt(0.5), rel=1e-6)


def test_diversity_metrics_keys():
    x = unit_rows(60, 8)
    plain = metrics.diversity_metrics(x, ["a b"] * 60)
    assert {"vendi", "dcscore", "mean_cosine_distance", "cluster_entropy", "distinct_1", "distinct_2"} <= set(plain)
    assert "mmd_rbf" not in plain
    shifted = metrics.diversity_metrics(x, None, reference_emb=unit_rows(50, 8, seed=1))
    assert {"mmd_rbf", "frechet", "nn_real_similarity", "prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage"} <= set(shifted)
    assert "distinct_1" not in shifted


@pytest.mark.parametrize("n_real, n_fake, k, shift", [(120, 80, 5, 0.0), (200, 60, 3, 0.6), (64, 48, 5, 1.5)])
def test_prdc_matches_the_prdc_package(n_real, n_fake, k, shift, monkeypatch):
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(n_real)
    real = metrics._unit(rng.normal(0, 1, (n_real, 16)))
    fake = metrics._unit(rng.normal(0, 1, (n_fake, 16)) + shift * np.eye(16)[0])
    monkeypatch.setattr(metrics, "BLOCK_CELLS", 500)  # many blocks: blocking must not change the values
    ours = metrics.prdc(fake, real, k=k)
    theirs = prdc.compute_prdc(real, fake, nearest_k=k)
    assert ours == pytest.approx({f"prdc_{name}": value for name, value in theirs.items()}, abs=1e-12)


def test_prdc_separates_off_distribution_from_diverse():
    rng = np.random.default_rng(0)
    centers = metrics._unit(rng.normal(0, 1, (6, 16)))
    real = metrics._unit(np.repeat(centers, 50, axis=0) + rng.normal(0, 0.15, (300, 16)))
    one_mode = metrics._unit(centers[:1] + rng.normal(0, 0.15, (60, 16)))
    all_modes = metrics._unit(np.repeat(centers, 10, axis=0) + rng.normal(0, 0.15, (60, 16)))
    off = metrics._unit(rng.normal(0, 1, (60, 16)))  # diverse, but nowhere near the real rows
    narrow, wide, away = (metrics.prdc(x, real) for x in (one_mode, all_modes, off))
    assert narrow["prdc_precision"] > 0.7 and wide["prdc_precision"] > 0.7 and away["prdc_precision"] < 0.2
    assert wide["prdc_coverage"] > 0.5 > 0.3 > narrow["prdc_coverage"] and away["prdc_coverage"] < 0.02
    assert away["prdc_recall"] > 0.9  # recall's known flaw (outlying rows have huge balls); coverage is the robust one
    assert metrics.vendi(off) > metrics.vendi(all_modes)  # Vendi alone calls the off-distribution rows the most diverse


# -- entry stats -----------------------------------------------------------------
def write_entry(root, name: str, frame: pl.DataFrame) -> InputTable:
    return InputTable(fixture_entry(root / name, {"data": frame}))


def with_embeddings(x: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(x))], "text": [f"row {i} text" for i in range(len(x))]}).with_columns(
        pl.Series("embedding", x, dtype=pl.Array(pl.Float32, x.shape[1]))
    )


def test_entry_stats_cached_per_reference_outside_the_entry(tmp_path, monkeypatch):
    entry = write_entry(tmp_path, "aaa", with_embeddings(unit_rows(40, 8)))
    ref = write_entry(tmp_path, "rrr", with_embeddings(unit_rows(30, 8, seed=1)))
    before = sorted(p.name for p in entry.entry_dir.rglob("*"))
    cache = Cache(tmp_path / "cache")
    plain = entry_stats(entry, cache=cache)
    shifted = entry_stats(entry, ref, cache=cache)
    assert sorted(p.name for p in entry.entry_dir.rglob("*")) == before  # entries never change
    stored = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "derived").rglob("*.json")]
    assert sorted(s["derived_from"] for s in stored) == sorted([[entry.key], sorted([entry.key, ref.key])])
    assert "frechet" in shifted["metrics"] and "frechet" not in plain["metrics"]

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(metrics, "diversity_metrics", boom)
    assert entry_stats(entry, ref, cache=cache) == shifted
    with pytest.raises(AssertionError):
        entry_stats(entry, ref, cache=cache, seed=1)  # another seed is another result
    with pytest.raises(AssertionError):
        monkeypatch.setattr(metrics, "METRICS_VERSION", "changed")
        entry_stats(entry, ref, cache=cache)  # other metrics code is another result


def test_entry_stats_embeds_text_when_no_embedding(tmp_path, tiny_encoder):
    frame = pl.DataFrame({"id": ["1", "2", "3"], "text": ["a good film", "a bad film", "rain in the north"]})
    stats = entry_stats(write_entry(tmp_path, "ttt", frame), cache=Cache(tmp_path / "cache"), model=str(tiny_encoder),
                        device="cpu")
    assert stats["metrics"]["rows"] == 3 and 1.0 < stats["metrics"]["vendi"] <= 3.0


def test_format_stats_table():
    text = format_stats({"metrics": {"rows": 10.0, "vendi": 3.14159, "mmd_rbf": 0.001}, "reference": "rrr"})
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "value", "meaning"]
    assert any(line.startswith("Vendi score") and "3.142" in line for line in lines)
    assert any(line.startswith("rows") and " 10 " in line for line in lines)
    assert lines[-1] == "reference: rrr"




def test_jackknife_intervals_hold_the_estimate_and_narrow_with_rows():
    import numpy as np

    from synthforge.metrics import diversity_metrics, jackknife_intervals, wilson_interval

    rng = np.random.default_rng(3)
    reference = rng.normal(size=(30, 8))
    small, large = rng.normal(size=(20, 8)), rng.normal(size=(200, 8))
    narrow, wide = jackknife_intervals(large, reference_emb=reference), jackknife_intervals(small, reference_emb=reference)
    for rows, intervals in ((small, wide), (large, narrow)):
        values = diversity_metrics(rows, reference_emb=reference)
        for name in ("vendi", "mean_cosine_distance", "mmd_rbf", "nn_real_similarity"):
            assert intervals[name][0] < values[name] < intervals[name][1], name
    width = {name: (v[1] - v[0]) for name, v in narrow.items()}
    assert width["mean_cosine_distance"] < wide["mean_cosine_distance"][1] - wide["mean_cosine_distance"][0]
    low, high = jackknife_intervals(np.ones((10, 8)))["mean_cosine_distance"]
    assert abs(low) < 1e-6 and abs(high) < 1e-6  # identical rows: no spread, no width
    assert wilson_interval(0.0, 10)[0] == 0.0 and 0.2 < wilson_interval(0.5, 20)[0] < 0.5


def test_a_wilson_interval_holds_a_share_of_none_or_all_whatever_the_rounding():
    from synthforge.metrics import wilson_interval

    for n in range(1, 300):
        for share in (0.0, 1.0):
            low, high = wilson_interval(share, n)
            assert 0.0 <= low <= share <= high <= 1.0, (share, n, low, high)
