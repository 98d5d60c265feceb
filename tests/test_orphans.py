"""A killed build leaves no worker behind: `--jobs` workers die with their parent, even after SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_openai_server import FakeOpenAIServer

psutil = pytest.importorskip("psutil")


def slow_step(name: str, url: str) -> str:
    return (f"  {name}:\n    kind: generate\n    n: 2\n    labels: [good, bad]\n"
            f"    template: 'Write a {{{{ label }}}} review ({name}).'\n"
            f"    backend: {{type: openai, base_url: '{url}', model: m, concurrency: 1, timeout_s: 600}}\n")


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def kill_a_busy_build(tmp_path: Path, *options: str) -> list:
    """Start a build of two slow generate steps, wait until both send a request, SIGKILL it; its descendants."""
    with FakeOpenAIServer(latency_s=60) as server:  # every answer takes a minute: the workers are busy in a request
        (tmp_path / "r.yaml").write_text("name: orphans\nsteps:\n" + slow_step("one", server.base_url)
                                         + slow_step("two", server.base_url))
        env = {**os.environ, "SYNTHFORGE_CACHE": str(tmp_path / "cache"),
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        build = subprocess.Popen([sys.executable, "-m", "synthforge", "build", "r.yaml", *options, "-q"],
                                 cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: len(server.requests) >= 2, 120), "the two steps never sent their requests"
            workers = psutil.Process(build.pid).children(recursive=True)
            assert len(workers) >= 2
        finally:
            build.kill()
            build.wait()
    return workers


def assert_gone_within_two_seconds(workers: list) -> None:
    wait_for(lambda: not any(map(running, workers)), 2)
    alive = [process for process in workers if running(process)]
    names = [process.name() for process in alive]
    for process in alive:  # leave nothing running whatever the outcome
        process.kill()
    assert alive == [], f"{len(alive)} of {len(workers)} processes outlived the build by 2 s: {names}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees as Linux shows them")
def test_workers_die_within_two_seconds_of_a_killed_build(tmp_path):
    assert_gone_within_two_seconds(kill_a_busy_build(tmp_path, "--jobs", "2"))


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper of a local Ray instance is Linux-only")
def test_a_killed_ray_driver_leaves_no_ray_process(tmp_path):
    pytest.importorskip("ray")
    assert_gone_within_two_seconds(kill_a_busy_build(tmp_path, "--executor", "ray", "--jobs", "2"))


def running(process) -> bool:
    """Alive and not a zombie (a dead child nobody reaped yet runs nothing)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
