"""The `judge` step: rubric prompts, structured output, parsing and validation, retries, rejects, resume."""

from __future__ import annotations

import json

import pytest

from synthforge.errors import UserError
from synthforge.steps.judge import JudgeStep
from tests.fake_openai_server import FakeOpenAIServer
from tests.generate_helpers import make_ctx, write_entry

TEXTS = ["a warm and funny film", "dull plot, weak acting", "bad: never ends", "bad twice over", "the soundtrack is lovely",
         "boring", "an instant classic", "worst of the year"]


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture
def pool(tmp_path):
    rows = [{"id": f"r{i}", "text": text, "label": "positive" if i % 2 == 0 else "negative", "source": "synthetic"}
            for i, text in enumerate(TEXTS)]
    return write_entry(tmp_path / "pool", rows)


def judge_params(base_url: str, **overrides):
    backend = {"type": "openai", "base_url": base_url, "model": "judge-model", "backoff_s": 0.01, "max_retries": 1,
               "timeout_s": 5, "concurrency": 2, **overrides.pop("backend", {})}
    return {"input": "pool", "template": "Does this {{ label }} review (one of {{ labels | join(', ') }}) fit?\n{{ text }}",
            "backend": backend, **overrides}


def run_judge(root, params, pool, **kwargs):
    return JudgeStep().run(make_ctx(root, params, inputs={"input": pool}, kind=JudgeStep, step="judge", **kwargs))


def reviewed_text(body: dict) -> str:
    return body["messages"][-1]["content"].split("\n")[1]


def score_by_length(body: dict) -> str:
    text = reviewed_text(body)
    return json.dumps({"rationale": f"{len(text)} characters", "score": len(text) % 5 + 1})


def test_the_schema_is_sent_and_valid_replies_are_scored(tmp_path, server, pool):
    server.reply_body = score_by_length
    result = run_judge(tmp_path, judge_params(server.base_url), pool)
    data = result.data
    assert data["score"].to_list() == [len(t) % 5 + 1 for t in TEXTS]
    assert data["score_rationale"].to_list() == [f"{len(t)} characters" for t in TEXTS]
    assert data.columns[:4] == ["id", "text", "label", "source"]
    body = server.requests[0]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["score"] == {"type": "integer", "minimum": 1, "maximum": 5}
    assert schema["required"] == ["rationale", "score"] and body["temperature"] == 0
    prompt = body["messages"][-1]["content"]
    assert "(one of negative, positive)" in prompt and prompt.endswith(
        'Reply with JSON only, in this form: {"rationale": "<one or two sentences>", "score": <an integer from 1 to 5>}')
    scores = result.meta["scores"]
    assert scores["rows"] == 8 and sum(scores["counts"].values()) == 8 and list(scores["counts"]) == ["1", "2", "3", "4", "5"]
    assert scores["mean"] == pytest.approx(sum(len(t) % 5 + 1 for t in TEXTS) / 8, abs=1e-4)
    assert result.meta["structured_output"] is True and result.meta["rejected"] == 0


def test_an_invalid_reply_is_asked_again_then_rejected_with_its_error(tmp_path, server, pool):
    def reply(body: dict) -> str:
        text = reviewed_text(body)
        if text.startswith("bad") and (body["temperature"] == 0 or "never" in text):
            return json.dumps({"rationale": "out of range", "score": 9})  # valid JSON, invalid against the schema
        return json.dumps({"rationale": "fine", "score": 3})

    server.reply_body = reply
    result = run_judge(tmp_path, judge_params(server.base_url, attempts=2, retry_temperature=0.5), pool)
    assert result.data.height == 7 and result.tables["rejects"]["text"].to_list() == ["bad: never ends"]
    rejected = result.tables["rejects"].row(0, named=True)
    assert rejected["reason"].startswith("schema: score: 9 is greater than the maximum of 5")
    assert json.loads(rejected["raw"])["score"] == 9
    assert result.meta["tries_to_valid"] == {"1": 6, "2": 1}
    assert len(server.requests) == 8 + 2  # the two bad rows were asked again, at the retry temperature, another seed
    retries = [body for body in server.requests if body["temperature"] == 0.5]
    first = {reviewed_text(body): body["seed"] for body in server.requests if body["temperature"] == 0}
    assert len(retries) == 2 and all(body["seed"] != first[reviewed_text(body)] for body in retries)
    assert result.meta["reject_reasons"] == {"schema": 1}


def test_replies_that_do_not_parse_are_rejected_and_json_inside_prose_is_read(tmp_path, server, pool):
    def reply(body: dict) -> str:
        text = reviewed_text(body)
        if "boring" in text:
            return "I would say 4 out of 5."
        return 'Here is my verdict: {"rationale": "ok", "score": 2} Hope it helps.'

    server.reply_body = reply
    result = run_judge(tmp_path, judge_params(server.base_url, attempts=1), pool)
    assert set(result.data["score"]) == {2} and result.data.height == 7
    reason = result.tables["rejects"]["reason"].to_list()
    assert len(reason) == 1 and reason[0].startswith("not JSON")


