"""The Python API on a tiny built study: tables as polars/pandas/datasets, exports with provenance, HTML report."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import make_rows
from test_pipeline import STUDY

import synthforge as sf
from synthforge.cli import main
from tests.tiny_models import tiny_chat_model_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder):
    """The tiny study of test_pipeline, built once through the API."""
    root = tmp_path_factory.mktemp("api")
    make_rows().write_csv(root / "reviews.csv")
    recipe = root / "study.yaml"
    recipe.write_text(STUDY.replace("MODEL", str(tiny_chat_model_dir())).replace("ENCODER", str(tiny_encoder)).lstrip())
    r = sf.open(recipe, cache_dir=root / "cache")
    r.build(progress=False)
    return r


def cli(r, *args: str):
    result = CliRunner().invoke(main, [*map(str, args), "--cache-dir", str(r.cache.root)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_open_plan_build_and_read_tables(built):
    assert built.variants == ["diversity=0.0,synthetic_fraction=0.0", "diversity=0.0,synthetic_fraction=0.5",
                              "diversity=1.0,synthetic_fraction=0.0", "diversity=1.0,synthetic_fraction=0.5"]
    assert all(item.action == "cached" for item in built.plan())
    selected = built.table("selected", variant="diversity=1.0,synthetic_fraction=0.5")
    assert isinstance(selected, pl.DataFrame) and selected.height == 12
    assert {"id", "text", "label", "source", "embedding"} <= set(selected.columns)
    assert built.table("split", table="test").height == 60  # shared by every variant: no variant needed
    assert built.to_pandas("split", table="train")["label"].value_counts().to_dict() == {"good": 12, "bad": 12}


def test_a_step_that_differs_across_variants_needs_a_variant(built):
    with pytest.raises(sf.api.UserError, match=r"has 2 distinct outputs across the 4 variants \(name a variant, e.g. diversity=0.0; diversity=1.0\)"):
        built.table("selected")
    with pytest.raises(sf.api.UserError, match="no table 'nope'"):
        built.table("split", table="nope")


def test_overrides_and_cache_dir_default_follow_the_cli(built, monkeypatch):
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(built.cache.root))
    again = sf.open(built.path, set={"diversity": 1.0})
    assert again.cache.root == built.cache.root
    assert again.key("selected", "diversity=1.0,synthetic_fraction=0.0") == built.key("selected", "diversity=1.0,synthetic_fraction=0.0")


def test_to_hf_labels_are_a_classlabel(built):
    import datasets

    ds = built.to_hf("selected", variant="diversity=0.0,synthetic_fraction=0.5")
    assert isinstance(ds, datasets.Dataset) and len(ds) == 12
    assert isinstance(ds.features["label"], datasets.ClassLabel) and ds.features["label"].names == ["bad", "good"]
    frame = built.table("selected", variant="diversity=0.0,synthetic_fraction=0.5")
    assert [ds.features["label"].int2str(i) for i in ds["label"]] == frame["label"].to_list()
    assert json.loads(ds.info.description)["step"] == "selected"


def test_reading_a_built_table_imports_no_torch(built):
    code = ("import sys, synthforge as sf; r = sf.open(sys.argv[1], cache_dir=sys.argv[2]); "
            "r.table('split', table='test'); r.plan(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(built.path), str(built.cache.root)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_hf_export_loads_from_disk_with_a_card(built, tmp_path):
    import datasets

    variant = "diversity=1.0,synthetic_fraction=0.5"
    cli(built, "export", built.path, "selected", "--variant", variant, "--format", "hf", "--to", tmp_path / "hf")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == 12 and isinstance(ds.features["label"], datasets.ClassLabel)
    card = (tmp_path / "hf" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "size_categories" in front and "synthetic" in front and "task_categories" in front
    key = built.key("selected", variant)
    for fact in ("tiny-study", variant, key, "temperature=", "max_new_tokens=12", "vendi", "mmd", "kind: generate"):
        assert fact in body, fact
    labels = built.table("selected", variant)["label"].value_counts()
    for label, count in labels.iter_rows():
        assert f"| {label} | {count} |" in body
    import yaml

    meta = yaml.safe_load(front)
    assert meta["annotations_creators"] == ["machine-generated"] and meta["license"] == "unknown"  # every row generated
    assert "- model: `tiny-gpt2`" in body and "- quantization: none (float32 weights" in body
    assert "## Example rows" in body and f"--variant {variant} --format hf" in body


def test_stats_of_selected_rows_gives_the_manifests_numbers(built):
    variant = "diversity=0.0,synthetic_fraction=0.5"
    recorded = built.entry("selected", variant).manifest.meta["metrics"]
    shown = cli(built, "stats", built.path, "selected", "--variant", variant, "--reference", "real_emb").output
    values = {line.split("  ")[0]: line.split()[len(line.split("  ")[0].split()):][0]
              for line in shown.splitlines()[2:] if line and not line.startswith(("reference:", "cluster entropy:"))}
    for name, label in (("cluster_entropy", "cluster entropy"), ("vendi", "Vendi score"), ("dcscore", "DCScore"),
                        ("mmd_rbf", "MMD^2 (RBF)")):
        assert float(values[label]) == float(f"{recorded[name]:.4g}"), (name, shown)  # to the digits shown; -0 == 0
    assert "k-means fit on the pool the rows were drawn from (synth_emb" in shown


def test_parquet_export_carries_provenance_metadata(built, tmp_path):
    import pyarrow.parquet as pq

    cli(built, "export", built.path, "generated", "--to", tmp_path / "gen.parquet")
    meta = json.loads(pq.read_metadata(tmp_path / "gen.parquet").metadata[b"synthforge"])
    assert meta["step"] == "generated" and meta["key"] == built.key("generated")
    assert meta["generators"][0]["sampling"]["max_new_tokens"] == 12
    assert meta["rows"] == pl.read_parquet(tmp_path / "gen.parquet").height
    assert "kind: generate" in meta["recipe_text"]


class _Page(HTMLParser):
    """Collects headings, table header cells, images and scripts of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.text, self.images, self.external = [], {}, [], []
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self._open.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        for name in ("src", "href"):
            if attrs.get(name, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[name])

    def handle_endtag(self, tag):
        while self._open and self._open.pop() != tag:
            pass

    def handle_data(self, data):
        if self._open and data.strip():
            self.text.setdefault(self._open[-1], []).append(data.strip())


