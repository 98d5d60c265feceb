"""What each CLI command does, as plain functions returning text (the CLI only parses and prints)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from synthforge.building import build
from synthforge.graph import Graph, build_graph
from synthforge.planning import as_sentence, check_step_names, plan, planned_usage, variant_label
from synthforge.cache import Cache, DamagedEntry, Entry
from synthforge.errors import UserError, did_you_mean
from synthforge.executors import Executor
from synthforge.progress import LOGGER, format_seconds, verbose
from synthforge.recipe.resolve import load_recipe, parse_overrides
from synthforge.stepapi import Runtime
from synthforge.tables import plural, render_table

if TYPE_CHECKING:
    from synthforge.remote import Remote


def _log(message: str) -> None:
    """A status line; a warning (damage found, output not reproducible) also shows under -q."""
    warning = message.lstrip().startswith(("warning", "⚠"))
    logging.getLogger(LOGGER).log(logging.WARNING if warning else logging.INFO, message)


def plan_text(graph: Graph, cache: Cache, only: tuple[str, ...] = (), force: tuple[str, ...] = (), remote: Remote | None = None) -> str:
    items = plan(graph, cache, only, force)
    unreachable = ""
    if remote is not None:
        try:
            on_remote = remote.available(i.node.key for i in items if i.action == "run" and i.node.step not in force)
        except UserError as exc:
            on_remote, unreachable = set(), f"\n(not marking remote steps: {exc})"
        for item in items:
            if item.node.key in on_remote:
                item.action, item.reasons = "pull", [f"on the remote {remote.url}"]
    return format_plan(graph, cache, items, remote) + unreachable


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


def build_text(
    graph: Graph,
    cache: Cache,
    only: tuple[str, ...] = (),
    force: tuple[str, ...] = (),
    runtime: Runtime = Runtime(),
    log: Callable[[str], None] = _log,
    remote: Remote | None = None,
    pull: bool = True,
    push: bool = False,
    executor: Executor | None = None,
    keep_going: bool = False,
) -> str:
    start = time.perf_counter()
    with cache.lease(graph.nodes):  # gc keeps what this command pulls, builds, pushes and reads back
        pulled = read_through(graph, cache, remote, only, force, log) if remote is not None and pull else set()
        report = build(graph, cache, only=only, force=force, runtime=runtime, log=log, executor=executor,
                       keep_going=keep_going)
        pushed = remote.push_many([i.node.key for i in report.items], cache) if push else None
        warnings = "".join(f"\nwarning: {w}" for w in selection_warnings(graph, cache))
    summary = build_summary(graph, report, pulled, time.perf_counter() - start, remote.url if pulled else None)
    if len(report.items) <= TABLE_MAX_ROWS or verbose():
        summary = f"{build_table(report, pulled)}\n{summary}"
    if pushed is not None:
        summary += f"\n{pushed.summary('pushed')} ({remote.url})"
        remote.raise_failures(pushed)
    return f"{summary}{warnings}"


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



def selection_warnings(graph: Graph, cache: Cache, level_var: str = "diversity") -> list[str]:
    """Diversity levels that select identical rows or do not raise measured Vendi (see report.level_warnings)."""
    if not any(level_var in variant.matrix_values for variant in graph.recipe.variants):
        return []  # no level varies: nothing to compare, nothing to read
    from synthforge.report import level_warnings

    metas = {}  # each entry's manifest read once, not once per variant sharing it
    for key in graph.nodes:
        entry = cache.get(key)
        if entry is not None and "selection_hash" in entry.manifest.meta:
            metas[key] = entry.manifest.meta
    records = [{"variant": variant.name, "vars": variant.matrix_values,
                "steps": {step: {"meta": metas[key]} for step, key in graph.keys[variant.name].items() if key in metas}}
               for variant in graph.recipe.variants]
    return level_warnings(records, level_var)


def read_through(graph: Graph, cache: Cache, remote: Remote, only: tuple[str, ...], force: tuple[str, ...],
                 log: Callable[[str], None]) -> set[str]:
    """Before building, fetch every step the remote has; before generating, merge its LLM responses."""
    items = plan(graph, cache, only, force)
    wanted = [i.node.key for i in items if i.action == "run" and i.node.step not in force]
    try:
        done = remote.pull_many(wanted, cache, log)
        still_to_run = [i for i in items if i.action == "run" and cache.problems(i.node.key) != []]
        added = remote.pull_responses(cache, log=log) if any(i.node.kind == "generate" for i in still_to_run) else 0
    except UserError as exc:
        log(f"{exc}; building without it")
        return set()
    if done.entries:
        log(done.summary("pulled") + f" from {remote.url}")
    for key, why in done.failed.items():
        log(f"remote: could not fetch {key[:12]} ({why}); building it here")
    if added:
        log(f"remote: merged {added} LLM responses from {remote.url}")
    return set(done.entries)


def _status(item, report, pulled: set[str]) -> str:
    if item.action == "cached":
        return "pulled" if item.node.key in pulled else "cached"
    return "cached (built by another process)" if item.node.key in report.built_elsewhere else "built"


def entry_for(graph: Graph, cache: Cache, step: str, variant: str | None = None) -> Entry:
    from synthforge.api import OpenRecipe

    return OpenRecipe(graph, cache).entry(step, variant)


def show_text(entry: Entry, table: str = "data", rows: int = 5, step: str | None = None) -> str:
    """Rows, schema, label counts and head, read lazily: the head and the label column only."""
    import polars as pl

    from synthforge.api import table_path

    table_path(entry, table)  # a clear error for a table the step does not have
    manifest = entry.manifest
    scan = entry.scan(table)  # checks the table's files against the manifest
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


def _input_table(entry: Entry, table: str):
    from synthforge.api import table_path
    from synthforge.stepapi import InputTable

    table_path(entry, table)
    return InputTable(entry.path, table)


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
    swept = cache.sweep_tmp() + cache.sweep_partial_models()
    cache.sweep_derived({e.key for e in cache.entries()})
    busy = f"; kept {in_use} in use by a running build" if in_use else ""
    return (f"{plural(len(locks), 'lockfile')} {'references' if len(locks) == 1 else 'reference'} {plural(len(keep), 'key')}; removed {plural(removed, 'entry', 'entries')} ({freed / 1e6:.1f} MB){busy}; "
            f"swept {swept} leftover folder(s)")


def runtime_from(device: str, progress: bool, concurrency: int | None, batch_size: int | None,
                 shard_rows: int | None = None, max_requests: int | None = None, max_tokens: int | None = None) -> Runtime:
    return Runtime(device=device, progress=progress, concurrency=concurrency, batch_size=batch_size, shard_rows=shard_rows,
                   max_requests=max_requests, max_tokens=max_tokens)


def executor_from(kind: str, graph: Graph, cache: Cache, runtime: Runtime, jobs: int | None, address: str | None,
                  models: int | None) -> Executor | None:
    """The executor `build --executor/--jobs/--address` asked for; None is the sequential in-process build.

    `models=None`: one heavy model at a time on a GPU; on the CPU one per worker, since each worker
    already runs on its own share of the cores."""
    from synthforge.backends.devices import accelerator_present, usable_cpus
    from synthforge.executors.local import AutoExecutor, ProcessExecutor

    if kind == "ray":
        from synthforge.executors.ray_executor import RayExecutor

        return RayExecutor(graph, cache, runtime, address=address, cpus=jobs)
    if address:
        raise UserError("--address is for the Ray executor", field="--address", hint="add --executor ray")
    if models is None and accelerator_present(runtime.device):
        models = 1
    if jobs is None:
        return AutoExecutor(graph, cache, runtime, usable_cpus(), models)
    return ProcessExecutor(graph, cache, runtime, jobs, models) if jobs > 1 else None




def diff_text(a: str, b: str, cache: Cache, fmt: str, fail_on: tuple[str, ...], build_missing: bool,
              output: str | None, sets: tuple[str, ...], progress: bool = True, records: int = 5) -> tuple[str, bool]:
    import json

    from synthforge import diff as diffing

    result = diffing.run_diff(a, b, cache, fail_on=list(fail_on), build_missing=build_missing,
                              sets=parse_overrides(sets), log=_log, runtime=Runtime(progress=progress), records=records)
    renderers = {"text": diffing.render_text, "markdown": diffing.render_markdown,
                 "json": lambda d: json.dumps(d.to_json(), indent=1, sort_keys=True)}
    text = renderers[fmt](result)
    if output:
        from synthforge.cache import atomic_write_text

        atomic_write_text(Path(output), text if text.endswith("\n") else text + "\n")
    return text, result.tripped


def variant_records(graph: Graph, cache: Cache) -> list[dict[str, Any]]:
    """Per variant: its matrix values and the manifests of its built steps (what a report reads)."""
    records = []
    for variant in graph.recipe.variants:
        steps = {}
        for step, key in graph.keys[variant.name].items():
            entry = cache.get(key)
            if entry is not None:
                steps[step] = entry.manifest.model_dump(mode="json")
        records.append({"variant": variant.name, "vars": variant.matrix_values, "steps": steps})
    return records


def report_text(graph: Graph, cache: Cache, out: str | None, level_var: str, fraction_var: str, score: str,
                metric: str | None, correction: str = "holm", html: bool = False) -> str:
    from synthforge.report import analysis_text, format_table, heading, slug, write_report

    records, missing = built_records(graph, cache)
    study = study_of(graph, cache, records, level_var, fraction_var, score, correction)
    if study is not None and missing:
        study.warnings.insert(0, missing)
    out_dir = Path(out) if out else Path("reports") / slug(graph.recipe.name)
    paths = write_report(records, out_dir, level_var=level_var, fraction_var=fraction_var, score=score,
                         diversity_metric=metric, study=study)
    if html:
        paths.append(_html_report(graph, cache, out_dir, level_var, study, [p for p in paths if p.suffix == ".png"]))
    table = format_table(records, diversity_metric=metric, study=study)
    top = heading(study) if study else (f"warning: {missing}\n\n" if missing else "")
    table += analysis_text(study, level_var, fraction_var) if study else ""
    return top + table + "\n\nwrote:\n" + "\n".join(f"  {p}" for p in paths)


def built_records(graph: Graph, cache: Cache) -> tuple[list[dict[str, Any]], str]:
    """The records of fully built variants, and a sentence naming what is not built (empty when all is).

    A report of a recipe with nothing fully built is a UserError: rows of unbuilt variants would be empty."""
    records = variant_records(graph, cache)
    wanted = {v.name: set(graph.keys[v.name]) for v in graph.recipe.variants}
    unbuilt = {r["variant"]: sorted(wanted[r["variant"]] - set(r["steps"])) for r in records}
    complete = [r for r in records if not unbuilt[r["variant"]]]
    lacking = {name: steps for name, steps in unbuilt.items() if steps}
    if not lacking:
        return complete, ""
    counts: dict[str, int] = {}
    for steps in lacking.values():
        for step in steps:
            counts[step] = counts.get(step, 0) + 1
    what = ", ".join(f"{step} in {n}" for step, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
    sentence = (f"{len(lacking)} of {len(records)} variants of {graph.recipe.path} are not fully built "
                f"(missing: {what}); they are left out")
    if not complete:
        raise UserError(f"no variant of {graph.recipe.path} is fully built (missing: {what})",
                        hint=f"run: synthforge build {graph.recipe.path}")
    return complete, sentence


def study_of(graph: Graph, cache: Cache, records: list[dict[str, Any]], level_var: str, fraction_var: str, score: str,
             correction: str):
    """Replicate-pooled cell statistics from the train step's predictions; None when no train step is built."""
    from synthforge.report import Study, level_overlap, level_warnings
    from synthforge.study_stats import study_statistics

    train_steps = [name for name, step in graph.recipe.variants[0].steps.items() if step.kind == "train"]
    if not train_steps:
        return None
    train_step = train_steps[0]
    runs, n_test, confidence = prediction_runs(graph, cache, train_step)
    if not runs:
        return None
    variants = [(v.name, v.matrix_values) for v in graph.recipe.variants]
    cells, method = study_statistics(variants, runs, fraction_var=fraction_var, score=score, correction=correction,
                                     confidence=confidence, seed=graph.recipe.seed)
    overlap, overlap_warnings = level_overlap(selected_ids(graph, cache), level_var)
    return Study(graph.recipe.name, cells, method, score, train_step, n_test, correction, confidence,
                 level_warnings(records, level_var) + overlap_warnings, fraction_var, overlap)


