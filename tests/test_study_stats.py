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
    cells.update({(0.5, r): 0.85 + 0.01 * r for r in range(3)})  # +15 points in every replicate
    cells.update({(1.0, r): 0.70 + 0.02 * (r - 1) for r in range(3)})  # no gain on average
    variants, runs = runs_for(cells)
    stats, method = study_statistics(variants, runs, score="accuracy", resamples=200)
    by_fraction = {c.values["synthetic_fraction"]: c for c in stats}
    assert method == study_stats.INTERVAL_METHOD
    assert by_fraction[0.0].delta is None and by_fraction[0.0].p_adj is None
    gain = by_fraction[0.5]
    assert gain.delta.mean == pytest.approx(0.16, abs=0.01) and gain.delta.lo > 0
    assert gain.p_t < 0.01 and gain.p_adj >= gain.p_t
    null = by_fraction[1.0]
    assert null.delta.lo < 0 < null.delta.hi and null.p_adj > 0.05
    assert gain.score.lo < gain.score.mean < gain.score.hi


def test_the_headline_is_the_paired_t_over_replicates_not_mcnemar():
    """Opposite per-replicate effects: McNemar on the pooled test rows can be tiny, the design-level test is not."""
    from scipy import stats as scipy_stats

    cells = {(0.0, r): 0.70 for r in range(3)}
    cells.update({(0.5, 0): 0.62, (0.5, 1): 0.77, (0.5, 2): 0.64})
    variants, runs = runs_for(cells, n=2000)
    cell = next(c for c in study_statistics(variants, runs, score="accuracy", resamples=200)[0] if c.values["synthetic_fraction"] == 0.5)
    deltas = list(cell.replicate_deltas.values())
    assert deltas == pytest.approx([-0.08, 0.07, -0.06], abs=0.005)
    assert cell.p_t == pytest.approx(scipy_stats.ttest_1samp(deltas, 0).pvalue)
    assert cell.p_t > 0.5 and cell.p_adj == pytest.approx(cell.p_t)  # one cell: Holm leaves it
    assert cell.p_mcnemar < 0.05  # pooled discordant rows: conditional on these training sets


def test_interval_uses_satterthwaite_df_of_replicate_plus_test_variance():
    from scipy import stats as scipy_stats

    cells = {(0.0, r): 0.70 for r in range(4)}
    cells.update({(0.5, r): 0.74 + 0.01 * r for r in range(4)})
    variants, runs = runs_for(cells, n=300)
    cell = next(c for c in study_statistics(variants, runs, score="accuracy", resamples=300)[0] if c.values["synthetic_fraction"] == 0.5)
    between = np.var(list(cell.replicate_deltas.values()), ddof=1) / 4
    half = (cell.delta.hi - cell.delta.lo) / 2
    test = (half / scipy_stats.t.ppf(0.975, cell.delta.df)) ** 2 - between
    assert test > 0  # the fixed test set's variance is in the interval
    expected_df = (between + test) ** 2 / (between**2 / 3 + test**2 / 299)
    assert cell.delta.df == pytest.approx(expected_df, rel=1e-6)
    assert 3 < cell.delta.df  # more than R-1: the bootstrap term is well estimated


def test_identical_cells_count_once_in_the_correction():
    cells = {(0.0, r): 0.70 for r in range(3)}
    cells.update({(0.5, r): 0.80 + 0.01 * r for r in range(3)})
    variants, runs = runs_for(cells)
    twins = [(name.replace("f=", "twin,f="), {**values, "m": 3}) for name, values in variants]
    variants = [(name, {**values, "m": 1}) for name, values in variants] + twins
    runs.update({twin: runs[name] for (twin, _), (name, _) in zip(twins, variants)})
    stats = study_statistics(variants, runs, score="accuracy", resamples=100)[0]
    tested = [c for c in stats if c.p_adj is not None]
    assert len(tested) == 2 and [c.duplicate_of for c in tested] == [None, tested[0].name]
    assert tested[0].p_adj == tested[1].p_adj == pytest.approx(tested[0].p_t)  # a family of one, not two


def test_power_matches_the_noncentral_t():
    """SD 0.045: 3 replicates detect 0.147 (0.248 at Holm's first step over 15 cells), 10 detect 0.045."""
    assert study_stats.detectable_effect(0.045, 3) == pytest.approx(0.147, abs=0.001)
    assert study_stats.detectable_effect(0.045, 3, 0.05 / 15) == pytest.approx(0.2475, abs=0.001)
    assert study_stats.detectable_effect(0.045, 10) == pytest.approx(0.045, abs=0.001)
    assert study_stats.detectable_effect(0.045, 20) == pytest.approx(0.030, abs=0.001)
    assert study_stats.pooled_sd([[1.0, 3.0], [0.0, 0.0, 3.0]]) == pytest.approx(((2 + 6) / 3) ** 0.5)


