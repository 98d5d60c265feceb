"""The `synthforge` command line: parse arguments, call the API (`synthforge.api`), print the text `synthforge.app`
renders. No logic here."""

from __future__ import annotations

import contextlib
import functools
import sys

import click

cache_option = click.option(
    "--cache-dir", envvar="SYNTHFORGE_CACHE", default="cache", show_default=True, help="Cache folder (or $SYNTHFORGE_CACHE)."
)
set_option = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                          help="Set a recipe variable, or `seed`; a matrix variable narrows the matrix to VALUE.")
variant_option = click.option(
    "--variant", default=None,
    help="Which matrix variant: NAME=VALUE pairs in any order, e.g. 'diversity=0.5,synthetic_fraction=0.25'; "
         "a partial name (e.g. without replicate=) selects every variant it matches.")
remote_option = click.option(
    "--remote", "remote_url", envvar="SYNTHFORGE_REMOTE", default=None, metavar="URL",
    help="Remote cache: s3://bucket/prefix, gs://..., az://... or a shared folder (or $SYNTHFORGE_REMOTE, "
         "or remote = \"...\" under [tool.synthforge] in pyproject.toml). Credentials come from the backend's own config.",
)
jobs_option = click.option("--jobs", type=int, default=16, show_default=True, help="Objects transferred at once.")
table_option = click.option("--table", default="data", show_default=True, help="Which table of the step (e.g. test, rejects).")


def step_output_options(command):
    """RECIPE STEP and the options that pick one step output: variant, table, --set, cache."""
    recipe_argument = click.argument("recipe", type=click.Path(dir_okay=False))
    step_argument = click.argument("step")
    for option in reversed((recipe_argument, step_argument, variant_option, table_option, set_option, cache_option, user_errors)):
        command = option(command)
    return command


def user_errors(command):
    """User mistakes become one line on stderr and exit code 2 (a keep-going build's summary: 2 or 1); Ctrl-C
    says how to resume. Adds -q/-v."""

    @functools.wraps(command)
    def wrapper(*args, quiet: bool = False, verbose: bool = False, **kwargs):
        from synthforge.errors import BuildFailed, UserError
        from synthforge.progress import configure_logging, disable_bars

        before = click.get_current_context().find_root().params  # `synthforge -q plan ...` as `synthforge plan -q ...`
        quiet, verbose = quiet or before.get("quiet", False), verbose or before.get("verbose", False)
        configure_logging(-1 if quiet else 1 if verbose else 0)
        if before.get("progress") is False or kwargs.get("progress") is False:
            disable_bars()
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except BuildFailed as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished steps are cached; run the same command to resume", err=True)
            sys.exit(130)

    wrapper = click.option("-v", "--verbose", is_flag=True, help="Also print debug lines and the libraries' own messages.")(wrapper)
    return click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")(wrapper)


def _open(recipe: str, sets: tuple[str, ...], cache_dir: str):
    """The recipe through the Python API (synthforge.api), with --set pairs parsed as YAML scalars."""
    from synthforge import api
    from synthforge.recipe.resolve import parse_overrides

    return api.open(recipe, set=parse_overrides(sets), cache_dir=cache_dir)


def _cache(cache_dir: str):
    from synthforge.cache import Cache

    return Cache(cache_dir)


def _remote(url: str | None, jobs: int = 16, progress: bool = True, required: bool = True):
    """The configured remote (--remote, $SYNTHFORGE_REMOTE, pyproject.toml); None when optional and unset."""
    from synthforge import remote

    url = remote.remote_url(url)
    return remote.open_remote(url, jobs, progress) if url or required else None


def run() -> None:
    """The `synthforge` command: `main`, with no-op builds replayed when nothing they read changed (a fresh
    process runs only the code its modules' files hold; see synthforge.remembered)."""
    from synthforge import remembered

    remembered.enable()
    main()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="synthforge")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars (before or after the command).")
@click.option("-v", "--verbose", is_flag=True, help="Also print debug lines and the libraries' own messages (before or after the command).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bars on stderr, for every command (each command that draws bars also takes it).")
def main(quiet: bool, verbose: bool, progress: bool) -> None:
    """Build training datasets from real and LLM-generated data, declaratively and reproducibly."""


