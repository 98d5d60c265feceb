"""Addressing variants: NAME=VALUE pairs in any order, partial names that select several outputs, --set replicate."""

from __future__ import annotations

import polars as pl
import pytest

import synthforge as sf
from synthforge.errors import UserError
from tests.conftest import BASIC

REPLICATED = BASIC + "replicates: 2\nmatrix:\n  k: [5, 10]\n"
SPLIT_K5 = {"k=5,replicate=0", "k=5,replicate=1"}


@pytest.fixture
def replicated(write_recipe, data_csv, cache_dir):
    recipe = sf.open(write_recipe(REPLICATED), cache_dir=cache_dir)
    recipe.build(progress=False)
    return recipe


def test_a_variant_is_named_by_its_values_in_any_order(replicated):
    recipe = replicated.graph.recipe
    assert recipe.variant("replicate=1,k=10").name == "k=10,replicate=1" == recipe.variant("k=10, replicate=1").name
    assert recipe.variant("k=5.0,replicate=0").name == "k=5,replicate=0"  # the value as YAML, too
    assert [v.name for v in recipe.select_variants("k=5")] == ["k=5,replicate=0", "k=5,replicate=1"]
    assert [v.name for v in recipe.select_variants("replicate=0")] == ["k=5,replicate=0", "k=10,replicate=0"]


def test_a_partial_name_where_one_variant_is_needed_lists_them_and_suggests_replicate_0(replicated):
    with pytest.raises(UserError) as error:
        replicated.graph.recipe.variant("k=5")
    assert str(error.value) == "'k=5' matches 2 variants (name one, e.g. 'k=5,replicate=0' (or add replicate=0))"
    with pytest.raises(UserError, match=r"no variant 'k=7' \(k is one of 5, 10\)"):
        replicated.graph.recipe.variant("k=7")
    with pytest.raises(UserError, match="names no matrix variable.*did you mean 'replicate'"):
        replicated.graph.recipe.variant("replicat=0")


def test_a_partial_name_stacks_the_outputs_with_a_variant_column(replicated, cli, tmp_path):
    frame = replicated.table("split", variant="k=5", table="train")
    assert frame.columns[0] == "variant" and set(frame["variant"]) == SPLIT_K5 and frame.height == 2 * 15
    assert "variant" not in replicated.table("split", variant="replicate=1,k=5", table="train").columns
    exported = cli("export", replicated.path, "split", "--variant", "k=5", "--table", "train", "--to", tmp_path / "k5.parquet")
    assert exported.exit_code == 0 and "wrote 30 rows" in exported.output, exported.output
    assert set(pl.read_parquet(tmp_path / "k5.parquet")["variant"]) == SPLIT_K5
    shown = cli("show", replicated.path, "split", "--variant", "k=5", "--table", "train")
    assert shown.exit_code == 0 and shown.output.count("== variant k=5,replicate=") == 2, shown.output


def test_export_hf_of_a_partial_name_is_one_dataset_with_a_card_naming_each_output(replicated, cli, tmp_path):
    import datasets

    out = tmp_path / "k5_hf"
    exported = cli("export", replicated.path, "split", "--variant", "k=5", "--table", "train", "--format", "hf", "--to", out)
    assert exported.exit_code == 0, exported.output
    assert set(datasets.load_from_disk(str(out))["variant"]) == SPLIT_K5
    card = (out / "README.md").read_text()
    assert "k=5,replicate=0; k=5,replicate=1" in card


def test_to_hf_takes_a_partial_name_and_speaks_python(replicated):
    dataset = replicated.to_hf("split", variant="k=5", table="train")
    assert dataset.num_rows == 30 and set(dataset["variant"]) == SPLIT_K5
    with pytest.raises(UserError) as error:
        replicated.table("split", table="train")
    assert "--" not in str(error.value) and "name a variant, e.g. k=5,replicate=0;" in str(error.value)


def test_set_replicate_narrows_to_one_replicate_with_the_same_keys(replicated, write_recipe, cache_dir, cli):
    one = sf.open(replicated.path, set={"replicate": 1}, cache_dir=cache_dir)
    assert one.variants == ["k=5,replicate=1", "k=10,replicate=1"]
    assert one.key("split", "k=5") == replicated.key("split", "k=5,replicate=1")
    assert "0 to run" in cli("plan", replicated.path, "--set", "replicate=1").output
    bad = cli("plan", replicated.path, "--set", "replicate=2")
    assert bad.exit_code == 2 and "replicate must be one of 0..1, got 2" in bad.output


def test_a_step_shared_by_several_variants_counts_its_distinct_outputs(write_recipe, data_csv, cache_dir):
    recipe = sf.open(write_recipe(BASIC + 'description: "${tag}"\nmatrix:\n  k: [5, 10]\n  tag: [a, b]\n'), cache_dir=cache_dir)
    with pytest.raises(UserError, match="step 'split' has 2 distinct outputs across the 4 variants"):
        recipe.key("split")
    assert recipe.key("split", "k=5") == recipe.key("split", "tag=b,k=5")


def test_stats_of_a_partial_name_is_one_block_per_output(replicated, cli):
    result = cli("stats", replicated.path, "split", "--variant", "k=5", "--table", "train", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.output.count("== variant k=5,replicate=") == 2 and result.output.count("diversity of split.train") == 2
