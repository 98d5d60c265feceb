"""The generate step end to end against a real local HTTP server (OpenAI-compatible)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from synthforge.errors import UserError
from synthforge.keys import key_of
from synthforge.steps.generate import GenerateParams, GenerateStep
from tests.fake_openai_server import FakeOpenAIServer
from tests.generate_helpers import openai_params, run_step, write_entry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    with FakeOpenAIServer(slow_s=1.0) as fake:
        yield fake


def user_prompts(server) -> list[str]:
    return [body["messages"][-1]["content"] for body in server.requests]


# -- shape of the output --------------------------------------------------------
def test_rows_carry_ids_labels_variables_and_settings(tmp_path, server):
    result = run_step(tmp_path, openai_params(server.base_url, 12, temperature=0.7, top_p=0.9, max_new_tokens=50))
    data = result.data
    assert data.height == 12
    assert data["id"].n_unique() == 12
    assert set(data["source"]) == {"synthetic"}
    assert Counter(data["label"]) == {"positive": 6, "negative": 6}
    assert set(data["mode"]) == {"topic"}
    assert set(data["temperature"]) == {0.7} and set(data["top_p"]) == {0.9} and set(data["max_new_tokens"]) == {50}
    assert data["row_seed"].n_unique() == 12
    for row in data.iter_rows(named=True):  # the recorded variables are the ones the prompt used
        assert f"Write a {row['style']} {row['label']} review" in row["text"] and row["topic"] in row["text"]
    sent = server.requests[0]
    assert sent["model"] == "fake-model" and sent["temperature"] == 0.7 and sent["max_tokens"] == 50
    assert result.meta["prompt_tokens"] == 120 and result.meta["completion_tokens"] > 0


def test_rerun_is_identical_and_served_from_the_response_cache(tmp_path, server):
    first = run_step(tmp_path, openai_params(server.base_url, 10))
    sent = len(server.requests)
    second = run_step(tmp_path, openai_params(server.base_url, 10))
    assert len(server.requests) == sent == 10
    assert second.data.equals(first.data)
    assert second.meta["responses_cached"] == 10 and second.meta["responses_generated"] == 0


def test_raising_n_generates_only_the_new_rows(tmp_path, server):
    small = run_step(tmp_path, openai_params(server.base_url, 8))
    big = run_step(tmp_path, openai_params(server.base_url, 20))
    assert len(server.requests) == 20
    assert big.meta["responses_generated"] == 12 and big.meta["responses_cached"] == 8
    assert big.data.head(8).equals(small.data)


def test_a_downstream_only_change_reuses_every_response(tmp_path, server):
    run_step(tmp_path, openai_params(server.base_url, 10))
    result = run_step(tmp_path, openai_params(server.base_url, 10, hygiene={"max_chars": 90}, concurrency=2))
    assert len(server.requests) == 10
    assert result.data.height + result.tables["rejects"].height == 10


def test_another_seed_or_model_draws_new_rows(tmp_path, server):
    run_step(tmp_path, openai_params(server.base_url, 5), seed=0)
    run_step(tmp_path, openai_params(server.base_url, 5), seed=1)
    assert len(server.requests) == 10
    run_step(tmp_path, openai_params(server.base_url, 5, backend={"model": "other-model"}), seed=0)
    assert len(server.requests) == 15


# -- diversity controls -----------------------------------------------------------
def test_num_topics_restricts_every_variable_to_its_first_values(tmp_path, server):
    wide = run_step(tmp_path / "wide", openai_params(server.base_url, 40))
    narrow = run_step(tmp_path / "narrow", openai_params(server.base_url, 40, num_topics=2))
    assert len(set(wide.data["topic"])) > 2
    assert set(narrow.data["topic"]) == {"food", "travel"}
    assert set(narrow.data["style"]) == {"short", "formal"}


@pytest.mark.parametrize("n, fraction, per_seed, expected", [(20, 0.25, 2, 5), (30, 0.5, 3, 15), (7, 0.3, 1, 2)])
def test_paraphrase_fraction_gives_the_expected_paraphrase_rows(tmp_path, server, n, fraction, per_seed, expected):
    result = run_step(tmp_path, openai_params(server.base_url, n, paraphrase={"fraction": fraction, "per_seed": per_seed}))
    data = result.data
    paraphrases = data.filter(data["mode"] == "paraphrase")
    assert paraphrases.height == expected and data.height == n
    assert data.filter(data["mode"] == "topic")["paraphrase_of"].null_count() == n - expected
    per_seed_counts = Counter(paraphrases["paraphrase_of"])
    assert max(per_seed_counts.values()) <= per_seed
    assert len(per_seed_counts) == -(-expected // per_seed)  # ceil: m paraphrases per seed item
    by_id = {row["id"]: row for row in data.iter_rows(named=True)}
    prompts = user_prompts(server)
    for row in paraphrases.iter_rows(named=True):
        seed = by_id.get(row["paraphrase_of"])
        if seed is not None:  # the seed row's text was put in the paraphrase prompt; label and topic carried over
            assert any(p.startswith("Paraphrase") and seed["text"] in p for p in prompts)
            assert row["label"] == seed["label"] and row["topic"] == seed["topic"]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.75])
def test_labels_stay_balanced_with_paraphrases(tmp_path, server, fraction):
    paraphrase = {"fraction": fraction, "per_seed": 1} if fraction else None
    result = run_step(tmp_path, openai_params(server.base_url, 40, labels=["pos", "neg"], paraphrase=paraphrase))
    counts = Counter(result.data["label"]) + Counter(result.tables["rejects"]["label"])
    assert abs(counts["pos"] - counts["neg"]) <= 2, counts


def test_paraphrases_of_few_shot_examples(tmp_path, server):
    examples = write_entry(tmp_path / "split", [
        {"id": f"r{i}", "text": f"real example number {i}", "label": "positive" if i % 2 else "negative"} for i in range(6)
    ])
    params = openai_params(server.base_url, 10, paraphrase={"fraction": 0.4, "per_seed": 2, "source": "few_shot"},
                           few_shot_from="split")
    result = run_step(tmp_path, params, inputs={"few_shot_from": examples})
    paraphrases = result.data.filter(result.data["mode"] == "paraphrase")
    assert paraphrases.height == 4
    assert set(paraphrases["paraphrase_of"]) <= {f"r{i}" for i in range(6)}
    assert sum("real example number" in p for p in user_prompts(server)) == 4


def test_few_shot_examples_are_sampled_into_the_prompt(tmp_path, server):
    examples = write_entry(tmp_path / "split", [
        {"id": f"r{i}", "text": f"example text {i}", "label": "positive"} for i in range(10)
    ])
    template = "{% for e in examples %}[{{ e.label }}] {{ e.text }}\n{% endfor %}Now a {{ label }} one about {{ topic }}."
    params = openai_params(server.base_url, 6, template=template, few_shot_from="split.train", few_shot_k=3)
    run_step(tmp_path, params, inputs={"few_shot_from": examples})
    prompts = user_prompts(server)
    assert all(p.count("[positive] example text") == 3 for p in prompts)
    assert len(set(prompts)) > 1  # each row draws its own examples
    run_step(tmp_path / "again", params, inputs={"few_shot_from": examples})
    assert user_prompts(server)[6:] == prompts or sorted(user_prompts(server)[6:]) == sorted(prompts)


def test_system_message_is_sent_first(tmp_path, server):
    run_step(tmp_path, openai_params(server.base_url, 2, system="You write {{ label }} reviews."))
    messages = server.requests[0]["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("You write ")
    assert messages[1]["role"] == "user"


def test_values_from_a_file_and_its_hash_in_files_read(tmp_path, server):
    topics = tmp_path / "topics.txt"
    topics.write_text("# topics\nastronomy\n\ngardening\n")
    params = openai_params(server.base_url, 10, variables={"topic": {"file": str(topics)}},
                           template="Write a {{ label }} text about {{ topic }}.")
    result = run_step(tmp_path, params)
    assert set(result.data["topic"]) == {"astronomy", "gardening"}



def test_values_file_is_relative_to_the_recipe_and_its_content_in_the_key(tmp_path, server):
    from synthforge.graph import build_graph
    from synthforge.recipe.resolve import load_recipe

    (tmp_path / "topics.txt").write_text("astronomy\ngardening\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\nsteps:\n  gen:\n    kind: generate\n    n: 2\n    labels: [a]\n"
        "    template: 'about {{ topic }}'\n    variables:\n      topic: {file: topics.txt}\n"
        f"    backend: {{type: openai, base_url: '{server.base_url}', model: m}}\n"
    )
    resolved = load_recipe(recipe).variants[0].steps["gen"]
    assert resolved.run_params.variables["topic"].file == str(tmp_path / "topics.txt")
    assert resolved.params.variables["topic"].file == "topics.txt"
    key = build_graph(load_recipe(recipe)).keys["default"]["gen"]
    (tmp_path / "topics.txt").write_text("astronomy\n")
    assert build_graph(load_recipe(recipe)).keys["default"]["gen"] != key


# -- templates ---------------------------------------------------------------------
def test_undefined_template_variable_names_the_field_and_variable(tmp_path, server):
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 3, template="About {{ topik }}."))
    assert caught.value.field == "template"
    assert "topik" in str(caught.value) and "topic" in str(caught.value)
    assert server.requests == []


def test_templates_run_in_a_sandbox(tmp_path, server):
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, template="{{ label.__class__.__mro__[1].__subclasses__() }}"))
    assert caught.value.field == "template" and "unsafe" in str(caught.value)


def test_template_syntax_error_is_a_user_error(tmp_path, server):
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, system="{% if %}"))
    assert caught.value.field == "system" and "line 1" in str(caught.value)


# -- the HTTP backend under stress ---------------------------------------------------
def test_transient_failures_are_retried_without_losing_or_duplicating_rows(tmp_path, server):
    server.fail_plan = ["429", "500", "malformed", "slow", "drop", "429"]
    params = openai_params(server.base_url, 12, concurrency=4, backend={"timeout_s": 0.4})
    result = run_step(tmp_path, params)
    data = result.data
    assert data.height == 12 and data["id"].n_unique() == 12
    assert sorted(data["id"]) == sorted(f"gen-{i}" for i in range(12))
    assert result.meta["retries"] == 6
    for row in data.iter_rows(named=True):  # each row got the answer to its own prompt
        assert f"seed {row['row_seed']}" in row["text"] and row["topic"] in row["text"]


def test_retries_are_bounded(tmp_path, server):
    server.default = "500"
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, backend={"max_retries": 2}))
    assert len(server.requests) == 3
    assert "after 3 attempts" in str(caught.value) and "HTTP 500" in str(caught.value)


@pytest.mark.parametrize("concurrency", [3, 12])  # 12 spans two connection pools
def test_concurrency_is_bounded(tmp_path, concurrency):
    with FakeOpenAIServer(latency_s=0.05) as fake:
        result = run_step(tmp_path, openai_params(fake.base_url, 36, concurrency=concurrency))
        assert concurrency // 2 < fake.max_in_flight <= concurrency
        assert len(fake.requests) == 36 and result.data["id"].n_unique() == 36


def test_a_down_endpoint_is_a_clear_user_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(f"http://127.0.0.1:{port}/v1", 2))
    message = str(caught.value)
    assert f"cannot reach http://127.0.0.1:{port}/v1/chat/completions: connection refused" in message
    assert "is the server running?" in message


SECRET = "sk-test-very-secret-value-123"


def test_the_api_key_is_sent_but_never_recorded(tmp_path, server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    params = openai_params(server.base_url, 4, backend={"api_key_env": "FAKE_KEY"})
    result = run_step(tmp_path, params)
    assert server.auth_headers == [f"Bearer {SECRET}"] * 4
    recorded = json.dumps(result.meta) + result.data.write_csv() + result.tables["rejects"].write_csv()
    assert SECRET not in recorded and "FAKE_KEY" not in recorded
    parsed = GenerateStep.Params.model_validate(params)
    assert SECRET not in json.dumps(parsed.model_dump(mode="json"))
    assert "api_key_env" not in json.dumps(parsed.model_dump(mode="json"))  # runtime-only: not in a key


def test_the_api_key_is_scrubbed_from_errors(tmp_path, server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    server.default = "echo_auth_400"
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, backend={"api_key_env": "FAKE_KEY"}))
    assert "HTTP 400" in str(caught.value) and SECRET not in str(caught.value) and "***" in str(caught.value)


def test_a_missing_api_key_variable_is_named(tmp_path, server, monkeypatch):
    monkeypatch.delenv("MISSING_KEY_VAR", raising=False)
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, backend={"api_key_env": "MISSING_KEY_VAR"}))
    assert "MISSING_KEY_VAR is not set" in str(caught.value)


def test_runtime_fields_stay_out_of_the_params_dump(server):
    base = GenerateStep.Params.model_validate(openai_params(server.base_url, 5))
    tuned = GenerateStep.Params.model_validate(openai_params(
        server.base_url, 5, backend={"concurrency": 64, "timeout_s": 9, "max_retries": 1, "api_key_env": "X"}))
    assert key_of(base) == key_of(tuned)
    from synthforge.keys import runtime_fields

    assert set(runtime_fields(GenerateStep.Params)) >= {"batch_size", "concurrency", "device", "backend.api_key_env"}


# -- resume ----------------------------------------------------------------------------
def test_a_failed_run_resumes_with_only_the_missing_rows(tmp_path, server):
    server.fail_plan = ["ok"] * 5
    server.default = "500"
    params = openai_params(server.base_url, 12, concurrency=1, backend={"max_retries": 0})
    with pytest.raises(UserError):
        run_step(tmp_path, params)
    assert server.ok_count == 5
    server.default = "ok"
    result = run_step(tmp_path, params)
    assert server.ok_count == 12  # 5 before the failure + the 7 missing, nothing twice
    assert result.meta["responses_cached"] == 5 and result.meta["responses_generated"] == 7
    assert result.data.height == 12 and result.data["id"].n_unique() == 12


KILLED_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.generate_helpers import run_step, openai_params
run_step(Path({root!r}), openai_params({url!r}, {n}, concurrency=1))
"""