@main.command("build")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--only", multiple=True, metavar="STEP", help="Build only STEP and what it needs.")
@click.option("--force", multiple=True, metavar="STEP", help="Rebuild STEP even if cached.")
@click.option("--dry-run", is_flag=True, help="Show the plan; build nothing.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option("--concurrency", type=int, default=None, help="Concurrent requests for API backends.")
@click.option("--batch-size", type=int, default=None, help="Override batch sizes for models.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@click.option("--max-requests", type=click.IntRange(min=0), default=None,
              help="LLM requests this build may plan (default: the recipe's budget.max_requests, 100000).")
@click.option("--max-tokens", type=click.IntRange(min=0), default=None,
              help="LLM tokens this build may plan (default: the recipe's budget.max_tokens, 50000000).")
@click.option("--use-remote/--no-remote", default=True, show_default=True,
              help="Read through the configured remote: fetch a step's entry from it before running the step.")
@click.option("--push", is_flag=True, help="Upload the build's entries the remote lacks (needs a remote).")
@remote_option
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, envvar="SYNTHFORGE_JOBS",
              help="Steps run at once (local: spawned worker processes; ray: CPUs of a local Ray instance). "
                   "Default: this process when one step at a time can run (a chain, one rebuilt step), "
                   "else one spawned worker per CPU, up to the steps that can run at once.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where steps run: this machine, or Ray (pip install 'synthforge[ray]').")
@click.option("--address", default=None, help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local one.")
@click.option("--models-per-device", type=click.IntRange(min=1), default=None,
              help="Local executor: steps holding a heavy model (LLM, encoder) at once. Default: 1 on a GPU; "
                   "on the CPU one per worker (each worker has its own share of the cores).")
@click.option("--shard-rows", type=click.IntRange(min=1), default=None,
              help="Rows per shard of generate and embed (default 4096); never changes the output.")
@click.option("--keep-going", is_flag=True,
              help="When a step fails, still build every step that does not depend on it; then exit 2 "
                   "(1 if a failure was not a user error) with a summary. No lockfile is written.")
@click.option("--recheck", is_flag=True,
              help="Resolve the recipe and check every entry even when nothing the last no-op build read has changed "
                   "(that build's outcome is otherwise replayed: docs/cli.md, 'Remembered builds').")
@set_option
@cache_option
@user_errors
def build_cmd(recipe, only, force, dry_run, device, concurrency, batch_size, progress, max_requests, max_tokens, use_remote,
              push, remote_url, jobs, executor, address, models_per_device, shard_rows, keep_going, recheck, sets, cache_dir):
    """Build what is missing of RECIPE, in dependency order; write RECIPE.lock (a build narrowed by --set or --only merges into it)."""
    from synthforge import remembered

    context = click.get_current_context()
    options = {**{f"main.{k}": v for k, v in context.find_root().params.items()}, **context.params}
    replayable = remembered.ENABLED and not (recheck or dry_run or force or push or options["main.verbose"] or options["verbose"])
    key = remembered.record_key(options) if replayable else None
    if key is not None:
        text = remembered.replay(cache_dir, key)
        if text is not None:
            click.echo(text)
            return
    with remembered.Recording(cache_dir, key) if key is not None else contextlib.nullcontext() as recording:
        from synthforge import app
        from synthforge.progress import bars_enabled

        r = _open(recipe, sets, cache_dir)
        progress = progress and bars_enabled()
        remote = _remote(remote_url, progress=progress, required=push) if use_remote or push else None
        if dry_run:
            click.echo(r.plan(only, force, remote=remote if use_remote else None).text)
            return
        result = r.build(only, force, device=device, progress=progress, concurrency=concurrency, batch_size=batch_size,
                         keep_going=keep_going, executor=executor, jobs=jobs, address=address,
                         models_per_device=models_per_device, shard_rows=shard_rows, max_requests=max_requests,
                         max_tokens=max_tokens, remote=remote, pull=use_remote, push=push)
        text = app.build_text(r.graph, result)
    click.echo(text)
    if recording is not None and remote is None:
        remembered.remember(recording, r, result, list(only))


@main.command("new")
@click.argument("name")
@click.option("--from", "starter", type=click.Choice(["demo", "generate", "study"]), default="demo", show_default=True,
              help="demo: load and split (seconds); generate: + SmolLM2 rows and embeddings (minutes on a CPU); "
                   "study: + select, mix and train over a small matrix.")
@click.option("--dir", "folder", default=".", show_default=True, help="Folder to write NAME.yaml in.")
@user_errors
def new_cmd(name, starter, folder):
    """Write a commented starter recipe NAME.yaml that builds as it is."""
    from synthforge.starters import write_starter

    path = write_starter(name, starter, folder)
    click.echo(f"wrote {path}\nnext: synthforge plan {path} && synthforge build {path}")


@main.command("plan")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--only", multiple=True, metavar="STEP", help="Plan only STEP and what it needs.")
@click.option("--force", multiple=True, metavar="STEP", help="Plan STEP as rebuilt even if cached.")
@click.option("--use-remote/--no-remote", default=True, show_default=True, help="Mark steps the configured remote has as 'pull'.")
@remote_option
@set_option
@cache_option
@user_errors
def plan_cmd(recipe, only, force, use_remote, remote_url, sets, cache_dir):
    """For every step: cached, on the remote, or will run and why (against RECIPE.lock)."""
    r = _open(recipe, sets, cache_dir)
    remote = _remote(remote_url, required=False) if use_remote else None
    click.echo(r.plan(only, force, remote=remote).text)


@main.command("show")
@click.option("--rows", default=5, show_default=True, help="How many rows to print.")
@step_output_options
def show_cmd(recipe, step, variant, table, rows, sets, cache_dir):
    """Rows, schema, labels and the first rows of STEP's output."""
    from synthforge import app

    click.echo(app.show_outputs_text(_open(recipe, sets, cache_dir).entries(step, variant), table, rows, step))


@main.command("export")
@click.option("--to", "to", required=True, help="Output file (.parquet, .jsonl, .csv) or, with --format hf, a folder.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv", "hf", "messages"]), default=None,
              help="Default: from the --to file name. hf: a datasets.load_from_disk folder with a dataset card "
                   "(record fields typed). messages: chat JSONL for SFT (--prompt, --response, --system).")
