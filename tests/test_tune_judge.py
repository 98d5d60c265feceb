"""An LLM judge as `tune`'s label-fidelity instrument: a `judge` step of the recipe, reading the tuned step, judges
each probe's rows as an ordinary cached step, and its pass rate (with a Wilson interval) is a target. The fake
server's judge passes a review when it has at least 7 distinct words of 8, which sampling at a higher
temperature makes likelier (tests/fake_openai_server.py: spread_reply), so the verdicts respond to the settings."""

from __future__ import annotations

import json

import pytest

from tests.fake_openai_server import FakeOpenAIServer, spread_reply
from tests.test_tune import RECIPE, tune

JUDGE_STEP = """\
  gen_judge:
    kind: judge
    input: gen
    template: "Label: {{ label }}\\nReview: {{ text }}\\nDoes the review fit its label?"
    scale: SCALE
    backend: {type: openai, base_url: 'URL', model: judge-m, concurrency: 2, max_retries: 2, backoff_s: 0.01}
"""
CRITERIA = "{criteria: {fits_label: the review expresses its label}, rationale: false}"


def judged(body: dict) -> str:
    """The generator's spread reply, or, to a judge's request, a verdict on the review it quotes."""
    prompt = body["messages"][-1]["content"]
    if "Reply with JSON only" not in prompt:
        return spread_reply(body)
    review = prompt.split("Review: ", 1)[1].split("\n", 1)[0]
    distinct = len(set(review.split()))
    if '"score"' in prompt:
        return json.dumps({"score": min(5, max(1, distinct - 3))})  # 7 distinct words: 4 of 5
    return json.dumps({"fits_label": distinct >= 7})


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        fake.reply_body = judged
        yield fake


def write_recipe(tmp_path, monkeypatch, server, tiny_encoder, scale: str = CRITERIA, block: str = "    llm_judge: gen_judge\n"):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(tmp_path / "cache"))
    steps, tune_block = RECIPE.split("tune:\n")
    text = steps + JUDGE_STEP.replace("SCALE", scale) + "tune:\n" + tune_block.replace(
        'targets: ["distinct_1 >= 0.12"]', 'targets: ["judge_pass_rate >= 0.6"]') + block
    path = tmp_path / "r.yaml"
    path.write_text(text.replace("ENCODER", str(tiny_encoder)).replace("URL", server.base_url))
    return path


@pytest.fixture
def recipe(tmp_path, monkeypatch, server, tiny_encoder, data_csv):
    return write_recipe(tmp_path, monkeypatch, server, tiny_encoder)


def judge_requests(server) -> int:
    return sum("Reply with JSON only" in body["messages"][-1]["content"] for body in server.requests)


