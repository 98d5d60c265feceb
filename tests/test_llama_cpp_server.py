"""Structured output against a real llama.cpp server (llama-cpp-python's, on the packaged SmolLM2 GGUF): the
OpenAI backend sends the schema as response_format, the server decodes under it, every kept row validates."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.generate_helpers import openai_params, run_step
from tests.test_endpoint_pool import closed_url

pytestmark = pytest.mark.integration

REVIEW = {"type": "object", "additionalProperties": False, "required": ["sentiment", "summary"],
          "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]},
                         "summary": {"type": "string", "maxLength": 80}}}
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` on a free local port, stopped after the module's tests (its log in a file: a
    pipe nobody reads would fill and stall the server)."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed "
                        "(pip install 'llama-cpp-python[server]'; scripts/setup.sh does)")
    from synthforge.backends.transformers_llm import smollm2_gguf_path

    base_url = closed_url()
    port = base_url.split(":")[-1].split("/")[0]
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()),
                                   "--host", "127.0.0.1", "--port", port, "--n_ctx", "2048"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(server, base_url, log)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_serving(server: subprocess.Popen, base_url: str, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"llama_cpp.server did not answer within {START_TIMEOUT_S} s")


def test_a_real_llama_cpp_server_decodes_under_the_schema_and_every_kept_row_validates(tmp_path, llama_server):
    import json

    import jsonschema

    params = openai_params(llama_server, 8, max_new_tokens=96, temperature=0.7,
                           backend={"model": "smollm2", "concurrency": 1, "timeout_s": 120,
                                    "response_format": "json_object"})  # the form this server reads
    params.pop("template")
    params["fields"] = {"review": {"template": "Write a {{ style }} {{ label }} review of {{ topic }}."},
                        "verdict": {"template": "Classify this review as JSON with its sentiment and a short summary: "
                                                "{{ review }}", "json_schema": REVIEW}}
    result = run_step(tmp_path, params)
    kept, rejects = result.data, result.tables["rejects"]
    assert kept.height + rejects.height == 8
    assert kept.height >= 6, rejects.select("reason", "raw").to_dicts()  # the server constrained its replies
    for reply in kept["verdict"]:
        jsonschema.validate(json.loads(reply), REVIEW)
    assert all(reason.startswith(("verdict: not JSON", "review: ")) for reason in rejects["reason"])