@click.option("--prompt", default=None, metavar="COLUMN", help="--format messages: the column of the user turn.")
@click.option("--response", default=None, metavar="COLUMN", help="--format messages: the column of the assistant turn.")
@click.option("--system", default=None, metavar="COLUMN", help="--format messages: the column of the system turn (optional).")
@step_output_options
def export_cmd(recipe, step, to, fmt, prompt, response, system, variant, table, sets, cache_dir):
    """Write STEP's output with its provenance (parquet metadata, or a dataset card for hf), or as chat messages."""
    roles = {"system": system, "user": prompt, "assistant": response}
    click.echo(_open(recipe, sets, cache_dir).export(step, to, variant, table, fmt, roles))


@main.command("stats")
@click.option("--reference", default=None, metavar="STEP[.TABLE]", help="Real data to measure the shift against.")
@click.option("--device", default="auto", show_default=True, help="Device of the embedding model: auto, cpu, cuda, cuda:1...")
@step_output_options
def stats_cmd(recipe, step, reference, variant, table, device, sets, cache_dir):
    """Diversity metrics of STEP's output (and its distance to --reference); cached under the cache's derived/."""
    from synthforge import app

    measured = _open(recipe, sets, cache_dir).stats(step, variant, table, reference, device)
    click.echo(app.stats_text(measured, step, table, reference))


@main.command("tune")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("step")
@click.option("--target", "targets", multiple=True, metavar="TARGET",
              help="A target replacing the recipe's tune block's: 'METRIC >= N', 'METRIC <= N', 'maximize METRIC' or 'minimize METRIC'.")
@click.option("--space", multiple=True, metavar="FIELD=RANGE",
              help="A field of the step to search, replacing the recipe's space: FIELD=LOW..HIGH or FIELD=A,B,C.")
@click.option("--reference", default=None, metavar="STEP[.TABLE]", help="Real rows the shift metrics and label agreement compare to.")
@click.option("--embed", default=None, metavar="STEP", help="The step embedding the generated rows (default: stats embeds them).")
@click.option("--judge", default=None, metavar="STEP[.TABLE]",
              help="Real labelled rows held out from training: an oracle judge trained on them measures fidelity_observed/_corrected.")
