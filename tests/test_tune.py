"""`synthforge tune` against a fake OpenAI server whose replies spread with temperature, so distinct-n and Vendi
move with it (targets name distinct-1, which does not depend on the tiny encoder: its vocabulary differs
between test sessions). The search meets a target the default settings miss, pins it with --write, resumes
after a kill without recomputing a probe, keeps to its budget, and refuses impossible searches with located
one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthforge.cli import main
from tests.fake_openai_server import FakeOpenAIServer, spread_reply

REPO = Path(__file__).resolve().parents[1]

RECIPE = """\
name: tune-test
seed: 1
steps:
  real:
    kind: load
    path: reviews.csv
    text_column: review
    label_column: stars
    labels: [good, bad]
  real_emb: {kind: embed, input: real, model: "ENCODER"}
  gen:
    kind: generate
    n: 100
    labels: [good, bad]
    variables: {topic: [plot, cast, music, pace]}
    template: "Write a {{ label }} review about {{ topic }}."
    temperature: 0.1  # too uniform
    backend: {type: openai, base_url: 'URL', model: m, concurrency: 2, max_retries: 2, backoff_s: 0.01}
  gen_emb: {kind: embed, input: gen, model: "ENCODER"}
tune:
  gen:
    reference: real_emb
    embed: gen_emb
    probe_rows: 24
    probes: 6
    space:
      temperature: 0.1..1.6
    targets: ["distinct_1 >= 0.12"]