def selected_ids(graph: Graph, cache: Cache) -> list[tuple[dict[str, Any], str, str, set[str]]]:
    """Per variant and built select step: its matrix values, the step, the entry key and the selected ids."""
    found, read = [], {}
    for variant in graph.recipe.variants:
        for name, step in variant.steps.items():
            key = graph.keys[variant.name][name]
            if step.kind != "select" or (key not in read and cache.get(key) is None):
                continue
            if key not in read:
                read[key] = set(cache.get(key).read_table(columns=["id"])["id"].to_list())
            found.append((variant.matrix_values, name, key, read[key]))
    return found


def prediction_runs(graph: Graph, cache: Cache, train_step: str) -> tuple[dict[str, Any], int | None, float]:
    """Per built variant: its test truth and the predictions of each seed with distinct predictions."""
    import numpy as np
    import polars as pl

    from synthforge.study_stats import Run

    runs, n_test, confidence = {}, None, 0.95
    for variant in graph.recipe.variants:
        entry = cache.get(graph.keys[variant.name][train_step])
        if entry is None:
            continue
        meta = entry.manifest.meta or {}
        labels = list(meta.get("labels") or [])
        index = {label: i for i, label in enumerate(labels)}
        frame = pl.read_parquet(entry.table_path("predictions"), columns=["seed", "id", "label", "prediction"])
        per_seed = frame.partition_by("seed", maintain_order=True)
        first = per_seed[0]
        truth = np.array([index[v] for v in first["label"].to_list()], dtype=np.int64)
        predictions, seen = [], set()
        for part in per_seed:
            pred = np.array([index[v] for v in part["prediction"].to_list()], dtype=np.int64)
            if pred.tobytes() not in seen:  # identical seeds count once
                seen.add(pred.tobytes())
                predictions.append(pred)
        runs[variant.name] = Run(tuple(first["id"].to_list()), truth, predictions)
        n_test, confidence = meta.get("n_test", n_test), meta.get("confidence", confidence)
    return runs, n_test, confidence


