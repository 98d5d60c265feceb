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


def test_samplers_follow_their_distributions():
    from synthforge.generation.fields import RecordField, sample_value
    from synthforge.steps.generate import row_rng

    def draws(spec: dict, values=None) -> list:
        field = RecordField.model_validate(spec)
        return [sample_value(field, values, row_rng(0, "field:x", i)) for i in range(4000)]

    counts = Counter(draws({"sample": "category", "values": ["easy", "hard"], "weights": [3, 1]}, ["easy", "hard"]))
    assert 0.72 < counts["easy"] / 4000 < 0.78  # weights 3:1
    assert set(draws({"sample": "integer", "low": -2, "high": 2})) == {-2, -1, 0, 1, 2}
    uniform = draws({"sample": "uniform", "low": 10, "high": 20, "decimals": 1})
    assert min(uniform) >= 10 and max(uniform) <= 20 and all(round(v, 1) == v for v in uniform)
    gauss = draws({"sample": "gaussian", "mean": 5, "std": 2})
    mean = sum(gauss) / len(gauss)
    assert abs(mean - 5) < 0.15 and abs((sum((v - mean) ** 2 for v in gauss) / len(gauss)) ** 0.5 - 2) < 0.15


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


# -- structured output ------------------------------------------------------------------------------
ASPECTS = {"type": "object", "properties": {"aspect": {"type": "string"}, "score": {"type": "integer", "minimum": 1}},
           "required": ["aspect", "score"], "additionalProperties": False}


def structured_params(base_url: str, n: int, **field):
    return record_params(base_url, n, fields={
        "review": {"template": "Write a {{ label }} review of {{ topic }}."},
        "aspects": {"template": "List the aspects of: {{ review }}", **field},
        "summary": {"template": "Summarise {{ aspects.aspect }} scored {{ aspects.score }}."},
    }, text="review")


def json_replies(server, bad_every: int = 0):
    def reply(messages, seed):
        last = messages[-1]["content"]
        if not last.startswith("List the aspects"):
            return reply_text(messages, seed)
        if bad_every and seed % bad_every == 0:
            return json.dumps({"aspect": "price", "score": 0})  # below the minimum
        return json.dumps({"aspect": f"aspect {seed}", "score": 1 + seed % 5})

    server.reply = reply


def test_the_schema_is_sent_as_response_format_and_replies_become_json_columns(tmp_path, server):
    json_replies(server)
    result = run_step(tmp_path, structured_params(server.base_url, 6, json_schema=ASPECTS))
    sent = [body for body in server.requests if body["messages"][-1]["content"].startswith("List the aspects")]
    assert len(sent) == 6
    assert all(body["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": ASPECTS}}
               for body in sent)
    assert not any("response_format" in body for body in server.requests if body not in sent)
    data = result.data
    assert data.height == 6
    for row in data.iter_rows(named=True):
        value = json.loads(row["aspects"])
        assert set(value) == {"aspect", "score"}
    summaries = [b["messages"][-1]["content"] for b in server.requests if b["messages"][-1]["content"].startswith("Summarise")]
    assert sorted(summaries) == sorted(f"Summarise {json.loads(a)['aspect']} scored {json.loads(a)['score']}."
                                       for a in data["aspects"])  # later templates see the parsed object


def test_invalid_replies_go_to_rejects_with_the_validation_error(tmp_path, server):
    json_replies(server, bad_every=3)
    result = run_step(tmp_path, structured_params(server.base_url, 30, json_schema=ASPECTS))
    rejects = result.tables["rejects"]
    assert rejects.height > 0 and result.data.height + rejects.height == 30
    assert set(rejects["reason"]) == {"aspects: schema: score: 0 is less than the minimum of 1"}
    assert all(json.loads(raw)["score"] == 0 for raw in rejects["raw"])


def test_a_reply_that_is_not_json_is_rejected(tmp_path, server):
    result = run_step(tmp_path, structured_params(server.base_url, 2, json_schema=ASPECTS))  # replies are prose
    reasons = result.tables["rejects"]["reason"].to_list()
    assert len(reasons) == 2 and all(r.startswith("aspects: not JSON: ") for r in reasons)


def test_compact_json_fields_stand_for_a_strict_object_schema(tmp_path, server):
    json_replies(server)
    result = run_step(tmp_path, structured_params(server.base_url, 3, json_fields={"aspect": "str", "score": "int"}))
    sent = next(b for b in server.requests if "response_format" in b)["response_format"]["json_schema"]["schema"]
    assert sent == {"type": "object", "properties": {"aspect": {"type": "string"}, "score": {"type": "integer"}},
                    "required": ["aspect", "score"], "additionalProperties": False}
    assert result.data.height == 3


