from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

# One intra-op thread: the models in these tests are tiny, and on a shared 2-core
# machine OpenMP threads spin-waiting on each other cost far more than they gain.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# CLI builds run sequentially in-process unless a test asks for --jobs: spawning workers costs seconds.
os.environ.setdefault("SYNTHFORGE_JOBS", "1")
sys.path.insert(0, str(Path(__file__).parent))

import polars as pl
import pytest
from click.testing import CliRunner

from synthforge.cli import main
from tests.tiny_encoder import tiny_encoder  # noqa: F401  (session fixture: a tiny BERT folder)

LABELS = ["good", "bad", "meh"]


def make_rows(n: int = 300) -> pl.DataFrame:
    words = ["plot", "acting", "music", "pace", "ending", "cast", "script", "visuals"]
    texts = [f"review {i}: the {words[i % len(words)]} was {LABELS[i % 3]} in scene {i // 3}" for i in range(n)]
    return pl.DataFrame({"review": texts, "stars": [LABELS[i % 3] for i in range(n)], "extra": list(range(n))})


@pytest.fixture(autouse=True)
def fresh_progress_state():
    """Each test starts from a fresh process's bars, forwarding and logger: a CLI call's --no-progress or -q
    (process-wide, as in a real run), in this test or a module fixture, must not carry over."""
    import logging

    from synthforge import progress

    def reset() -> None:
        logger = logging.getLogger(progress.LOGGER)
        progress._bars["enabled"], progress._forward["queue"] = True, None
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True

    reset()
    yield
    reset()


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.csv"
    make_rows().write_csv(path)
    return path


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(path))
    return path


@pytest.fixture
def write_recipe(tmp_path: Path):
    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture
def cli(cache_dir: Path):
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


BASIC = """
name: basic
seed: 7
vars:
  k: 10
steps:
  rows:
    kind: load
    path: reviews.csv
    text_column: review
    label_column: stars
  split:
    kind: split
    input: rows
    test: 60
    train_per_label: ${k}
"""
