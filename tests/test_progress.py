"""What a user sees while a build runs: workers' bars and log lines reach the parent live; plain lines off a terminal."""

from __future__ import annotations

import logging

import pytest

from synthforge import progress
from tests.conftest import BASIC

TWO_SLOW = BASIC + "  slow:\n    kind: slow\n    input: split.train\nmatrix:\n  k: [5, 10]\n"


class _ReleaseWhenSeen(logging.Handler):
    """Creates the release file once the parent has printed a worker's log line and its progress line, while
    the worker still waits for that file: proof that both travelled while the step ran."""

    def __init__(self, release):
        super().__init__()
        self.release_file, self.seen, self.finished_before_release = release, set(), False

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "slow: half of" in text:
            self.seen.add("log")
        if text.startswith("slow: copy") and "rows/s" in text and "tokens/s" in text and "ETA" in text:
            self.seen.add("bar")
        if text.startswith("✓") and " slow " in text and not self.release_file.exists():
            self.finished_before_release = True
        if self.seen == {"log", "bar"}:
            self.release_file.touch()


@pytest.fixture(autouse=True)
def slow_kind(monkeypatch):
    """The test-only `slow` kind in a copy of the registry (workers get $SYNTHFORGE_PLUGINS): later tests see
    only the real kinds."""
    import synthforge.steps as steps_module

    monkeypatch.setattr(steps_module.KINDS, "targets", dict(steps_module.KINDS.targets))
    steps_module.register("slow", "tests.plugin_steps:SlowStep")


@pytest.fixture
def release_watch(tmp_path, monkeypatch):
    release = tmp_path / "release"
    monkeypatch.setenv("SYNTHFORGE_PLUGINS", "tests.plugin_steps")
    monkeypatch.setenv("SF_TEST_RELEASE", str(release))
    monkeypatch.setenv("SF_TEST_RELEASE_WAIT", "20")
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    handler = _ReleaseWhenSeen(release)
    logging.getLogger(progress.LOGGER).addHandler(handler)
    yield handler
    logging.getLogger(progress.LOGGER).removeHandler(handler)


def test_parallel_workers_show_progress_and_log_lines_while_the_step_runs(cli, write_recipe, data_csv, release_watch):
    result = cli("build", write_recipe(TWO_SLOW), "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert release_watch.release_file.exists() and not release_watch.finished_before_release, result.output
    lines = result.output.splitlines()
    first_done = next(i for i, line in enumerate(lines) if line.startswith("✓") and " slow " in line)
    assert any("slow: half of" in line for line in lines[:first_done])
    assert any(line.startswith("slow: copy") and "ETA" in line for line in lines[:first_done])
    # two running steps of one name: each bar names its variant
    assert {"k=5", "k=10"} <= {line.split("(")[1].split(")")[0] for line in lines if line.startswith("slow: copy (")}


def test_no_progress_keeps_workers_bars_quiet_but_not_their_log_lines(cli, write_recipe, data_csv, release_watch, tmp_path):
    release_watch.release_file.touch()
    result = cli("build", write_recipe(TWO_SLOW), "--jobs", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "slow: half of" in result.output and "slow: copy" not in result.output


def test_plain_lines_off_a_terminal_come_at_most_every_interval(monkeypatch):
    printed = []
    progress.configure_logging(0)  # bars on, as a fresh command has them
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 3600.0)
    monkeypatch.setattr(progress, "_draws_bars", lambda: False)
    monkeypatch.setattr(logging.getLogger(progress.LOGGER), "info", lambda text, *a: printed.append(text))
    with progress.progress(1000, "gen: generate") as bar:
        for _ in range(1000):
            bar.update(1, tokens=5)
    assert printed == []  # a short step draws no line at all: its ✓ line says enough
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    with progress.progress(10, "gen: generate") as bar:
        bar.update(4, tokens=40)
    assert printed[0].startswith("gen: generate: 4/10 rows (40%), ") and "tokens/s" in printed[0] and "ETA" in printed[0]
    assert "stopped after" in printed[-1]  # closed at 4 of 10: not "done"


def test_format_seconds_rounds_for_a_reader():
    assert [progress.format_seconds(s) for s in (4.4, 185.2, 3725)] == ["4s", "3m05s", "1h02m"]


def test_loading_a_model_draws_no_bar_of_transformers_own(tiny_encoder, capfd):
    from transformers.utils import logging as hf_logging

    from synthforge.backends.embedder import Embedder

    progress.configure_logging(0)
    hf_logging.enable_progress_bar()  # as in a fresh process
    Embedder(str(tiny_encoder), device="cpu")
    assert "Loading weights" not in capfd.readouterr().err


@pytest.mark.integration
def test_ray_tasks_show_progress_and_log_lines_while_the_step_runs(cli, write_recipe, data_csv, release_watch):
    ray = pytest.importorskip("ray")
    from pathlib import Path

    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "SYNTHFORGE_PLUGINS": "tests.plugin_steps",
           "SF_TEST_RELEASE": str(release_watch.release_file), "SF_TEST_RELEASE_WAIT": "20"}
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        result = cli("build", write_recipe(TWO_SLOW), "--executor", "ray")
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert release_watch.release_file.exists() and not release_watch.finished_before_release, result.output


def test_a_notebook_without_ipywidgets_gets_text_bars_not_a_warning(monkeypatch):
    import importlib.util
    import sys
    import types

    from tqdm.std import tqdm

    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert progress._draws_bars() and progress._tqdm_class() is tqdm  # tqdm.auto would warn "IProgress not found"


def test_a_bar_closed_short_says_it_stopped_not_done():
    snapshot = {"desc": "gen: topic", "unit": "rows", "total": 150, "done": 64, "elapsed": 42.0, "counters": {},
                "status": {}, "closed": True}
    assert progress.plain_line(snapshot).endswith("stopped after 42s")
    assert progress.plain_line({**snapshot, "done": 150}).endswith("done in 42s")
    assert progress.plain_line({**snapshot, "total": None}).endswith("done in 42s")  # no total: nothing to fall short of