"""


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        fake.reply_body = spread_reply
        yield fake


@pytest.fixture
def recipe(tmp_path, monkeypatch, server, tiny_encoder, data_csv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFORGE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("ENCODER", str(tiny_encoder)).replace("URL", server.base_url))
    return path


def tune(*args: str):
    return CliRunner().invoke(main, ["tune", *map(str, args), "--no-progress"], catch_exceptions=False)


def test_the_search_meets_a_target_the_default_misses_and_write_pins_it(recipe, server):
    result = tune(recipe, "gen", "--write")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "default settings (#0): misses distinct_1 >= 0.12" in out
    assert "stopped: a probe met every target" in out
    assert (recipe.parent / "reports" / "tune-test" / "tune-gen.png").read_bytes()[:4] == b"\x89PNG"  # distinct-1 vs temperature
    best_line = next(line for line in out.splitlines() if line.startswith("best (*): "))
    temperature = float(best_line.split("temperature=")[1].split()[0].rstrip(";"))
    assert temperature > 0.1
    assert "recipe fragment (--write applies it):" in out and "steps:\n  gen:\n    temperature:" in out
    written = recipe.read_text()
    assert "temperature: 0.1  # too uniform" not in written
    line = next(line for line in written.splitlines() if line.strip().startswith("temperature:"))
    assert line.endswith("# too uniform") and abs(float(line.split(":")[1].split("#")[0]) - temperature) < 1e-3

    sent = len(server.requests)  # the same search from the command line: its study, every probe done
    again = tune(recipe, "gen", "--probes", "6", "--target", "distinct_1 >= 0.12", "--space", "temperature=0.1..1.6")
    assert again.exit_code == 0, again.output
    assert len(server.requests) == sent and best_line in again.output


def test_write_leaves_a_note_of_the_search_that_report_and_diff_show(recipe, server, tmp_path):
    import yaml

    from synthforge.api import open as open_recipe
    from synthforge.tuning import tuned_text

    before = tmp_path / "before.yaml"
    before.write_text(recipe.read_text())
    result = tune(recipe, "gen", "--write")
    assert result.exit_code == 0, result.output
    note = yaml.safe_load(recipe.read_text())["tune"]["gen"]["pinned"]
    search = next(line for line in result.output.splitlines() if line.startswith("space: ")).rsplit("search ", 1)[1]
    assert note["search"].startswith(search) and len(note["search"]) == 32
    assert note["targets"] == ["distinct_1 >= 0.12"] and note["metrics"]["distinct_1"] >= 0.12
    assert note["settings"]["temperature"] > 0.1 and len(note["intervals"]["distinct_1"]) == 2
    r = open_recipe(recipe)
    assert r.key("gen") != open_recipe(before).key("gen")  # the settings moved the key; the note is in no key
    shown = tuned_text(r.graph.recipe, r.cache)
    assert f"gen: search {search}, probe #{note['probe']} of {note['probes']} (24 rows a probe) on distinct_1 >= 0.12" in shown
    assert "study " in shown and "settings as pinned" in shown

    diffed = CliRunner().invoke(main, ["diff", str(before), str(recipe)], catch_exceptions=False)
    assert diffed.exit_code == 0, diffed.output
    assert "tuned A: not tuned" in diffed.output and f"tuned B: search {search}, probe #" in diffed.output
    recipe.write_text(recipe.read_text().replace(f"\n    temperature: {note['settings']['temperature']}", "\n    temperature: 0.5"))
    edited = tuned_text(open_recipe(recipe).graph.recipe, r.cache)
    assert f"settings edited since: temperature {note['settings']['temperature']:.3g} -> 0.5" in edited


def test_probes_carry_intervals_and_an_oracle_judge_measures_fidelity(recipe, server):
    import json

    result = tune(recipe, "gen", "--judge", "real_emb", "--target", "distinct_1 >= 0.12", "--target",
                  "fidelity_corrected >= 0", "--probes", "2", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["judge"] == "real_emb" and found["interval_methods"]["fidelity_observed"] == "wilson"
    assert found["interval_methods"]["distinct_1"] == "jackknife"
    for probe in found["probes"]:
        for metric in ("distinct_1", "vendi", "fidelity_observed", "fidelity_corrected", "label_agreement"):
            low, high = probe["intervals"][metric]
            assert low <= probe["metrics"][metric] <= high, (metric, probe)
        low, high = probe["intervals"]["distinct_1"]
        assert probe["straddles"] == (["distinct_1 >= 0.12"] if low < 0.12 < high else [])
        assert probe["meets_targets"] == (probe["metrics"]["distinct_1"] >= 0.12)  # by the point estimate
    table = tune(recipe, "gen", "--judge", "real_emb", "--target", "distinct_1 >= 0.12", "--target",
                 "fidelity_corrected >= 0", "--probes", "2")
    assert "interval straddles" in table.output and "distinct_1, fidelity_corrected: jackknife" in table.output, table.output


def test_a_hand_edited_note_is_shown_as_far_as_it_reads():
    from synthforge.tuning import describe_pinned

    note = {"search": "f6fc064f64e027ee07f634c0003df5eb", "probe": 5, "probes": 6, "probe_rows": 32,
            "targets": "vendi >= 13.5", "metrics": {"vendi": "high", "mmd_rbf": 0.034}, "intervals": {"mmd_rbf": [0.02, "x"]}}
    assert describe_pinned(note) == "search f6fc064f64e0, probe #5 of 6 (32 rows a probe) on vendi >= 13.5: mmd_rbf 0.034"


def test_straddles_names_the_constraints_whose_threshold_is_inside_the_interval():
    from synthforge.tuning import Probe, Target

    probe = Probe(0, {}, {"vendi": 13.0, "mmd_rbf": 0.05}, 40, {}, intervals={"vendi": [11.5, 14.5], "mmd_rbf": [0.04, 0.055]})
    constraints = [Target("vendi", ">=", 12.0), Target("mmd_rbf", "<=", 0.06), Target("distinct_1", ">=", 0.1)]
    assert [str(t) for t in probe.straddles(constraints)] == ["vendi >= 12"]


def test_a_finished_search_reruns_from_its_storage_with_no_request(recipe, server):
    first = tune(recipe, "gen")
    assert first.exit_code == 0, first.output
    sent = len(server.requests)
    second = tune(recipe, "gen")
    assert second.exit_code == 0, second.output
    assert len(server.requests) == sent
    table = lambda text: [line for line in text.splitlines() if line.lstrip().startswith(("#", "*#"))]  # noqa: E731
    assert table(second.output) == table(first.output)


def test_a_finished_search_shown_again_imports_no_torch(recipe, server, tmp_path):
    assert tune(recipe, "gen").exit_code == 0
    code = ("import sys; from click.testing import CliRunner; from synthforge.cli import main; "
            "result = CliRunner().invoke(main, ['tune', 'r.yaml', 'gen', '--no-progress']); "
            "print(result.exit_code, sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "SYNTHFORGE_CACHE": str(tmp_path / "cache")}
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert shown.stdout.strip() == "0 []", shown.stdout + shown.stderr


def test_a_probe_is_an_ordinary_cached_step(recipe, server):
    """The recipe at the probe's settings (n = probe rows) builds from the cache: same keys, no request."""
    result = tune(recipe, "gen", "--write")
    assert result.exit_code == 0, result.output
    sent = len(server.requests)
    recipe.write_text(recipe.read_text().replace("n: 100", "n: 24"))
    built = CliRunner().invoke(main, ["build", str(recipe), "--only", "gen_emb", "--no-progress"], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    assert len(server.requests) == sent
    assert "built 0, cached 2" in built.output


def test_two_objectives_search_with_nsga2_and_plot_the_front(recipe, server, tmp_path):
    plot = tmp_path / "front.png"
    result = tune(recipe, "gen", "--target", "maximize vendi", "--target", "minimize mmd_rbf", "--probes", "5",
                  "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "Pareto front (*): " in result.output
    assert plot.read_bytes()[:4] == b"\x89PNG" and f"plot: {plot}" in result.output


def test_the_budget_stops_the_search_before_a_probe_it_cannot_pay(recipe, server):
    planned = tune(recipe, "gen", "--target", "vendi >= 20", "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert "dry run: 6 probes to run, at most ~144 LLM requests" in planned.output and not server.requests
    result = tune(recipe, "gen", "--target", "vendi >= 20", "--max-requests", "50")
    assert result.exit_code == 0, result.output
    assert "stopped: the budget would not cover another probe (48 requests" in result.output
    assert len(server.requests) <= 50
    assert "no probe met every target; the closest, #" in result.output and "missed 'vendi >= 20' by" in result.output

    refused = tune(recipe, "gen", "--max-requests", "10")
    assert refused.exit_code == 2 and "budget of 10 LLM requests is spent" in refused.output


def test_a_killed_search_resumes_with_no_probe_recomputed(recipe, server, tmp_path):
    server.latency_s = 0.05  # a probe takes over a second: the kill lands inside the third
    env = {**os.environ, "PYTHONPATH": str(REPO), "SYNTHFORGE_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "synthforge", "tune", str(recipe), "gen", "--target", "vendi >= 20",
               "--probes", "5", "--no-progress"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 120
    for line in process.stderr:
        seen.append(line)
        if line.startswith("probe 2/5"):
            time.sleep(0.3)  # into the third probe
            process.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(seen)
    process.wait()
    seen += process.stderr.readlines()
    done = sum(line.startswith("probe ") for line in seen)
    assert done >= 2, "".join(seen)
    prompts_before = len(server.requests)

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ran = [line for line in resumed.stderr.splitlines() if line.startswith("probe ")]
    # the finished probes stay done: the resumed search runs only the rest, numbered on from them
    assert [line.split(":")[0] for line in ran] == [f"probe {i}/5" for i in range(done + 1, 6)], (seen, ran)
    rows = [line for line in resumed.stdout.splitlines() if line.lstrip().startswith(("#", "*#"))]
    assert len(rows) == 5
    # every response is asked once: the killed probe's answered responses came from the response cache
    requests = [str(body["messages"]) + str(body["seed"]) + str(body["temperature"]) for body in server.requests]
    assert len(requests) - len(set(requests)) <= 2  # at most the requests in flight at the kill
    assert prompts_before < len(server.requests)


def test_a_probe_stopped_by_an_error_is_taken_up_again_with_its_answers_reused(recipe, server):
    server.fail_plan = ["ok"] * 30  # the default probe (24 requests), then 6 answers of the next one
    server.default = "500"
    failed = tune(recipe, "gen", "--target", "vendi >= 20", "--probes", "3")
    assert failed.exit_code != 0 and "probe 1/3" in failed.output and "probe 2/3" not in failed.output, failed.output
    server.default = "ok"
    resumed = tune(recipe, "gen", "--target", "vendi >= 20", "--probes", "3")
    assert resumed.exit_code == 0, resumed.output
    rows = [line.split() for line in resumed.output.splitlines() if line.lstrip().startswith(("#", "*#"))]
    assert [row[-1] for row in rows] == ["24", "18", "24"], resumed.output  # the stopped probe asked only the rest


# -- refused before any probe ----------------------------------------------------------------------------
@pytest.mark.parametrize(("edit", "message"), [
    ("temperature: 0.1..1.6", "tune.gen.space.tempreature: 'tempreature' is no field of a generate step (did you mean 'temperature'?)"),
    ("temperature: 0.1..1.6", "tune.gen.space.concurrency: 'concurrency' is runtime-only"),
    ('targets: ["distinct_1 >= 0.12"]', "tune.gen.targets.0: no metric 'diversity' to tune for (metrics: vendi,"),
    ('targets: ["distinct_1 >= 0.12"]', "tune.gen.targets.0: 'fidelity_corrected >= 0.7' is judged by an oracle: the search needs a judge"),
    ('targets: ["distinct_1 >= 0.12"]', "tune.gen.targets.1: targets contradict each other: 'mmd_rbf >= 0.5' and 'mmd_rbf <= 0.01'"),
    ('targets: ["distinct_1 >= 0.12"]', "'cluster_entropy >= 2' is unreachable: cluster_entropy is at most 1"),
    ("temperature: 0.1..1.6", "tune.gen.space.temperature: 'temperature' = 3 makes an invalid step"),
    ("temperature: 0.1..1.6", "tune.gen.space.variables.mood: 'variables.mood': the step has no variables entry 'mood' (entries: topic)"),
    ("embed: gen_emb", "tune.gen.embed: step 'real_emb' does not read 'gen'"),
    ("probes: 6", "tune.gen.probes: must be an integer of at least 1, got 0"),
])
def test_an_impossible_search_is_a_located_one_line_error(recipe, server, edit, message):
    replacement = {
        "'tempreature'": "tempreature: 0.1..1.6",
        "'concurrency'": "concurrency: {choices: [1, 2]}",
        "'diversity'": 'targets: ["diversity >= 0.5"]',
        "needs a judge": 'targets: ["fidelity_corrected >= 0.7"]',
        "contradict": 'targets: ["mmd_rbf >= 0.5", "mmd_rbf <= 0.01"]',
        "'cluster_entropy >= 2'": 'targets: ["cluster_entropy >= 2"]',
        "= 3 makes": "temperature: 0.1..3",
        "'mood'": "variables.mood: {choices: [[a], [b]]}",
        "does not read": "embed: real_emb",
        "got 0": "probes: 0",
    }
    new = next(value for key, value in replacement.items() if key in message)
    text = recipe.read_text()
    recipe.write_text(text.replace(edit, new))
    line = max(number for number, text in enumerate(recipe.read_text().splitlines(), 1) if new in text)
    result = tune(recipe, "gen")
    assert result.exit_code == 2, result.output
    err = result.output.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in result.output, result.output
    assert message in err[0], err[0]
    assert f"r.yaml:{line}: " in err[0], err[0]
    assert not server.requests


def test_choices_of_lists_and_integer_ranges_are_searched_and_written(recipe, server):
    recipe.write_text(recipe.read_text().replace("      temperature: 0.1..1.6\n", (
        "      temperature: {choices: [0.1, 1.5]}\n      num_topics: 1..4\n"
        "      variables.topic: {choices: [[plot], [plot, cast, music, pace]]}\n")))
    result = tune(recipe, "gen", "--write", "--probes", "10")
    assert result.exit_code == 0, result.output
    import yaml

    best = next(line for line in result.output.splitlines() if line.startswith("best (*): "))
    step = yaml.safe_load(recipe.read_text())["steps"]["gen"]
    assert f"temperature={step['temperature']}" in best and f"num_topics={step['num_topics']}" in best
    assert step["variables"]["topic"] in (["plot"], ["plot", "cast", "music", "pace"])
    assert step["temperature"] == 1.5 and isinstance(step["num_topics"], int)


def test_a_matrix_recipe_is_tuned_for_one_variant(recipe, server):
    text = recipe.read_text().replace("seed: 1\n", "seed: 1\nmatrix: {tone: [calm, loud]}\n")
    recipe.write_text(text.replace("review about {{ topic }}.", "${tone} review about {{ topic }}."))
    unnamed = tune(recipe, "gen")
    assert unnamed.exit_code == 2 and "step 'gen' has 2 distinct outputs" in unnamed.output, unnamed.output
    named = tune(recipe, "gen", "--variant", "tone=loud")
    assert named.exit_code == 0, named.output
    assert server.requests and all("loud review" in body["messages"][-1]["content"] for body in server.requests)


def test_shift_targets_need_a_reference_and_the_step_must_generate(recipe, server):
    recipe.write_text(recipe.read_text().replace("    reference: real_emb\n", ""))
    result = tune(recipe, "gen", "--target", "mmd_rbf <= 0.1")
    assert result.exit_code == 2 and "compares to real rows: the search needs a reference" in result.output
    other = tune(recipe, "real_emb")
    assert other.exit_code == 2 and "is a embed step; tune searches the settings of a generate step" in other.output


def test_coverage_is_prdc_coverage_and_unknown_names_list_the_valid_ones():
    from synthforge.errors import UserError
    from synthforge.metric_registry import info, resolve
    from synthforge.tuning import Where, parse_target

    target = parse_target("coverage >= 0.8", Where("r.yaml", 3, "tune.gen.targets.0"))
    assert target.metric == "prdc_coverage" and str(target) == "prdc_coverage >= 0.8"
    assert info("coverage").name == "prdc_coverage" and info("scores.per_class.a.precision") is None
    with pytest.raises(UserError) as caught:
        resolve("covrage", ("vendi", "prdc_coverage"), file="r.yaml", line=4, field="--target")
    assert str(caught.value) == ("r.yaml:4: --target: no metric 'covrage' here (did you mean 'coverage'? "
                                 "metrics: vendi, coverage (prdc_coverage))")


def test_write_keeps_comments_and_adds_missing_and_nested_fields(tmp_path):
    from synthforge.tuning import write_settings

    path = tmp_path / "w.yaml"
    path.write_text(
        "name: w\nsteps:\n  gen:\n    kind: generate  # the step\n    n: 10\n    labels: [a, b]\n"
        "    template: 'Write {{ label }} about {{ topic }}.'\n    variables:\n      topic: [x, y, z]  # topics\n"
        "    temperature: 0.8  # warm\n    paraphrase: {fraction: 0.1}\n")
    write_settings(path, "gen", {"temperature": 1.2346, "top_p": 0.9, "paraphrase.per_seed": 2,
                                 "variables.topic": ("x", "y"), "few_shot_k": 0})
    text = path.read_text()
    assert "    temperature: 1.2346  # warm\n" in text
    assert "    kind: generate  # the step\n" in text
    assert "      topic: [x, y]  # topics\n" in text
    assert "    paraphrase: {fraction: 0.1, per_seed: 2}\n" in text
    assert "    top_p: 0.9\n" in text and "    few_shot_k: 0\n" in text


def test_a_damaged_study_is_a_one_line_error_and_deleting_it_costs_no_request(recipe, server, tmp_path):
    assert tune(recipe, "gen").exit_code == 0
    sent = len(server.requests)
    (stored,) = (tmp_path / "cache" / "shared" / "tune").glob("*.sqlite")
    stored.write_bytes(b"not a database" * 100)
    damaged = tune(recipe, "gen")
    assert damaged.exit_code == 2 and "cannot be read" in damaged.output and f"delete {stored}" in damaged.output
    assert len(damaged.output.strip().splitlines()) == 1, damaged.output
    stored.unlink()
    again = tune(recipe, "gen")
    assert again.exit_code == 0, again.output
    assert len(server.requests) == sent


def test_pareto_front_is_the_feasible_non_dominated_probes():
    from synthforge.tuning import Probe, Search, Target, best_probes

    search = Search("gen", (), (Target("vendi", "max"), Target("mmd_rbf", "min"), Target("vendi", ">=", 2.0)))
    probes = [Probe(0, {}, {}, 10, {}, values=[3.0, 0.5], violations=[-1.0]),
              Probe(1, {}, {}, 10, {}, values=[4.0, 0.6], violations=[-2.0]),
              Probe(2, {}, {}, 10, {}, values=[2.5, 0.7], violations=[-0.5]),  # dominated by #0
              Probe(3, {}, {}, 10, {}, values=[9.0, 0.1], violations=[0.5])]  # best, but misses the constraint
    assert [p.number for p in best_probes(probes, search)] == [0, 1]


def test_tune_help_imports_no_optuna_or_torch():
    code = ("import sys; from click.testing import CliRunner; from synthforge.cli import main; "
            "assert CliRunner().invoke(main, ['tune', '--help']).exit_code == 0; import synthforge.tuning; "
            "print(sorted(m for m in ('optuna', 'torch', 'transformers', 'faiss') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