def _html_report(graph: Graph, cache: Cache, out_dir: Path, level_var: str, study=None, plots=None) -> Path:
    from synthforge.api import OpenRecipe
    from synthforge.report import heading
    from synthforge.report_html import rejected_rows, subset_samples, write_html

    lines = [line.strip() for line in heading(study).splitlines() if line.strip()] if study else []
    subtitle = lines[0].lstrip("# ") if lines else ""
    notes = [line.removeprefix("> ") for line in lines[1:]]
    opened = OpenRecipe(graph, cache)
    return write_html(out_dir, f"{graph.recipe.name}: sweep report", subtitle, subset_samples(opened, level_var),
                      description=graph.recipe.model.description.strip(), notes=notes, rejects=rejected_rows(opened),
                      plots=plots)


def stats_text(graph: Graph, cache: Cache, step: str, variant: str | None, table: str, reference: str | None,
               device: str) -> str:
    """Diversity metrics of a step's output; one block per distinct output when `variant` selects several."""
    from synthforge.api import OpenRecipe

    outputs = OpenRecipe(graph, cache).entries(step, variant)
    blocks = [_stats_of(graph, cache, step, entry, table, reference, device) for _, entry in outputs]
    return _per_variant(outputs, blocks)


def _stats_of(graph: Graph, cache: Cache, step: str, entry: Entry, table: str, reference: str | None, device: str) -> str:
    from synthforge.api import OpenRecipe
    from synthforge.stats import entry_stats, format_stats

    target = _input_table(entry, table)
    ref = None
    if reference:
        ref_step, _, ref_table = reference.partition(".")
        served = graph.nodes[entry.key].variants[0]  # the reference as built for (the first of) this output's variants
        ref = _input_table(OpenRecipe(graph, cache).entry(ref_step, served), ref_table or "data")
    stats = entry_stats(target, ref, cache=cache, seed=graph.recipe.seed, device=device)
    title = f"{step}.{table}" if table != "data" else step
    against = f" vs {reference}" if reference else ""
    return f"diversity of {title}{against} (key {entry.key[:12]})\n{format_stats(stats)}"


