import polars as pl
import pytest

from synthforge.report import build_table, format_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_meta(mean: float, half: float = 0.02) -> dict:
    def summary(m):
        return {"mean": m, "std": half, "ci": [m - half, m + half], "ci_method": "seeds-t", "values": [m - half, m + half]}

    return {"meta": {"scores": {"accuracy": summary(mean + 0.05), "macro_f1": summary(mean)}, "seeds": [0, 1, 2],
                     "method": "linear-probe", "n_train": 100, "n_test": 50, "per_class": {"a": {"f1": 0.5}}}}


def record(level, fraction, score, vendi):
    return {
        "variant": f"div={level},frac={fraction}",
        "vars": {"diversity": level, "synthetic_fraction": fraction},
        "steps": {
            "select": {"meta": {"vendi": vendi, "dcscore": vendi / 10, "n_selected": 100, "params": {"k": 5}}},
            "mix": {"meta": {"n_real": 100, "n_synthetic": 50, "per_label": {"real": {"a": 50, "b": 50}}}},
            "train": train_meta(score),
        },
    }


@pytest.fixture
def records():
    out = [record(level, fraction, 0.6 + 0.05 * i + 0.1 * fraction, 2.0 + i)
           for i, level in enumerate(["low", "mid", "high"]) for fraction in (0.25, 0.5)]
    out.append(record("low", 0.0, 0.55, 1.5))
    return out


def test_table_has_one_row_per_variant_with_settings_metrics_and_intervals(records):
    table = build_table(records)
    assert table.height == len(records)
    for column in ["variant", "diversity", "synthetic_fraction", "select.vendi", "select.params.k", "mix.n_real",
                   "train.macro_f1", "train.macro_f1.lo", "train.macro_f1.hi", "train.accuracy", "train.n_seeds"]:
        assert column in table.columns, column
    assert not any(c.startswith("train.per_class") for c in table.columns)
    first = table.row(0, named=True)
    assert first["train.macro_f1"] == pytest.approx(0.625)
    assert first["train.macro_f1.lo"] == pytest.approx(0.605) and first["train.macro_f1.hi"] == pytest.approx(0.645)
    assert table["synthetic_fraction"].dtype == pl.Float64


def test_write_report_files_and_plots(records, tmp_path):
    paths = write_report(records, tmp_path / "report")
    names = {p.name for p in paths}
    assert {"sweep.parquet", "sweep.csv", "sweep.md"} <= names
    assert {"macro_f1_vs_diversity.png", "macro_f1_vs_synthetic_fraction.png", "measured_vs_diversity.png"} <= names
    for path in paths:
        assert path.exists() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
    assert pl.read_parquet(tmp_path / "report" / "sweep.parquet").height == len(records)
    assert pl.read_csv(tmp_path / "report" / "sweep.csv").height == len(records)
    markdown = (tmp_path / "report" / "sweep.md").read_text()
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == len(records) + 2 and "0.625 [0.605, 0.645]" in markdown


def test_plots_have_high_enough_resolution(records, tmp_path):
    from PIL import Image

    paths = write_report(records, tmp_path, dpi=150)
    png = next(p for p in paths if p.name == "macro_f1_vs_diversity.png")
    width, height = Image.open(png).size
    assert width >= 900 and height >= 600


def test_missing_vars_skip_plots_without_crashing(records, tmp_path):
    for r in records:
        r["vars"].pop("diversity")
    paths = write_report(records, tmp_path)
    names = {p.name for p in paths}
    assert "macro_f1_vs_synthetic_fraction.png" in names
    assert not any("diversity" in n for n in names)


def test_configurable_var_names_and_metric(records, tmp_path):
    for r in records:
        r["vars"]["temperature"] = r["vars"].pop("diversity")
        r["vars"]["share"] = r["vars"].pop("synthetic_fraction")
    names = {p.name for p in write_report(records, tmp_path, level_var="temperature", fraction_var="share",
                                          score="accuracy", diversity_metric="dcscore")}
    assert {"accuracy_vs_temperature.png", "accuracy_vs_share.png", "measured_vs_temperature.png"} <= names


def test_records_without_scores_write_only_the_table(tmp_path):
    records = [{"variant": "a", "vars": {}, "steps": {"mix": {"meta": {"n_real": 3}}}}]
    names = {p.name for p in write_report(records, tmp_path)}
    assert names == {"sweep.parquet", "sweep.csv", "sweep.md"}


def test_format_table_shows_scores_with_intervals(records):
    text = format_table(records)
    lines = text.splitlines()
    assert len(lines) == len(records) + 3  # header, rule, rows, and the columns equal in every row
    # columns are labelled through the metric registry; the score leads, right after the settings
    assert lines[0].split()[:3] == ["diversity", "synthetic_fraction", "macro-F1"]
    assert "Vendi score" in lines[0] and "n_train" not in lines[0]
    assert "0.625 [0.605, 0.645]" in lines[2]
    assert lines[-1] == "Same in every row: n_train = 100"


def test_interval_choice_sets_the_bounds(records):
    for r in records:
        r["steps"]["train"]["meta"]["scores"]["macro_f1"]["bootstrap_ci"] = [0.1, 0.9]
    table = build_table(records, interval="bootstrap_ci")
    assert table["train.macro_f1.lo"].to_list() == [0.1] * len(records)
    assert "[0.100, 0.900]" in format_table(records, interval="bootstrap_ci")


