"""The whole tool from the command line on tiny models: a small diversity study, end to end."""

from __future__ import annotations

import json

import polars as pl
import pytest

from tests.tiny_models import tiny_chat_model_dir

# The tiny generate step both studies use: few-shot from split.train, the tiny chat model (MODEL).
GENERATED = """  generated:
    kind: generate
    n: 40
    labels: [good, bad]
    variables: {topic: [plot, acting, music, pace]}
    few_shot_from: split.train
    few_shot_k: 1
    template: "Example: {{ examples[0].text }} Write a {{ label }} review about {{ topic }}."
    max_new_tokens: 12
    backend: {type: transformers, model: "MODEL", batch_size: 8}
    hygiene: {min_chars: 1, dedupe: true}
"""

STUDY = """
name: tiny-study
seed: 3
vars: {diversity: 0.5, synthetic_fraction: 0.5}
matrix:
  diversity: [0.0, 1.0]
  synthetic_fraction: [0.0, 0.5]
steps:
  rows:
    kind: load
    path: reviews.csv
    text_column: review
    label_column: stars
    labels: [good, bad]
  split:
    kind: split
    input: rows
    test: 60
    train_per_label: 12
""" + GENERATED + """  real_emb: {kind: embed, input: split.train, model: "ENCODER"}
  test_emb: {kind: embed, input: split.test, model: "ENCODER"}
  synth_emb: {kind: embed, input: generated, model: "ENCODER"}
  selected:
    kind: select
    input: synth_emb
    n: 12
    diversity: ${diversity}
    reference: real_emb
  mixed:
    kind: mix
    real: real_emb
    synthetic: selected
    synthetic_fraction: ${synthetic_fraction}
    on_shortage: take_available
  scores:
    kind: train
    method: linear-probe
    train: mixed
    test: test_emb
    num_seeds: 3
"""


@pytest.fixture
def study(write_recipe, data_csv, tiny_encoder, tmp_path_factory):
    model = tiny_chat_model_dir()
    return write_recipe(STUDY.replace("MODEL", str(model)).replace("ENCODER", str(tiny_encoder)), "study.yaml")


