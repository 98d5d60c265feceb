"""The column form of output hygiene against the per-row reference (tests/naive_hygiene.py): the same
texts and reject reasons, row for row, on hand-picked and fuzzed texts."""

from __future__ import annotations

import random

import pytest

from synthforge.generation.hygiene import HygieneConfig, _python_whitespace, apply_hygiene, hygiene_frame
from tests.naive_hygiene import apply_hygiene_naive

PYTHON_WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
NOT_WHITESPACE_TO_PYTHON = ["\u200b", "\u180e", "\ufeff", "\u2060"]
# after "here is": Python's \b sees a boundary before marks, connector punctuation other than "_" and
# joiners (Rust's \w includes them), none before numerics such as "½" (Rust's \w excludes them)
BOUNDARY_PROBES = ["\u0301", "\u203f", "\u200d", "\u200c", "\u00bd", "\u00b2", "\u216b", "_", "9", "\u00e9", "'"]
# IGNORECASE: Python's "s" matches "ſ", "k" the Kelvin sign, "i" both "İ" and "ı"
CASE_PROBES = ["\u017fure! ", "o\u212aay, ", "OKAY! ", "HERE \u0130S the text: ", "here \u0131s it:", "Cer\u0131ainly. ",
               "\u0130t is ", "HERE IT IS:", "Here\u2019s one:", "Here's", "here you go\n", "REVIEW:", "te\u212at:"]
PREAMBLES = ["Sure! ", "Sure!\n", "Certainly, here's the text: ", "Of course. Here is a review:\n", "Absolutely!",
             "Okay! here are some:", "Here is why: ", "here it is", "sure!! here you go -", "Sure,\t", "Okay food, "]
LABELS = ["Review: ", "**Review:** ", "__Text__: ", "answer :", "OUTPUT**:", "Paraphrase:\n", "sentence:  ", "Example:**"]
QUOTES = ['"', "'", "\u201c", "\u201d", "\u2018", "\u2019", "`"]
BODIES = ["nul\x00byte", "The pasta was superb.", "Great trip, would go again.", "x", "", "same text", "Loved it.\nReally.",
          "a  b\tc", "Ok", "The film says \"here is the thing\" often.", "Great film.\nHere is why: the cast.",
          "word " * 120, "\u00e9t\u00e9 \u00e0 Paris", "\r\n", "line\r\nnext", "\U0001f600 emoji"]
HAND_PICKED = [
    "Sure! Here is a positive review:\nThe pasta was superb.", "Certainly, here's the text: \"Great trip, would go again.\"",
    "Review: Loved every minute.", "**Review:** Loved every minute.", "Sure!\nReview: \u201cAwful service.\u201d",
    "'A quiet, lovely book.'", "Here are my thoughts: fine.", "\"Quoted\" start and \"quoted\" end",
    "Okay food, nice view.", "Sure! Here it is:", "", "   ", "\n\n", "\x1c\x1d\x1e\x1f", "\x1ca b\x1f",
    "Sure! Here it is:\nReview: \"Stacked.\"", "Review: Review: Review: twice", "\"\"", "''", "\"'\"", "\u201c\u201d",
    "\u2018a\u2019b\u2019", "'a'b'", "`code`", "\"x\"\n", "Sure! Here it is:\nReview: same text", "same text",
    "\"same text\"", "y" * 5000, "\u3000Review:\u3000ideographic\u3000space\u3000",
] + [f"Here is{probe} the thing: body" for probe in BOUNDARY_PROBES] + [f"{p}body here" for p in CASE_PROBES] \
  + [f"{space}Sure!{space}Here it is:{space}a{space}{space}b{space}" for space in PYTHON_WHITESPACE + NOT_WHITESPACE_TO_PYTHON]
CONFIGS = [HygieneConfig(), HygieneConfig(min_chars=20, max_chars=600), HygieneConfig(min_chars=0, dedupe=False),
           HygieneConfig(strip_boilerplate=False), HygieneConfig(strip_quotes=False, max_chars=8),
           HygieneConfig(strip_boilerplate=False, strip_quotes=False, min_chars=3)]


def fuzz_texts(count: int, seed: int) -> list[str]:
    """Texts stacked from whitespace, preambles, labels, quotes, boundary and case probes, and bodies."""
    rng = random.Random(seed)
    pieces = [PYTHON_WHITESPACE + NOT_WHITESPACE_TO_PYTHON, PREAMBLES + CASE_PROBES, LABELS, QUOTES,
              BODIES, BOUNDARY_PROBES, ["\n", " ", ":", "here is", "Here's"]]
    texts = []
    for _ in range(count):
        parts = [rng.choice(rng.choice(pieces)) for _ in range(rng.randint(0, 8))]
        if rng.random() < 0.3:  # a quote pair around the rest
            pair = rng.choice([('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`")])
            parts = [pair[0], *parts, pair[1]]
        texts.append("".join(parts))
    return texts


def assert_same(texts: list[str], config: HygieneConfig) -> None:
    column = list(zip(*apply_hygiene(texts, config)))
    reference = apply_hygiene_naive(texts, config)
    for row, (got, expected) in enumerate(zip(column, reference, strict=True)):
        assert got == expected, f"row {row}: {texts[row]!r}"


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_column_hygiene_matches_the_per_row_reference_on_hand_picked_texts(config):
    assert_same(HAND_PICKED, config)


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_column_hygiene_matches_the_per_row_reference_on_fuzzed_texts(config):
    assert_same(fuzz_texts(3000, seed=CONFIGS.index(config)), config)


def test_python_semantics_that_rust_regex_lacks_are_kept():
    texts = ["HERE \u0130S the text: Great.", "\x1c\u017fure! Review:\x1f kept", "Here is\u0301 the x: body",
             "Here is\u00bd the x: body", "a\x1cb", "a\x1cb\nc"]
    results = list(zip(*apply_hygiene(texts, HygieneConfig())))
    assert results == [("Great.", None), ("kept", None), ("body", None),
                       ("Here is\u00bd the x: body", None), ("a b", None), ("a\x1cb\nc", None)]


def test_texts_polars_cannot_hold_take_the_per_row_path():
    texts = ["Review: a\ud800b", "Review: a\ud800b", "ok"]
    assert list(zip(*apply_hygiene(texts, HygieneConfig()))) == apply_hygiene_naive(texts, HygieneConfig())


def test_the_fuzz_reaches_every_rule():
    reasons = {reason for _, reason in apply_hygiene_naive(fuzz_texts(3000, seed=0), HygieneConfig(max_chars=600))}
    assert {None, "empty", "duplicate", "longer than 600 chars"} <= reasons


def test_the_whitespace_set_is_what_str_strip_and_split_use():
    assert set(_python_whitespace()) == set(PYTHON_WHITESPACE)


def test_the_column_pass_refuses_the_per_row_options():
    import polars as pl

    with pytest.raises(ValueError, match="default options only"):
        hygiene_frame(pl.Series(["x"]), HygieneConfig(json_field="review"))
