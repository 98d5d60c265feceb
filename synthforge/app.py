"""What each command prints: the text of a plan, a build, a step's rows, stats, a report, a diff, and the
cache commands' work over a `Cache` (ls, verify, gc, push, pull). The API (api.py) does a recipe's work and
calls these to render it; nothing here opens a recipe or imports the API."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.cache import Cache, DamagedEntry, Entry
from synthforge.errors import UserError, did_you_mean
from synthforge.graph import Graph, build_graph
from synthforge.planning import as_sentence, check_step_names, planned_usage, variant_label
from synthforge.progress import LOGGER, format_seconds, verbose
from synthforge.recipe.resolve import load_recipe, parse_overrides
from synthforge.tables import plural, render_table

if TYPE_CHECKING:
    from synthforge.remote import Remote


def status_line(message: str) -> None:
    """A status line; a warning (damage found, output not reproducible) also shows under -q."""
    warning = message.lstrip().startswith(("warning", "⚠"))
    logging.getLogger(LOGGER).log(logging.WARNING if warning else logging.INFO, message)


def format_plan(graph: Graph, cache: Cache, items: list, remote: Remote | None = None) -> str:
    counts = {action: sum(item.action == action for item in items) for action in ("cached", "pull", "run")}
    recipe = graph.recipe
    lines = [
        f"recipe {recipe.name}: {plural(len(recipe.model.steps), 'step')} x {plural(len(recipe.variants), 'variant')} "
        f"= {plural(len(graph.nodes), 'unique step output')}; {counts['cached']} cached, "
        + (f"{counts['pull']} to pull from the remote, " if remote is not None else "") + f"{counts['run']} to run"
    ]
    if recipe.narrowed:
        narrowed = ", ".join(f"{name}={value}" for name, value in recipe.narrowed.items())
        lines.append(f"--set {narrowed} narrows the matrix to: {'; '.join(v.name for v in recipe.variants)}")
    rows = []
    for item in items:
        why = as_sentence(item.reasons) + (f"  [{item.note}]" if item.note else "")
        rows.append([item.action, item.node.step, variant_label(graph, item.node), item.node.key[:12], why])
    lines.append(render_table(["action", "step", "for", "key", "why"], rows))
    lines += _generation_estimates(cache, [item.node for item in items if item.action == "run"])
    usage = planned_usage(items)
    if usage:
        budget = recipe.model.budget
        requests, tokens = (sum(getattr(e, what) for _, e in usage) for what in ("requests", "tokens"))
        over = requests > budget.max_requests or tokens > budget.max_tokens
        lines.append(f"LLM budget: ~{requests:,} of {budget.max_requests:,} requests, ~{tokens:,} of "
                     f"{budget.max_tokens:,} tokens (before response-cache hits)"
                     + ("; OVER BUDGET: build will refuse (raise budget: or pass --max-requests/--max-tokens)" if over else ""))
    return "\n".join(lines)


def _generation_estimates(cache: Cache, nodes: list) -> list[str]:
    """Expected generation time of the generate steps that will run, from the speed measured on this machine."""
    from synthforge.generation.speed import estimate

    said: dict[str, int] = {}  # one line per distinct estimate (a study's replicates repeat one), with its count
    for node in nodes:
        if node.kind == "generate":
            params = node.resolved.run_params
            requests = node.resolved.step.estimate(params).requests  # one per row, or per generated field of a record
            text = estimate(cache, node.step, params.backend.type, params.backend.model_label(), requests, params.max_new_tokens)
            said[text] = said.get(text, 0) + 1
    return [f"expected generation time{f' (each of {count} outputs)' if count > 1 else ''}: {text}" for text, count in said.items()]


def build_text(graph: Graph, result: Any) -> str:
    """A build's table (up to TABLE_MAX_ROWS step outputs, or with -v), its summary line, what was pushed and
    the selection warnings (`result`: api.BuildResult)."""
    summary = build_summary(graph, result, result.pulled, result.wall_seconds, result.pulled_from)
    if len(result.items) <= TABLE_MAX_ROWS or verbose():
        summary = f"{build_table(result, result.pulled)}\n{summary}"
    if result.pushed is not None:
        summary += f"\n{result.pushed.summary('pushed')} ({result.pushed_to})"
    return summary + "".join(f"\nwarning: {w}" for w in result.warnings)


TABLE_MAX_ROWS = 12  # a build with more step outputs ends with its summary only; -v (or `plan`) shows the table


def build_table(report, pulled: set[str]) -> str:
    """One row per step output of the build: status, rows, seconds."""
    rows = [
        [item.node.step, len(item.node.variants), item.node.key[:12], _status(item, report, pulled),
         report.rows.get(item.node.key, ""), f"{report.seconds.get(item.node.key, 0):.2f}"]
        for item in report.items
    ]
    return render_table(["step", "variants", "key", "status", "rows", "seconds"], rows, align_right=(1, 4, 5))


def build_summary(graph: Graph, report, pulled: set[str], seconds: float, pulled_from: str | None = None) -> str:
    """What the build did in one line, then where its results are: counts, time, lockfile, report."""
    statuses = [_status(item, report, pulled) for item in report.items]
    line = f"built {statuses.count('built')}, cached {statuses.count('cached')}"
    if report.built_elsewhere:
        line += f", {len(report.built_elsewhere)} built by another process meanwhile"
    took = f"{seconds:.2f}s" if seconds < 60 else format_seconds(seconds)
    line += f" in {took}; lockfile {graph.recipe.lock_path}"
    if pulled_from:
        line += f"; {statuses.count('pulled')} pulled from {pulled_from}"
    lines = [line]
    if len(report.items) > TABLE_MAX_ROWS and not verbose():
        lines[0] += f" ({plural(len(report.items), 'step output')}: -v or `synthforge plan` lists them)"
    if "train" in {item.node.kind for item in report.items} and len(graph.recipe.variants) > 1:
        from synthforge.report import slug

        lines.append(f"report: synthforge report {graph.recipe.path} (writes reports/{slug(graph.recipe.name)}/)")
    return "\n".join(lines)



def _status(item, report, pulled: set[str]) -> str:
    if item.action == "cached":
        return "pulled" if item.node.key in pulled else "cached"
    return "cached (built by another process)" if item.node.key in report.built_elsewhere else "built"


def show_text(entry: Entry, table: str = "data", rows: int = 5, step: str | None = None) -> str:
    """Rows, schema, label counts and head, read lazily: the head and the label column only."""
    import polars as pl

    manifest = entry.manifest
    scan = entry.scan(table)  # checks the table's files against the manifest (a clear error for a table it lacks)
    info = manifest.tables[table]
    name = step or manifest.step
    built_as = f", built as step '{manifest.step}' (its ids keep that name)" if name != manifest.step else ""
    lines = [
        f"step {name} ({manifest.kind}){built_as}, table {table}: {plural(info.rows, 'row')}, key {entry.key}",
        "tables: " + ", ".join(f"{n} ({plural(i.rows, 'row')})" for n, i in manifest.tables.items()),
        "schema: " + ", ".join(f"{c}: {t}" for c, t in info.columns.items()),
    ]
    dropped = manifest.meta.get("dropped")
    if table == "data" and dropped and any(dropped.values()):
        from synthforge.steps.rows import describe_dropped

        lines.append(describe_dropped(dropped))
    if "label" in info.columns and info.rows:
        counts = scan.group_by("label").len().sort("label").collect(engine="streaming")
        lines.append("labels: " + ", ".join(f"{label}={n}" for label, n in counts.iter_rows()))
    from synthforge.steps.rows import columns_that_matter_first

    in_file_order = list(scan.collect_schema())  # the manifest lists columns sorted; the step wrote them in an order that means something
    head = scan.select(columns_that_matter_first(in_file_order, list(manifest.tables["data"].columns))).head(rows).collect()
    with pl.Config(fmt_str_lengths=80, tbl_width_chars=160, tbl_rows=rows, tbl_hide_dataframe_shape=True):
        lines.append(str(head))
    return "\n".join(lines)


def cache_ls_text(cache: Cache) -> str:
    rows = []
    for entry in cache.entries():
        try:
            m = entry.manifest
        except DamagedEntry as exc:
            rows.append([entry.key[:12], "?", "?", "?", "?", f"{entry.size_bytes() / 1e6:.2f}", f"DAMAGED: {exc.problem}"])
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.timings.started))
        rows.append([entry.key[:12], m.recipe, m.step, m.kind, m.rows, f"{entry.size_bytes() / 1e6:.2f}", when])
    if not rows:
        return f"cache {cache.root} is empty"
    return render_table(["key", "recipe", "step", "kind", "rows", "MB", "built"], rows, align_right=(4, 5))


def cache_verify_text(cache: Cache, repair: bool = False) -> tuple[str, bool]:
    from synthforge.generation.response_cache import repair_response_db, response_db_problems

    bad, corrupt = [], []
    entries = list(cache.entries())
    for entry in entries:
        problems = cache.verify(entry)
        bad += [[entry.key[:12], _step_of(entry), problem] for problem in problems]
        if problems:
            corrupt.append(entry)
    responses = response_db_problems(cache.root / "shared" / "responses", read_only=cache.read_only)
    bad += [["responses", "-", problem] for problem in responses]
    if not bad:
        return f"{plural(len(entries), 'entry', 'entries')} verified, all sound", True
    text = render_table(["key", "step", "problem"], bad) + f"\n{plural(len(bad), 'problem')} in {plural(len(entries), 'entry', 'entries')}"
    if cache.read_only:
        return text + (f"; the cache {cache.root} is read-only, so nothing was removed or moved (make it writable "
                       "first to repair)"), False
    if repair:
        removed = sum(cache.remove(entry) for entry in corrupt)
        text += f"; removed {removed} damaged entries (the next build recomputes them)"
        if removed < len(corrupt):
            text += f"; {len(corrupt) - removed} in use by a running build, left for now"
        if responses:
            text += f"; {repair_response_db(cache.root / 'shared' / 'responses')}"
    else:
        text += "; run 'synthforge cache verify --repair' to remove them"
    return text, False


def _step_and_variants(entry: Entry) -> tuple[str, str]:
    """An entry's step and the variants that built it (the first, and how many more), for listings."""
    try:
        manifest = entry.manifest
    except DamagedEntry:
        return "?", "? (damaged)"
    variants = manifest.variants or ["default"]
    return manifest.step, variants[0] + (f" (+{len(variants) - 1} more)" if len(variants) > 1 else "")


