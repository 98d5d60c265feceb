"""Parallel builds: spawned local workers and Ray give the sequential build's bytes; the ready loop's limits."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from synthforge.executors.base import NodeRun, plan_width, run_ready
from tests.conftest import BASIC

MATRIX = BASIC + "matrix:\n  k: [5, 10, 20]\n"
REPO = Path(__file__).resolve().parents[1]


def table_digests(cache: Path) -> dict[str, str]:
    """Every table file of every entry, by path: what must match byte for byte across executors."""
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((cache / "entries").rglob("*.parquet"))}


def finished_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("✓")]


def test_jobs_2_builds_the_bytes_of_a_sequential_build(cli, write_recipe, data_csv, tmp_path):
    recipe = write_recipe(MATRIX)
    sequential = cli("build", recipe, "--jobs", "1", "--cache-dir", tmp_path / "seq")
    parallel = cli("build", recipe, "--jobs", "2", "--cache-dir", tmp_path / "par")
    assert sequential.exit_code == 0 and parallel.exit_code == 0, parallel.output
    assert table_digests(tmp_path / "par") == table_digests(tmp_path / "seq") != {}
    lines = finished_lines(parallel.output)
    assert len(lines) == 4 and sum("split for k=" in line for line in lines) == 3
    assert any("rows for all variants" in line for line in lines)


def test_a_failing_step_in_a_parallel_build_is_one_line_and_the_rest_stays_cached(cli, write_recipe, data_csv, tmp_path):
    recipe = write_recipe(MATRIX.replace("test: 60", "test: ${k}${k}"))  # k=10: 1010 test rows of 300
    result = cli("build", recipe, "--jobs", "2")
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    again = cli("build", recipe, "--jobs", "2", "--only", "rows")
    assert "cached" in again.output


def test_address_without_ray_executor_is_a_user_error(cli, write_recipe, data_csv):
    result = cli("build", write_recipe(BASIC), "--address", "auto")
    assert result.exit_code == 2 and "--executor ray" in result.output


class _RecordingExecutor:
    """Finishes nodes in submission order and records how many models ran at once."""

    def __init__(self, slots: int, model_slots: int | None):
        self.slots, self.model_slots = slots, model_slots
        self.running: list = []
        self.most_models = 0

    def submit(self, node, force: bool) -> None:
        self.running.append(node)
        self.most_models = max(self.most_models, sum(n.heavy for n in self.running))

    def wait(self):
        node = self.running.pop(0)
        return [(node.key, NodeRun(node.key, 0, 0.0))]

    def close(self) -> None:
        pass


def _node(key: str, upstream: list[str], heavy: bool):
    step = SimpleNamespace(loads_model=lambda params: heavy)
    return SimpleNamespace(key=key, step=key, upstream=upstream, heavy=heavy, resolved=SimpleNamespace(step=step, run_params=None))


@pytest.mark.parametrize("model_slots, expected", [(1, 1), (2, 2), (None, 3)])
def test_ready_loop_keeps_upstream_order_and_the_model_limit(model_slots, expected):
    nodes = [_node("a", [], False)] + [_node(f"emb{i}", ["a"], True) for i in range(3)] + [_node("mix", ["emb0", "emb2"], False)]
    executor = _RecordingExecutor(slots=8, model_slots=model_slots)
    order: list[str] = []
    run_ready(nodes, executor, forced=set(), on_start=lambda n: order.append(n.key), on_done=lambda n, o: None)
    assert executor.most_models == expected
    assert order[0] == "a" and order[-1] == "mix" and sorted(order) == sorted(n.key for n in nodes)


def test_plan_width_counts_the_widest_depth_of_the_nodes_to_run():
    chain = [_node("a", [], False), _node("b", ["a"], False), _node("c", ["b"], False)]
    fan = [_node("a", [], False)] + [_node(f"s{i}", ["a"], False) for i in range(3)] + [_node("m", ["s0", "s1"], False)]
    rebuilt_branches = [_node("s0", ["a"], False), _node("s1", ["a"], False)]  # `a` is cached: not in the list
    assert (plan_width(chain), plan_width(fan), plan_width(rebuilt_branches), plan_width([])) == (1, 3, 2, 0)


def _executor_chosen(monkeypatch, cpus: int, widths: list[int]) -> list[str]:
    """Which executor the default (--jobs left out) runs each of a sequence of builds on."""
    from synthforge.executors import local

    chosen: list[str] = []

    class Pool:
        def __init__(self, graph, cache, runtime, jobs, models):
            chosen.append(f"pool of {jobs}")
            self.slots, self.model_slots = jobs, models

    class Inline:
        def __init__(self, graph, cache, runtime, log):
            chosen.append("inline")
            self.slots, self.model_slots = 1, 1

    monkeypatch.setattr(local, "ProcessExecutor", Pool)
    monkeypatch.setattr(local, "InlineExecutor", Inline)
    for width in widths:
        branches = [_node(f"s{i}", ["a"], False) for i in range(width)]  # `a` is cached
        local.AutoExecutor(None, None, None, cpus).prepare(branches, print)
    return chosen


def test_default_jobs_spawn_workers_only_when_steps_can_run_at_once(monkeypatch):
    assert _executor_chosen(monkeypatch, cpus=2, widths=[0, 1, 2, 5]) == ["inline", "inline", "pool of 2", "pool of 2"]
    assert _executor_chosen(monkeypatch, cpus=8, widths=[3]) == ["pool of 3"]


def test_default_jobs_build_a_chain_in_this_process(cli, write_recipe, data_csv, tmp_path, monkeypatch):
    from synthforge.executors import local

    monkeypatch.setattr(local, "ProcessExecutor", None)  # calling it would fail the build
    monkeypatch.setattr("synthforge.backends.devices.usable_cpus", lambda: 2)
    result = cli("build", write_recipe(BASIC))
    assert result.exit_code == 0, result.output


def test_executor_ray_without_ray_says_how_to_install(cli, write_recipe, data_csv, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = cli("build", write_recipe(BASIC), "--executor", "ray")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --executor: --executor ray needs Ray, which is not installed (pip install 'synthforge[ray]')"


# -- Ray: one local instance for the module (its start-up costs seconds) -------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "SYNTHFORGE_PLUGINS": "tests.plugin_steps"}})
    yield ray
    ray.shutdown()


CRASH = BASIC + "  copy:\n    kind: crash_once\n    input: split.train\n    marker: {marker}\nmatrix:\n  k: [5, 10, 20]\n"


@pytest.mark.integration
def test_ray_build_matches_local_bytes_and_retries_a_killed_worker(ray_local, cli, write_recipe, data_csv, tmp_path,
                                                                   monkeypatch):
    import synthforge.steps as steps_module

    # Register the test kind in a copy of the registry: later tests see only the real kinds.
    monkeypatch.setattr(steps_module.KINDS, "targets", dict(steps_module.KINDS.targets))
    steps_module.register("crash_once", "tests.plugin_steps:CrashOnceStep")
    marker = tmp_path / "killed-once"
    recipe = write_recipe(CRASH.replace("{marker}", str(marker)))
    on_ray = cli("build", recipe, "--executor", "ray", "--cache-dir", tmp_path / "ray")
    assert on_ray.exit_code == 0, on_ray.output
    assert marker.exists()  # the first attempt of the first `copy` node killed its worker
    local = cli("build", recipe, "--jobs", "1", "--cache-dir", tmp_path / "local")
    assert local.exit_code == 0, local.output
    assert table_digests(tmp_path / "ray") == table_digests(tmp_path / "local")
    assert len(table_digests(tmp_path / "ray")) == 1 + 3 * 3 + 3  # rows; split's 3 table files per k (its main table is their union); copy per k
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "entries").rglob("manifest.json")]
    assert sorted(m["step"] for m in manifests).count("copy") == 3


ROW_PARALLEL = BASIC + """
  emb:
    kind: embed
    input: rows
    model: ENCODER
  gen:
    kind: generate
    n: 8
    labels: [positive, negative]
    variables: {topic: [food, music, travel]}
    template: write a {{ label }} review about {{ topic }}
    max_new_tokens: 6
    hygiene: {dedupe: false, min_chars: 0}
    backend: {type: transformers, model: LLM, batch_size: 4}
