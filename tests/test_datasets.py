"""The packaged real datasets load through recipes, with stable labels and ids."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "dataset,labels",
    [
        ("rotten_tomatoes", {"fresh", "rotten", "plot"}),
        ("bbc_news", {"business", "entertainment", "politics", "sports", "tech"}),
    ],
)
def test_packaged_dataset_loads_with_its_labels(cli, write_recipe, tmp_path, dataset, labels):
    recipe = write_recipe(f"name: d\nsteps:\n  rows:\n    kind: load\n    dataset: {dataset}\n")
    result = cli("build", recipe, "--no-progress")
    assert result.exit_code == 0, result.output
    cli("export", recipe, "rows", "--to", tmp_path / "rows.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().split("\n") if line]
    assert {r["label"] for r in rows} == labels
    assert len(rows) > 2000 and len({r["id"] for r in rows}) == len(rows)
    assert all(r["text"].strip() and r["source"] == "real" for r in rows)
    lock = json.loads(recipe.with_suffix(".lock").read_text())
    (identity,) = [n["identity"] for n in lock["nodes"].values()]
    assert "==" in identity["dataset package"]  # the package version is part of the key


def test_bbc_news_rows_are_in_sorted_class_order(cli, write_recipe, tmp_path):
    recipe = write_recipe("name: d\nsteps:\n  rows:\n    kind: load\n    dataset: bbc_news\n    dedup: false\n")
    cli("build", recipe, "--no-progress")
    cli("export", recipe, "rows", "--to", tmp_path / "rows.jsonl")
    labels = [json.loads(line)["label"] for line in (tmp_path / "rows.jsonl").read_text().split("\n") if line]
    first_seen = list(dict.fromkeys(labels))
    assert first_seen == sorted(first_seen)
