"""`build --keep-going`: a failing step stops only what depends on it; the summary and exit code say what happened."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from synthforge.errors import BuildFailed, UserError
from synthforge.executors.base import NodeRun, run_ready

# Two independent branches; the bad one comes first, so a build that stops at its failure builds nothing else.
BRANCHES = """
name: branches
seed: 7
steps:
  bad:
    kind: load
    path: reviews.csv
    text_column: nosuch
    label_column: stars
  bad_split:
    kind: split
    input: bad
    test: 60
    train_per_label: 10
  rows:
    kind: load
    path: reviews.csv
    text_column: review
    label_column: stars
  split:
    kind: split
    input: rows
    test: 60
    train_per_label: 10
  both:
    kind: mix
    real: split.train
    synthetic: bad_split.train
    real_count: all
    synthetic_count: all
"""

BAD_LINE = ":7: steps.bad.text_column: no column 'nosuch' in the data"  # after the recipe's path


def lines_starting(output: str, mark: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(mark)]


def test_without_keep_going_the_first_failure_stops_the_build(cli, write_recipe, data_csv, cache_dir):
    recipe = write_recipe(BRANCHES)
    result = cli("build", recipe)
    assert result.exit_code == 2
    assert lines_starting(result.output, "error:") == [f"error: {recipe}{BAD_LINE} (set text_column; columns in the data: review, stars, extra)"]
    assert lines_starting(result.output, "✓") == [] and lines_starting(result.output, "✗") == []
    assert not recipe.with_suffix(".lock").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_keep_going_builds_the_independent_branch_and_skips_what_waits_for_the_failure(cli, write_recipe, data_csv, jobs):
    recipe = write_recipe(BRANCHES)
    result = cli("build", recipe, "--keep-going", "--jobs", jobs)
    assert result.exit_code == 2, result.output
    failed = lines_starting(result.output, "✗")
    assert len(failed) == 1 and failed[0].startswith(f"✗ [1/5] bad for default: {recipe}{BAD_LINE}")
    assert sorted(lines_starting(result.output, "- ")) == [
        "- [2/5] bad_split for default: skipped, waits for failed bad",
        "- [5/5] both for default: skipped, waits for failed bad",
    ]
    assert sorted(line.split(":")[0] for line in lines_starting(result.output, "✓")) == ["✓ [3/5] rows for default",
                                                                                           "✓ [4/5] split for default"]
    assert lines_starting(result.output, "error:") == [
        "error: build incomplete: 2 built, 1 failed, 2 skipped (failed: bad; the ✗ lines above say why)"]
    assert "Traceback" not in result.output and not recipe.with_suffix(".lock").exists()
    again = cli("build", recipe, "--keep-going", "--jobs", jobs)
    assert "0 built, 1 failed, 2 skipped" in again.output and lines_starting(again.output, "▶") == ["▶ [1/3] bad for default: "
                                                                                                   "Never built here, and there is no lockfile yet (build writes recipe.lock)."]


def test_keep_going_exits_1_when_a_failure_is_not_a_user_error(cli, write_recipe, data_csv, monkeypatch):
    from synthforge.steps.split import SplitStep

    def broken(self, ctx):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(SplitStep, "run", broken)
    result = cli("build", write_recipe(BRANCHES), "--keep-going")
    assert result.exit_code == 1, result.output
    assert "✗ [4/5] split for default: RuntimeError: disk on fire second line" in result.output.splitlines()
    assert "2 failed" in result.output and "(failed: bad, split;" in result.output


def test_the_python_api_keeps_going_and_raises_the_summary_with_the_report(write_recipe, data_csv, cache_dir):
    import synthforge as sf

    r = sf.open(write_recipe(BRANCHES), cache_dir=cache_dir)
    with pytest.raises(BuildFailed) as failure:
        r.build(keep_going=True, progress=False)
    assert failure.value.exit_code == 2
    report = failure.value.report
    assert [r.graph.nodes[k].step for k in report.failures.errors] == ["bad"]
    assert sorted(r.graph.nodes[k].step for k in report.failures.skipped) == ["bad_split", "both"]
    assert r.table("split").height == 90


# -- the loop itself, with a fake executor -------------------------------------------------------
class _FailingExecutor:
    """Runs one node at a time; the nodes named in `failing` fail."""

    slots, model_slots = 1, None

    def __init__(self, failing: set[str]):
        self.failing, self.queue = failing, []

    def submit(self, node, force: bool) -> None:
        self.queue.append(node)

    def wait(self):
        node = self.queue.pop(0)
        if node.key in self.failing:
            return [(node.key, UserError(f"{node.key} broke"))]
        return [(node.key, NodeRun(node.key, 1, 0.0))]

    def close(self) -> None:
        pass


def _node(key: str, *upstream: str):
    step = SimpleNamespace(loads_model=lambda params: False)
    return SimpleNamespace(key=key, step=key, upstream=list(upstream), resolved=SimpleNamespace(step=step, run_params=None))


# a -> b -> d, c -> d, c -> e: a fails; d waits for a through b; c and e are independent of a
GRAPH = [_node("a"), _node("b", "a"), _node("c"), _node("d", "b", "c"), _node("e", "c")]


def test_ready_loop_keep_going_skips_descendants_transitively_and_runs_the_rest():
    done, skipped = [], {}
    failures = run_ready(GRAPH, _FailingExecutor({"a"}), forced=set(), on_start=lambda n: None,
                         on_done=lambda n, run: done.append(n.key), on_error="keep-going",
                         on_skipped=lambda n, failed: skipped.update({n.key: failed}))
    assert done == ["c", "e"]
    assert skipped == {"b": ["a"], "d": ["a"]} == failures.skipped
    assert list(failures.errors) == ["a"]


def test_ready_loop_stop_starts_nothing_after_a_failure_and_raises_it():
    started = []
    with pytest.raises(UserError, match="a broke"):
        run_ready(GRAPH, _FailingExecutor({"a"}), forced=set(), on_start=lambda n: started.append(n.key),
                  on_done=lambda n, run: None)
    assert started == ["a"]


def test_ready_loop_refuses_an_unknown_policy():
    with pytest.raises(ValueError, match="on_error"):
        run_ready(GRAPH, _FailingExecutor(set()), forced=set(), on_start=print, on_done=print, on_error="ignore")