@click.option("--llm-judge", default=None, metavar="STEP",
              help="A judge step reading STEP: its rubric and backend judge each probe's rows and measure judge_pass_rate.")
@click.option("--pass-score", type=int, default=None, metavar="N",
              help="With an --llm-judge scoring integers: the lowest score that passes (pass/fail criteria: every one).")
@click.option("--probe-rows", type=click.IntRange(min=1), default=None, help="Rows of each probe (default: the tune block's, else 40).")
@click.option("--probes", type=click.IntRange(min=1), default=None, help="Probes to run in all, earlier ones included (default 20).")
@click.option("--seed", type=int, default=None, help="The sampler's seed (default: the tune block's, else 0); part of the search's name.")
@click.option("--max-requests", type=click.IntRange(min=0), default=None,
              help="LLM requests the whole search may send (default: the tune block's budget, else the recipe's).")
@click.option("--max-tokens", type=click.IntRange(min=0), default=None,
              help="LLM tokens the whole search may spend (default: the tune block's budget, else the recipe's).")
@click.option("--write", is_flag=True, help="Write the best settings into the recipe file (in place, comments kept).")
@click.option("--dry-run", is_flag=True, help="Check the search and estimate its LLM requests and tokens; show the probes done so far; run none.")
@click.option("--plot", default=None, metavar="PNG", help="Where the plot of the probes goes (default: reports/<recipe name>/tune-STEP.png).")
@click.option("--json", "as_json", is_flag=True, help="Print the search and its probes (metrics, intervals, verdicts) as JSON.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Steps of a probe run at once (spawned workers).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@variant_option
@set_option
@cache_option
@user_errors
def tune_cmd(recipe, step, targets, space, reference, embed, judge, llm_judge, pass_score, probe_rows, probes, seed,
             max_requests, max_tokens, write, dry_run, plot, as_json, jobs, device, progress, variant, sets, cache_dir):
    """Search generate STEP's settings for the targets of RECIPE's tune block; resumes a killed search (docs/tune.md)."""
    from synthforge import app
    from synthforge.progress import bars_enabled

    r = _open(recipe, sets, cache_dir)
    result = r.tune(step, targets=targets, space=space, reference=reference, embed=embed, judge=judge,
                    llm_judge=llm_judge, pass_score=pass_score,
                    probe_rows=probe_rows, probes=probes, seed=seed, variant=variant, max_requests=max_requests,
                    max_tokens=max_tokens, device=device, progress=progress and bars_enabled(), jobs=jobs, dry_run=dry_run)
    click.echo(app.tune_text(r, step, result, write=write, plot=plot, dry_run=dry_run, as_json=as_json))


@main.command("report")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", default=None, help="Output folder (default: reports/<recipe name>).")
@click.option("--level-var", default="diversity", show_default=True, help="The matrix variable on the x axis.")
@click.option("--fraction-var", default="synthetic_fraction", show_default=True, help="One line per value of this variable.")
@click.option("--score", default="macro_f1", show_default=True,
              help="accuracy or macro_f1; for sft exact_match, perplexity or response_loss (its first when macro_f1 is left).")
@click.option("--metric", default=None, help="Diversity metric to plot (default: vendi when present).")
@click.option("--correction", type=click.Choice(["holm", "bh"]), default="holm", show_default=True,
              help="Multiple-comparison correction of the paired tests across cells (Holm or Benjamini-Hochberg).")
@click.option("--html", is_flag=True, help="Also write report.html: sortable table, plots, rows side by side per level.")
@set_option
@cache_option
@user_errors
def report_cmd(recipe, out, level_var, fraction_var, score, metric, correction, html, sets, cache_dir):
    """Table (parquet, CSV, markdown) and plots of every cell of RECIPE's matrix (replicates pooled)."""
    from synthforge import app

    result = _open(recipe, sets, cache_dir).report(out, level_var=level_var, fraction_var=fraction_var, score=score,
                                                   metric=metric, correction=correction, html=html)
    click.echo(app.report_text(result, level_var, fraction_var, metric))


@main.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True,
              help="text for a terminal, markdown for a pull-request comment, json (schema synthforge.diff/1) for tools.")