def _step_of(entry: Entry) -> str:
    return _step_and_variants(entry)[0]


def cache_gc_text(cache: Cache, roots: tuple[str, ...], dry_run: bool) -> str:
    from synthforge.lockfile import find_locks, referenced_keys

    locks = find_locks([Path(r) for r in (roots or (".",))])
    keep = referenced_keys(locks)
    doomed = [e for e in cache.entries() if e.key not in keep]
    if dry_run:
        sizes = [entry.size_bytes() for entry in doomed]
        summary = (f"{plural(len(locks), 'lockfile')} {'references' if len(locks) == 1 else 'reference'} "
                   f"{plural(len(keep), 'key')}; would remove {plural(len(doomed), 'entry', 'entries')} ({sum(sizes) / 1e6:.1f} MB)")
        if not doomed:
            return summary
        rows = [[*_step_and_variants(entry), entry.key, f"{size / 1e6:.2f}"] for entry, size in zip(doomed, sizes)]
        return render_table(["step", "variant", "key", "MB"], rows, align_right=(3,)) + "\n" + summary
    freed, removed, in_use = 0, 0, 0
    for entry in doomed:
        size = entry.size_bytes()
        if cache.remove(entry):  # refused while a running build holds a lease on it
            freed, removed = freed + size, removed + 1
        else:
            in_use += 1
    swept = cache.sweep_tmp() + cache.sweep_shared_partials()
    cache.sweep_derived({e.key for e in cache.entries()})
    busy = f"; kept {in_use} in use by a running build" if in_use else ""
    return (f"{plural(len(locks), 'lockfile')} {'references' if len(locks) == 1 else 'reference'} {plural(len(keep), 'key')}; removed {plural(removed, 'entry', 'entries')} ({freed / 1e6:.1f} MB){busy}; "
            f"swept {swept} leftover folder(s)")