def cached_responses(root: Path) -> int:
    db = root / "cache" / "shared" / "responses" / "responses.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_a_killed_process_resumes_where_it_stopped(tmp_path):
    n = 40
    with FakeOpenAIServer(latency_s=0.05) as fake:
        code = KILLED_RUN.format(repo=str(REPO), root=str(tmp_path), url=fake.base_url, n=n)
        child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while cached_responses(tmp_path) < 8 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        done = cached_responses(tmp_path)
        assert 8 <= done < n, "the child should be killed midway"
        asked = len(fake.requests)
        result = run_step(tmp_path, openai_params(fake.base_url, n, concurrency=1))
        assert result.meta["responses_cached"] == done
        assert result.meta["responses_generated"] == n - done
        assert len(fake.requests) - asked == n - done  # a reply lost in flight to the dead child is asked again
        assert result.data.height == n and result.data["id"].n_unique() == n


def test_plan_note_estimates_tokens(server):
    params = GenerateStep.Params.model_validate(openai_params(server.base_url, 1000, max_new_tokens=64))
    note = GenerateStep().plan_note(params)
    prompt_estimate = (len(params.template) + 40 * 2) // 4
    assert f"{1000 * (prompt_estimate + 64):,} tokens" in note and "1,000 rows" in note


def test_the_http_backend_works_inside_a_running_event_loop(server):
    import asyncio

    from synthforge.backends.llm import GenerationRequest
    from synthforge.backends.openai_llm import OpenAILLM

    async def from_a_notebook():
        backend = OpenAILLM(server.base_url, "fake-model")
        return backend.generate([GenerationRequest((("user", "hi"),), 0.5, 1.0, 8, 7)])

    (response,) = asyncio.run(from_a_notebook())
    assert "seed 7" in response.text and response.prompt_tokens == 10


