"""Every user mistake in a recipe: one line naming file, line and field, exit code 2, no traceback."""

from __future__ import annotations

import pytest

HEAD = "name: bad\nseed: 1\n"
LOAD = "  rows:\n    kind: load\n    path: reviews.csv\n    text_column: review\n    label_column: stars\n"

# (id, recipe text, expected line, substrings the message must contain)
CASES = [
    ("yaml-syntax", HEAD + "steps:\n  rows: [kind: load\n", 4, ["YAML syntax error"]),
    ("yaml-tab-indent", HEAD + "steps:\n\trows:\n", 4, ["YAML syntax error"]),
    ("not-a-mapping", "- just\n- a list\n", 1, ["must be a YAML mapping"]),
    ("empty-file", "", 1, ["must be a YAML mapping"]),
    ("missing-steps", HEAD, None, ["steps", "required field is missing"]),
    ("unknown-top-field", HEAD + "stepz: {}\nsteps:\n" + LOAD, 3, ["unknown field 'stepz'", "did you mean 'steps'"]),
    ("seed-not-int", "name: bad\nseed: lots\nsteps:\n" + LOAD, 2, ["seed", "valid integer", "'lots'"]),
    ("seed-negative", "name: bad\nseed: -5\nsteps:\n" + LOAD, 2, ["seed", "from 0 to 2147483647", "-5"]),
    ("seed-past-2^64", f"name: bad\nseed: {2**64}\nsteps:\n" + LOAD, 2, ["seed", "from 0 to 2147483647"]),
    ("seed-past-faiss-int", f"name: bad\nseed: {2**31}\nsteps:\n" + LOAD, 2, ["seed", "from 0 to 2147483647"]),
    ("seed-var-negative", "name: bad\nseed: ${s}\nvars: {s: -3}\nsteps:\n" + LOAD, 2, ["seed", "from 0 to 2147483647", "-3"]),
    ("split-seed-too-big", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    seed: 4294967296\n", 12,
     ["steps.split.seed", "from 0 to 2147483647"]),
    ("train-seed-negative", HEAD + "steps:\n" + LOAD + "  fit:\n    kind: train\n    train: rows\n    test: rows\n    seeds: [1, -2]\n",
     13, ["steps.fit.seeds", "from 0 to 2147483647"]),
    ("placeholder-in-flow-mapping", HEAD + "vars: {k: 3}\nsteps:\n  split: {kind: split, input: rows, test: ${k}}\n", 5,
     ["YAML syntax error", 'quote placeholders inside [..] or {..}']),
    ("replicates-zero", HEAD + "replicates: 0\nsteps:\n" + LOAD, 3, ["replicates", "greater than or equal to 1"]),
    ("unknown-kind", HEAD + "steps:\n  rows:\n    kind: lod\n", 5, ["unknown step kind 'lod'", "did you mean 'load'"]),
    ("missing-kind", HEAD + "steps:\n  rows:\n    path: reviews.csv\n", 4, ["missing 'kind'"]),
    ("step-not-mapping", HEAD + "steps:\n  rows: 3\n", 4, ["steps.rows", "valid dictionary"]),
    ("unknown-step-field", HEAD + "steps:\n" + LOAD + "    lables: [good]\n", 9, ["unknown field 'lables'", "did you mean 'labels'"]),
    ("wrong-type", HEAD + "steps:\n" + LOAD + "    dedup: maybe\n", 9, ["steps.rows.dedup", "valid boolean"]),
    ("bad-literal", HEAD + "steps:\n" + LOAD + "    format: xls\n", 9, ["steps.rows.format", "'xls'"]),
    ("missing-required", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n", 9, ["steps.split.input", "required field is missing"]),
    ("unknown-input", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rws\n", 11, ["unknown input step 'rws'", "did you mean 'rows'"]),
    ("unknown-table", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows.tran\n", 11, ["no table 'tran'"]),
    ("self-input", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: split\n", 11, ["cannot read its own output"]),
    (
        "cycle",
        HEAD + "steps:\n  a:\n    kind: split\n    input: b\n  b:\n    kind: split\n    input: a\n",
        4,
        ["cycle", "a -> b -> a"],
    ),
    ("unknown-var", HEAD + "vars:\n  k: 3\nsteps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    train_per_label: ${kk}\n", 14, ["unknown variable '${kk}'", "did you mean 'k'"]),
    ("empty-placeholder", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    test: ${}\n", 12, ["empty placeholder"]),
    ("var-wrong-type", HEAD + "vars:\n  k: many\nsteps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    train_per_label: ${k}\n", 14, ["steps.split.train_per_label", "'many'"]),
    ("fraction-out-of-range", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    test: 1.5\n", 12, ["steps.split.test", "fraction"]),
    ("negative-count", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    train_per_label: -2\n", 12, ["train_per_label", "greater than 0"]),
    ("missing-file", HEAD + "steps:\n  rows:\n    kind: load\n    path: nope.csv\n", 6, ["file not found: nope.csv", "relative to the recipe"]),
    ("both-sources", HEAD + "steps:\n" + LOAD + "    dataset: bbc_news\n", 4, ["exactly one of 'dataset'"]),
    ("empty-matrix", HEAD + "matrix:\n  k: []\nsteps:\n" + LOAD, 3, ["matrix", "no values"]),
    ("bad-step-name", HEAD + "steps:\n  my.rows:\n    kind: load\n", 3, ["not a valid step name"]),
    ("duplicate-key", HEAD + "steps:\n" + LOAD + LOAD, 9, ["duplicate key 'rows'"]),
    ("bad-var-name", HEAD + "vars:\n  2k: 3\nsteps:\n" + LOAD, 3, ["not a valid variable name"]),
    ("unknown-column", HEAD + "steps:\n  rows:\n    kind: load\n    path: reviews.csv\n", 4, ["no column 'text'", "columns in the data: review, stars, extra"]),
    ("unknown-label", HEAD + "steps:\n" + LOAD + "    labels: [god]\n", 9, ["label 'god' does not occur", "did you mean 'good'"]),
    ("too-many-test-rows", HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    test: 5000\n", 12, ["needs 5000 rows"]),
]


@pytest.mark.parametrize("text,line,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_recipe_gives_one_line_error(cli, write_recipe, data_csv, text, line, needles):
    path = write_recipe(text)
    result = cli("build", path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]  # earlier lines are build progress
    assert message.startswith(f"error: {path}"), message
    if line is not None:
        assert message.startswith(f"error: {path}:{line}:"), message
    for needle in needles:
        assert needle in message, message


def test_error_leaves_no_cache_entry(cli, write_recipe, data_csv, cache_dir):
    path = write_recipe(HEAD + "steps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    test: 5000\n")
    assert cli("build", path).exit_code == 2
    entries = list((cache_dir / "entries").rglob("manifest.json"))
    assert len(entries) == 1  # only `rows`; the failed split left nothing
    assert not any((cache_dir / "tmp").iterdir())


def test_missing_recipe_file(cli, tmp_path):
    result = cli("build", tmp_path / "absent.yaml")
    assert result.exit_code == 2
    assert "recipe file not found" in result.output


def test_bad_set_override(cli, write_recipe, data_csv):
    result = cli("plan", write_recipe(HEAD + "steps:\n" + LOAD), "--set", "novalue")
    assert result.exit_code == 2 and "--set expects name=value" in result.output


@pytest.mark.parametrize("value", ["-5", str(2**64), str(2**31)])
def test_a_seed_out_of_range_is_refused_by_plan(cli, write_recipe, data_csv, value):
    result = cli("plan", write_recipe(HEAD + "steps:\n" + LOAD), "--set", f"seed={value}")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--set seed: the seed must be an integer from 0 to 2147483647" in result.output


def test_the_largest_seed_builds(cli, write_recipe, data_csv):
    text = f"name: big\nseed: {2**31 - 1}\nsteps:\n" + LOAD + "  split:\n    kind: split\n    input: rows\n    test: 4\n"
    result = cli("build", write_recipe(text))
    assert result.exit_code == 0, result.output