def test_the_schema_enters_the_response_key(tmp_path, server):
    json_replies(server)
    run_step(tmp_path, structured_params(server.base_url, 2, json_schema=ASPECTS))
    asked = len(server.requests)
    run_step(tmp_path, structured_params(server.base_url, 2, json_schema=ASPECTS))
    assert len(server.requests) == asked  # all cached
    looser = {**ASPECTS, "properties": {**ASPECTS["properties"], "score": {"type": "integer"}}}
    run_step(tmp_path, structured_params(server.base_url, 2, json_schema=looser))
    assert len(server.requests) == asked + 2  # only the aspects: the same replies give the summaries' cached prompts


# -- mistakes: one located line at plan time -------------------------------------------------------
GEN = """name: bad
seed: 1
steps:
  gen:
    kind: generate
    n: 4
    labels: [good, bad]
    backend: {type: openai, base_url: "http://127.0.0.1:9/v1", model: m}
    fields:
      question:
        template: Ask about {{ label }}.
"""  # the fields below start on line 12

FIELD_CASES = [
    ("later-field", "      answer:\n        template: '{{ verdict }} {{ question }}'\n      verdict:\n        sample: category\n        values: [a]\n",
     13, ["steps.gen.fields.answer.template", "uses 'verdict'", "'verdict' is filled after this field: declare it above"]),
    ("typo-in-reference", "      answer:\n        template: '{{ qustion }}'\n", 13,
     ["fields.answer.template", "did you mean 'question'"]),
    ("both-template-and-sample", "      level:\n        template: x\n        sample: integer\n        low: 1\n        high: 2\n", 13,
     ["fields.level.template", "does not apply to the integer sampler"]),
    ("sampler-option-missing", "      level:\n        sample: uniform\n        low: 1\n", 12, ["fields.level", "needs 'high'"]),
    ("weights-mismatch", "      level:\n        sample: category\n        values: [a, b]\n        weights: [1]\n", 15,
     ["fields.level.weights", "one number per value"]),
    ("low-above-high", "      level:\n        sample: integer\n        low: 5\n        high: 1\n", 14, ["fields.level.low", "above high"]),
    ("unknown-sampler", "      level:\n        sample: poisson\n", 13, ["fields.level.sample", "'poisson'"]),
    ("reserved-name", "      label:\n        sample: integer\n        low: 1\n        high: 2\n", 12, ["fields.label", "is taken"]),
    ("bad-schema", "      aspects:\n        template: x\n        json_schema: {type: objekt}\n", 14,
     ["fields.aspects.json_schema", "not a valid JSON Schema"]),
    ("remote-ref", "      aspects:\n        template: x\n        json_schema:\n          properties:\n            a: {$ref: 'http://x/s.json'}\n",
     16, ["fields.aspects.json_schema.properties.a.$ref", "does not point inside this schema"]),
    ("ref-to-nowhere", "      aspects:\n        template: x\n        json_schema:\n          items: {$ref: '#/$defs/gone'}\n",
     15, ["fields.aspects.json_schema.items.$ref", "'#/$defs/gone'"]),
    ("bad-compact-type", "      aspects:\n        template: x\n        json_fields: {score: integer}\n", 14,
     ["fields.aspects.json_fields.score", "unknown type 'integer'"]),
    ("text-not-a-field", "    text: anser\n", 12, ["steps.gen.text", "'anser' is not a field"]),
    ("template-with-fields", "    template: x\n", 12, ["steps.gen.template", "does not apply to a step with fields"]),
]


@pytest.mark.parametrize("tail,line,needles", [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES])
def test_field_mistakes_are_one_located_line(cli, write_recipe, tail, line, needles):
    path = write_recipe(GEN + tail)
    result = cli("plan", path)
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert "Traceback" not in result.output
    assert message.startswith(f"error: {path}:{line}:"), message
    for needle in needles:
        assert needle in message, message


# -- keys ---------------------------------------------------------------------------------------------
def test_the_order_of_fields_is_in_the_key_and_a_recipe_without_fields_keeps_its_params(server):
    step = GenerateStep()
    params = record_params(server.base_url, 4)
    swapped = {**params, "fields": {"points": params["fields"]["points"],
                                    **{k: v for k, v in params["fields"].items() if k != "points"}}}
    first = step.identity(GenerateStep.Params.model_validate(params))
    second = step.identity(GenerateStep.Params.model_validate(swapped))
    assert first["field_order"] == ["level", "points", "question", "answer"]
    assert second["field_order"] == ["points", "level", "question", "answer"]
    plain = GenerateStep.Params.model_validate(openai_params(server.base_url, 4))
    assert "fields" not in plain.model_dump(mode="json") and "text" not in plain.model_dump(mode="json")
    assert "field_order" not in step.identity(plain)