def test_pass_fail_criteria_become_columns_and_the_score_is_the_share_passed(tmp_path, server, pool):
    def reply(body: dict) -> str:
        text = reviewed_text(body)
        return json.dumps({"fits_label": "bad" not in text, "fluent": len(text) > 10})

    server.reply_body = reply
    scale = {"criteria": {"fits_label": "the text expresses its label", "fluent": "it reads well"},
             "rationale": False}
    result = run_judge(tmp_path, judge_params(server.base_url, scale=scale, column="quality"), pool)
    data = result.data
    assert "quality_rationale" not in data.columns
    expected = [(("bad" not in t) + (len(t) > 10)) / 2 for t in TEXTS]
    assert data["quality"].to_list() == expected
    assert data["quality_fits_label"].to_list() == ["bad" not in t for t in TEXTS]
    assert "- fits_label: the text expresses its label" in server.requests[0]["messages"][-1]["content"]
    assert result.meta["scores"]["pass_rate"]["fits_label"] == pytest.approx(6 / 8)
    assert result.meta["scores"]["all_pass"] == pytest.approx(sum(e == 1 for e in expected) / 8)


def test_a_killed_run_resumes_from_the_cached_verdicts(tmp_path, server, pool):
    server.reply_body = score_by_length
    server.fail_plan = ["ok"] * 3 + ["500"] * 20
    params = judge_params(server.base_url, backend={"concurrency": 1, "max_retries": 0})
    with pytest.raises(UserError):
        run_judge(tmp_path, params, pool)
    server.fail_plan = []
    asked_before = server.ok_count
    result = run_judge(tmp_path, params, pool)
    assert asked_before == 3 and server.ok_count - asked_before == 5  # only the rows without a cached verdict
    assert result.meta["responses_cached"] == 3 and result.data.height == 8
    again = run_judge(tmp_path, params, pool)
    assert server.ok_count == 8 and again.data.equals(result.data)


def test_n_judges_a_seeded_sample_that_grows_with_n(tmp_path, server, pool):
    server.reply_body = score_by_length
    three = run_judge(tmp_path, judge_params(server.base_url, n=3), pool).data["id"].to_list()
    five = run_judge(tmp_path, judge_params(server.base_url, n=5), pool).data["id"].to_list()
    assert len(three) == 3 and set(three) < set(five) and len(five) == 5


@pytest.mark.parametrize("change,field,words", [
    ({"template": "{{ txet }}"}, "template", "'txet'"),
    ({"system": "{{ nope }}", "template": "{{ text }}"}, "system", "'nope'"),
    ({"column": "label"}, "column", "already has a column 'label'"),
])
def test_template_and_column_mistakes_are_located_once_the_input_is_known(tmp_path, server, pool, change, field, words):
    with pytest.raises(UserError) as refused:
        run_judge(tmp_path, judge_params(server.base_url, **change), pool)
    assert refused.value.field == field and words in refused.value.message
    assert not server.requests


@pytest.mark.parametrize("scale,field,words", [
    ({"min": 5, "max": 5}, "scale.min", "not below max"),
    ({"criteria": {}}, "scale.criteria", "at least one criterion"),
    ({"criteria": {"a b": "x"}}, "scale.criteria.a b", "not usable"),
    ({"criteria": {"ok": " "}}, "scale.criteria.ok", "description"),
    ({"min": 1, "criteria": {"ok": "x"}}, "scale.min", "integer scale"),
    ({"min": 0, "max": 1000}, "scale.max", "too fine"),
])
def test_rubric_mistakes_are_one_located_line(scale, field, words):
    with pytest.raises(UserError) as refused:
        JudgeStep.Params.model_validate(judge_params("http://127.0.0.1:9/v1", scale=scale))
    assert refused.value.field == field and words in refused.value.message


def test_a_template_that_does_not_parse_is_refused_before_the_build():
    with pytest.raises(UserError) as refused:
        JudgeStep.Params.model_validate(judge_params("http://127.0.0.1:9/v1", template="{{ text "))
    assert refused.value.field == "template"


