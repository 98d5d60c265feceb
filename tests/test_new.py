"""`synthforge new`: starter recipes that resolve, and the demo one builds as it is."""

from __future__ import annotations

import pytest

from synthforge.graph import build_graph
from synthforge.recipe.resolve import load_recipe


@pytest.mark.parametrize("starter, steps, variants", [
    ("demo", 2, 1), ("generate", 4, 1), ("study", 9, 4),
])
def test_each_starter_resolves(cli, tmp_path, starter, steps, variants):
    result = cli("new", "mine", "--from", starter, "--dir", tmp_path)
    assert result.exit_code == 0 and "next: synthforge plan" in result.output
    recipe = load_recipe(tmp_path / "mine.yaml")
    assert recipe.name == "mine" and len(recipe.model.steps) == steps and len(recipe.variants) == variants
    assert build_graph(recipe).nodes
    assert (tmp_path / "mine.yaml").read_text().count("#") >= 5  # commented


def test_new_never_overwrites(cli, tmp_path):
    cli("new", "mine", "--dir", tmp_path)
    again = cli("new", "mine", "--dir", tmp_path)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.integration
def test_the_demo_starter_builds(cli, tmp_path):
    cli("new", "mine", "--dir", tmp_path)
    built = cli("build", tmp_path / "mine.yaml", "--no-progress")
    assert built.exit_code == 0, built.output
    assert "built 2, cached 0" in built.output