"""


@pytest.mark.integration
def test_shards_on_a_ray_actor_pool_merge_to_the_local_bytes(ray_local, cli, write_recipe, data_csv, tmp_path, tiny_encoder):
    from tests.tiny_models import tiny_chat_model_dir

    recipe = write_recipe(ROW_PARALLEL.replace("ENCODER", str(tiny_encoder)).replace("LLM", str(tiny_chat_model_dir())))
    on_ray = cli("build", recipe, "--executor", "ray", "--shard-rows", "3", "--device", "cpu", "--cache-dir", tmp_path / "ray")
    assert on_ray.exit_code == 0, on_ray.output
    local = cli("build", recipe, "--jobs", "1", "--device", "cpu", "--cache-dir", tmp_path / "local")
    assert local.exit_code == 0, local.output
    assert table_digests(tmp_path / "ray") == table_digests(tmp_path / "local")
    gen = next(json.loads(p.read_text()) for p in (tmp_path / "ray" / "entries").rglob("manifest.json")
               if json.loads(p.read_text())["step"] == "gen")
    assert gen["meta"]["responses_generated"] == 8  # on the actors, in 3 shards


@pytest.mark.integration
def test_ray_keep_going_builds_the_independent_branch_and_reports_the_located_failure(ray_local, cli, write_recipe, data_csv):
    from tests.test_keep_going import BAD_LINE, BRANCHES

    recipe = write_recipe(BRANCHES)
    result = cli("build", recipe, "--executor", "ray", "--keep-going")
    assert result.exit_code == 2, result.output
    assert f"bad for default: {recipe}{BAD_LINE}" in result.output
    assert "error: build incomplete: 2 built, 1 failed, 2 skipped (failed: bad;" in result.output
    assert "both for default: skipped, waits for failed bad" in result.output


def test_parallel_workers_cap_their_math_threads_but_keep_the_users_settings(monkeypatch):
    import os

    from synthforge.backends.devices import THREAD_LIBRARY_VARIABLES, THREADS_VARIABLE, limit_threads, thread_budget

    for name in (THREADS_VARIABLE, *THREAD_LIBRARY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")  # the user's own choice stays
    assert thread_budget() >= 1
    limit_threads(1)
    assert thread_budget() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"


@pytest.mark.parametrize("device, gpu_driver, expected", [("auto", False, None), ("auto", True, 1), ("cpu", True, None),
                                                          ("cuda:0", False, 1)])
def test_default_model_limit_is_one_per_gpu_and_one_per_worker_on_the_cpu(monkeypatch, device, gpu_driver, expected):
    from synthforge.executors import executor_from
    from synthforge.backends import devices
    from synthforge.executors import local
    from synthforge.stepapi import Runtime

    monkeypatch.setattr(devices.os.path, "exists", lambda path: gpu_driver and path in devices.ACCELERATOR_NODES)
    executor = executor_from("local", None, None, Runtime(device=device), None, None, None)
    assert isinstance(executor, local.AutoExecutor) and executor.models == expected
    explicit = executor_from("local", None, None, Runtime(device=device), None, None, 2)
    assert explicit.models == 2
