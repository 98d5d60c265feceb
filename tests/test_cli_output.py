"""What a build prints: status lines as sentences naming the variant, -q and -v through logging."""

from __future__ import annotations

import logging

from conftest import BASIC


def test_status_lines_are_sentences_and_quiet_drops_them(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    loud = cli("build", recipe)
    assert loud.exit_code == 0
    assert "▶ [1/2] rows for default: Never built here, and there is no lockfile yet (build writes recipe.lock)." in loud.output
    recipe.write_text(recipe.read_text().replace("k: 10", "k: 6"))
    quiet = cli("build", recipe, "-q")
    assert quiet.exit_code == 0 and "▶" not in quiet.output and "built 1, cached 1" in quiet.output


def test_verbose_enables_debug_lines(cli, write_recipe, data_csv):
    cli("plan", write_recipe(BASIC), "-v")
    assert logging.getLogger("synthforge").isEnabledFor(logging.DEBUG)
    cli("plan", write_recipe(BASIC), "--quiet")
    assert not logging.getLogger("synthforge").isEnabledFor(logging.INFO)


def test_show_names_the_step_as_asked_and_the_name_it_was_built_under(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    cli("build", recipe, "-q")
    recipe.write_text(recipe.read_text().replace("split:", "held_out:"))
    shown = cli("show", recipe, "held_out")
    assert shown.exit_code == 0
    assert shown.output.startswith("step held_out (split), built as step 'split' (its ids keep that name), table data")


def test_the_api_plan_reads_like_the_cli_plan(cli, write_recipe, data_csv, cache_dir):
    import synthforge as sf

    recipe = write_recipe(BASIC)
    plan = sf.open(recipe, cache_dir=cache_dir).plan()
    assert [item.action for item in plan] == ["run", "run"]
    assert repr(plan) == cli("plan", recipe).output.rstrip("\n")


def test_quiet_and_verbose_also_work_before_the_command(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC)
    quiet = cli("-q", "build", recipe)
    assert quiet.exit_code == 0, quiet.output
    assert "▶" not in quiet.output and "built 2, cached 0" in quiet.output
    assert cli("-v", "plan", recipe).exit_code == 0
    assert logging.getLogger("synthforge").isEnabledFor(logging.DEBUG)


def test_no_progress_before_the_command_turns_bars_off(cli, write_recipe, data_csv):
    from synthforge import progress

    assert cli("--no-progress", "plan", write_recipe(BASIC)).exit_code == 0
    assert not progress.bars_enabled()
    assert cli("plan", write_recipe(BASIC)).exit_code == 0 and progress.bars_enabled()


def test_a_reason_shared_by_several_steps_is_said_once(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC + "matrix:\n  k: [5, 10, 20]\n")
    output = cli("build", recipe).output
    started = [line for line in output.splitlines() if line.startswith("▶")]
    assert len(started) == 4 and sum("Never built here" in line for line in started) == 1
    assert all(line.endswith("the same reason as [1/4]") for line in started[1:]), started


def test_a_big_build_ends_with_a_summary_and_verbose_keeps_the_table(cli, write_recipe, data_csv):
    recipe = write_recipe(BASIC + "matrix:\n  k: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n")
    output = cli("build", recipe).output
    assert "status" not in output and "built 13, cached 0 in " in output
    assert "13 step outputs: -v or `synthforge plan` lists them" in output
    verbose = cli("build", recipe, "-v").output
    assert len([line for line in verbose.splitlines() if " cached " in line and line.startswith("split")]) == 12


def test_diff_build_takes_no_progress(cli, write_recipe, data_csv):
    a = write_recipe(BASIC, "a.yaml")
    b = write_recipe(BASIC.replace("k: 10", "k: 6"), "b.yaml")
    result = cli("diff", a, b, "--build", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "train_per_label changed from 10 to 6" in result.output


def test_the_train_line_rounds_its_interval():
    from synthforge.steps.train import score_line

    scores = {"accuracy": {"mean": 0.8125, "ci": [0.755012345678, 0.86498765], "ci_method": "bootstrap"},
              "macro_f1": {"mean": 0.80111111}}
    assert score_line(scores) == "train: accuracy 0.8125 (bootstrap ci 0.7550-0.8650), macro-F1 0.8011"
    assert "no interval" in score_line({**scores, "accuracy": {"mean": 0.5, "ci": None, "ci_method": None}})


def test_a_new_cache_folder_ignores_itself_in_git(cli, write_recipe, data_csv, cache_dir, tmp_path):
    assert cli("build", write_recipe(BASIC), "-q").exit_code == 0
    assert (cache_dir / ".gitignore").read_text().splitlines()[-1] == "*"
    existing = tmp_path / "mine"
    existing.mkdir()
    assert cli("build", write_recipe(BASIC), "-q", "--cache-dir", existing).exit_code == 0
    assert not (existing / ".gitignore").exists()  # a folder the user made is theirs


def test_a_build_report_shows_a_summary_in_a_notebook(write_recipe, data_csv, cache_dir):
    import synthforge as sf

    report = sf.open(write_recipe(BASIC), cache_dir=cache_dir).build(progress=False)
    assert repr(report).startswith("<BuildReport: built 2, cached 0 in ") and len(repr(report)) < 100
    html = report._repr_html_()
    assert "<table>" in html and html.count("<tr>") == 3 and len(html) < 2000


def test_plan_says_a_repeated_generation_estimate_once(cli, write_recipe, data_csv):
    recipe = write_recipe("""
        name: est
        seed: 1
        replicates: 3
        steps:
          gen:
            kind: generate
            n: 12
            labels: {good: a good review, bad: a bad review}
            template: "Write a {{ label_description }}."
            backend: {type: openai, base_url: "http://127.0.0.1:9/v1", model: m}
        """)
    lines = [line for line in cli("plan", recipe).output.splitlines() if line.startswith("expected generation time")]
    assert len(lines) == 1 and lines[0].startswith("expected generation time (each of 3 outputs): gen: "), lines