def _per_variant(outputs: list[tuple[str, Entry]], blocks: list[str]) -> str:
    """One block as it is; several each under the variants they serve."""
    if len(blocks) == 1:
        return blocks[0]
    return "\n\n".join(f"== variant {label} ==\n{block}" for (label, _), block in zip(outputs, blocks))


def remote_keys(recipes: tuple[str, ...], sets: tuple[str, ...], variant: str | None = None,
                steps: tuple[str, ...] = ()) -> list[str]:
    """The keys of RECIPEs' (or lockfiles') steps (every variant unless one is named; every step unless some are)."""
    keys: list[str] = []
    for recipe_path in recipes:
        if recipe_path.endswith(".lock"):
            keys += _lock_keys(Path(recipe_path), variant, steps)
            continue
        graph = build_graph(load_recipe(recipe_path, parse_overrides(sets)))
        check_step_names(graph, list(steps))
        variants = graph.recipe.select_variants(variant)
        for v in variants:
            keys += [key for step, key in graph.keys[v.name].items() if not steps or step in steps]
    return list(dict.fromkeys(keys))


def _lock_keys(path: Path, variant: str | None, steps: tuple[str, ...]) -> list[str]:
    from synthforge.lockfile import read_lock

    lock = read_lock(path)
    if lock is None:
        raise UserError(f"{path} is not a synthforge lockfile", hint="pass a recipe, or the RECIPE.lock that build wrote")
    if variant is not None and variant not in lock.variants:
        raise UserError(f"no variant '{variant}' in {path}", field="--variant", hint=did_you_mean(variant, lock.variants) or "")
    chosen = [lock.variants[variant]] if variant is not None else list(lock.variants.values())
    return [key for step_keys in chosen for step, key in step_keys.items() if not steps or step in steps]