def test_few_shot_input_without_the_needed_columns_is_a_user_error(tmp_path, server):
    examples = write_entry(tmp_path / "split", [{"id": "r1", "body": "no text column", "label": "positive"}])
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 2, few_shot_from="split", few_shot_k=1),
                 inputs={"few_shot_from": examples})
    assert caught.value.field == "few_shot_from"


@pytest.mark.parametrize("fraction", ["0", "0.01", "0.25", "0.5", "0.9", "0.999"])
def test_paraphrase_layout_is_exact_and_independent_of_n(fraction):
    from fractions import Fraction

    from synthforge.steps.generate import is_paraphrase_row, topic_row_index

    r = Fraction(fraction)
    marks = [is_paraphrase_row(i, r) for i in range(3000)]
    for n in (1, 7, 100, 3000):  # exactly floor(n·r) paraphrase rows among the first n, for every n
        assert sum(marks[:n]) == int(n * r)
    topics = [i for i, mark in enumerate(marks) if not mark]
    assert [topic_row_index(g, r) for g in range(len(topics))] == topics


def test_importing_the_step_loads_no_heavy_library():
    code = ("import sys, synthforge.steps.generate, synthforge.backends.llm; "
            "print(sorted(m for m in ('torch', 'transformers', 'httpx', 'jinja2', 'polars') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_the_documented_example_is_a_valid_step():
    import re
    import textwrap

    import yaml

    doc = (REPO / "docs" / "steps" / "generate.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    step = yaml.safe_load(blocks[0])["steps"]["gen"]
    assert step.pop("kind") == "generate"
    params = GenerateStep.Params.model_validate(step)
    assert params.paraphrase.per_seed == 4 and params.num_topics == 3
    first_cells = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `")]
    documented_fields = {name.split(".")[0] for cell in first_cells for name in re.findall(r"`([a-z_.]+)`", cell)}
    assert set(GenerateStep.Params.model_fields) <= documented_fields
    openai_backend = yaml.safe_load(textwrap.dedent(blocks[1]))["backend"]
    assert GenerateStep.Params.model_validate({**step, "backend": openai_backend}).backend.type == "openai"


def test_many_concurrent_requests_with_scattered_faults_keep_every_row_once(tmp_path, server):
    import random

    rng = random.Random(3)
    server.fail_plan = [rng.choice(["ok", "ok", "429", "500", "malformed", "drop"]) for _ in range(80)]
    faults = sum(b != "ok" for b in server.fail_plan)
    result = run_step(tmp_path, openai_params(server.base_url, 60, concurrency=32, backend={"max_retries": 8}))
    assert sorted(result.data["id"]) == sorted(f"gen-{i}" for i in range(60))
    assert result.meta["retries"] == faults and result.meta["responses_generated"] == 60
    for row in result.data.iter_rows(named=True):
        assert f"seed {row['row_seed']}" in row["text"]


def test_paraphrase_fraction_zero_is_no_paraphrase_and_one_key():
    """A study's r = 0 cells generate the same rows whatever m is: one key, generated once."""
    from synthforge.keys import key_of

    base = {"n": 10, "labels": ["pos", "neg"], "template": "Write a {{ label }} review about {{ topic }}.",
            "variables": {"topic": ["food"]}}
    plain = GenerateParams(**base)
    zeros = [GenerateParams(**base, paraphrase={"fraction": 0.0, "per_seed": m, "source": "few_shot"}) for m in (1, 3)]
    assert all(p.paraphrase is None and p.model_dump() == plain.model_dump() for p in zeros)
    assert key_of(zeros[0].model_dump()) == key_of(zeros[1].model_dump())
    assert GenerateParams(**base, paraphrase={"fraction": 0.5, "per_seed": 3}).paraphrase.per_seed == 3
