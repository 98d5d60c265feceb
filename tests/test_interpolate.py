"""recipe/interpolate.py directly: `${var}` substitution, its types, escapes and errors."""

from __future__ import annotations

import pytest

from synthforge.errors import UserError
from synthforge.recipe.interpolate import interpolate, placeholder_names

VARS = {"k": 10, "rate": 0.5, "name": "imdb", "labels": ["a", "b"], "flag": False}


def test_a_whole_placeholder_keeps_the_value_type():
    assert interpolate("${k}", VARS) == 10
    assert interpolate("${rate}", VARS) == 0.5
    assert interpolate("${labels}", VARS) == ["a", "b"]
    assert interpolate("${flag}", VARS) is False
    assert interpolate("${ k }", VARS) == 10  # spaces inside the braces are ignored


def test_placeholders_inside_text_become_text():
    assert interpolate("data/${name}-${k}.csv", VARS) == "data/imdb-10.csv"
    assert interpolate("${k}${k}", VARS) == "1010"


def test_dollar_dollar_brace_is_a_literal_placeholder():
    assert interpolate("$${k}", VARS) == "${k}"
    assert interpolate("cost $${k} for ${name}", VARS) == "cost ${k} for imdb"


def test_nested_values_are_walked_and_other_types_left_alone():
    value = {"a": ["${k}", {"b": "x${name}"}], "c": 3, "d": None, "e": "$5 plain"}
    assert interpolate(value, VARS) == {"a": [10, {"b": "ximdb"}], "c": 3, "d": None, "e": "$5 plain"}


def test_an_unknown_variable_names_the_field_and_the_closest_name():
    with pytest.raises(UserError) as error:
        interpolate({"steps": {"split": {"test": ["${kk}"]}}}, VARS)
    assert error.value.field == "steps.split.test.0"
    assert str(error.value) == "steps.split.test.0: unknown variable '${kk}' (did you mean 'k'?)"


def test_an_unknown_variable_without_a_close_name_lists_the_known_ones():
    with pytest.raises(UserError, match=r"declare it under vars: \(known: flag, k, labels, name, rate\)"):
        interpolate("${zzz}", VARS)
    with pytest.raises(UserError, match=r"\(declare it under vars:\)"):
        interpolate("${zzz}", {})


def test_an_empty_placeholder_is_an_error():
    with pytest.raises(UserError, match=r"empty placeholder '\$\{\}'"):
        interpolate("a ${ } b", VARS)


def test_placeholder_names_skip_escapes():
    assert placeholder_names({"a": ["${k}", "x ${ name }"], "b": "$${literal} ${rate}", "c": 3}) == {"k", "name", "rate"}
    assert placeholder_names("no placeholders") == set()
