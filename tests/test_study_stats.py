"""Replicate-pooled cell statistics, paired tests, corrections; label fidelity and copy checks; the metric registry."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from synthforge import study_stats
from synthforge.fidelity import copied_ngram_share, label_agreement, source_ngrams
from synthforge.generation.hygiene import COPY_REASON, HygieneConfig, apply_hygiene
from synthforge.metric_registry import info, verdict
from synthforge.study_stats import Run, adjust, study_statistics


def test_holm_and_bh_match_textbook_values():
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust([], "holm") == []


def runs_for(accuracy_by_cell: dict[tuple[float, int], float], n: int = 400, seed: int = 0) -> tuple[list, dict]:
    """Variants (fraction f, replicate r) whose predictions are right on the first accuracy * n test rows."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    variants, runs = [], {}
    for (fraction, replicate), accuracy in accuracy_by_cell.items():
        name = f"f={fraction},replicate={replicate}"
        pred = truth.copy()
        wrong = rng.permutation(n)[: round((1 - accuracy) * n)]
        pred[wrong] = 1 - pred[wrong]
        variants.append((name, {"synthetic_fraction": fraction, "replicate": replicate}))
        runs[name] = Run(tuple(str(i) for i in range(n)), truth, [pred])
    return variants, runs


def test_a_clear_gain_is_significant_and_a_null_effect_is_not():
    cells = {(0.0, r): 0.70 for r in range(3)}
    cells.update({(0.5, r): 0.85 for r in range(3)})  # +15 points in every replicate
    cells.update({(1.0, r): 0.70 for r in range(3)})  # same accuracy, different errors
    variants, runs = runs_for(cells)
    stats, method = study_statistics(variants, runs, score="accuracy", resamples=200)
    by_fraction = {c.values["synthetic_fraction"]: c for c in stats}
    assert method == study_stats.INTERVAL_METHOD
    assert by_fraction[0.0].delta == {} and by_fraction[0.0].p_adj is None
    gain = by_fraction[0.5]
    assert gain.delta["mean"] == pytest.approx(0.15, abs=0.01) and gain.delta["lo"] > 0
    assert gain.p_adj < 0.001 and gain.p_adj >= gain.p_mcnemar
    null = by_fraction[1.0]
    assert null.delta["lo"] < 0 < null.delta["hi"] and null.p_adj > 0.05
    assert gain.score["lo"] < gain.score["mean"] < gain.score["hi"]


def test_one_replicate_falls_back_to_the_test_bootstrap():
    variants, runs = runs_for({(0.0, 0): 0.7, (0.5, 0): 0.75})
    stats, method = study_statistics(variants, runs, score="accuracy", resamples=200)
    assert method == study_stats.BOOTSTRAP_METHOD
    cell = next(c for c in stats if c.values["synthetic_fraction"] == 0.5)
    assert cell.delta["lo"] < cell.delta["mean"] < cell.delta["hi"]


def test_label_agreement_flags_rows_labelled_against_the_reference():
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:2] * 3
    ref = np.concatenate([centers[0] + rng.normal(0, 0.3, (40, 8)), centers[1] + rng.normal(0, 0.3, (40, 8))])
    ref_labels = ["pos"] * 40 + ["neg"] * 40
    synth = np.concatenate([centers[0] + rng.normal(0, 0.3, (10, 8)), centers[1] + rng.normal(0, 0.3, (10, 8))])
    labels = ["pos"] * 8 + ["neg"] * 2 + ["neg"] * 10  # two positive-looking rows claim to be negative
    found = label_agreement(synth, labels, ref, ref_labels)
    assert found.agrees.tolist() == [True] * 8 + [False] * 2 + [True] * 10
    summary = found.summary(labels)
    assert summary["overall"] == pytest.approx(0.9) and summary["per_label"] == {"neg": pytest.approx(10 / 12), "pos": 1.0}


def test_copy_filter_rejects_near_copies_of_few_shot_texts_with_a_reason():
    shot = "the acting was superb and the plot kept me guessing until the very end"
    grams = source_ngrams([shot])
    assert copied_ngram_share(shot, grams) == 1.0 and copied_ngram_share("a fresh new take on horror", grams) == 0.0
    config = HygieneConfig(max_copied_share=0.5)
    results = apply_hygiene(["The acting was superb and the plot kept me guessing!", "A fresh new take on horror."], config, [shot])
    assert results.reasons == [COPY_REASON, None]
    assert apply_hygiene([shot], HygieneConfig(), [shot]).reasons == [None]  # off by default


def test_registry_names_directions_for_stats_report_and_diff():
    assert info("selected.metrics.nn_real_similarity").group == "shift"
    assert verdict("scores.accuracy", 0.01) == "better" and verdict("mmd_rbf", 0.01) == "worse"
    assert verdict("rows", 5) is None