def test_level_warnings_name_coinciding_levels_and_falling_vendi():
    from synthforge.report import level_warnings

    def rec(level, selection, vendi):
        meta = {"selection_hash": selection, "metrics": {"vendi": vendi}}
        return {"variant": f"d={level}", "vars": {"diversity": level, "synthetic_fraction": 0.5}, "steps": {"sel": {"meta": meta}}}

    warnings = level_warnings([rec(0.0, "a", 2.0), rec(0.25, "a", 2.0), rec(0.5, "b", 3.0), rec(1.0, "c", 2.5)], "diversity")
    assert any("0.0 and 0.25 select identical rows" in w for w in warnings)
    assert any("does not rise from diversity 0.5 to 1.0" in w for w in warnings)
    assert level_warnings([rec(0.0, "a", 2.0), rec(0.5, "b", 3.0)], "diversity") == []


def test_column_order_puts_score_delta_and_tests_first_whatever_the_columns():
    from synthforge.report import column_roles, ordered_columns

    columns = ["variant", "diversity", "sel.metrics.vendi", "sel.selection_hash", "sel.metric_methods.vendi",
               "mix.n_synthetic", "p_mcnemar", "train.accuracy", "train.accuracy.hi", "train.accuracy.lo",
               "train.macro_f1", "train.macro_f1.lo", "train.macro_f1.hi", "train.macro_f1.std", "delta_macro_f1",
               "delta_lo", "delta_hi", "p_t", "p_adj", "sel.label_agreement.overall", "new_thing"]
    ordered = ordered_columns(columns, ["diversity"], headline="train.macro_f1")
    assert ordered[:11] == ["variant", "diversity", "train.macro_f1", "train.macro_f1.lo", "train.macro_f1.hi",
                            "delta_macro_f1", "delta_lo", "delta_hi", "p_adj", "p_mcnemar", "p_t"]
    assert ordered[11:14] == ["train.accuracy", "train.accuracy.lo", "train.accuracy.hi"]
    roles = column_roles(columns, ["diversity"], headline="train.macro_f1")
    assert roles["sel.metrics.vendi"] == roles["sel.label_agreement.overall"] == "metric"
    assert {roles[c] for c in ("sel.selection_hash", "sel.metric_methods.vendi", "train.macro_f1.std", "new_thing")} == {"bookkeeping"}
    assert set(ordered) == set(columns) and ordered[-1] == "new_thing"
    # without a named headline the first score with an interval leads
    assert ordered_columns(columns, ["diversity"])[2] == "train.accuracy"
    # without var names, the variant column names them (`k=v,...`)
    assert column_roles(["variant", "diversity", "new_thing"], variant_values=["diversity=0.5"]) == {
        "variant": "key", "diversity": "key", "new_thing": "bookkeeping"}


def test_sweep_files_lead_with_the_answer(records, tmp_path):
    write_report(records, tmp_path)
    header = (tmp_path / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["variant", "diversity", "synthetic_fraction", "train.macro_f1", "train.macro_f1.lo", "train.macro_f1.hi"]
    assert header.index("select.vendi") < header.index("select.params.k")


def _study(records, fractions):
    from synthforge.report import Study
    from synthforge.metric_registry import Interval
    from synthforge.study_stats import CellStats

    cells = []
    for r, fraction in zip(records, fractions):
        values = {**r["vars"], "synthetic_fraction": fraction}
        r["vars"] = values
        cells.append(CellStats(values, [r["variant"]], Interval(0.7, 0.6, 0.8), Interval(0.0, 0.0, 0.0), 1.0, 1.0))
    return Study("t", cells, "bootstrap", "macro_f1", "train", 50)


def test_no_paired_columns_without_a_real_only_cell(records):
    from synthforge.report import heading

    records = records[:3]
    study = _study(records, [0.25, 0.5, 0.75])
    table = build_table(records, study=study)
    assert not [c for c in table.columns if c.startswith(("delta_", "p_"))]
    assert "Δ" not in format_table(records, study=study) and "No paired differences" in heading(study)
    with_baseline = _study(records, [0.0, 0.5, 0.75])
    assert "delta_macro_f1" in build_table(records, study=with_baseline).columns


def test_score_vs_a_measured_metric_only_when_it_is_not_the_level_relabelled(records, tmp_path):
    names = {p.name for p in write_report(records, tmp_path / "monotone")}
    assert not any(n.startswith("macro_f1_vs_vendi") for n in names)  # vendi rises with the level: same curve
    for r in records:  # measured Vendi no longer follows the level: that plot adds information
        if r["vars"]["diversity"] == "mid":
            r["steps"]["select"]["meta"]["vendi"] = 9.0
    names = {p.name for p in write_report(records, tmp_path / "crossing")}
    assert "macro_f1_vs_vendi.png" in names and "macro_f1_vs_dcscore.png" not in names  # DCScore still follows it


def test_level_overlap_is_the_jaccard_of_adjacent_levels_and_warns_above_half():
    from synthforge.report import level_overlap

    ids = {0.0: set("abcd"), 0.5: set("abcx"), 1.0: set("wxyz")}
    selections = [({"diversity": lv, "synthetic_fraction": f, "replicate": 0}, "selected", f"k{lv}", rows)
                  for lv, rows in ids.items() for f in (0.25, 0.5)]  # two fractions share one selection entry
    selections += [({"diversity": lv, "replicate": 1}, "selected", f"r1-{lv}", set("pqrs")) for lv in ids]
    rows, warnings = level_overlap(selections, "diversity")
    first, second = rows
    assert (first["from"], first["to"], first["pairs"]) == (0.0, 0.5, 2)  # replicate 0 once, replicate 1 once
    assert first["jaccard"] == pytest.approx((3 / 5 + 1.0) / 2) and first["jaccard_max"] == 1.0
    assert first["shared"] == pytest.approx((3 / 4 + 1.0) / 2)
    assert second["jaccard"] == pytest.approx((1 / 7 + 1.0) / 2)
    assert len(warnings) == 2 and "share 80% of their rows" in warnings[0]
