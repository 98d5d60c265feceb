"""`synthforge diff`: reasons, row/label/metric deltas, formats, gates and git revisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import BASIC, make_rows

ROOT = Path(__file__).resolve().parents[1]


def test_diff_two_recipes_reports_field_rows_labels(cli, write_recipe, data_csv):
    a = write_recipe(BASIC, "a.yaml")
    b = write_recipe(BASIC.replace("k: 10", "k: 4"), "b.yaml")
    result = cli("diff", a, b, "--build")
    assert result.exit_code == 0, result.output
    assert "field train_per_label changed from 10 to 4" in result.output
    assert "rows: 90 -> 72 (+0 added, -18 removed, 0 changed)" in result.output
    assert "bad 30 -> 24 (-6)" in result.output


def test_diff_json_schema_and_gates(cli, write_recipe, data_csv):
    a = write_recipe(BASIC, "a.yaml")
    b = write_recipe(BASIC.replace("k: 10", "k: 4"), "b.yaml")
    cli("build", a), cli("build", b)
    result = cli("diff", a, b, "--format", "json", "--fail-on", "rows_removed > 10", "--fail-on", "rows_added > 0")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["schema"] == "synthforge.diff/1"
    assert data["summary"]["changed"] == 1 and data["summary"]["unchanged"] == 1
    split = next(s for s in data["steps"] if s["step"] == "split")
    assert split["outputs"]["rows_removed"] == 18
    assert split["metrics"]["label_counts.train.bad"]["delta"] == -6
    assert [g["tripped"] for g in data["gates"]] == [True, False]

def test_relative_gate_trips_on_percentage_drop(cli, write_recipe, data_csv):
    a = write_recipe(BASIC, "a.yaml")
    b = write_recipe(BASIC.replace("k: 10", "k: 4"), "b.yaml")
    assert cli("diff", a, b, "--build", "--fail-on", "bad < -50%").exit_code == 1  # 10 -> 4 is -60%
    assert cli("diff", a, b, "--fail-on", "bad < -70%").exit_code == 0


def test_unbuilt_side_is_reported_and_bad_gate_is_usage_error(cli, write_recipe, data_csv):
    a = write_recipe(BASIC, "a.yaml")
    b = write_recipe(BASIC.replace("k: 10", "k: 4"), "b.yaml")
    cli("build", a)
    result = cli("diff", a, b)
    assert "output not built on side B (use --build)" in result.output
    bad = cli("diff", a, b, "--fail-on", "accuracy drops a lot")
    assert bad.exit_code == 2 and "cannot read gate" in bad.output


def test_diff_two_step_outputs_and_lockfile(cli, write_recipe, data_csv):
    a = write_recipe(BASIC, "a.yaml")
    cli("build", a)
    result = cli("diff", f"{a}#rows", f"{a}#split")
    assert result.exit_code == 0 and "rows vs split" in result.output and "rows: 300 -> 90" in result.output
    same = cli("diff", a.with_suffix(".lock"), a)
    assert same.exit_code == 0 and "0 changed, 2 unchanged" in same.output


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_ci_flow_on_a_git_repo_with_two_commits(tmp_path):
    """The commands of docs/ci.md: plan and build the changed recipe, then diff HEAD~1 against HEAD."""
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    make_rows().write_csv(repo / "recipes" / "reviews.csv")
    recipe = repo / "recipes" / "x.yaml"
    recipe.write_text(BASIC.lstrip())
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=a@b", "-c", "user.name=t", "add", ".")
    _git(repo, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qm", "first")
    recipe.write_text(BASIC.lstrip().replace("k: 10", "k: 6"))
    _git(repo, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qam", "fewer labels")
    env = {**os.environ, "SYNTHFORGE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}

    def sf(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "synthforge", *args], cwd=repo, env=env, capture_output=True, text=True)

    assert "2 to run" in sf("plan", "recipes/x.yaml").stdout
    assert sf("build", "recipes/x.yaml", "--no-progress").returncode == 0
    diff = sf("diff", "HEAD~1:recipes/x.yaml", "HEAD:recipes/x.yaml", "--build", "--format", "markdown",
              "--output", "diff.md", "--fail-on", "rows_removed > 5")
    assert diff.returncode == 1, diff.stderr
    markdown = (repo / "diff.md").read_text()
    assert "field train_per_label changed from 10 to 6" in markdown and "rows: 90 -> 78" in markdown
    assert "❌ failed" in markdown
    missing = sf("diff", "HEAD~5:recipes/x.yaml", "HEAD:recipes/x.yaml")
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr


def test_run_time_facts_are_no_metric_changes():
    from synthforge.diff import compare_metrics

    a = {"seconds": 1.0, "rows_per_s": 40.0, "responses_cached": 0, "generated_completion_tokens": 900,
         "completion_tokens": 900, "scores": {"accuracy": {"mean": 0.5}}, "per_seed": [], "x": {"train_seconds": 3.0}}
    b = {**a, "seconds": 9.0, "rows_per_s": 5.0, "responses_cached": 30, "generated_completion_tokens": 0,
         "scores": {"accuracy": {"mean": 0.6}}, "x": {"train_seconds": 1.0}}
    assert set(compare_metrics(a, b)) == {"completion_tokens", "scores.accuracy"}