def test_a_tiny_transformers_judge_decodes_under_the_schema_and_rejects_what_is_cut_off(tmp_path, pool):
    pytest.importorskip("torch")
    pytest.importorskip("xgrammar")
    from tests.tiny_models import tiny_chat_model_dir

    params = {"input": "pool", "template": "review: {{ text }}", "max_new_tokens": 40, "attempts": 2,
              "backend": {"type": "transformers", "model": str(tiny_chat_model_dir()), "batch_size": 4}}
    result = run_judge(tmp_path, params, pool)
    assert result.meta["structured_output"] is True  # decoded under the verdict's schema (backends/constrained.py)
    rejects = result.tables["rejects"]
    assert result.meta["responses_generated"] == 16 and result.data.height == 0  # a random model never closes its rationale
    assert all(raw.startswith('{"rationale": "') for raw in rejects["raw"])  # ...but every reply starts as the schema says
    assert set(r.split(":")[0] for r in rejects["reason"]) == {"not JSON"}
    again = run_judge(tmp_path, params, pool)
    assert again.meta["responses_cached"] == 16 and again.meta["responses_generated"] == 0
    assert again.tables["rejects"].equals(rejects)


def test_stats_shows_the_judges_score_distribution():
    from synthforge.generation.rubric import Scale, score_distribution
    from synthforge.stats import format_stats

    scores = score_distribution(Scale(), [5, 4, 4, 1], {})
    assert scores["counts"] == {"1": 1, "2": 0, "3": 0, "4": 2, "5": 1} and scores["mean"] == 3.5
    text = format_stats({"metrics": {"rows": 4.0}, "judge_scores": scores})
    assert "judge score: mean" in text and "integer 1 to 5, over 4 rows" in text
    assert any(line.startswith("judge score = 4") and " 2 " in line for line in text.splitlines())


def test_the_agreement_recipe_reuses_the_diversity_studys_pools(tmp_path):
    """recipes/judge_agreement.yaml repeats the study's steps: every key but its judge's is in the study's lockfile."""
    from pathlib import Path

    import synthforge as sf

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    locked = set(json.loads((recipes / "diversity_study.lock").read_text())["nodes"])
    graph = sf.open(recipes / "judge_agreement.yaml", cache_dir=tmp_path / "cache").graph
    others = {key for key, node in graph.nodes.items() if node.kind != "judge"}
    assert len(others) == 1 + 1 + 3 * 10 and others <= locked


def test_the_instruct_study_judges_its_structured_records_and_selects_among_those_passing():
    """recipes/instruct_study.yaml: a structured field decoded under its schema, a judge on the records, and
    the selection restricted to the rows the judge passed on every criterion (docs/instruct.md)."""
    from pathlib import Path

    from synthforge.recipe.resolve import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "instruct_study.yaml")
    for variant in recipe.variants:
        steps = variant.steps
        records, judged, selected = steps["records"].params, steps["judged"].params, steps["selected"].params
        assert records.structured_fields() == ["reading"] and records.text_field() == "review"
        assert str(judged.input) == "records" and set(judged.scale.criteria) == {"fits_label", "on_aspect"}
        assert str(steps["records_emb"].params.input) == "judged"
        assert (selected.where.column, selected.where.min) == ("score", 1.0)
        assert not records.hygiene.dedupe and records.fields["review"].hygiene.dedupe  # readings repeat, reviews do not


def test_verdict_agreement_counts_kappa_and_bootstraps_paired_rows():
    import numpy as np

    from synthforge.fidelity import verdict_agreement

    first = np.array([True] * 40 + [False] * 60)
    second = np.array([True] * 30 + [False] * 10 + [True] * 10 + [False] * 50)
    found = verdict_agreement(first, second, resamples=500)
    assert found["table"] == [[30, 10], [10, 50]] and found["agreement"] == pytest.approx(0.8)
    expected = 0.4 * 0.4 + 0.6 * 0.6  # chance agreement from the two pass rates
    assert found["kappa"] == pytest.approx((0.8 - expected) / (1 - expected))
    lo, hi = found["kappa_ci"]
    assert lo < found["kappa"] < hi and 0.3 < lo and hi < 0.8
    same = verdict_agreement(np.ones(10, bool), np.ones(10, bool), resamples=50)
    assert same["agreement"] == 1.0 and same["kappa"] is None  # one verdict for every row: kappa is undefined


def test_a_recipe_builds_a_judge_resumes_it_from_cache_and_locates_a_template_mistake(cli, write_recipe, data_csv, server):
    server.reply_body = score_by_length
    from tests.conftest import BASIC

    recipe = BASIC + (
        "  judged:\n    kind: judge\n    input: rows\n    n: 6\n"
        "    template: \"Rate this {{ label }} review:\\n{{ text }}\"\n"
        f"    backend: {{type: openai, base_url: \"{server.base_url}\", model: judge-model, backoff_s: 0.01}}\n")
    path = write_recipe(recipe)
    built = cli("build", path)
    assert built.exit_code == 0, built.output
    assert len(server.requests) == 6
    again = cli("build", path)
    assert again.exit_code == 0 and len(server.requests) == 6  # fully cached: nothing asked again
    wrong = write_recipe(recipe.replace("{{ text }}", "{{ txet }}"), "wrong.yaml")
    refused = cli("build", wrong)
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert any("wrong.yaml:" in line and "judged.template" in line and "'txet'" in line for line in lines)
