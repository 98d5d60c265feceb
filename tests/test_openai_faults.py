"""The HTTP backend as a good client: Retry-After, whole-request timeouts, restarts, rate limits, oversized
replies and keys that never leak, against the loopback fake server with fault injection."""

from __future__ import annotations

import email.utils
import threading
import time

import pytest

from synthforge.backends.llm import GenerationRequest
from synthforge.backends.openai_llm import ERROR_BODY_CHARS, MAX_RESPONSE_BYTES, OpenAILLM, parse_retry_after, scrub
from synthforge.errors import UserError
from synthforge.stepapi import Runtime
from synthforge.steps.generate import GenerateStep
from tests.fake_openai_server import FakeOpenAIServer
from tests.generate_helpers import openai_params, run_step

KEY = "sk-proj-" + "Zq7" * 50  # long, like real project keys


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        yield fake


def requests_for(n: int) -> list[GenerationRequest]:
    return [GenerationRequest((("user", f"question {i}"),), 0.5, 1.0, 16, i) for i in range(n)]


def assert_complete(result, n: int) -> None:
    assert result.data.height == n and result.data["id"].n_unique() == n
    for row in result.data.iter_rows(named=True):  # each row holds the answer to its own prompt
        assert f"seed {row['row_seed']}" in row["text"]


# -- Retry-After -------------------------------------------------------------------------------
@pytest.mark.parametrize("behaviour", ["retry_after:1", "503_retry_after:1"])
def test_retry_after_is_honoured(tmp_path, server, behaviour):
    server.fail_plan = [behaviour]
    started = time.perf_counter()
    result = run_step(tmp_path, openai_params(server.base_url, 3, concurrency=1, backend={"backoff_s": 0.01}))
    assert time.perf_counter() - started >= 0.95  # waited the server's second, not the 10 ms backoff
    assert_complete(result, 3)
    assert len(server.requests) == 4 and result.meta["retries"] == 1 and result.meta["rate_limited"] == 1


def test_retry_after_is_capped(tmp_path, server):
    server.fail_plan = ["retry_after:3600"]
    started = time.perf_counter()
    result = run_step(tmp_path, openai_params(server.base_url, 2, concurrency=1, backend={"max_retry_after_s": 0.2}))
    assert time.perf_counter() - started < 5
    assert_complete(result, 2)
    assert len(server.requests) == 3


def test_retry_after_forms():
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= parse_retry_after(in_ten) <= 10.5


# -- whole-request timeout ---------------------------------------------------------------------------
def test_a_trickling_server_cannot_stretch_the_timeout(tmp_path, server):
    server.default = "trickle"  # ~300 bytes at 0.25 s each: 75 s if each read had its own timeout
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, backend={"timeout_s": 1, "max_retries": 1}))
    elapsed = time.perf_counter() - started
    assert elapsed < 4, elapsed  # two attempts of one second, plus a backoff
    assert len(server.requests) == 2
    assert "still failing after 2 attempts: no complete answer within timeout_s=1s" in str(caught.value)


def test_a_trickled_reply_is_retried_and_the_row_kept(tmp_path, server):
    server.fail_plan = ["trickle"]
    result = run_step(tmp_path, openai_params(server.base_url, 4, concurrency=2, backend={"timeout_s": 0.5}))
    assert_complete(result, 4)
    assert len(server.requests) == 5 and result.meta["retries"] == 1


# -- refused and reset connections --------------------------------------------------------------------
def test_a_restarting_server_does_not_fail_the_build(tmp_path):
    n = 30
    with FakeOpenAIServer(latency_s=0.03) as fake:
        def restart_midway() -> None:
            while fake.ok_count < 8:
                time.sleep(0.01)
            fake.restart(down_s=1.0)

        restarter = threading.Thread(target=restart_midway)
        restarter.start()
        result = run_step(tmp_path, openai_params(fake.base_url, n, concurrency=2,
                                                  backend={"backoff_s": 0.1, "max_retries": 8}))
        restarter.join()
        assert fake.restarts == 1
        assert_complete(result, n)
        assert result.meta["retries"] >= 1
        assert fake.ok_count >= n  # an answer lost in the reset is asked again


# -- adaptive concurrency ----------------------------------------------------------------------------------
def test_concurrency_falls_on_rate_limits_and_rises_again(server):
    server.latency_s = 0.03
    server.capacity = 3
    backend = OpenAILLM(server.base_url, "fake-model", concurrency=12, backoff_s=0.01, max_retries=50)

    def lift_the_limit() -> None:
        while server.ok_count < 30:
            time.sleep(0.01)
        server.capacity = None

    lifter = threading.Thread(target=lift_the_limit)
    lifter.start()
    responses = backend.generate(requests_for(150))
    lifter.join()
    assert [f"seed {i}" in r.text for i, r in enumerate(responses)] == [True] * 150
    trace = backend.limiter.trace
    assert trace[0] == 12 and min(trace) <= 3  # halved down to the server's capacity
    assert trace[-1] > min(trace)  # and raised again once requests succeed
    assert backend.rate_limited == server.statuses[429] > 0