def level_study(effect_by_level: dict[float, float], replicates: int = 8, noise: float = 0.01):
    rng = np.random.default_rng(1)
    cells = []
    for level, effect in effect_by_level.items():
        for fraction in (0.25, 0.5):
            deltas = {r: effect + fraction * 0.02 + 0.01 * r + rng.normal(0, noise) for r in range(replicates)}
            cells.append(study_stats.CellStats({"diversity": level, "synthetic_fraction": fraction}, [], replicate_deltas=deltas))
    return cells


def test_level_model_finds_an_inverted_u_and_its_contrasts():
    import statsmodels.formula.api as smf

    cells = level_study({0.0: 0.0, 0.25: 0.03, 0.5: 0.05, 0.75: 0.03, 1.0: 0.0})
    (found,) = study_stats.level_analysis(cells, "diversity")
    assert found.p_level < 1e-6 and found.df_level == (4.0, found.n - 4 - 1 - 7 - 1)
    moderate, quadratic = found.contrasts
    assert moderate.name == "moderate - extremes" and moderate.estimate == pytest.approx(0.0367, abs=0.006)
    assert moderate.lo < moderate.estimate < moderate.hi and moderate.p < 1e-6
    assert quadratic.estimate > 0 and quadratic.p < 1e-6 and sum(quadratic.weights.values()) == pytest.approx(0)
    # the same contrast by hand from the level means (a balanced design: the model's contrast is the raw one)
    means = {lv: np.mean([d for c in cells if c.values["diversity"] == lv for d in c.replicate_deltas.values()]) for lv in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert moderate.estimate == pytest.approx(np.mean([means[0.25], means[0.5], means[0.75]]) - (means[0.0] + means[1.0]) / 2)
    assert found.formula == "delta ~ C(diversity) + C(synthetic_fraction) + C(replicate)"
    assert smf  # statsmodels does the fitting
    cells[0].duplicate_of = "arm=upper,..."  # identical to another arm's cell: still this group's data point
    assert study_stats.level_analysis(cells, "diversity")[0].n == found.n


def test_level_model_sees_no_effect_where_there_is_none_and_skips_constant_groups():
    (found,) = study_stats.level_analysis(level_study({lv: 0.0 for lv in (0.0, 0.5, 1.0)}, noise=0.01), "diversity")
    assert found.p_level > 0.01 and all(c.lo < 0 < c.hi for c in found.contrasts)
    flat = level_study({lv: 0.0 for lv in (0.0, 0.5, 1.0)}, noise=0.0)
    assert study_stats.level_analysis(flat, "diversity") == []  # the deltas do not depend on the level at all


def test_one_replicate_falls_back_to_the_test_bootstrap():
    variants, runs = runs_for({(0.0, 0): 0.7, (0.5, 0): 0.75})
    stats, method = study_statistics(variants, runs, score="accuracy", resamples=200)
    assert method == study_stats.BOOTSTRAP_METHOD
    cell = next(c for c in stats if c.values["synthetic_fraction"] == 0.5)
    assert cell.delta.lo < cell.delta.mean < cell.delta.hi


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
    assert info("selected.metrics.prdc_coverage").group == "coverage" and verdict("prdc_density", -0.1) == "worse"
    assert info("selected.fidelity.fidelity_corrected").group == "fidelity" and "in-sample" in info("label_agreement").label
    from synthforge.diff import compare_metrics

    changed = compare_metrics({"metrics": {"prdc_coverage": 0.5}}, {"metrics": {"prdc_coverage": 0.7}})
    assert changed["metrics.prdc_coverage"]["delta"] == pytest.approx(0.2)


def test_sft_losses_pair_over_replicates_as_token_ratios():
    """Response loss is summed NLL over summed tokens per variant; a lower loss in every replicate is a clear delta."""
    rng = np.random.default_rng(0)
    n = 300
    tokens = rng.integers(1, 4, n)
    variants, runs, expected = [], {}, {}
    for fraction, level in ((0.0, 1.0), (0.5, 0.8)):
        for replicate in range(3):
            name = f"f={fraction},replicate={replicate}"
            nll = tokens * (level + 0.02 * replicate) + rng.normal(0, 0.05, n)
            variants.append((name, {"synthetic_fraction": fraction, "replicate": replicate}))
            runs[name] = Run(tuple(map(str, range(n))), np.zeros(0, dtype=np.int64), [], losses=[nll], tokens=tokens)
            expected[name] = nll.sum() / tokens.sum()
    for score in ("response_loss", "perplexity"):
        stats, _ = study_statistics(variants, runs, score=score, resamples=100)
        mixed = next(c for c in stats if c.values["synthetic_fraction"] == 0.5)
        transform = (lambda x: x) if score == "response_loss" else np.exp
        want = np.mean([transform(expected[f"f=0.5,replicate={r}"]) - transform(expected[f"f=0.0,replicate={r}"]) for r in range(3)])
        assert mixed.delta.mean == pytest.approx(want)
        assert mixed.delta.hi < 0 and mixed.p_t < 0.01
        assert mixed.p_mcnemar is None  # no answers to compare: no McNemar