def test_free_text_requests_keep_their_response_keys():
    from synthforge.backends.llm import GenerationRequest
    from synthforge.generation.response_cache import response_key
    from synthforge.keys import key_of

    request = GenerationRequest((("user", "hi"),), 0.5, 0.9, 8, 3)
    before = key_of({"backend": "openai", "model": {"model": "m"}, "messages": [["user", "hi"]],
                     "sampling": request.sampling(), "seed": 3})  # the key every cached response was stored under
    assert response_key("openai", {"model": "m"}, request) == before
    structured = GenerationRequest((("user", "hi"),), 0.5, 0.9, 8, 3, schema='{"type":"object"}')
    assert response_key("openai", {"model": "m"}, structured) != before


def test_category_values_from_a_file_are_relative_to_the_recipe_and_in_the_key(tmp_path, server):
    from synthforge.graph import build_graph
    from synthforge.recipe.resolve import load_recipe

    (tmp_path / "personas.txt").write_text("# who writes\na chef\n\na pilot\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GEN.replace("http://127.0.0.1:9/v1", server.base_url)
                      + "      persona:\n        sample: category\n        file: personas.txt\n"
                      + "      answer:\n        template: 'As {{ persona }}: {{ question }}'\n")

    def key() -> str:
        return build_graph(load_recipe(recipe)).keys["default"]["gen"]

    before = key()
    (tmp_path / "personas.txt").write_text("a chef\na pilot\na nurse\n")
    assert key() != before
    params = record_params(server.base_url, 30, fields={
        "persona": {"sample": "category", "file": str(tmp_path / "personas.txt")},
        "answer": {"template": "As {{ persona }}: hello"}})
    assert set(run_step(tmp_path, params).data["persona"]) == {"a chef", "a pilot", "a nurse"}


