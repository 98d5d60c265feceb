"""Builder and cache behaviour users rely on: reuse, targeted rebuilds, plan reasons, safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import BASIC, make_rows


def statuses(output: str) -> dict[str, str]:
    """step -> status from the build summary table."""
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3] in ("built", "cached"):
            rows.setdefault(parts[0], set()).add(parts[3])
    return {k: ",".join(sorted(v)) for k, v in rows.items()}


def test_second_build_runs_nothing_and_lockfile_is_written(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    first = cli("build", recipe)
    assert first.exit_code == 0, first.output
    assert statuses(first.output) == {"rows": "built", "split": "built"}
    second = cli("build", recipe)
    assert statuses(second.output) == {"rows": "cached", "split": "cached"}
    lock = json.loads(recipe.with_suffix(".lock").read_text())
    assert set(lock["variants"]["default"]) == {"rows", "split"}


UNSTABLE = BASIC + "  score:\n    kind: unstable\n    input: split.train\n    threads: 1\n"


def test_the_lockfile_records_content_and_a_rebuild_with_other_bytes_says_so(cli, write_recipe, data_csv, monkeypatch):
    import synthforge.steps as steps_module

    monkeypatch.setattr(steps_module.KINDS, "targets", dict(steps_module.KINDS.targets))
    steps_module.register("unstable", "tests.plugin_steps:UnstableStep")
    recipe = write_recipe(UNSTABLE)
    assert cli("build", recipe).exit_code == 0
    lock = json.loads(recipe.with_suffix(".lock").read_text())
    assert all(len(node["content"]) == 32 for node in lock["nodes"].values())
    same = cli("build", recipe, "--force", "score", "--force", "split")
    assert same.exit_code == 0 and "not reproducible" not in same.output, same.output
    recipe.write_text(UNSTABLE.replace("threads: 1", "threads: 4"))  # runtime-only: the same key
    moved = cli("build", recipe, "--force", "score")
    warnings = [line for line in moved.output.splitlines() if "not reproducible" in line]
    assert moved.exit_code == 0 and len(warnings) == 1, moved.output
    assert warnings[0].startswith("⚠ score for default: output differs from the lockfile's build: "
                                  "this step is not reproducible across these settings")
    again = cli("build", recipe, "--force", "score")
    assert "not reproducible" not in again.output, "the lockfile now records the new bytes"


def test_changing_a_field_rebuilds_only_that_step_and_plan_says_why(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    recipe.write_text(recipe.read_text().replace("k: 10", "k: 5"))
    plan = cli("plan", recipe)
    assert plan.exit_code == 0
    split_line = next(line for line in plan.output.splitlines() if " split " in line)
    assert split_line.startswith("run") and "train_per_label changed from 10 to 5" in split_line
    assert next(line for line in plan.output.splitlines() if " rows " in line).startswith("cached")
    assert statuses(cli("build", recipe).output) == {"rows": "cached", "split": "built"}


def test_edited_data_file_rebuilds_everything_downstream(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    make_rows(301).write_csv(data_csv)
    plan = cli("plan", recipe).output
    assert "content of the file in field path changed" in plan
    assert statuses(cli("build", recipe).output) == {"rows": "built", "split": "built"}


def test_matrix_variants_share_identical_steps(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC + "matrix:\n  k: [5, 10, 20]\n")
    result = cli("build", recipe)
    assert result.exit_code == 0, result.output
    lock = json.loads(recipe.with_suffix(".lock").read_text())
    assert len(lock["variants"]) == 3
    assert len({v["rows"] for v in lock["variants"].values()}) == 1
    assert len({v["split"] for v in lock["variants"].values()}) == 3
    shown = cli("show", recipe, "split", "--table", "train", "--variant", "k=20")
    assert "labels: bad=20, good=20, meh=20" in shown.output
    ambiguous = cli("show", recipe, "split")
    assert ambiguous.exit_code == 2 and "has 3 distinct outputs across the 3 variants" in ambiguous.output


def test_only_and_force(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    assert statuses(cli("build", recipe, "--only", "rows").output) == {"rows": "built"}
    assert statuses(cli("build", recipe, "--force", "rows").output) == {"rows": "built", "split": "built"}
    assert statuses(cli("build", recipe, "--force", "split").output) == {"rows": "cached", "split": "built"}
    assert cli("build", recipe, "--only", "splt").exit_code == 2


def test_dry_run_builds_nothing(cli, write_recipe, data_csv, cache_dir):
    result = cli("build", write_recipe(BASIC), "--dry-run")
    assert result.exit_code == 0 and "2 to run" in result.output
    assert not (cache_dir / "entries").exists()


def test_split_is_stratified_disjoint_and_stable(cli, write_recipe, data_csv, tmp_path):
    recipe = write_recipe(BASIC.replace("test: 60", "test: 60\n    validation: 0.1"))
    cli("build", recipe)
    out = {}
    for table in ("train", "test", "validation"):
        cli("export", recipe, "split", "--table", table, "--to", tmp_path / f"{table}.parquet")
        out[table] = pl.read_parquet(tmp_path / f"{table}.parquet")
    assert out["test"]["label"].value_counts().sort("label")["count"].to_list() == [20, 20, 20]
    assert out["train"]["label"].value_counts()["count"].to_list() == [10, 10, 10]
    assert out["validation"].height == 30
    ids = [set(frame["id"]) for frame in out.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # fewer training labels must not change the test set (comparable experiments)
    recipe.write_text(recipe.read_text().replace("k: 10", "k: 4"))
    cli("build", recipe)
    cli("export", recipe, "split", "--table", "test", "--to", tmp_path / "test2.parquet")
    assert set(pl.read_parquet(tmp_path / "test2.parquet")["id"]) == ids[1]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv.bz2", ".csv.gz"])
def test_load_formats_and_label_mapping(cli, write_recipe, tmp_path, suffix):
    frame = make_rows(90)
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        frame.write_ndjson(path)
    elif suffix == ".parquet":
        frame.write_parquet(path)
    else:
        import bz2
        import gzip

        raw = frame.write_csv().encode()
        path.write_bytes(bz2.compress(raw) if suffix.endswith("bz2") else gzip.compress(raw))
    recipe = write_recipe(
        f"name: fmt\nsteps:\n  rows:\n    kind: load\n    path: data{suffix}\n    text_column: review\n"
        "    label_column: stars\n    labels: {good: positive, bad: negative}\n"
    )
    result = cli("build", recipe)
    assert result.exit_code == 0, result.output
    cli("export", recipe, "rows", "--to", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and {r["label"] for r in rows} == {"positive", "negative"}
    assert {r["source"] for r in rows} == {"real"} and len({r["id"] for r in rows}) == 60


def test_export_csv_and_bad_extension(cli, write_recipe, data_csv, tmp_path):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    assert cli("export", recipe, "rows", "--to", tmp_path / "rows.csv").exit_code == 0
    assert pl.read_csv(tmp_path / "rows.csv").height == 300
    bad = cli("export", recipe, "rows", "--to", tmp_path / "rows.xlsx")
    assert bad.exit_code == 2 and "use a .parquet, .jsonl or .csv" in bad.output


def test_verify_detects_corruption_and_gc_keeps_locked_entries(cli, write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(BASIC)
    cli("build", recipe)
    assert cli("cache", "verify").exit_code == 0
    victim = next((cache_dir / "entries").rglob("data.parquet"))
    victim.write_bytes(victim.read_bytes()[:-20] + b"\0" * 20)
    bad = cli("cache", "verify")
    assert bad.exit_code == 1 and "content hash mismatch" in bad.output
    repaired = cli("cache", "verify", "--repair")
    assert repaired.exit_code == 1 and "removed 1 damaged" in repaired.output
    assert cli("cache", "verify").exit_code == 0
    assert statuses(cli("build", recipe).output)["rows"] == "built"
    # an entry from a variant no lockfile mentions any more is garbage
    recipe.write_text(recipe.read_text().replace("k: 10", "k: 3"))
    cli("build", recipe)
    dry = cli("cache", "gc", tmp_path, "--dry-run")
    assert "would remove 1 entry" in dry.output
    assert "removed 1 entry" in cli("cache", "gc", tmp_path).output
    assert statuses(cli("build", recipe).output) == {"rows": "cached", "split": "cached"}


SLOW = BASIC + "  slow:\n    kind: slow\n    input: split.train\n"


def _build_process(recipe: Path, cache_dir: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "SYNTHFORGE_CACHE": str(cache_dir), "SYNTHFORGE_PLUGINS": "tests.plugin_steps", **env}
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.Popen(
        [sys.executable, "-m", "synthforge", "build", str(recipe), "--no-progress"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_concurrent_builds_compute_each_key_once(write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(SLOW)
    runlog = tmp_path / "runs.log"
    procs = [_build_process(recipe, cache_dir, SF_TEST_SLEEP="1", SF_TEST_RUNLOG=str(runlog)) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(runlog.read_text().splitlines()) == 1
    assert len(list((cache_dir / "entries").rglob("manifest.json"))) == 3


def test_sigkill_mid_write_leaves_no_entry_and_next_build_completes(write_recipe, data_csv, cache_dir, tmp_path):
    recipe = write_recipe(SLOW)
    proc = _build_process(recipe, cache_dir, SF_TEST_SLEEP="60")
    deadline = time.time() + 60
    while not list((cache_dir / "tmp").glob("*/started")) if (cache_dir / "tmp").exists() else True:
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifests = list((cache_dir / "entries").rglob("manifest.json"))
    assert len(manifests) == 2  # rows and split finished; slow left only a tmp folder
    assert list((cache_dir / "tmp").iterdir())
    runlog = tmp_path / "runs.log"
    again = _build_process(recipe, cache_dir, SF_TEST_RUNLOG=str(runlog))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert statuses(out) == {"rows": "cached", "split": "cached", "slow": "built"}  # finished work not redone
    assert len(list((cache_dir / "entries").rglob("manifest.json"))) == 3
    subprocess.run([sys.executable, "-m", "synthforge", "cache", "gc", str(tmp_path)], env={**os.environ, "SYNTHFORGE_CACHE": str(cache_dir)}, check=True, capture_output=True)
    assert not list((cache_dir / "tmp").iterdir())
