"""Structured output beyond the OpenAI default: the transformers backend decoding under the schema (xgrammar),
its keys, a clear error (exit 2) where the library is missing; the schema in llama-cpp-python's form."""

from __future__ import annotations

import pytest

from synthforge.errors import UserError
from synthforge.steps.generate import GenerateStep
from tests.fake_openai_server import FakeOpenAIServer
from tests.generate_helpers import run_step
from tests.test_generate_fields import ASPECTS, GEN, json_replies, structured_params

VERDICT = {"mood": ["calm", "angry"], "verdict": ["keep", "drop"], "ok": "bool"}  # bounded: a random model finishes


def tiny_params(n: int, **field) -> dict:
    from tests.tiny_models import tiny_chat_model_dir

    return {
        "n": n, "labels": ["positive", "negative"], "max_new_tokens": 64, "temperature": 1.0,
        "backend": {"type": "transformers", "model": str(tiny_chat_model_dir()), "batch_size": 4},
        "hygiene": {"dedupe": False, "min_chars": 0},
        "fields": {"title": {"template": "a {{ label }} title"},
                   "review": {"template": "judge the review titled {{ title }}", **field}},
        "text": "title",
    }


@pytest.fixture
def without_decoder(monkeypatch):
    """As if xgrammar were not installed."""
    monkeypatch.setattr("synthforge.backends.constrained.DECODER_PACKAGE", "xgrammar-not-installed")


def test_a_random_model_decoded_under_the_schema_gives_only_valid_replies(tmp_path):
    from synthforge.generation.fields import compact_schema, parse_structured

    first = run_step(tmp_path, tiny_params(12, json_fields=VERDICT))
    assert first.tables["rejects"]["reason"].to_list() == [] and first.data.height == 12
    schema = compact_schema(VERDICT)
    assert all(parse_structured(reply, schema)[1] is None for reply in first.data["review"])
    free = run_step(tmp_path / "free", tiny_params(12))  # the same model left free writes no JSON at all
    assert not any(parse_structured(reply, schema)[1] is None for reply in free.data["review"])
    again = run_step(tmp_path / "fresh", {**tiny_params(12, json_fields=VERDICT), "backend": {
        **tiny_params(1)["backend"], "batch_size": 3}})
    assert again.data.equals(first.data)  # seeded per row: the same records whatever the batch size


def test_a_reply_cut_short_by_max_new_tokens_is_rejected_with_the_reason(tmp_path):
    result = run_step(tmp_path, {**tiny_params(4, json_fields=VERDICT), "max_new_tokens": 3})
    assert result.data.height == 0
    assert all(reason.startswith("review: not JSON") for reason in result.tables["rejects"]["reason"])


def test_the_decoder_enters_the_key_only_where_a_schema_is_used():
    from importlib.metadata import version

    step = GenerateStep()
    plain = step.identity(GenerateStep.Params.model_validate(tiny_params(4)))
    structured = step.identity(GenerateStep.Params.model_validate(tiny_params(4, json_fields=VERDICT)))
    assert "decoder" not in plain["backend"]
    assert structured["backend"] == {**plain["backend"], "decoder": f"xgrammar {version('xgrammar')}"}


def test_free_text_and_openai_response_keys_do_not_name_the_decoder():
    from synthforge.backends.llm import GenerationRequest, request_identity
    from synthforge.backends.transformers_llm import TransformersLLM

    backend = TransformersLLM.__new__(TransformersLLM)
    free = GenerationRequest((("user", "x"),), 0.0, 1.0, 4, 1)
    schema = GenerationRequest((("user", "x"),), 0.0, 1.0, 4, 1, schema='{"type":"object"}')
    assert request_identity(backend, {"model": "m"}, free) == {"model": "m"}
    assert request_identity(backend, {"model": "m"}, schema)["decoder"].startswith("xgrammar ")
    assert request_identity(object(), {"model": "m"}, schema) == {"model": "m"}  # a server decodes it itself


def test_a_schema_on_transformers_without_the_library_is_one_located_line(cli, write_recipe, without_decoder):
    text = GEN.replace('    backend: {type: openai, base_url: "http://127.0.0.1:9/v1", model: m}\n',
                       "    backend: {type: transformers}\n")
    path = write_recipe(text + "      aspects:\n        template: x\n        json_fields: {a: str}\n")
    result = cli("plan", path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith(f"error: {path}:14:"), message
    assert "fields.aspects.json_fields" in message
    assert "needs the xgrammar-not-installed package, which is not installed" in message
    assert "pip install 'synthforge[constrained]'" in message
    assert cli("plan", write_recipe(text + "      answer:\n        template: y\n", "free.yaml")).exit_code == 0


def test_the_backend_refuses_a_schema_before_loading_when_the_library_is_missing(without_decoder):
    from synthforge.backends.llm import GenerationRequest
    from synthforge.backends.transformers_llm import TransformersLLM

    backend = TransformersLLM.__new__(TransformersLLM)  # never loads: the refusal comes first
    request = GenerationRequest((("user", "x"),), 0.0, 1.0, 4, 1, schema='{"type":"object"}')
    with pytest.raises(UserError, match="needs the xgrammar-not-installed package"):
        backend.generate([request])


def test_invalid_server_replies_still_go_to_rejects_without_the_library(tmp_path, without_decoder):
    with FakeOpenAIServer() as server:
        json_replies(server, bad_every=3)
        result = run_step(tmp_path, structured_params(server.base_url, 9, json_fields={"aspect": "str", "score": "int"}))
    rejects = result.tables["rejects"]
    assert rejects.height > 0 and result.data.height + rejects.height == 9


def test_json_object_sends_the_schema_in_llama_cpp_pythons_form_and_keys_its_replies_apart(tmp_path):
    with FakeOpenAIServer() as server:
        json_replies(server)
        params = structured_params(server.base_url, 3, json_schema=ASPECTS)
        params["backend"]["response_format"] = "json_object"
        assert run_step(tmp_path, params).data.height == 3
        sent = [body["response_format"] for body in server.requests if "response_format" in body]
        assert sent == [{"type": "json_object", "schema": ASPECTS}] * 3
        asked = len(server.requests)
        run_step(tmp_path, structured_params(server.base_url, 3, json_schema=ASPECTS))  # the same response cache
        again = [body["response_format"]["type"] for body in server.requests[asked:]]
        assert again == ["json_schema"] * 3  # the free-text fields are served from the cache, these asked anew