def test_the_judge_pass_rate_is_a_target_the_search_meets_and_a_repeated_probe_costs_nothing(recipe, server):
    result = tune(recipe, "gen", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["llm_judge"] == "gen_judge" and found["interval_methods"]["judge_pass_rate"] == "wilson"
    probes = found["probes"]
    default, best = probes[0], probes[-1]
    assert default["default"] and default["metrics"]["judge_pass_rate"] < 0.6  # temperature 0.1: few distinct words
    assert best["meets_targets"] and best["metrics"]["judge_pass_rate"] >= 0.6 and found["best"] == [best["number"]]
    assert best["settings"]["temperature"] > default["settings"]["temperature"]
    for probe in probes:
        low, high = probe["intervals"]["judge_pass_rate"]
        assert 0 <= low <= probe["metrics"]["judge_pass_rate"] <= high <= 1
        assert "gen_judge" in probe["keys"]  # the judge is an ordinary step of the probe, keyed like any other
    assert judge_requests(server) == 24 * len(probes)  # every row of every probe judged once
    assert default["requests"] == 48  # the probe's 24 rows generated and judged

    sent = len(server.requests)  # the same probes judged again: from the cache
    again = tune(recipe, "gen", "--probes", str(len(probes) + 1), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["probes"][: len(probes)] == probes
    assert len(server.requests) == sent

    table = tune(recipe, "gen")
    assert "judge_pass_rate: Wilson (a share of the rows)" in table.output, table.output
    assert "default settings (#0): misses judge_pass_rate >= 0.6" in table.output


def test_the_judges_rubric_moves_the_verdict_and_the_search(tmp_path, monkeypatch, server, tiny_encoder, data_csv):
    """At temperature 1, an integer scale with pass_score 4 passes the reviews the criteria pass (7 distinct
    words of 8); 5 passes only those of 8, so the rate falls; the search (keyed by the threshold) is another."""
    def searched(scale: str, pass_score: int | None) -> dict:
        block = "    llm_judge: gen_judge\n" + (f"    pass_score: {pass_score}\n" if pass_score else "")
        path = write_recipe(tmp_path, monkeypatch, server, tiny_encoder, scale=scale, block=block)
        path.write_text(path.read_text().replace("temperature: 0.1  # too uniform", "temperature: 1.0"))
        result = tune(path, "gen", "--json", "--probes", "1")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    criteria, four, five = searched(CRITERIA, None), *(searched("{min: 1, max: 5, rationale: false}", s) for s in (4, 5))
    rate = {name: found["probes"][0]["metrics"]["judge_pass_rate"] for name, found in
            (("criteria", criteria), ("4", four), ("5", five))}
    assert 0 < rate["5"] < rate["4"] == rate["criteria"] < 1, rate
    assert four["search"] != five["search"] and four["pass_score"] == 4
    assert four["probes"][0]["keys"] == five["probes"][0]["keys"]  # the same judge entry, read at two thresholds
    assert four["probes"][0]["keys"]["gen"] == criteria["probes"][0]["keys"]["gen"]  # one pool, judged by two rubrics
    assert four["probes"][0]["keys"]["gen_judge"] != criteria["probes"][0]["keys"]["gen_judge"]


@pytest.mark.parametrize(("edit", "new", "message"), [
    ("    llm_judge: gen_judge\n", "    llm_judge: gen_emb\n",
     "tune.gen.llm_judge: step 'gen_emb' is a embed step; llm_judge names a judge step"),
    ("    llm_judge: gen_judge\n", "    llm_judge: gen_jduge\n", "tune.gen.llm_judge: no step 'gen_jduge' in the recipe"),
    ("    llm_judge: gen_judge\n", "    llm_judge: gen_judge.rejects\n",
     "tune.gen.llm_judge: llm_judge names a judge step, not a table: 'gen_judge.rejects'"),
    ("    input: gen\n    template", "    input: real\n    template",
     "tune.gen.llm_judge: judge step 'gen_judge' does not read 'gen'"),
    ("    llm_judge: gen_judge\n", "", "tune.gen.targets.0: 'judge_pass_rate >= 0.6' is measured by an LLM judge"),
    ("    llm_judge: gen_judge\n", "    llm_judge: gen_judge\n    pass_score: 4\n",
     "tune.gen.pass_score: pass_score applies to an integer scale; judge step 'gen_judge' has pass/fail criteria"),
    (CRITERIA, "{min: 1, max: 5}", "tune.gen.llm_judge: judge step 'gen_judge' scores 1 to 5: the search needs the score"),
    ("    llm_judge: gen_judge\n", "    llm_judge: gen_judge\n    pass_score: 9\n", "scale: PASS9"),
])
def test_a_misdeclared_judge_instrument_is_a_located_one_line_error(recipe, server, edit, new, message):
    text = recipe.read_text()
    if message == "scale: PASS9":  # an integer scale with a pass score beyond it
        text = text.replace(CRITERIA, "{min: 1, max: 5}")
        message = "tune.gen.pass_score: pass_score must be an integer in 2..5 (judge step 'gen_judge' scores 1 to 5), got 9"
    recipe.write_text(text.replace(edit, new))
    result = tune(recipe, "gen")
    assert result.exit_code == 2, result.output
    err = result.output.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in result.output, result.output
    assert message in err[0] and "r.yaml:" in err[0], err[0]
    assert not server.requests


def test_the_dry_run_estimates_the_judges_requests_too(recipe, server):
    planned = tune(recipe, "gen", "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert "dry run: 6 probes to run, at most ~432 LLM requests" in planned.output and not server.requests