@click.option("--fail-on", multiple=True, metavar="EXPR", help="Gate, e.g. 'accuracy < -0.01', 'vendi < -5%', 'rows_removed > 100'.")
@click.option("--build", "build_missing", is_flag=True, help="Build what is missing on either side first.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr (with --build).")
@click.option("--output", "-o", default=None, help="Also write the report to this file.")
@click.option("--records", type=click.IntRange(min=0), default=5, show_default=True, metavar="N",
              help="Changed, added and removed records listed per step (by id, with each changed field's before and "
                   "after); the counts are always complete.")
@set_option
@cache_option
@user_errors
def diff_cmd(a, b, fmt, fail_on, build_missing, progress, output, records, sets, cache_dir):
    """Compare two recipes, lockfiles, git revisions (REV:path) or step outputs (RECIPE#STEP).

    Exit code 1 when a --fail-on gate trips, 0 otherwise, 2 on usage errors.
    """
    from synthforge import api, app
    from synthforge.progress import bars_enabled  # --no-progress (here or before the command) turned them off
    from synthforge.recipe.resolve import parse_overrides

    result = api.diff(a, b, cache_dir, fail_on=fail_on, build_missing=build_missing, set=parse_overrides(sets),
                      progress=bars_enabled(), records=records)
    click.echo(app.diff_text(result, fmt, output))
    sys.exit(1 if result.tripped else 0)


@main.group("cache")
def cache_group() -> None:
    """Inspect and maintain the cache."""


@cache_group.command("ls")
@cache_option
@user_errors
def cache_ls(cache_dir):
    """List cached step outputs."""
    from synthforge import app

    click.echo(app.cache_ls_text(_cache(cache_dir)))


@cache_group.command("verify")
@click.option("--repair", is_flag=True, help="Remove damaged entries (the next build recomputes them) and damaged LLM responses (requested again); move an unreadable response cache aside.")
@cache_option
@user_errors
def cache_verify(repair, cache_dir):
    """Check every entry (manifest, content hashes, rows, columns, tables, artifacts) and every cached LLM response; exit 1 if any is damaged."""
    from synthforge import app

    from synthforge import api

    text, ok = app.cache_verify_text(api.verify(cache_dir, repair))
    click.echo(text)
    sys.exit(0 if ok else 1)


@cache_group.command("gc")
@click.argument("locks", nargs=-1, type=click.Path(exists=True))
@click.option("--dry-run", is_flag=True, help="Only list what would be removed: step, variant, key and size of each entry.")
@click.option("--remote", "remote_url", default=None, metavar="URL",
              help="Collect this remote cache instead of the local one (named explicitly, never taken from the environment).")
@cache_option
@user_errors
def cache_gc(locks, dry_run, remote_url, cache_dir):
    """Remove entries no lockfile references (lockfiles found under LOCKS, default '.')."""
    from synthforge import api, app

    remote = _remote(remote_url) if remote_url is not None else None
    click.echo(app.cache_gc_text(api.gc(locks, dry_run, cache_dir, remote)))


@cache_group.command("push")
@click.argument("recipes", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@remote_option
@jobs_option
@set_option
@cache_option
@user_errors
def cache_push(recipes, progress, remote_url, jobs, sets, cache_dir):
    """Upload the entries of RECIPES or lockfiles (all variants; every local entry when none is given) and their LLM responses."""
    from synthforge import api, app
    from synthforge.recipe.resolve import parse_overrides

    remote = _remote(remote_url, jobs, progress)
    click.echo(app.transfer_text(api.push(remote, recipes, parse_overrides(sets), cache_dir), "pushed", remote.url))


@cache_group.command("pull")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--step", "steps", multiple=True, metavar="STEP", help="Only these steps (default: all).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@variant_option
@remote_option
@jobs_option
@set_option
@cache_option
@user_errors
def cache_pull(recipe, steps, progress, variant, remote_url, jobs, sets, cache_dir):
    """Download RECIPE's entries from the remote, each verified before it appears; exit 1 if any was refused.

    RECIPE may also be a lockfile (e.g. the base branch's, from `git show`): its keys are pulled.
    """
    from synthforge import app

    from synthforge import api
    from synthforge.recipe.resolve import parse_overrides

    remote = _remote(remote_url, jobs, progress)
    done = api.pull(remote, recipe, variant, steps, parse_overrides(sets), cache_dir)
    click.echo(app.transfer_text(done, "pulled", remote.url))
    sys.exit(1 if done.refused else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
