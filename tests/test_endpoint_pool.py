"""Several OpenAI-compatible endpoints of one deployment: balanced, failing over, invisible to keys and output."""

from __future__ import annotations

import socket

import pytest

from synthforge.errors import UserError
from synthforge.steps.generate import GenerateStep
from tests.fake_openai_server import FakeOpenAIServer
from tests.generate_helpers import openai_params, run_step


@pytest.fixture
def servers():
    with FakeOpenAIServer(latency_s=0.01) as first, FakeOpenAIServer(latency_s=0.01) as second:
        yield first, second


def closed_url() -> str:
    """A local URL where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def with_endpoints(base_url: str, endpoints: list, n: int = 24):
    return openai_params(base_url, n, backend={"concurrency": 2, "endpoints": endpoints})


def test_requests_are_shared_and_the_output_is_the_single_endpoint_output(tmp_path, servers):
    first, second = servers
    alone = run_step(tmp_path / "alone", openai_params(first.base_url, 24))
    first.requests.clear()
    first.max_in_flight = 0
    pooled = run_step(tmp_path / "pooled", with_endpoints(first.base_url, [{"base_url": second.base_url, "concurrency": 3}]))
    assert pooled.data.equals(alone.data)
    assert len(first.requests) > 0 and len(second.requests) > 0
    assert len(first.requests) + len(second.requests) == 24
    assert second.max_in_flight <= 3 and first.max_in_flight <= 2


def test_a_down_endpoint_fails_over_to_the_others(tmp_path, servers):
    first, _ = servers
    alone = run_step(tmp_path / "alone", openai_params(first.base_url, 24))
    pooled = run_step(tmp_path / "pooled", with_endpoints(closed_url(), [first.base_url]))
    assert pooled.data.drop("model").equals(alone.data.drop("model"))


def test_every_endpoint_down_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot reach"):
        run_step(tmp_path, with_endpoints(closed_url(), [closed_url()], n=5))


def test_endpoints_never_enter_the_key_and_the_primary_names_the_responses(servers):
    first, second = servers
    plain = GenerateStep.Params.model_validate(openai_params(first.base_url, 4))
    pooled = GenerateStep.Params.model_validate(with_endpoints(first.base_url, [second.base_url], n=4))
    assert plain.model_dump(mode="json")["backend"] == {"type": "openai", "base_url": first.base_url, "model": "fake-model"}
    assert pooled.model_dump(mode="json") == plain.model_dump(mode="json") | {"backend": plain.model_dump(mode="json")["backend"]}


def test_an_endpoint_leaving_and_rejoining_is_logged_and_recorded(tmp_path, servers):
    from synthforge.backends.endpoint_pool import EndpointPool

    from tests.generate_helpers import make_ctx

    first, _ = servers
    down = closed_url()
    lines: list[str] = []
    ctx = make_ctx(tmp_path, with_endpoints(down, [first.base_url], n=8))
    ctx.log = lines.append
    result = GenerateStep().run(ctx)
    left = [e for e in result.meta["endpoint_events"] if e["event"] == "left"]
    assert [e["endpoint"] for e in left] == [down.rstrip("/")] or [e["endpoint"] for e in left] == [down], left
    assert any(f"endpoint {left[0]['endpoint']} leaves the pool" in line and "1 of 2 serve the rest" in line for line in lines), lines

    class Once:  # an endpoint whose first batch fails: it leaves, then rejoins for the next batch
        calls = 0

        def identity(self):
            return {"base_url": "http://once"}

        def generate(self, requests, on_response=None):
            Once.calls += 1
            if Once.calls == 1:
                raise ConnectionError("refused")
            for i, _ in enumerate(requests):
                on_response(i, f"r{i}")
            return [f"r{i}" for i in range(len(requests))]

    class Steady(Once):
        def identity(self):
            return {"base_url": "http://steady"}

        def generate(self, requests, on_response=None):
            for i, _ in enumerate(requests):
                on_response(i, f"s{i}")
            return [f"s{i}" for i in range(len(requests))]

    said: list[str] = []
    pool = EndpointPool([Once(), Steady()], said.append)
    pool.generate([object()] * 3)
    assert [e["event"] for e in pool.events] == ["left"]
    pool.generate([object()] * 3)
    assert [e["event"] for e in pool.events] == ["rejoined"] and "endpoint http://once rejoins the pool" in said[-1]