def show_variants_text(recipe, step: str, variant: str | None, table: str = "data", rows: int = 5) -> str:
    """`show` for every distinct output `variant` selects (one, or each replicate's of a partial name)."""
    outputs = recipe.entries(step, variant)
    return _per_variant(outputs, [show_text(entry, table, rows, step) for _, entry in outputs])


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
    done = remote.pull_many(remote_keys((recipe,), sets, variant, steps), cache, _log)
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


def tune_text(r: Any, step: str, *, write: bool = False, plot: str | None = None, **options: Any) -> str:
    """`synthforge tune`: run or resume the search, then the probes' table, the best settings (or the Pareto
    front), the plot's path and the recipe fragment; `write` pins the best settings in the recipe file."""
    from synthforge.tuning import format_result, plot_result, write_settings

    result = r.tune(step, **options)
    lines = [format_result(result)]
    out = Path(plot) if plot else Path("reports") / r.name / f"tune-{step}.png"
    drawn = plot_result(result, out)
    if drawn is not None:
        lines.append(f"plot: {drawn}")
    if write and not options.get("dry_run"):
        if not result.best:
            raise UserError("nothing to write: no probe met every target", field="--write",
                            hint="loosen the targets, widen the space or run more probes")
        write_settings(r.path, step, result.best[0].settings)
        lines.append(f"wrote probe #{result.best[0].number}'s settings into {r.path}")
    return "\n".join(lines)
