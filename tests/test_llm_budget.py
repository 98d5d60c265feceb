"""The LLM budget holds while a build runs: every request sent (retries too) counts, across steps and worker
processes; at the cap the build stops with a one-line error and keeps every answered response."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from synthforge.backends.llm import BudgetSpent, ChargedUpFront, GenerationRequest, GenerationResponse, RequestBudget
from synthforge.cli import main
from tests.fake_openai_server import FakeOpenAIServer


def generate_step(name: str, url: str, n: int) -> str:
    return (f"  {name}:\n    kind: generate\n    n: {n}\n    labels: [good, bad]\n    variables: {{topic: [plot, cast, music]}}\n"
            f"    template: 'Write a {{{{ label }}}} review about {{{{ topic }}}} ({name}).'\n"
            f"    backend: {{type: openai, base_url: '{url}', model: m, concurrency: 1, max_retries: 5, backoff_s: 0.01}}\n")


def build(tmp_path: Path, monkeypatch, text: str, *args: str):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(tmp_path / "cache"))
    Path("r.yaml").write_text(text)
    return CliRunner().invoke(main, ["build", "r.yaml", "-q", *args], catch_exceptions=False)


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        yield fake


def test_retries_count_and_the_build_stops_at_the_cap_keeping_the_answers(tmp_path, monkeypatch, server):
    server.fail_plan = ["500"] * 5
    text = "name: b\nsteps:\n" + generate_step("gen", server.base_url, 10)
    result = build(tmp_path, monkeypatch, text, "--max-requests", "10")
    assert result.exit_code == 2, result.output
    assert len(server.requests) == 10 and server.ok_count == 5  # 5 failures + 5 answers, then no more
    last = result.stderr.strip().splitlines()[-1]
    assert "steps.gen" in last and "LLM budget spent: 10 of 10 requests (retries included) used" in last, last
    assert "--max-requests" in last and "Traceback" not in result.output
    assert not any((tmp_path / "cache" / "shared" / "budgets").iterdir())  # the build's count is gone with it

    result = build(tmp_path, monkeypatch, text, "--max-requests", "100")  # a higher cap resumes
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 15 and server.ok_count == 10  # the 5 answered were not asked again


def test_parallel_workers_share_one_count(tmp_path, monkeypatch, server):
    server.fail_plan = ["500"] * 4
    text = "name: b\nsteps:\n" + generate_step("one", server.base_url, 6) + generate_step("two", server.base_url, 6)
    result = build(tmp_path, monkeypatch, text, "--max-requests", "12", "--jobs", "2")
    assert result.exit_code == 2, result.output
    assert len(server.requests) == 12  # each worker alone would have sent up to 12
    assert "LLM budget spent: 12 of 12 requests" in result.stderr


def test_the_token_cap_stops_further_requests(tmp_path):
    budget = RequestBudget.create(tmp_path, max_requests=100, max_tokens=25)
    try:
        assert budget.take(1) == 1
        budget.spend_tokens(30)
        with pytest.raises(BudgetSpent, match="30 of 25 tokens used"):
            budget.take(1)
        assert budget.spent() == (1, 30)
    finally:
        budget.remove()
    assert not list(tmp_path.iterdir())


class _Echo:
    type = "echo"

    def __init__(self):
        self.sent: list[GenerationRequest] = []

    def generate(self, requests, on_response=None, on_tokens=None):
        responses = []
        for i, request in enumerate(requests):
            self.sent.append(request)
            responses.append(GenerationResponse("ok", 3, 4))
            if on_response is not None:
                on_response(i, responses[-1])
        return responses


def test_a_backend_without_use_budget_sends_only_what_fits(tmp_path):
    budget = RequestBudget.create(tmp_path, max_requests=3, max_tokens=10**6)
    inner, answered = _Echo(), []
    backend = ChargedUpFront(inner, budget)
    requests = [GenerationRequest((("user", str(i)),), 0.5, 1.0, 8, i) for i in range(5)]
    try:
        with pytest.raises(BudgetSpent, match="3 of 3 requests"):
            backend.generate(requests, on_response=lambda i, r: answered.append(i))
        assert len(inner.sent) == 3 and answered == [0, 1, 2] and budget.spent() == (3, 21)
        assert backend.type == "echo"
    finally:
        budget.remove()


def test_the_count_of_a_killed_build_is_dropped_by_the_next_one(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f"build-{host}-{dead.stdout.strip()}-abc.budget"
    other_host = tmp_path / f"build-elsewhere-{dead.stdout.strip()}-abc.budget"
    for path in (stale, other_host):
        path.write_bytes(bytes(16))
    budget = RequestBudget.create(tmp_path, 5, 5)
    try:
        assert not stale.exists() and other_host.exists()  # another host's build may still be running
        assert Path(budget.path).name.startswith(f"build-{host}-")
    finally:
        budget.remove()


def test_requests_in_flight_at_the_cap_are_answered_and_kept(tmp_path, monkeypatch):
    with FakeOpenAIServer(latency_s=0.3) as slow:
        slow.fail_plan = ["500", "500"]  # two of the first three fail: their retries meet the cap
        text = "name: b\nsteps:\n" + generate_step("gen", slow.base_url, 4).replace("concurrency: 1", "concurrency: 3")
        result = build(tmp_path, monkeypatch, text, "--max-requests", "4")
        assert result.exit_code == 2 and "LLM budget spent: 4 of 4 requests" in result.stderr
        assert len(slow.requests) == 4 and slow.ok_count == 2  # the 4th request went out before the others stopped
        result = build(tmp_path, monkeypatch, text, "--max-requests", "100")
        assert result.exit_code == 0, result.output
        assert len(slow.requests) == 6  # both answers were kept (the one in flight too): only 2 asked again


def _take_until_spent(budget: RequestBudget) -> int:
    taken = 0
    while True:
        try:
            taken += budget.take(1)
        except BudgetSpent:
            return taken


def test_threads_and_processes_never_overdraw_the_count(tmp_path):
    import subprocess
    import sys
    import threading
    import time

    budget = RequestBudget.create(tmp_path, max_requests=20000, max_tokens=10**9)
    code = ("import sys; from synthforge.backends.llm import RequestBudget; from tests.test_llm_budget import _take_until_spent; "
            f"print(_take_until_spent(RequestBudget({budget.path!r}, 20000, 10**9)))")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(_take_until_spent(budget))) for _ in range(4)]
    try:
        while budget.spent()[0] == 0 and other.poll() is None:  # the other process is taking: now race it
            time.sleep(0.01)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        taken_there = int(other.communicate(timeout=60)[0])
        assert sum(counts) + taken_there == 20000 and budget.spent()[0] == 20000
        assert taken_there > 0 and sum(counts) > 0
    finally:
        budget.remove()
