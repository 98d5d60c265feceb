"""What each command prints: the text of a plan, a build, a step's rows, stats, a report, a diff, a tune, and
of the cache commands (ls, verify, gc, push, pull). The API (api.py) does the work and returns data; these
render it. Nothing here opens a recipe, changes the cache or imports the API."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.cache import Cache, DamagedEntry, Entry
from synthforge.errors import UserError
from synthforge.graph import Graph
from synthforge.planning import as_sentence, planned_usage, variant_label
from synthforge.progress import LOGGER, format_seconds, verbose
from synthforge.text_tables import plural, render_table

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


def build_text(graph: Graph, result: Any, took: str | None = None) -> str:
    """A build's table (up to TABLE_MAX_ROWS step outputs, or with -v), its summary line, what was pushed and
    the selection warnings (`result`: api.BuildResult); `took` in place of its time (a remembered build's mark)."""
    summary = build_summary(graph, result, result.pulled, result.wall_seconds, result.pulled_from, took)
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


def build_summary(graph: Graph, report, pulled: set[str], seconds: float, pulled_from: str | None = None,
                  took: str | None = None) -> str:
    """What the build did in one line, then where its results are: counts, time, lockfile, report."""
    statuses = [_status(item, report, pulled) for item in report.items]
    line = f"built {statuses.count('built')}, cached {statuses.count('cached')}"
    if report.built_elsewhere:
        line += f", {len(report.built_elsewhere)} built by another process meanwhile"
    took = took or (f"{seconds:.2f}s" if seconds < 60 else format_seconds(seconds))
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


def cache_verify_text(found: Any) -> tuple[str, bool]:
    """`cache verify`: the problems `api.verify` found as a table, and what --repair did; whether all is sound."""
    if not found.problems:
        return f"{plural(found.entries, 'entry', 'entries')} verified, all sound", True
    rows = [[entry.key[:12], _step_and_variants(entry)[0], problem] if entry else ["responses", "-", problem]
            for entry, problem in found.problems]
    text = render_table(["key", "step", "problem"], rows) + \
        f"\n{plural(len(rows), 'problem')} in {plural(found.entries, 'entry', 'entries')}"
    if found.read_only:
        return text + (f"; the cache {found.root} is read-only, so nothing was removed or moved (make it writable "
                       "first to repair)"), False
    if found.removed is None:
        return text + "; run 'synthforge cache verify --repair' to remove them", False
    text += f"; removed {found.removed} damaged entries (the next build recomputes them)"
    if found.removed < found.damaged:
        text += f"; {found.damaged - found.removed} in use by a running build, left for now"
    return text + (f"; {found.responses_repaired}" if found.responses_repaired else ""), False


def cache_gc_text(collected: Any) -> str:
    """`cache gc`: what `api.gc` removed (or, dry, would remove) of the local cache or a remote."""
    referenced = (f"{plural(collected.locks, 'lockfile')} {'references' if collected.locks == 1 else 'reference'} "
                  f"{plural(collected.kept, 'key')}")
    if collected.remote is not None:
        verb = "would remove" if collected.dry_run else "removed"
        return (f"{referenced}; {verb} {plural(collected.removed, 'remote entry', 'remote entries')} and "
                f"{plural(collected.objects, 'unreferenced object')} ({collected.freed / 1e6:.1f} MB) from {collected.remote}")
    if collected.dry_run:
        sizes = [size for _, size in collected.doomed]
        summary = f"{referenced}; would remove {plural(len(sizes), 'entry', 'entries')} ({sum(sizes) / 1e6:.1f} MB)"
        if not collected.doomed:
            return summary
        rows = [[*_step_and_variants(entry), entry.key, f"{size / 1e6:.2f}"] for entry, size in collected.doomed]
        return render_table(["step", "variant", "key", "MB"], rows, align_right=(3,)) + "\n" + summary
    busy = f"; kept {collected.in_use} in use by a running build" if collected.in_use else ""
    return (f"{referenced}; removed {plural(collected.removed, 'entry', 'entries')} ({collected.freed / 1e6:.1f} MB){busy}; "
            f"swept {collected.swept} leftover folder(s)")


def transfer_text(done: Any, verb: str, where: str) -> str:
    """`cache push` / `cache pull`: what moved (`remote.Transfer`), and the damaged entries a pull refused."""
    text = f"{done.summary(verb)} {'to' if verb == 'pushed' else 'from'} {where}"
    if done.refused:
        text += f"; refused {len(done.refused)} damaged entries (a build recomputes them)"
    return text


def _step_and_variants(entry: Entry) -> tuple[str, str]:
    """An entry's step and the variants that built it (the first, and how many more), for listings."""
    try:
        manifest = entry.manifest
    except DamagedEntry:
        return "?", "? (damaged)"
    variants = manifest.variants or ["default"]
    return manifest.step, variants[0] + (f" (+{len(variants) - 1} more)" if len(variants) > 1 else "")


def _per_variant(outputs: list[tuple[str, Entry]], blocks: list[str]) -> str:
    """One block as it is; several each under the variants they serve."""
    if len(blocks) == 1:
        return blocks[0]
    return "\n\n".join(f"== variant {label} ==\n{block}" for (label, _), block in zip(outputs, blocks))


def tune_text(r: Any, step: str, result: Any, *, write: bool = False, plot: str | None = None,
              dry_run: bool = False, as_json: bool = False) -> str:
    """`synthforge tune`: the probes' table, the best settings (or the Pareto front), the plot's path and the
    recipe fragment of `result` (`r.tune(step)`; `as_json`: the result as JSON); `write` pins the best settings
    in the recipe file with a note of the search that chose them."""
    import json

    from synthforge.tuning import format_result, pinned_note, plot_result, write_settings

    if as_json:
        return json.dumps(result.to_json(), indent=1, sort_keys=True)
    lines = [format_result(result)]
    out = Path(plot) if plot else Path("reports") / r.name / f"tune-{step}.png"
    drawn = plot_result(result, out)
    if drawn is not None:
        lines.append(f"plot: {drawn}")
    if write and not dry_run:
        if not result.best:
            raise UserError("nothing to write: no probe met every target", field="--write",
                            hint="loosen the targets, widen the space or run more probes")
        write_settings(r.path, step, result.best[0].settings, pinned_note(result, result.best[0]))
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
    table += f"\n\n{result.tuned}" if result.tuned else ""
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