def test_the_progress_line_shows_the_current_concurrency(tmp_path, server, capsys, monkeypatch):
    from synthforge import progress

    from functools import partial

    from tqdm.std import tqdm

    monkeypatch.setattr(progress, "_draws_bars", lambda: True)  # as on a terminal (the capture is not one)
    monkeypatch.setattr(progress, "_tqdm_class", lambda: partial(tqdm, mininterval=0))  # every update drawn
    run_step(tmp_path, openai_params(server.base_url, 4, concurrency=3), runtime=Runtime(progress=True))
    assert "concurrency=3" in capsys.readouterr().err


# -- oversized replies --------------------------------------------------------------------------------------
def test_an_oversized_reply_is_rejected_with_its_reason_not_stored(tmp_path, server):
    server.fail_plan = ["huge"]
    params = openai_params(server.base_url, 3, concurrency=1)
    result = run_step(tmp_path, params)
    rejects = result.tables["rejects"]
    assert result.data.height == 2 and rejects.height == 1
    assert rejects["reason"][0] == f"response larger than {MAX_RESPONSE_BYTES:,} bytes" and rejects["raw"][0] == ""
    cache_bytes = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cache_bytes < 1_000_000
    run_step(tmp_path, params)  # the rejection is not cached: asked again, the others come from the cache
    assert len(server.requests) == 4


# -- keys ------------------------------------------------------------------------------------------------
def test_a_key_read_from_a_file_is_stripped(tmp_path, server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", f"  {KEY}\n")
    run_step(tmp_path, openai_params(server.base_url, 2, backend={"api_key_env": "FAKE_KEY"}))
    assert server.auth_headers == [f"Bearer {KEY}"] * 2


@pytest.mark.parametrize("value,what", [(KEY[:40] + "\n" + KEY[40:], "whitespace at position 41"),
                                        (KEY[:20] + "é" + KEY[20:], "a non-ASCII or control character at position 21")])
def test_a_key_with_whitespace_or_non_ascii_inside_is_refused_unechoed(tmp_path, server, monkeypatch, value, what):
    monkeypatch.setenv("FAKE_KEY", value)
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, backend={"api_key_env": "FAKE_KEY"}))
    assert str(caught.value) == (f"backend.api_key_env: the value of FAKE_KEY has {what} of {len(value)} "
                                 "(set FAKE_KEY to the key alone)")
    assert server.requests == []


@pytest.mark.parametrize("behaviour,status", [("echo_key_401", 401), ("key_500", 500), ("echo_auth_400", 400)])
def test_server_text_is_scrubbed_before_it_is_cut(tmp_path, server, monkeypatch, behaviour, status):
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.default = behaviour
    with pytest.raises(UserError) as caught:
        run_step(tmp_path, openai_params(server.base_url, 1, backend={"api_key_env": "FAKE_KEY", "max_retries": 1}))
    message = str(caught.value)
    assert f"HTTP {status}" in message and "***" in message
    assert KEY[:12] not in message and KEY[-12:] not in message and "Zq7Zq7" not in message


def test_scrub_then_cut():
    body = f'{{"error": "Incorrect API key provided: {KEY}. See the docs."}}'
    assert KEY[:40] in body[:ERROR_BODY_CHARS]  # what cutting first would have quoted
    assert scrub(body, [KEY]) == '{"error": "Incorrect API key provided: ***. See the docs."}'
    assert scrub("Authorization: Bearer abc.def-123, next", []) == "Authorization: Bearer ***, next"


def test_credentials_in_base_url_are_refused_without_echo(server):
    params = openai_params(server.base_url.replace("http://", "http://alice:hunter2secret@"), 1)
    with pytest.raises(UserError) as caught:
        GenerateStep.Params.model_validate(params)
    assert str(caught.value) == ("backend.base_url: credentials in base_url are refused (remove user:password@ and "
                                 "name the variable holding the key in api_key_env)")


def test_a_key_pasted_as_the_variable_name_is_refused_unechoed(server):
    with pytest.raises(UserError) as caught:
        GenerateStep.Params.model_validate(openai_params(server.base_url, 1, backend={"api_key_env": KEY}))
    assert KEY not in str(caught.value) and "NAME of an environment variable" in str(caught.value)


def test_the_fake_server_counts_no_request_whose_body_never_arrived(server):
    """A client killed between headers and body (as a killed build's last request) asked nothing: tests that
    count requests (the resumed-search test in test_tune) must not see an empty body."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(server.base_url)
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
    deadline = time.time() + 2
    while time.time() < deadline and server.in_flight:
        time.sleep(0.01)
    time.sleep(0.2)
    assert server.requests == []