def test_html_report_is_self_contained_and_shows_rows_per_level(built, tmp_path):
    cli(built, "report", built.path, "--out", tmp_path / "report", "--html")
    page = _Page()
    page.feed((tmp_path / "report" / "report.html").read_text())
    sweep = pl.read_parquet(tmp_path / "report" / "sweep.parquet")
    shown = set(page.text["th"])  # every sweep column, whatever they are: a header, or an interval in its estimate's cell
    assert all(c in shown or c.removesuffix(".lo").removesuffix(".hi") in shown or c in ("delta_lo", "delta_hi")
               for c in sweep.columns)
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not page.external and "script" in page.tags
    assert "Rows of selected by diversity" in page.text["h2"]
    assert {"diversity=0.0", "diversity=1.0"} <= {t for t in page.text["th"] if t.startswith("diversity=")}
    some_text = built.table("selected", "diversity=1.0,synthetic_fraction=0.0")["text"].to_list()
    assert any(text in page.text.get("td", []) for text in some_text)


def test_html_report_renders_any_columns_and_a_paired_difference_view(tmp_path):
    from synthforge.report_html import write_html

    pl.DataFrame({
        "variant": ["diversity=0.5", "diversity=1.0"], "diversity": [0.5, 1.0], "new_metric": ["a<b", "c"],
        "delta_macro_f1": [0.02, -0.01], "delta_lo": [-0.01, -0.04], "delta_hi": [0.05, 0.02], "p_adj": [0.3, 0.9],
    }).write_parquet(tmp_path / "sweep.parquet")
    html = write_html(tmp_path, "t: sweep report", "recipe t, n_test 60").read_text()
    page = _Page()
    page.feed(html)
    assert "Paired differences" in page.text["h2"] and "svg" in page.tags and page.tags.count("circle") == 2
    assert {"new_metric", "delta_macro_f1", "p_adj"} <= set(page.text["th"])
    assert "a<b" in page.text["td"] and "a&lt;b" in html  # escaped
    assert "recipe t, n_test 60" in page.text["p"]


def test_plan_names_the_variant_and_the_input_that_changed(built, tmp_path):
    text = built.path.read_text()
    changed = tmp_path / "study.yaml"
    changed.write_text(text.replace("n: 12\n", "n: 10\n"))
    (tmp_path / "reviews.csv").write_bytes((built.path.parent / "reviews.csv").read_bytes())
    (tmp_path / "study.lock").write_bytes(built.path.with_suffix(".lock").read_bytes())
    r = sf.open(changed, cache_dir=built.cache.root)
    items = {(i.node.step, i.node.variants[0]): i for i in r.plan() if i.action == "run"}
    select = items[("selected", "diversity=0.0,synthetic_fraction=0.0")]
    assert select.reasons == ["field n changed from 12 to 10"]
    scores = items[("scores", "diversity=0.0,synthetic_fraction=0.5")]
    # train reads `train` (mixed, rebuilding) and `test` (test_emb, cached): only `train` is blamed
    assert scores.reasons == ["its input 'train' changes: mixed will rebuild"]
    plan = cli(r, "plan", changed).output
    assert "diversity=0.0 (2 variants)" in plan and "diversity=1.0,synthetic_fraction=0.5" in plan


def test_a_fresh_clone_says_the_lockfile_records_a_build_elsewhere(built, tmp_path):
    r = sf.open(built.path, cache_dir=tmp_path / "empty-cache")
    reasons = {reason for item in r.plan() for reason in item.reasons}
    assert reasons == {"not built here yet (the lockfile records a build elsewhere)"}


def test_plan_states_the_expected_generation_time_from_the_measured_speed(built, tmp_path):
    changed = tmp_path / "study.yaml"
    changed.write_text(built.path.read_text().replace("n: 40\n", "n: 30\n"))
    (tmp_path / "reviews.csv").write_bytes((built.path.parent / "reviews.csv").read_bytes())
    text = sf.open(changed, cache_dir=built.cache.root).plan().text
    line = next(line for line in text.splitlines() if line.startswith("expected generation time"))
    assert "generated: at most 360 new tokens" in line and "new tokens/s measured here" in line
    fresh = sf.open(changed, cache_dir=tmp_path / "empty").plan().text
    assert "no speed recorded on this machine yet" in fresh
