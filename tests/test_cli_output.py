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
