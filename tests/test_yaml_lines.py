"""recipe/yaml_lines.py directly: the line of every key, and YAML refused with a located one-line error."""

from __future__ import annotations

import pytest

from synthforge.errors import UserError
from synthforge.recipe import yaml_lines
from synthforge.recipe.yaml_lines import line_for, load_yaml_with_lines

TEXT = """\
name: demo
steps:
  rows:
    kind: load
    columns:
      - text
      - label
  split: {kind: split, input: rows}
"""


def test_every_key_and_list_item_has_its_line():
    data, lines = load_yaml_with_lines(TEXT, "r.yaml")
    assert data["steps"]["split"] == {"kind": "split", "input": "rows"}
    assert lines[("name",)] == 1 and lines[("steps", "rows", "kind")] == 4
    assert lines[("steps", "rows", "columns", 1)] == 7
    assert lines[("steps", "split", "input")] == 8


def test_line_for_falls_back_to_the_longest_known_prefix():
    _, lines = load_yaml_with_lines(TEXT, "r.yaml")
    assert line_for(lines, ("steps", "rows", "nosuch", "deeper")) == 3
    assert line_for(lines, ("elsewhere",)) == 1  # the document itself


def test_an_empty_document_has_no_data():
    assert load_yaml_with_lines("", "r.yaml") == (None, {})


def test_a_duplicate_key_names_its_line_and_field():
    with pytest.raises(UserError) as error:
        load_yaml_with_lines("steps:\n  a: 1\n  b: 2\n  a: 3\n", "r.yaml")
    assert (error.value.line, error.value.field) == (4, "steps.a")
    assert "duplicate key 'a'" in str(error.value)


def test_a_syntax_error_names_its_line():
    with pytest.raises(UserError) as error:
        load_yaml_with_lines("name: demo\nsteps:\n  a: [1, 2\n  b: 3\n", "r.yaml")
    assert str(error.value).startswith("r.yaml:4: YAML syntax error: did not find expected ',' or ']'")


def test_an_unquoted_placeholder_in_flow_style_gets_a_quoting_hint():
    with pytest.raises(UserError, match=r'quote placeholders inside \[\.\.\] or \{\.\.\}'):
        load_yaml_with_lines("mix: {fraction: ${r}}\n", "r.yaml")


def test_an_alias_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(yaml_lines, "MAX_VALUES", 50)
    bomb = "a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n"
    with pytest.raises(UserError, match="expands to more than 50 values") as error:
        load_yaml_with_lines(bomb, "r.yaml")
    assert error.value.line == 3
    load_yaml_with_lines("a: &a [1, 2]\nb: [*a, *a]\n", "r.yaml")  # plain reuse is fine


def test_an_alias_inside_itself_is_refused():
    with pytest.raises(UserError, match="refers to itself through an alias"):
        load_yaml_with_lines("a: &a [*a]\n", "r.yaml")


def test_deep_nesting_and_huge_recipes_are_refused(monkeypatch):
    monkeypatch.setattr(yaml_lines, "MAX_DEPTH", 5)
    with pytest.raises(UserError, match="nests deeper than 5 levels"):
        load_yaml_with_lines("a: " + "[" * 8 + "]" * 8 + "\n", "r.yaml")
    monkeypatch.setattr(yaml_lines, "MAX_RECIPE_CHARS", 20)
    with pytest.raises(UserError, match="over the limit of 20"):
        load_yaml_with_lines("name: a-long-enough-recipe\n", "r.yaml")
