"""The report's presentation: the answer first, bookkeeping folded, readable plots, and what is not built."""

from __future__ import annotations

import stat
from html.parser import HTMLParser

import polars as pl
import pytest
from conftest import BASIC

from synthforge.report_html import Rejects, write_html


class _Headers(HTMLParser):
    """The header cells of each table, by table id, and the text of the SVG."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[str]] = {}
        self.svg_text: list[str] = []
        self._table, self._open = None, []

    def handle_starttag(self, tag, attrs):
        self._open.append(tag)
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []

    def handle_endtag(self, tag):
        while self._open and self._open.pop() != tag:
            pass

    def handle_data(self, data):
        if self._open and self._open[-1] == "th" and self._table:
            self.tables[self._table].append(data.strip())
        if self._open and self._open[-1] == "text":
            self.svg_text.append(data)


def sweep(folder):
    variants = [f"diversity={d},synthetic_fraction={f}" for d in (0.0, 1.0) for f in (0.0, 0.5)]
    pl.DataFrame({
        "variant": variants, "diversity": [0.0, 0.0, 1.0, 1.0], "synthetic_fraction": [0.0, 0.5, 0.0, 0.5],
        "selected.label_agreement.overall": [None, 0.8, None, 0.9], "selected.metric_methods.vendi": ["exact"] * 4,
        "selected.selection_hash": [None, "a", None, "b"], "selected.metrics.vendi": [None, 2.0, None, 3.0],
        "scores.accuracy": [0.7, 0.72, 0.7, 0.74], "scores.macro_f1": [0.6, 0.62, 0.6, 0.65],
        "scores.macro_f1.lo": [0.55, 0.57, 0.55, 0.6], "scores.macro_f1.hi": [0.65, 0.67, 0.65, 0.7],
        "scores.n_train": [100, 150, 100, 150], "delta_macro_f1": [None, 0.02, None, 0.05],
        "delta_lo": [None, -0.01, None, 0.01], "delta_hi": [None, 0.05, None, 0.09], "p_mcnemar": [None, 0.3, None, 0.0001],
        "p_adj": [None, 0.3, None, 0.0002],
    }).write_parquet(folder / "sweep.parquet")


def test_the_sweep_table_leads_with_score_delta_and_tests_and_folds_the_rest(tmp_path):
    sweep(tmp_path)
    html = write_html(tmp_path, "t: sweep report").read_text()
    page = _Headers()
    page.feed(html)
    assert page.tables["sweep-table"][:6] == ["diversity", "synthetic_fraction", "scores.macro_f1", "delta_macro_f1", "p_adj", "p_mcnemar"]
    # an interval is shown in its estimate's cell, a p-value below 0.001 as such, bookkeeping folded, constants apart
    assert "0.650 [0.600, 0.700]" in html and "+0.050 [+0.010, +0.090]" in html and "&lt; 0.001" in html
    assert page.tables["folded-table"] == ["variant", "selected.selection_hash"]
    assert page.tables["constant-table"] == ["selected.metric_methods.vendi"]
    assert "selected.metrics.vendi" in page.tables["sweep-table"]


def test_forest_plot_labels_fit_and_its_axis_has_a_title(tmp_path):
    sweep(tmp_path)
    html = write_html(tmp_path, "t").read_text()
    svg = html[html.index("<svg"):html.index("</svg>")]
    first_label = svg.index('text-anchor="end" font-size="12">diversity=0, synthetic_fraction=0.5<')
    x = float(svg[:first_label].rsplit('x="', 1)[1].split('"')[0])
    assert x >= 7 * len("diversity=0, synthetic_fraction=0.5")  # room for the whole label at about 7 px a character
    page = _Headers()
    page.feed(html)
    assert any("cell minus the real-only baseline" in t for t in page.svg_text)


def test_report_page_is_as_readable_as_the_plots_and_shows_rejects_and_description_apart(tmp_path):
    sweep(tmp_path)
    rejects = [Rejects("generated", "replicate=0", 3, {"too short": 2, "duplicate": 1}, ["reason", "text", "raw"],
                       [{"reason": "too short", "text": "ok", "raw": "ok<eos>"}])]
    path = write_html(tmp_path, "t", "t: macro-F1 by cell", description="A study of things.", notes=["n_test = 60"],
                      rejects=rejects)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "sweep.parquet").stat().st_mode)
    html = path.read_text()
    assert '<p class="subtitle">t: macro-F1 by cell</p>' in html and '<p class="description">A study of things.</p>' in html
    assert "generated (replicate=0): 3 rejected: too short: 2; duplicate: 1" in html and "ok&lt;eos&gt;" in html


def test_plots_are_the_ones_given_in_their_order(tmp_path):
    sweep(tmp_path)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8 + (640).to_bytes(4, "big") + b"\x00" * 8
    for name in ("b_first.png", "a_second.png", "stale.png"):
        (tmp_path / name).write_bytes(png)
    html = write_html(tmp_path, "t", plots=[tmp_path / "b_first.png", tmp_path / "a_second.png"]).read_text()
    assert html.index('alt="b first"') < html.index('alt="a second"') and 'alt="stale"' not in html


@pytest.fixture
def matrix_recipe(write_recipe, data_csv):
    return write_recipe(BASIC.replace("test: 60\n", "test: ${t}\n").replace("  k: 10\n", "  k: 10\n  t: 60\nmatrix:\n  t: [60, 70]\n"))


def test_report_of_an_unbuilt_recipe_names_what_is_missing(cli, matrix_recipe, tmp_path):
    assert cli("build", matrix_recipe, "--only", "rows", "--no-progress").exit_code == 0
    result = cli("report", matrix_recipe, "--out", tmp_path / "report")
    assert result.exit_code == 2 and "no variant" in result.output and "missing: split in 2" in result.output
    assert not (tmp_path / "report").exists()


def test_report_of_a_partly_built_recipe_warns_and_leaves_the_unbuilt_rows_out(cli, matrix_recipe, tmp_path):
    assert cli("build", matrix_recipe, "--set", "t=60", "--no-progress").exit_code == 0
    result = cli("report", matrix_recipe, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "warning: 1 of 2 variants" in result.output and "missing: split in 1" in result.output
    assert pl.read_csv(tmp_path / "report" / "sweep.csv")["t"].to_list() == [60]


def test_show_puts_a_tables_own_columns_first(tmp_path):
    from helpers import fixture_entry

    from synthforge.app import show_text
    from synthforge.cache import Entry
    from synthforge.keys import key_of

    long = "word " * 30
    data = pl.DataFrame({"id": ["a1b2c3d4e5f6a7b8"], "text": [long], "label": ["good"], "source": ["synthetic"],
                         "topic": ["plot"], "prompt": [long], "model": ["tiny"], "temperature": [0.7]})
    rejects = data.with_columns(pl.lit("too short: 3 chars < min_chars 5").alias("reason"), pl.lit("raw <eos> output").alias("raw"))
    folder = fixture_entry(tmp_path / "gen", {"data": data, "rejects": rejects}, step="gen")
    entry = Entry(key_of({"fixture": "gen", "folder": "gen"}), folder)
    head = show_text(entry, table="rejects").splitlines()
    header = next(line for line in head if line.startswith("│ reason"))
    assert header.split("┆")[1].strip() == "raw"  # neither elided in the middle of a wide table
    header = next(line for line in show_text(entry).splitlines() if line.startswith("│ text"))
    assert header.split("┆")[-1].strip(" │") == "id"  # data: text first, the id hash last


def test_hf_export_of_a_split_is_a_datasetdict_with_a_hub_card(cli, write_recipe, data_csv, tmp_path):
    import datasets
    import yaml

    recipe = write_recipe(BASIC.replace("seed: 7\n", "seed: 7\nlicense: cc-by-4.0\nlanguage: en\n").replace("test: 60\n", "test: 60\n    validation: 30\n"))
    assert cli("build", recipe, "--no-progress").exit_code == 0
    result = cli("export", recipe, "split", "--format", "hf", "--to", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert isinstance(loaded, datasets.DatasetDict) and set(loaded) == {"train", "test", "validation"}
    assert len(loaded["test"]) == 60 and len(loaded["validation"]) == 30 and "split" not in loaded["train"].column_names
    assert loaded["train"].features["label"] == loaded["test"].features["label"]  # one ClassLabel for every split
    card = (tmp_path / "hf" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "cc-by-4.0" and front["language"] == ["en"] and front["size_categories"] == ["n<1K"]
    assert front["task_categories"] == ["text-classification"] and front["task_ids"] == ["multi-class-classification"]
    assert front["annotations_creators"] == ["found"] and "synthetic" not in front["tags"]
    assert {f["split"] for f in front["configs"][0]["data_files"]} == {"train", "test", "validation"}
    for fact in ("## Splits", "| validation | 30 |", "reviews.csv", "## Example rows", "## Rebuild", "synthforge build"):
        assert fact in card, fact
    # the card's configs make the folder loadable as the Hub loads a repository
    hub = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "hf-cache"))
    assert {name: len(part) for name, part in hub.items()} == {name: len(part) for name, part in loaded.items()}


def test_license_defaults_to_unknown_and_a_wrong_language_is_a_user_error(cli, write_recipe, data_csv, tmp_path):
    recipe = write_recipe(BASIC)
    assert cli("build", recipe, "--no-progress").exit_code == 0
    assert cli("export", recipe, "rows", "--format", "hf", "--to", tmp_path / "hf").exit_code == 0
    assert "license: unknown" in (tmp_path / "hf" / "README.md").read_text()
    bad = write_recipe(BASIC.replace("seed: 7\n", "seed: 7\nlanguage: {en: 1}\n"), "bad.yaml")
    result = cli("plan", bad)
    assert result.exit_code == 2 and "language" in result.output and "Traceback" not in result.output


def test_generator_card_facts_name_the_full_model_and_its_quantization(tmp_path):
    import json

    from synthforge.backends.llm import OpenAIBackendConfig, TransformersBackendConfig, model_card_facts

    packaged = model_card_facts(TransformersBackendConfig(type="transformers"))
    assert packaged["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and packaged["quantization"].startswith("GGUF Q4_1")
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "torch_dtype": "bfloat16",
                                                      "quantization_config": {"quant_method": "awq", "bits": 4}}))
    local = model_card_facts(TransformersBackendConfig(type="transformers", model=str(tmp_path)))
    assert local == {"model_id": "Qwen/Qwen2.5-0.5B-Instruct", "quantization": "awq 4-bit"}
    gguf = model_card_facts(TransformersBackendConfig(type="transformers", model=str(tmp_path), gguf_file="m-Q5_K_M.gguf"))
    assert gguf["quantization"].startswith("GGUF Q5_K_M")
    served = model_card_facts(OpenAIBackendConfig(type="openai", base_url="http://127.0.0.1:8000/v1", model="meta/llama"))
    assert served["model_id"] == "meta/llama"


def test_the_degrees_of_freedom_of_a_delta_are_not_shown_as_a_signed_difference():
    import polars as pl

    from synthforge.report_html import _merged, _roles, _rows

    table = pl.DataFrame({"variant": ["a"], "delta_macro_f1": [0.02], "delta_lo": [-0.01], "delta_hi": [0.05],
                          "delta_df": [19.5]})
    columns = _merged(table.columns, table, _roles(table))
    shown = dict(zip([c.name for c in columns], [text for _, text in _rows(table, columns)[0]]))
    assert shown["delta_macro_f1"].startswith("+0.02") and not shown["delta_df"].startswith("+")