def test_the_documented_record_example_is_a_valid_step(tmp_path):
    import re
    from pathlib import Path

    import yaml

    doc = (Path(__file__).resolve().parents[1] / "docs" / "steps" / "generate.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL) if "fields:" in b)
    step = yaml.safe_load(block)["steps"]["qa"]
    assert step.pop("kind") == "generate"
    params = GenerateStep.Params.model_validate(step)
    assert list(params.fields) == ["subject", "points", "question", "answer", "review"]
    assert params.text_field() == "answer"
    assert params.fields["review"].reply_schema()["properties"]["verdict"] == {"type": "string", "enum": ["keep", "drop"]}


def test_records_on_the_transformers_backend_are_reproducible_and_cached(tmp_path):
    from tests.tiny_models import tiny_chat_model_dir

    params = {
        "n": 6, "labels": ["positive", "negative"], "max_new_tokens": 6, "temperature": 1.0,
        "backend": {"type": "transformers", "model": str(tiny_chat_model_dir()), "batch_size": 4},
        "hygiene": {"dedupe": False, "min_chars": 0},
        "fields": {"mood": {"sample": "category", "values": ["calm", "angry"]},
                   "title": {"template": "a {{ mood }} {{ label }} title"},
                   "body": {"template": "a review titled {{ title }}"}},
    }
    first = run_step(tmp_path, params)
    assert first.data.height + first.tables["rejects"].height == 6
    assert first.meta["responses_generated"] == 12 - sum(r.startswith("title:") for r in first.tables["rejects"]["reason"])
    again = run_step(tmp_path / "fresh", {**params, "backend": {**params["backend"], "batch_size": 1}})
    assert again.data.equals(first.data)  # the same records from an empty cache, whatever the batch size
    cached = run_step(tmp_path, params)
    assert cached.meta["responses_generated"] == 0 and cached.data.equals(first.data)


def test_plan_counts_a_request_per_generated_field(server):
    params = GenerateStep.Params.model_validate(record_params(server.base_url, 10, max_new_tokens=50))
    estimate = GenerateStep().estimate(params)
    assert estimate.requests == 20  # question and answer; the samplers ask nothing
    note = GenerateStep().plan_note(params)
    assert "10 rows ×" in note and "2 × 50 new, a request per field" in note
    assert estimate.tokens == int(note.split("~")[1].split(" ")[0].replace(",", ""))


def test_a_schema_may_refer_to_its_own_definitions(tmp_path, server):
    json_replies(server, bad_every=3)
    schema = {"$defs": {"score": {"type": "integer", "minimum": 1}}, "type": "object",
              "properties": {"aspect": {"type": "string"}, "score": {"$ref": "#/$defs/score"}}, "required": ["score"]}
    result = run_step(tmp_path, structured_params(server.base_url, 12, json_schema=schema))
    assert set(result.tables["rejects"]["reason"]) == {"aspects: schema: score: 0 is less than the minimum of 1"}
    assert result.data.height > 0


def test_the_shipped_recipes_keep_their_locked_generate_keys(tmp_path):
    """Recipes without fields keep their keys: every generate output of a shipped recipe is in its lockfile."""
    from pathlib import Path

    import synthforge as sf

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    checked = 0
    for lockfile in sorted(recipes.glob("*.lock")):
        locked = set(json.loads(lockfile.read_text())["nodes"])
        graph = sf.open(lockfile.with_suffix(".yaml"), cache_dir=tmp_path / "cache").graph
        generate_keys = {key for key, node in graph.nodes.items() if node.kind == "generate"}
        assert generate_keys <= locked, f"{lockfile.name}: generate keys changed"
        checked += len(generate_keys)
    assert checked > 0


def test_a_fields_system_message_replaces_the_steps(tmp_path, server):
    params = record_params(server.base_url, 2, system="Step system about {{ topic }}.")
    params["fields"]["answer"]["system"] = "Answer system for {{ question }}."
    run_step(tmp_path, params)
    systems = {body["messages"][-1]["content"].split(" ")[0]: body["messages"][0]["content"] for body in server.requests}
    assert systems["Ask"].startswith("Step system about ")
    assert systems["Answer"].startswith("Answer system for synthetic reply to")


@pytest.mark.parametrize("tail,needles", [
    ("    text: x\n    template: hi\n", ["steps.gen.text", "declares no fields"]),
    ("    system: hi\n", ["steps.gen.template", "required field is missing", "or fields:"]),
], ids=["text-without-fields", "no-template-no-fields"])
def test_a_step_without_fields_still_needs_its_template(cli, write_recipe, tail, needles):
    text = GEN.split("    fields:\n")[0] + tail
    result = cli("plan", write_recipe(text))
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message


def test_replies_are_parsed_strictly_but_a_code_fence_is_tolerated():
    from synthforge.generation.fields import compact_schema, parse_structured

    schema = compact_schema({"n": "int", "tags": "list[str]", "mood": ["up", "down"], "ok": "bool", "x": "float"})
    good = '{"n": 1, "tags": ["a"], "mood": "up", "ok": true, "x": 0.5}'
    assert parse_structured(good, schema) == ({"n": 1, "tags": ["a"], "mood": "up", "ok": True, "x": 0.5}, None)
    assert parse_structured(f"```json\n{good}\n```", schema)[1] is None
    assert parse_structured(f"Sure! {good}", schema)[1].startswith("not JSON: ")
    assert parse_structured(good.replace('"up"', '"sideways"'), schema)[1] == "schema: mood: 'sideways' is not one of ['up', 'down']"
    assert parse_structured(good.replace('"n": 1, ', ""), schema)[1] == "schema: 'n' is a required property"
    assert parse_structured(good[:-1] + ', "extra": 1}', schema)[1].startswith("schema: Additional properties are not allowed")


def test_a_run_failing_in_a_later_field_resumes_with_only_the_missing_responses(tmp_path, server):
    server.fail_plan = ["ok"] * 9  # the 6 questions, then 3 answers
    server.default = "500"
    params = record_params(server.base_url, 6, concurrency=1, backend={"max_retries": 0})
    with pytest.raises(UserError):
        run_step(tmp_path, params)
    assert server.ok_count == 9
    server.default = "ok"
    result = run_step(tmp_path, params)
    assert server.ok_count == 12  # the 3 missing answers, nothing twice
    assert result.meta["responses_cached"] == 9 and result.meta["responses_generated"] == 3
    assert result.data.height == 6
    assert result.data.equals(run_step(tmp_path, params).data)


def test_records_do_not_depend_on_the_shard_size(tmp_path, server):
    from synthforge.stepapi import Runtime

    whole = run_step(tmp_path / "whole", record_params(server.base_url, 9))
    sharded = run_step(tmp_path / "sharded", record_params(server.base_url, 9), runtime=Runtime(progress=False, shard_rows=2))
    assert sharded.data.equals(whole.data) and sharded.tables["rejects"].equals(whole.tables["rejects"])
