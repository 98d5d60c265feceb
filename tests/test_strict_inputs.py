"""What strictness must still let through, and do right: --set semantics, numeric labels, encodings,
dropped-row counts, diff gates on real metrics, safe report folders, fast refusal of huge recipes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from synthforge.graph import build_graph
from synthforge.recipe.resolve import load_recipe
from synthforge.steps.generate import GenerateStep
from tests.conftest import BASIC
from tests.test_malformed_inputs import BOMB

MATRIX = BASIC + "matrix:\n  k: [5, 10, 20]\n"


def manifest_of(cache_dir: Path, step: str) -> dict:
    found = [json.loads(p.read_text()) for p in cache_dir.rglob("manifest.json")]
    return next(m for m in found if m["step"] == step)


# -- --set ---------------------------------------------------------------------------------------------
def test_set_seed_sets_the_recipe_seed(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    assert load_recipe(recipe, {"seed": 9}).seed == 9
    cli("build", recipe)
    plan = cli("plan", recipe, "--set", "seed=9").output
    assert "0 cached, 2 to run" in plan and "seed changed from 7 to 9" in plan


def test_set_of_a_matrix_variable_narrows_the_matrix(cli, write_recipe, data_csv):
    recipe = write_recipe(MATRIX)
    full = build_graph(load_recipe(recipe))
    narrowed = build_graph(load_recipe(recipe, {"k": 10}))
    assert [v.name for v in narrowed.recipe.variants] == ["k=10"]
    assert narrowed.keys["k=10"] == full.keys["k=10"]  # same variant, same keys: shares the cache and lockfile
    plan = cli("plan", recipe, "--set", "k=10").output
    assert "2 steps x 1 variant " in plan and "--set k=10 narrows the matrix to: k=10" in plan


def test_set_of_a_plain_variable_overrides_it(write_recipe, data_csv):
    recipe = load_recipe(write_recipe(BASIC), {"k": 4})
    assert recipe.variants[0].steps["split"].params.train_per_label == 4


def test_plan_warns_and_build_refuses_over_budget(cli, write_recipe, tmp_path):
    from tests.test_malformed_inputs import gen

    recipe = write_recipe("name: big\nbudget: {max_requests: 3}\nsteps:\n" + gen(n=4))
    plan = cli("plan", recipe)
    assert plan.exit_code == 0 and "LLM budget: ~4 of 3 requests" in plan.output and "OVER BUDGET" in plan.output
    assert cli("build", recipe, "--max-requests", "3").exit_code == 2
    assert "over the budget of 3" in cli("build", recipe).output


# -- labels -----------------------------------------------------------------------------------------------
def test_numeric_labels_map_star_ratings(cli, write_recipe, tmp_path, cache_dir):
    (tmp_path / "stars.csv").write_text("text,stars\n" + "".join(f"review {i},{i % 5 + 1}\n" for i in range(20)))
    recipe = write_recipe("name: stars\nsteps:\n  rows:\n    kind: load\n    path: stars.csv\n    label_column: stars\n"
                          "    labels: {5: positive, 3: neutral, 1: negative}\n")
    result = cli("build", recipe)
    assert result.exit_code == 0, result.output
    assert manifest_of(cache_dir, "rows")["meta"]["label_counts"] == {"negative": 4, "neutral": 4, "positive": 4}


def test_numeric_labels_of_generate_are_strings():
    params = GenerateStep.Params.model_validate({"n": 1, "labels": [1, 2], "template": "{{ label }}"})
    assert params.labels == ["1", "2"]
    described = GenerateStep.Params.model_validate({"n": 1, "labels": {5: "five stars"}, "template": "{{ label }}"})
    assert described.labels == {"5": "five stars"}


# -- data files ---------------------------------------------------------------------------------------------
DIRTY = 'review,stars\nfine film,good\n"   ",bad\n,meh\nno label,\nfine film,good\nawful,bad\n'


def test_blank_and_unlabelled_rows_are_counted_and_shown(cli, write_recipe, tmp_path, cache_dir):
    (tmp_path / "reviews.csv").write_text(DIRTY)
    recipe = write_recipe("name: dirty\nsteps:\n  rows:\n    kind: load\n    path: reviews.csv\n    text_column: review\n"
                          "    label_column: stars\n")
    built = cli("build", recipe).output
    assert "2 rows in" in built and "(dropped 2 blank text, 1 duplicates, 1 missing label)" in built
    assert manifest_of(cache_dir, "rows")["meta"]["dropped"] == {"blank_text": 2, "missing_label": 1, "duplicates": 1}
    assert "dropped 2 blank text, 1 duplicates, 1 missing label" in cli("show", recipe, "rows").output


@pytest.mark.parametrize("encoding,text", [("latin-1", "un film très réussi à voir"), ("cp1252", "“great” – worth every €")])
def test_an_encoding_field_reads_legacy_files(cli, write_recipe, tmp_path, cache_dir, encoding, text):
    (tmp_path / "reviews.csv").write_bytes(f"review,stars\n{text},good\nplain,bad\n".encode(encoding))
    recipe = write_recipe("name: enc\nsteps:\n  rows:\n    kind: load\n    path: reviews.csv\n    text_column: review\n"
                          f"    label_column: stars\n    encoding: {encoding}\n")
    assert cli("build", recipe).exit_code == 0
    cli("export", recipe, "rows", "--to", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert text in [r["text"] for r in rows]


def test_utf8_leaves_load_keys_as_they_were_and_another_encoding_enters_them():
    from synthforge.keys import key_of
    from synthforge.steps.load import LoadParams

    plain = LoadParams(path="reviews.csv")
    assert "encoding" not in plain.model_dump() and key_of(plain) == key_of(LoadParams(path="reviews.csv", encoding="UTF8"))
    assert LoadParams(path="reviews.csv", encoding="latin-1").model_dump()["encoding"] == "iso8859-1"


# -- diff gates ------------------------------------------------------------------------------------------------
def test_a_gate_on_a_metric_both_sides_have_is_applied(cli, write_recipe, tmp_path, data_csv):
    a = write_recipe(BASIC, "a.yaml")
    b = write_recipe(BASIC.replace("k: 10", "k: 5"), "b.yaml")
    result = cli("diff", a, b, "--build", "--fail-on", "train.good < -10")  # 10 -> 5 training rows of 'good'
    assert result.exit_code == 0 and "gate passed: train.good < -10" in result.output
    tripped = cli("diff", a, b, "--fail-on", "train.good < -1")
    assert tripped.exit_code == 1 and "gate FAILED: train.good < -1" in tripped.output


# -- report folder --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../escape", "/tmp/escape", ".."])
def test_the_report_folder_stays_under_reports(cli, write_recipe, tmp_path, data_csv, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    recipe = write_recipe(BASIC.replace("name: basic", f"name: '{name}'"))
    cli("build", recipe)
    assert cli("report", recipe).exit_code == 0
    written = list(tmp_path.rglob("sweep.csv"))
    assert len(written) == 1 and written[0].parent.parent == work / "reports"
    assert not Path("/tmp/escape").exists()


# -- bounded parsing --------------------------------------------------------------------------------------------------
def test_an_alias_bomb_and_an_oversized_recipe_are_refused_fast(cli, write_recipe):
    for text in (BOMB, "name: big\nsteps: {}\nvars:\n" + "".join(f"  v{i}: {i}\n" for i in range(200_000))):
        path = write_recipe(text)
        started = time.perf_counter()
        result = cli("plan", path)
        assert result.exit_code == 2 and time.perf_counter() - started < 2


def test_aliases_that_repeat_a_block_still_work():
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "generate_demo.yaml")
    steps = recipe.variants[0].steps
    assert steps["narrow"].params.labels == steps["diverse"].params.labels
