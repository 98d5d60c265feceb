"""No API key, whole or in part, in the cache, the lockfile or anything a build prints, whatever the server does."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from synthforge.cli import main
from tests.fake_openai_server import FakeOpenAIServer

KEY = "sk-proj-" + "".join(f"{i:03d}Xy" for i in range(40))  # 208 characters, every 16-character piece unique
RECIPE = """name: leaks
steps:
  gen:
    kind: generate
    n: 6
    labels: [good, bad]
    variables: {{topic: [plot, cast, music]}}
    template: 'Write a {{{{ label }}}} review about {{{{ topic }}}}.'
    backend: {{type: openai, base_url: '{url}', model: m, api_key_env: LEAK_TEST_KEY, concurrency: 2,
               max_retries: 2, backoff_s: 0.01}}
"""

# (id, the variable's value, the server's behaviour for every request, the build's exit code)
CASES = [
    ("401-echoing-the-key", KEY, "echo_key_401", 2),
    ("400-echoing-the-header", KEY, "echo_auth_400", 2),
    ("500-with-the-key-in-the-body", KEY, "key_500", 2),
    ("trailing-newline-key", KEY + "\n", "ok", 0),
    ("newline-key-then-500s", "  " + KEY + "\r\n", "key_500", 2),
    ("non-ascii-key", KEY[:100] + "ü" + KEY[100:], "ok", 2),
    ("key-with-a-newline-inside", KEY[:100] + "\n" + KEY[100:], "ok", 2),
]


def pieces(secret: str, size: int = 16) -> list[str]:
    return [secret[i:i + size] for i in range(0, len(secret) - size + 1)]


def hits(blob: bytes) -> int:
    """Occurrences of any 16-character piece of the key (a whole key counts many times)."""
    return sum(blob.count(piece.encode()) for piece in pieces(KEY))


def run_build(tmp_path: Path, monkeypatch, value: str, behaviour: str, url_of=lambda fake: fake.base_url, args=()):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LEAK_TEST_KEY", value)
    with FakeOpenAIServer() as fake:
        fake.default = behaviour
        Path("r.yaml").write_text(RECIPE.format(url=url_of(fake)))
        result = CliRunner().invoke(main, ["build", "r.yaml", *args], catch_exceptions=False)
    return result, fake


def leaked(tmp_path: Path, result) -> int:
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] + list(tmp_path.glob("*.lock"))
    return sum(hits(p.read_bytes()) for p in files) + hits(result.output.encode()) + hits(result.stderr.encode())


@pytest.mark.parametrize("value,behaviour,code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_no_piece_of_the_key_is_recorded_or_printed(tmp_path, monkeypatch, value, behaviour, code):
    result, fake = run_build(tmp_path, monkeypatch, value, behaviour)
    assert result.exit_code == code, result.output
    if code == 0:
        assert fake.auth_headers and set(fake.auth_headers) == {f"Bearer {KEY}"}  # stripped, then sent
        assert Path("r.lock").is_file()
    assert leaked(tmp_path, result) == 0


def test_credentials_in_base_url_never_reach_output(tmp_path, monkeypatch):
    result, fake = run_build(tmp_path, monkeypatch, KEY, "ok", lambda f: f.base_url.replace("http://", f"http://user:{KEY}@"))
    assert result.exit_code == 2 and "credentials in base_url are refused" in result.stderr
    assert fake.requests == [] and leaked(tmp_path, result) == 0


def test_the_check_itself_finds_a_leak(tmp_path):
    assert hits(f"quoted: {KEY[50:70]}".encode()) > 0 and hits(KEY.encode()) == len(pieces(KEY))


def with_query(name: str):
    return lambda fake: f"{fake.base_url}?{name}={KEY}"


@pytest.mark.parametrize("name,behaviour,code", [
    ("api_key", "ok", 0), ("key", "ok", 0), ("api_key", "echo_url_500", 2), ("key", "echo_url_500", 2),
    ("key", "429", 2),
])
def test_a_key_in_the_query_string_is_sent_but_never_recorded_or_printed(tmp_path, monkeypatch, name, behaviour, code):
    result, fake = run_build(tmp_path, monkeypatch, "other", behaviour, with_query(name), args=["-v"])
    assert result.exit_code == code, result.output
    assert fake.paths and set(fake.paths) == {f"/v1/chat/completions?{name}={KEY}"}  # the path joined, the query kept
    if behaviour == "429":  # the concurrency line names the endpoint
        assert "rate limited, concurrency" in result.output + result.stderr
    assert leaked(tmp_path, result) == 0


def test_a_key_in_the_query_string_of_an_unreachable_server_is_not_printed(tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result, _ = run_build(tmp_path, monkeypatch, "other", "ok", lambda fake: f"http://127.0.0.1:{port}/v1?api_key={KEY}")
    assert result.exit_code == 2 and "cannot reach http://127.0.0.1" in result.stderr
    assert leaked(tmp_path, result) == 0


def test_a_bad_scheme_with_a_key_in_the_query_is_refused_without_quoting_it(tmp_path, monkeypatch):
    result, fake = run_build(tmp_path, monkeypatch, "other", "ok", lambda fake: f"ftp://127.0.0.1/v1?key={KEY}")
    assert result.exit_code == 2 and "must be an http(s) URL" in result.stderr
    assert fake.requests == [] and leaked(tmp_path, result) == 0


@pytest.mark.parametrize("first,second,code", [("500", "ok", 0), ("echo_url_500", "echo_url_500", 2)])
def test_a_key_in_an_extra_endpoints_query_is_never_recorded_or_printed(tmp_path, monkeypatch, first, second, code):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LEAK_TEST_KEY", "other")
    with FakeOpenAIServer() as primary, FakeOpenAIServer() as extra:  # the primary fails: the extra one answers
        primary.default, extra.default = first, second
        text = RECIPE.format(url=f"{primary.base_url}?api_key={KEY}").replace(
            "concurrency: 2,", f"concurrency: 2, endpoints: ['{extra.base_url}?key={KEY}'],")
        Path("r.yaml").write_text(text)
        result = CliRunner().invoke(main, ["build", "r.yaml", "-v"], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert extra.paths and set(extra.paths) == {f"/v1/chat/completions?key={KEY}"}
    assert leaked(tmp_path, result) == 0