def test_study_builds_reports_and_rebuilds_nothing(cli, study, tmp_path):
    first = cli("build", study, "--no-progress")
    assert first.exit_code == 0, first.output
    lock = json.loads(study.with_suffix(".lock").read_text())
    assert len(lock["variants"]) == 4
    steps = [node["step"] for node in lock["nodes"].values()]
    # shared work runs once: one generation, one embedding per input, a selection per level, training per variant
    assert steps.count("generated") == 1 and steps.count("synth_emb") == 1
    assert steps.count("selected") == 2 and steps.count("mixed") == 4 and steps.count("scores") == 4

    again = cli("build", study, "--no-progress")
    assert "built 0, cached" in again.output

    report = cli("report", study, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    table = pl.read_csv(tmp_path / "report" / "sweep.csv")
    assert table.height == 4
    assert any(p.suffix == ".png" for p in (tmp_path / "report").iterdir())

    stats = cli("stats", study, "synth_emb", "--reference", "real_emb")
    assert stats.exit_code == 0, stats.output
    assert "Vendi" in stats.output and "MMD" in stats.output and "nearest-real similarity" in stats.output

    shown = cli("show", study, "generated", "--table", "rejects")
    assert shown.exit_code == 0 and "table rejects" in shown.output


@pytest.mark.integration
def test_every_step_kind_writes_the_same_bytes_in_parallel_and_in_sequence(cli, study, tmp_path):
    """Tables hold only what their key determines (no wall times, no worker-dependent order)."""
    from tests.test_executors import table_digests

    sequential = cli("build", study, "--no-progress", "--jobs", "1", "--cache-dir", tmp_path / "seq")
    parallel = cli("build", study, "--no-progress", "--jobs", "2", "--cache-dir", tmp_path / "par")
    assert sequential.exit_code == 0 and parallel.exit_code == 0, parallel.output
    digests = table_digests(tmp_path / "seq")
    assert len(digests) >= 15 and table_digests(tmp_path / "par") == digests


def test_batch_size_and_device_never_change_keys(cli, study):
    from synthforge.graph import build_graph
    from synthforge.recipe.resolve import load_recipe

    before = build_graph(load_recipe(study)).keys
    study.write_text(study.read_text().replace("batch_size: 8", "batch_size: 2"))
    assert build_graph(load_recipe(study)).keys == before


def test_raising_synthetic_fraction_shows_in_diff_with_a_score_gate(cli, study, write_recipe):
    text = study.read_text()
    single = text.replace("  diversity: [0.0, 1.0]\n", "").replace("  synthetic_fraction: [0.0, 0.5]\n", "")
    a = write_recipe(single.replace("synthetic_fraction: 0.5}", "synthetic_fraction: 0.25}"), "a.yaml")
    b = write_recipe(single, "b.yaml")
    result = cli("diff", a, b, "--build", "--format", "json", "--fail-on", "accuracy < 1")
    assert result.exit_code == 1, result.output
    data = json.loads(result.output[result.output.index("{"):])
    mixed = [s for s in data["steps"] if s["step"] == "mixed"]
    assert mixed and all("field synthetic_fraction changed from 0.25 to 0.5" in s["reasons"] for s in mixed)
    assert all(s["outputs"]["rows_added"] > 0 for s in mixed)
    assert data["gates"][0]["tripped"]
    scores = next(s for s in data["steps"] if s["step"] == "scores")
    assert scores["outputs"]["rows_a"] == scores["outputs"]["rows_b"] == 3  # one row per seed


@pytest.mark.integration
def test_replicated_study_reports_cells_with_paired_tests(cli, study, tmp_path):
    study.write_text(study.read_text().replace("seed: 3\n", "seed: 3\nreplicates: 2\n"))
    built = cli("build", study, "--no-progress")
    assert built.exit_code == 0, built.output
    steps = [n["step"] for n in json.loads(study.with_suffix(".lock").read_text())["nodes"].values()]
    # load ignores the seed (shared); the test rows are the same, but test_emb keys on its replicate's split entry
    assert steps.count("rows") == 1 and steps.count("generated") == 2 and steps.count("test_emb") == 2

    report = cli("report", study, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    table = pl.read_csv(tmp_path / "report" / "sweep.csv")
    assert table.height == 4 and "replicate" not in table.columns
    assert {"delta_macro_f1", "delta_lo", "delta_hi", "p_t", "p_adj", "p_mcnemar_conditional", "mde", "scores.n_replicates"} <= set(table.columns)
    baseline = table.filter(pl.col("synthetic_fraction") == 0.0)
    mixed = table.filter(pl.col("synthetic_fraction") == 0.5)
    assert baseline["delta_macro_f1"].is_null().all() and baseline["selected.metrics.vendi"].is_null().all()
    assert mixed["p_adj"].is_not_null().all() and (mixed["p_adj"] >= mixed["p_t"]).all()
    assert (mixed["delta_lo"] <= mixed["delta_macro_f1"]).all() and (mixed["delta_macro_f1"] <= mixed["delta_hi"]).all()
    assert set(table["scores.n_replicates"].to_list()) == {2}
    markdown = (tmp_path / "report" / "sweep.md").read_text()
    assert markdown.startswith("# tiny-study") and "n_test = 60" in markdown and "over replicates + test-row bootstrap" in markdown
    assert "Holm-adjusted over" in markdown and "paired t over replicate deltas" in markdown
    # two levels: measured Vendi orders the cells as the level does, so no score-vs-Vendi plot repeats that curve
    assert (tmp_path / "report" / "measured_vs_diversity.png").is_file()
    assert not (tmp_path / "report" / "macro_f1_vs_vendi.png").exists()


ARMS_STUDY = """
name: tiny-arms
seed: 3
replicates: 3
vars: {diversity: 0.5, synthetic_fraction: 0.5, arm: augment}
matrix:
  arm: [replace, augment, upper]
  diversity: [0.0, 0.5, 1.0]
  synthetic_fraction: [0.0, 0.5]
steps:
  rows: {kind: load, path: reviews.csv, text_column: review, label_column: stars, labels: [good, bad]}
  rows_emb: {kind: embed, input: rows, model: "ENCODER"}
  split: {kind: split, input: rows_emb, test: 60, validation: 60, train_per_label: 8}
  more_real: {kind: split, input: rows_emb, test: 60, validation: 60, train_per_label: 12}
""" + GENERATED + """  synth_emb: {kind: embed, input: generated, model: "ENCODER"}
  selected: {kind: select, input: synth_emb, n: 8, diversity: "${diversity}", per_label: true, reference: split.train, judge: split.validation}
  mixed:
    kind: mix
    real: split.train
    synthetic: selected
    extra_real: more_real.train
    arm: ${arm}
    synthetic_fraction: ${synthetic_fraction}
    total: 16
    balance: true
  scores: {kind: train, method: linear-probe, train: mixed, test: split.test}
"""


@pytest.mark.integration
def test_arms_study_with_an_oracle_judge_reports_paired_tests_and_the_level_model(cli, write_recipe, data_csv, tiny_encoder, tmp_path):
    text = ARMS_STUDY.replace("MODEL", str(tiny_chat_model_dir())).replace("ENCODER", str(tiny_encoder))
    recipe = write_recipe(text, "arms.yaml")
    built = cli("build", recipe, "--no-progress")
    assert built.exit_code == 0, built.output
    steps = [n["step"] for n in json.loads(recipe.with_suffix(".lock").read_text())["nodes"].values()]
    assert steps.count("rows_emb") == 1  # the real rows are embedded once for every replicate
    report = cli("report", recipe, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    table = pl.read_csv(tmp_path / "report" / "sweep.csv")
    sizes = {(arm, frac): set(table.filter((pl.col("arm") == arm) & (pl.col("synthetic_fraction") == frac))["scores.n_train"].to_list())
             for arm in ("replace", "augment", "upper") for frac in (0.0, 0.5)}
    assert sizes[("replace", 0.5)] == sizes[("replace", 0.0)] == sizes[("augment", 0.0)] == {16.0}
    assert sizes[("augment", 0.5)] == sizes[("upper", 0.5)] == {24.0}  # 16 real + k = 8 synthetic, or 8 more real
    mixed = table.filter(pl.col("synthetic_fraction") == 0.5)
    assert mixed["p_t"].is_not_null().all() and "delta_df" in mixed.columns
    upper = mixed.filter(pl.col("arm") == "upper")
    assert upper["duplicate_of"].null_count() <= 1  # one upper cell per level, identical: counted once
    judged = mixed.group_by("arm").agg(pl.col("selected.fidelity.fidelity_corrected").is_not_null().all())
    assert dict(judged.iter_rows()) == {"replace": True, "augment": True, "upper": False}  # upper uses no synthetic rows
    assert "selected.metrics.prdc_coverage" in table.columns
    markdown = (tmp_path / "report" / "sweep.md").read_text()
    assert "## Power" in markdown and "## Adjacent diversity levels: shared rows" in markdown
    by_arm = mixed.group_by("arm").agg(pl.col("delta_macro_f1").n_unique().alias("n"))
    if (by_arm.filter(pl.col("arm") != "upper")["n"] > 1).any():  # tiny models: the Δs may not move with the level
        assert "## The level" in markdown and "moderate - extremes" in markdown
        levels = pl.read_csv(tmp_path / "report" / "levels.csv")
        assert set(levels["group"].to_list()) <= {"arm=replace", "arm=augment"} and levels.height >= 3