def cache_push_text(cache: Cache, remote: Remote, recipes: tuple[str, ...], sets: tuple[str, ...]) -> str:
    keys = remote_keys(recipes, sets) if recipes else [entry.key for entry in cache.entries()]
    done = remote.push_many(keys, cache)
    remote.raise_failures(done)
    return f"{done.summary('pushed')} to {remote.url}"


def cache_pull_text(cache: Cache, remote: Remote, recipe: str, variant: str | None, steps: tuple[str, ...],
                    sets: tuple[str, ...]) -> tuple[str, bool]:
    done = remote.pull_many(remote_keys((recipe,), sets, variant, steps), cache, status_line)
    remote.raise_failures(done)
    text = f"{done.summary('pulled')} from {remote.url}"
    if done.refused:
        text += f"; refused {len(done.refused)} damaged entries (a build recomputes them)"
    return text, not done.refused


def remote_gc_text(remote: Remote, roots: tuple[str, ...], dry_run: bool) -> str:
    from synthforge.lockfile import find_locks, referenced_keys

    locks = find_locks([Path(r) for r in (roots or (".",))])
    keep = referenced_keys(locks)
    entries, objects, freed = remote.gc(keep, dry_run)
    verb = "would remove" if dry_run else "removed"
    return (f"{plural(len(locks), 'lockfile')} {'references' if len(locks) == 1 else 'reference'} {plural(len(keep), 'key')}; {verb} {plural(entries, 'remote entry', 'remote entries')} and "
            f"{plural(objects, 'unreferenced object')} ({freed / 1e6:.1f} MB) from {remote.url}")


def tune_text(r: Any, step: str, result: Any, *, write: bool = False, plot: str | None = None,
              dry_run: bool = False) -> str:
    """`synthforge tune`: the probes' table, the best settings (or the Pareto front), the plot's path and the
    recipe fragment of `result` (`r.tune(step)`); `write` pins the best settings in the recipe file."""
    from synthforge.tuning import format_result, plot_result, write_settings

    lines = [format_result(result)]
    out = Path(plot) if plot else Path("reports") / r.name / f"tune-{step}.png"
    drawn = plot_result(result, out)
    if drawn is not None:
        lines.append(f"plot: {drawn}")
    if write and not dry_run:
        if not result.best:
            raise UserError("nothing to write: no probe met every target", field="--write",
                            hint="loosen the targets, widen the space or run more probes")
        write_settings(r.path, step, result.best[0].settings)
        lines.append(f"wrote probe #{result.best[0].number}'s settings into {r.path}")
    return "\n".join(lines)


def show_outputs_text(outputs: list[tuple[str, Entry]], table: str = "data", rows: int = 5, step: str | None = None) -> str:
    """`show` for every distinct output a variant name selects (`r.entries(step, variant)`)."""
    return _per_variant(outputs, [show_text(entry, table, rows, step) for _, entry in outputs])


def stats_text(measured: list[tuple[str, Entry, dict[str, Any]]], step: str, table: str, reference: str | None) -> str:
    """Diversity metrics of each output `r.stats` measured: one block per distinct output."""
    from synthforge.stats import format_stats

    title = f"{step}.{table}" if table != "data" else step
    against = f" vs {reference}" if reference else ""
    blocks = [f"diversity of {title}{against} (key {entry.key[:12]})\n{format_stats(stats)}" for _, entry, stats in measured]
    return _per_variant([(label, entry) for label, entry, _ in measured], blocks)


def report_text(result: Any, level_var: str, fraction_var: str, metric: str | None) -> str:
    """The sweep table, the study's heading and analysis, and the files `r.report` wrote (`result`: api.Report)."""
    from synthforge.report import analysis_text, format_table, heading

    study, missing = result.study, result.missing
    table = format_table(result.records, diversity_metric=metric, study=study)
    top = heading(study) if study else (f"warning: {missing}\n\n" if missing else "")
    table += analysis_text(study, level_var, fraction_var) if study else ""
    return top + table + "\n\nwrote:\n" + "\n".join(f"  {p}" for p in result.paths)


def diff_text(result: Any, fmt: str, output: str | None = None) -> str:
    """A diff (`api.diff`) as text, markdown or JSON; also written to `output` when given."""
    import json

    from synthforge import diff as diffing

    renderers = {"text": diffing.render_text, "markdown": diffing.render_markdown,
                 "json": lambda d: json.dumps(d.to_json(), indent=1, sort_keys=True)}
    text = renderers[fmt](result)
    if output:
        from synthforge.cache import atomic_write

        atomic_write(Path(output), text if text.endswith("\n") else text + "\n")
    return text
