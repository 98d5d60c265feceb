"""Output hygiene: cleaning rules, and rejected rows landing in the `rejects` table with a reason."""

from __future__ import annotations

import pytest

from synthforge.generation.hygiene import HygieneConfig, apply_hygiene, clean
from tests.fake_openai_server import FakeOpenAIServer
from tests.generate_helpers import openai_params, run_step


@pytest.mark.parametrize("raw, expected", [
    ("Sure! Here is a positive review:\nThe pasta was superb.", "The pasta was superb."),
    ("Certainly, here's the text: \"Great trip, would go again.\"", "Great trip, would go again."),
    ("Review: Loved every minute.", "Loved every minute."),
    ("**Review:** Loved every minute.", "Loved every minute."),
    ("Sure!\nReview: \u201cAwful service.\u201d", "Awful service."),
    ("'A quiet, lovely book.'", "A quiet, lovely book."),
    ("Here are my thoughts: fine.", "fine."),
    ("The film says \"here is the thing\" often.", "The film says \"here is the thing\" often."),
    ("\"Quoted\" start and \"quoted\" end", "\"Quoted\" start and \"quoted\" end"),
    ("Great film.\nHere is why: the cast.", "Great film.\nHere is why: the cast."),
    ("Okay food, nice view.", "Okay food, nice view."),
])
def test_boilerplate_and_quotes_are_stripped(raw, expected):
    assert clean(raw, HygieneConfig()).text == expected


def test_stripping_can_be_switched_off():
    config = HygieneConfig(strip_boilerplate=False, strip_quotes=False)
    assert clean("Review: \"x y\"", config).text == "Review: \"x y\""


def test_json_field_extraction():
    config = HygieneConfig(json_field="review")
    assert clean('Here you go: {"review": "Nice hotel.", "label": "positive"}', config) == clean('{"review": "Nice hotel."}', config)
    assert clean('{"review": "Nice hotel."}', config).text == "Nice hotel."
    assert clean("no json here", config).reason == "no JSON field 'review'"


def test_regex_extraction_keeps_the_first_group():
    config = HygieneConfig(extract_regex=r"<text>(.*?)</text>")
    assert clean("blah <text>Kept part.</text> blah", config).text == "Kept part."
    assert clean("nothing", config).reason == "regex did not match"


def test_length_bounds():
    config = HygieneConfig(min_chars=5, max_chars=10)
    assert clean("abc", config).reason == "shorter than 5 chars"
    assert clean("abcdefghijkl", config).reason == "longer than 10 chars"
    assert clean("abcdefg", config).reason is None
    assert clean("Sure! Here it is:", HygieneConfig()).reason == "empty"


def test_exact_duplicates_after_cleaning_are_rejected_keeping_the_first():
    results = apply_hygiene(["Review: same text", "\"same text\"", "other", "same text"], HygieneConfig())
    assert results.reasons == [None, "duplicate", None, "duplicate"]
    assert apply_hygiene(["a a", "a a"], HygieneConfig(dedupe=False)).reasons == [None, None]


def test_rejected_rows_go_to_the_rejects_table_with_their_reason(tmp_path):
    replies = iter(["Sure! Here is the review:", "Review: The same review.", "\"The same review.\"",
                    "x" * 300, "A fine, unique review.", "Another good one.", "", "Short"])

    with FakeOpenAIServer() as fake:
        fake.reply = lambda messages, seed: next(replies)
        result = run_step(tmp_path, openai_params(fake.base_url, 8, concurrency=1, hygiene={"max_chars": 200, "min_chars": 6}))
    data, rejects = result.data, result.tables["rejects"]
    assert data.height + rejects.height == 8  # never silently dropped
    assert sorted(data["id"].to_list() + rejects["id"].to_list()) == sorted(f"gen-{i}" for i in range(8))
    reasons = dict(zip(rejects["id"], rejects["reason"]))
    assert reasons == {"gen-0": "empty", "gen-2": "duplicate", "gen-3": "longer than 200 chars",
                       "gen-6": "empty", "gen-7": "shorter than 6 chars"}
    assert rejects.filter(rejects["id"] == "gen-3")["raw"].item() == "x" * 300
    assert set(data["text"]) == {"The same review.", "A fine, unique review.", "Another good one."}
    assert result.meta["rejected"] == 5 and result.meta["reject_reasons"]["empty"] == 2
    assert set(rejects.columns) >= {"id", "text", "label", "topic", "mode", "row_seed", "reason", "raw"}
