"""Multi-field records in `generate`: fields filled in order, samplers, per-field rejects, structured output."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from synthforge.errors import UserError
from synthforge.steps.generate import GenerateStep
from tests.fake_openai_server import FakeOpenAIServer, reply_text
from tests.generate_helpers import openai_params, run_step


@pytest.fixture
def server():
    with FakeOpenAIServer(slow_s=1.0) as fake:
        yield fake


def record_params(base_url: str, n: int, **overrides):
    fields = overrides.pop("fields", {
        "level": {"sample": "category", "values": ["easy", "hard"], "weights": [3, 1]},
        "points": {"sample": "integer", "low": 1, "high": 5},
        "question": {"template": "Ask a {{ level }} {{ label }} question about {{ topic }} worth {{ points }}."},
        "answer": {"template": "Answer this: {{ question }}"},
    })
    params = openai_params(base_url, n, fields=fields, **overrides)
    params.pop("template")
    return params


def user_prompts(server) -> list[str]:
    return [body["messages"][-1]["content"] for body in server.requests]


def test_fields_are_filled_in_order_and_later_templates_see_earlier_fields(tmp_path, server):
    result = run_step(tmp_path, record_params(server.base_url, 8, text="answer"))
    data = result.data
    assert data.height == 8
    assert data.columns[-4:] == ["level", "points", "question", "answer"]
    assert data["text"].to_list() == data["answer"].to_list()
    assert data.schema["points"].is_integer() and set(data["points"]) <= {1, 2, 3, 4, 5}
    assert len(server.requests) == 16  # one request per generated field and row
    prompts = user_prompts(server)
    for row in data.iter_rows(named=True):
        assert f"Ask a {row['level']} {row['label']} question about {row['topic']} worth {row['points']}." in prompts
        assert f"Answer this: {row['question']}" in prompts  # the cleaned question, as kept in its column
    assert result.meta["responses_generated"] == 16 and result.meta["rows"] == 8


def test_text_defaults_to_the_last_generated_field(tmp_path, server):
    params = record_params(server.base_url, 3)
    params["fields"]["level_note"] = {"sample": "uniform", "low": 0, "high": 1, "decimals": 2}
    data = run_step(tmp_path, params).data
    assert data["text"].to_list() == data["answer"].to_list()
    assert all(0 <= v <= 1 and round(v, 2) == v for v in data["level_note"])


def test_samplers_are_seeded_per_row_and_independent_of_n(tmp_path, server):
    small = run_step(tmp_path / "a", record_params(server.base_url, 20)).data
    big = run_step(tmp_path / "b", record_params(server.base_url, 40)).data
    assert big.head(20)["level"].to_list() == small["level"].to_list()
    assert big.head(20)["points"].to_list() == small["points"].to_list()
    other_seed = run_step(tmp_path / "c", record_params(server.base_url, 40), seed=1).data
    assert other_seed["points"].to_list() != big["points"].to_list()
    counts = Counter(run_step(tmp_path / "d", record_params(server.base_url, 400)).data["level"])
    assert 0.65 < counts["easy"] / 400 < 0.85  # weights 3:1


def test_a_rejected_field_rejects_the_row_with_the_field_in_the_reason(tmp_path, server):
    def reply(messages, seed):
        last = messages[-1]["content"]
        return "" if last.startswith("Answer this") and seed % 2 else reply_text(messages, seed)

    server.reply = reply
    result = run_step(tmp_path, record_params(server.base_url, 10))
    rejects = result.tables["rejects"]
    assert rejects.height > 0 and result.data.height + rejects.height == 10
    assert set(rejects["reason"]) == {"answer: empty"}
    assert rejects["question"].null_count() == 0 and rejects["answer"].null_count() == rejects.height


def test_a_row_rejected_early_asks_nothing_for_later_fields(tmp_path, server):
    params = record_params(server.base_url, 6, hygiene={"min_chars": 10_000})
    result = run_step(tmp_path, params)
    assert result.data.height == 0 and len(server.requests) == 6  # the questions only
    assert set(result.tables["rejects"]["reason"]) == {"question: shorter than 10000 chars"}


def test_per_field_hygiene_replaces_the_steps(tmp_path, server):
    params = record_params(server.base_url, 4)
    params["fields"]["answer"]["hygiene"] = {"strip_boilerplate": False}
    data = run_step(tmp_path, params).data
    assert all(a.startswith("Sure! Here is the text:") for a in data["answer"])
    assert not any(q.startswith("Sure!") for q in data["question"])
