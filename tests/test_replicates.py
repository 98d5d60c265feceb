"""replicates: independent draws of training rows with a fixed test set; seed: ${var}; split's seed."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from synthforge.graph import build_graph
from synthforge.cache import Cache
from synthforge.errors import UserError
from synthforge.recipe.resolve import load_recipe, replicate_seed
from synthforge.stepapi import Runtime
from tests.conftest import BASIC

REPLICATED = BASIC.replace("seed: 7\n", "seed: 7\nreplicates: 3\n")


def built_split(recipe: Path, cache_dir: Path) -> dict[str, dict[str, list[str]]]:
    """variant -> split table -> sorted ids, after building the recipe."""
    from synthforge.building import build

    graph = build_graph(load_recipe(recipe))
    cache = Cache(cache_dir)
    build(graph, cache, runtime=Runtime(progress=False), log=lambda m: None)
    out = {}
    for variant, keys in graph.keys.items():
        entry = cache.get(keys["split"])
        out[variant] = {t: sorted(pl.read_parquet(entry.table_path(t))["id"].to_list()) for t in ("train", "test")}
    return out


def test_replicates_redraw_training_rows_keep_test_rows_and_share_unseeded_steps(write_recipe, data_csv, cache_dir):
    recipe = load_recipe(write_recipe(REPLICATED))
    assert [v.name for v in recipe.variants] == ["replicate=0", "replicate=1", "replicate=2"]
    assert [v.seed for v in recipe.variants] == [7, replicate_seed(7, 1), replicate_seed(7, 2)]
    graph = build_graph(recipe)
    assert len(graph.nodes_of_step("rows")) == 1  # load ignores the seed: one shared entry
    assert len(graph.nodes_of_step("split")) == 3
    splits = built_split(write_recipe(REPLICATED), cache_dir)
    tests = {tuple(s["test"]) for s in splits.values()}
    trains = {tuple(s["train"]) for s in splits.values()}
    assert len(tests) == 1 and len(trains) == 3


def test_replicate_zero_reproduces_the_unreplicated_recipe(write_recipe, data_csv, cache_dir):
    plain = built_split(write_recipe(BASIC, "plain.yaml"), cache_dir)["default"]
    replicated = built_split(write_recipe(REPLICATED), cache_dir)["replicate=0"]
    assert plain == replicated


def test_vary_test_redraws_the_test_rows_too(write_recipe, data_csv, cache_dir):
    splits = built_split(write_recipe(REPLICATED.replace("replicates: 3\n", "replicates: 2\nvary_test: true\n")), cache_dir)
    assert splits["replicate=0"]["test"] != splits["replicate=1"]["test"]


def test_seed_placeholder_and_split_seed(write_recipe, data_csv, cache_dir):
    text = BASIC.replace("seed: 7\n", "seed: ${s}\nmatrix:\n  s: [1, 2]\n").replace("test: 60\n", "test: 60\n    seed: 5\n")
    recipe = load_recipe(write_recipe(text))
    assert [v.seed for v in recipe.variants] == [1, 2]
    splits = built_split(write_recipe(text), cache_dir)
    assert splits["s=1"]["test"] == splits["s=2"]["test"]  # split's own seed fixes the test draw
    assert splits["s=1"]["train"] != splits["s=2"]["train"]


@pytest.mark.parametrize(
    "text, message",
    [
        (BASIC.replace("seed: 7\n", "seed: ${nope}\n"), "unknown variable '${nope}'"),
        (BASIC.replace("seed: 7\n", "seed: ${k2}\nvars:\n  k2: abc\n").replace("vars:\n  k: 10\n", "  k: 10\n"), "resolve to an integer"),
        (REPLICATED.replace("k: 10\n", "k: 10\n  replicate: 1\n"), "set by replicates"),
        (BASIC.replace("seed: 7\n", "seed: one ${k}\n"), "valid integer or a ${var}"),
    ],
)
def test_bad_seeds_and_replicate_vars_are_one_line_errors(write_recipe, data_csv, text, message):
    with pytest.raises(UserError) as info:
        load_recipe(write_recipe(text))
    assert message in str(info.value) and "recipe.yaml" in str(info.value)


def test_shipped_studies_resolve_with_replicates_and_quoted_flow_placeholders():
    root = Path(__file__).parent.parent / "recipes"
    para = load_recipe(root / "paraphrase_study.yaml")
    assert {v.variables["replicate"] for v in para.variants} == set(range(10))
    fractions = {v.steps["generated"].params.paraphrase.fraction for v in para.variants if v.variables["r"] == 0.5}
    assert fractions == {0.5}  # "${r}" inside {..} keeps the float
    at_zero = {(v.variables["replicate"], v.variables["num_topics"], v.variables["m"]): v.steps["generated"].params
               for v in para.variants if v.variables["r"] == 0.0}
    assert all(p.paraphrase is None and p == at_zero[(rep, topics, 1)] for (rep, topics, _), p in at_zero.items())  # one generation
    # the generator's inputs are the real rows the baseline trains on, and the training set is 32 rows
    assert {v.steps["split"].params.train_per_label * 2 for v in para.variants} == {v.steps["mixed"].params.total for v in para.variants} == {32}
    assert {str(v.steps["generated"].params.few_shot_from) for v in para.variants} == {str(v.steps["mixed"].params.real) for v in para.variants}
    diversity = load_recipe(root / "diversity_study.yaml")
    assert {v.variables["replicate"] for v in diversity.variants} == set(range(10))
    assert {v.steps["mixed"].params.total for v in diversity.variants} == {64}
    assert {v.steps["mixed"].params.arm for v in diversity.variants} == {"replace", "augment", "upper"}
    assert {v.steps["mixed"].params.order for v in diversity.variants} == {"rank"}
    assert all(v.steps["selected"].params.judge is not None for v in diversity.variants)
