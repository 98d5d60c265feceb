"""The Python API, the one front end: open a recipe, plan and build it, read, show, measure, report and export
any step's output, compare two recipes. Every CLI command is a call here plus the text `app.py` renders.

    import synthforge as sf
    r = sf.open("recipes/diversity_study.yaml", set={"pool": 800})
    r.plan(); r.build(jobs=4)
    df = r.table("selected", variant="diversity=0.5,synthetic_fraction=0.5")   # polars
    ds = r.to_hf("selected", variant=...)                                       # datasets.Dataset, label as ClassLabel

Reading a built table imports polars only (no torch); `to_hf` imports `datasets` (the `hf` extra).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from synthforge import app
from synthforge.building import BuildReport, build
from synthforge.cache import Cache, Entry, read_table
from synthforge.errors import UserError, did_you_mean
from synthforge.executors import Executor, executor_from
from synthforge.frames import stack_variants, to_hf_dataset
from synthforge.graph import Graph, build_graph
from synthforge.keys import key_of
from synthforge.planning import PlanItem, check_step_names, collector_paused, plan, variant_label
from synthforge.recipe.resolve import load_recipe
from synthforge.stepapi import InputTable, Runtime
from synthforge.text_tables import plural

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd
    import polars as pl

    from synthforge.diff import Diff
    from synthforge.remote import Remote
    from synthforge.report import Study
    from synthforge.tuning import TuneResult

__all__ = ["open", "OpenRecipe", "read_table", "diff", "verify", "gc", "push", "pull", "Plan", "BuildResult", "Report"]


def open(path: str | Path, set: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None) -> "OpenRecipe":  # noqa: A001
    """Load and resolve the recipe at `path`; `set` overrides its variables (typed values, like `--set`).

    `cache_dir=None` uses the CLI's default: `$SYNTHFORGE_CACHE`, else `cache/` in the current folder.
    """
    cache = Cache(cache_dir)
    with collector_paused():
        return OpenRecipe(build_graph(load_recipe(path, dict(set or {})), cache), cache)


class Plan(list):
    """The plan's items (`PlanItem`: .action, .node.step, .reasons), shown as the table `synthforge plan` prints."""

    def __init__(self, items: list[PlanItem], text: str):
        super().__init__(items)
        self.text = text

    def __repr__(self) -> str:
        return self.text


@dataclass(repr=False)
class BuildResult(BuildReport):
    """The builder's report (`BuildReport`) and what the build command did around it: the entries pulled from
    the remote, the push, its wall time and the diversity levels' warnings."""

    pulled: set[str] = field(default_factory=set)
    pulled_from: str | None = None
    pushed: Any = None  # remote.Transfers
    pushed_to: str | None = None
    wall_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What `r.report()` wrote: the fully built variants' records, the study's statistics (None without a
    built train step), a sentence naming unbuilt variants, the files, and which searches pinned tuned steps."""

    records: list[dict[str, Any]]
    study: "Study | None"
    missing: str
    paths: list[Path]
    tuned: str = ""  # tuning.tuned_text: the search behind each `tune --write`-pinned step ("" when none)


class OpenRecipe:
    """A resolved recipe bound to a cache: plan, build, and read step outputs per variant."""

    def __init__(self, graph: Graph, cache: Cache):
        self.graph = graph
        self.cache = cache

    def __repr__(self) -> str:
        return f"<synthforge recipe {self.name!r}: {plural(len(self.steps), 'step')} x {plural(len(self.variants), 'variant')}, cache {self.cache.root}>"

    @property
    def name(self) -> str:
        return self.graph.recipe.name

    @property
    def path(self) -> Path:
        return self.graph.recipe.path

    @property
    def steps(self) -> list[str]:
        return list(self.graph.recipe.model.steps)

    @property
    def variants(self) -> list[str]:
        """Variant names, e.g. 'diversity=0.5,synthetic_fraction=0.25' ('default' without a matrix)."""
        return [v.name for v in self.graph.recipe.variants]

    # -- plan and build ---------------------------------------------------
    def plan(self, only: Sequence[str] = (), force: Sequence[str] = (), *, remote: "Remote | None" = None) -> "Plan":
        """What is cached and what would run, with the reasons (nothing is built); with `remote`, steps it has
        are marked 'pull' (an unreachable remote is said in the text, not raised)."""
        items = plan(self.graph, self.cache, list(only), list(force))
        unreachable = ""
        if remote is not None:
            try:
                on_remote = remote.available(i.node.key for i in items if i.action == "run" and i.node.step not in force)
            except UserError as exc:
                on_remote, unreachable = set(), f"\n(not marking remote steps: {exc})"
            for item in items:
                if item.node.key in on_remote:
                    item.action, item.reasons = "pull", [f"on the remote {remote.url}"]
        return Plan(items, app.format_plan(self.graph, self.cache, items, remote) + unreachable)

    def build(self, only: Sequence[str] = (), force: Sequence[str] = (), *, device: str = "auto",
              progress: bool = True, concurrency: int | None = None, batch_size: int | None = None,
              keep_going: bool = False, executor: "str | Executor" = "local", jobs: int | None = 1,
              address: str | None = None, models_per_device: int | None = None, shard_rows: int | None = None,
              max_requests: int | None = None, max_tokens: int | None = None, remote: "str | Remote | None" = None,
              pull: bool = True, push: bool = False, log: Callable[[str], None] | None = None) -> BuildResult:
        """Build what is missing (in dependency order) and write the recipe's lockfile; the options of
        `synthforge build` (docs/cli.md). `executor`: 'local', 'ray' or an `Executor`; `jobs=None` lets the
        local executor choose (the CLI's default), the default 1 builds in this process. `remote`: a URL or
        a `synthforge.remote.Remote`, read through before building (`pull`) and pushed to after (`push`).

        `keep_going=True`: a failing step does not stop the steps that do not depend on it; at the end
        `synthforge.errors.BuildFailed` says how many were built, failed and skipped (`.report` has them)."""
        from synthforge.progress import ensure_logging

        ensure_logging()
        runtime = Runtime(device=device, progress=progress, concurrency=concurrency, batch_size=batch_size,
                          shard_rows=shard_rows, max_requests=max_requests, max_tokens=max_tokens)
        if isinstance(executor, str):
            executor = executor_from(executor, self.graph, self.cache, runtime, jobs, address, models_per_device)
        if isinstance(remote, str) or (remote is None and push):
            from synthforge.remote import open_remote

            remote = open_remote(remote, progress=progress)
        return _build(self.graph, self.cache, list(only), list(force), runtime, log or app.status_line, remote,
                      pull, push, executor, keep_going)

    def tune(self, step: str, *, targets: Sequence[str] = (), space: Sequence[str] = (), reference: str | None = None,
             embed: str | None = None, judge: str | None = None, llm_judge: str | None = None, pass_score: int | None = None,
             probe_rows: int | None = None, probes: int | None = None, seed: int | None = None,
             variant: str | None = None, max_requests: int | None = None, max_tokens: int | None = None,
             device: str = "auto", progress: bool = False, jobs: int | None = None, dry_run: bool = False) -> "TuneResult":
        """Search the settings of generate step `step` for its recipe `tune:` block's targets (or `targets` and
        `space` given here, e.g. ['vendi >= 20'], ['temperature=0.2..1.4']); resumes a killed search (docs/tune.md).
        The result's `.best`, `.probes`, `.fragment()`; `synthforge.tuning.write_settings` pins the best."""
        import logging

        from synthforge.progress import LOGGER, ensure_logging
        from synthforge.tuning import search_from, tune

        ensure_logging()
        search = search_from(self.graph.recipe, step, targets=targets, space=space, reference=reference, embed=embed,
                             judge=judge, llm_judge=llm_judge, pass_score=pass_score, probe_rows=probe_rows, probes=probes,
                             seed=seed, max_requests=max_requests, max_tokens=max_tokens)
        return tune(self, search, variant=variant, device=device, progress=progress, jobs=jobs,
                    log=logging.getLogger(LOGGER).info, dry_run=dry_run)

    # -- reading ------------------------------------------------------------
    def key(self, step: str, variant: str | None = None) -> str:
        """The cache key of `step` in `variant`: a full name, or any NAME=VALUE pairs in any order; may be
        partial or omitted when every variant it selects shares the step's output."""
        outputs = self.outputs(step, variant)
        if len(outputs) > 1:
            selected = self.graph.recipe.select_variants(variant)
            among = f"the {plural(len(selected), 'variant')}" + (f" matching '{variant}'" if variant else "")
            names = [_short_name(self.graph, key) for key in outputs]
            raise UserError(f"step '{step}' has {len(outputs)} distinct outputs across {among}", field="variant",
                            hint=f"name a variant, e.g. {'; '.join(names[:4])}" + ("; ..." if len(names) > 4 else ""))
        return next(iter(outputs))

    def outputs(self, step: str, variant: str | None = None) -> dict[str, str]:
        """The distinct outputs of `step` among the variants `variant` selects: key -> which variants it serves."""
        recipe = self.graph.recipe
        if step not in recipe.model.steps:
            raise UserError(f"no step '{step}' in {recipe.path}", hint=did_you_mean(step, self.steps) or f"steps: {', '.join(self.steps)}")
        keys = dict.fromkeys(self.graph.keys[v.name][step] for v in recipe.select_variants(variant))
        return {key: variant_label(self.graph, self.graph.nodes[key]) for key in keys}

    def entry(self, step: str, variant: str | None = None) -> Entry:
        return self._built(step, self.key(step, variant))

    def entries(self, step: str, variant: str | None = None) -> list[tuple[str, Entry]]:
        """Each distinct built output of `step` among the variants `variant` selects, with the variants it serves
        (no `variant`: the one output every variant shares, else an error listing them)."""
        if variant is None:
            return [(next(iter(self.outputs(step).values())), self.entry(step))]
        return [(label, self._built(step, key)) for key, label in self.outputs(step, variant).items()]

    def _built(self, step: str, key: str) -> Entry:
        entry = self.cache.get(key)
        if entry is None:
            raise UserError(f"step '{step}' is not built yet (key {key[:12]})", hint=f"run: synthforge build {self.path}")
        return entry

    def table(self, step: str, variant: str | None = None, table: str = "data") -> "pl.DataFrame":
        """A built step's table as a polars DataFrame; when `variant` selects several distinct outputs (e.g.
        'diversity=0.5' with replicates), their tables stacked with a leading `variant` column."""
        entries = self.entries(step, variant)
        if len(entries) == 1:
            return read_table(entries[0][1], table)
        return stack_variants([(label, read_table(entry, table)) for label, entry in entries])

    def artifact(self, step: str, path: str = "artifacts/model", variant: str | None = None) -> Path:
        """A built step's artifact (a file or folder under `artifacts/`, e.g. a trained model), after every file
        in it matched the manifest's content hash (a damaged one is a one-line error)."""
        return self.entry(step, variant).artifact(path)

    def to_pandas(self, step: str, variant: str | None = None, table: str = "data") -> "pd.DataFrame":
        return self.table(step, variant, table).to_pandas()

    def to_hf(self, step: str, variant: str | None = None, table: str = "data",
              labels: Sequence[str] | None = None) -> "datasets.Dataset":
        """A `datasets.Dataset` whose `label` column is a `ClassLabel` (names sorted, or `labels` in that order)."""
        frame = self.table(step, variant, table)
        return to_hf_dataset(frame, labels, description=json.dumps(self.provenance(step, variant, table)))

    def provenance(self, step: str, variant: str | None = None, table: str = "data") -> dict[str, Any]:
        """Where a table comes from: recipe, step, variant, key and what made it (see `synthforge.export`)."""
        from synthforge.export import provenance

        return provenance(self, step, variant, table)


    # -- measuring, reporting, exporting -----------------------------------
    def stats(self, step: str, variant: str | None = None, table: str = "data", reference: str | None = None,
              device: str = "auto") -> list[tuple[str, Entry, dict[str, Any]]]:
        """Diversity metrics (and with `reference`, STEP[.TABLE], the shift from it) of each distinct output of
        `step` the variant name selects: (variants served, entry, metrics); cached as derived records."""
        from synthforge.stats import entry_stats

        measured = []
        for label, entry in self.entries(step, variant):
            ref = None
            if reference:
                ref_step, _, ref_table = reference.partition(".")
                served = self.graph.nodes[entry.key].variants[0]  # the reference as built for this output's (first) variant
                ref = _input_table(self.entry(ref_step, served), ref_table or "data")
            stats = entry_stats(_input_table(entry, table), ref, cache=self.cache, seed=self.graph.recipe.seed, device=device)
            measured.append((label, entry, stats))
        return measured

    def report(self, out: str | Path | None = None, *, level_var: str = "diversity",
               fraction_var: str = "synthetic_fraction", score: str = "macro_f1", metric: str | None = None,
               correction: str = "holm", html: bool = False) -> Report:
        """Write the sweep report of the fully built variants (table, plots; `html`: report.html) into `out`
        (default reports/<recipe name>/); the study's statistics pool replicates (docs/report.md)."""
        from synthforge.report import reported_score, slug, study_of, write_report
        from synthforge.tuning import tuned_text

        records, missing = _built_records(self.graph, self.cache)
        score = reported_score(records, score)
        study = study_of(self.graph, self.cache, records, level_var, fraction_var, score, correction)
        if study is not None and missing:
            study.warnings.insert(0, missing)
        out_dir = Path(out) if out else Path("reports") / slug(self.name)
        paths = write_report(records, out_dir, level_var=level_var, fraction_var=fraction_var, score=score,
                             diversity_metric=metric, study=study)
        if html:
            paths.append(_html_report(self, out_dir, level_var, study, [p for p in paths if p.suffix == ".png"]))
        return Report(records, study, missing, paths, tuned_text(self.graph.recipe, self.cache))

    def export(self, step: str, to: str | Path, variant: str | None = None, table: str = "data",
               fmt: str | None = None, roles: Mapping[str, str | None] | None = None) -> str:
        """Write a step's table with its provenance (parquet, jsonl, csv, or a Hugging Face folder: `fmt='hf'`), or
        chat JSONL (`fmt='messages'`, `roles` naming the columns: {"user": ..., "assistant": ..., "system": ...})."""
        from synthforge.export import export

        return export(self, step, str(to), variant, table, fmt, dict(roles or {}))


def diff(a: str, b: str, cache_dir: str | Path | None = None, *, fail_on: Sequence[str] = (), build_missing: bool = False,
         set: Mapping[str, Any] | None = None, progress: bool = True, records: int = 5) -> "Diff":  # noqa: A002
    """Compare two recipes, lockfiles, git revisions (REV:path) or step outputs (RECIPE#STEP); `.tripped` says
    whether a `fail_on` gate tripped (docs/diff.md). `records`: changed, added and removed records listed per step."""
    from synthforge.diff import run_diff
    from synthforge.tuning import note_tuned_steps

    cache = Cache(cache_dir)
    result = run_diff(a, b, cache, fail_on=list(fail_on), build_missing=build_missing, sets=dict(set or {}),
                      log=app.status_line, runtime=Runtime(progress=progress), records=records)
    note_tuned_steps(result, cache)  # which search pinned a changed tuned step, on each side
    return result


@dataclass
class Verification:
    """What `verify` found: (the entry, or None for the LLM response cache; the problem) per problem, and with
    `repair` what was done."""

    root: Path
    entries: int
    problems: list[tuple[Entry | None, str]]
    damaged: int  # entries with a problem
    read_only: bool
    removed: int | None = None  # repair: damaged entries removed (the rest are in use by a running build)
    responses_repaired: str | None = None


def verify(cache_dir: str | Path | None = None, repair: bool = False) -> Verification:
    """`synthforge cache verify`: check every entry and cached LLM response; `repair` removes damaged entries
    (unless a running build uses them) and damaged responses (a read-only cache is left as it is)."""
    from synthforge.generation.response_cache import repair_response_db, response_db_problems

    cache = Cache(cache_dir)
    problems, damaged = [], []
    entries = list(cache.entries())
    for entry in entries:
        found = cache.verify(entry)
        problems += [(entry, problem) for problem in found]
        if found:
            damaged.append(entry)
    responses_dir = cache.root / "shared" / "responses"
    responses = response_db_problems(responses_dir, read_only=cache.read_only)
    problems += [(None, problem) for problem in responses]
    result = Verification(cache.root, len(entries), problems, len(damaged), cache.read_only)
    if repair and problems and not cache.read_only:
        result.removed = sum(cache.remove(entry) for entry in damaged)
        result.responses_repaired = repair_response_db(responses_dir) if responses else None
    return result


@dataclass
class Collection:
    """What `gc` removed (or, `dry_run`, would remove): from the local cache, or from `remote`."""

    locks: int  # lockfiles found
    kept: int  # keys they reference
    dry_run: bool
    doomed: list[tuple[Entry, int]] = field(default_factory=list)  # local: unreferenced entries and their sizes
    removed: int = 0
    freed: int = 0  # bytes
    in_use: int = 0  # local: kept because a running build leases them
    swept: int = 0  # local: dead writers' leftovers
    objects: int = 0  # remote: unreferenced objects
    remote: str | None = None


def gc(roots: Sequence[str | Path] = (), dry_run: bool = False, cache_dir: str | Path | None = None,
       remote: "Remote | None" = None) -> Collection:
    """`synthforge cache gc`: remove the entries no lockfile under `roots` (default '.') references, from the
    local cache or from `remote`; entries a running build leases stay."""
    from synthforge.lockfile import find_locks, referenced_keys

    locks = find_locks([Path(r) for r in (roots or (".",))])
    keep = referenced_keys(locks)
    if remote is not None:
        removed, objects, freed = remote.gc(keep, dry_run)
        return Collection(len(locks), len(keep), dry_run, removed=removed, freed=freed, objects=objects, remote=remote.url)
    cache = Cache(cache_dir)
    collected = Collection(len(locks), len(keep), dry_run, [(e, e.size_bytes()) for e in cache.entries() if e.key not in keep])
    if dry_run:
        return collected
    for entry, size in collected.doomed:
        if cache.remove(entry):  # refused while a running build holds a lease on it
            collected.freed, collected.removed = collected.freed + size, collected.removed + 1
        else:
            collected.in_use += 1
    collected.swept = cache.sweep_tmp() + cache.sweep_shared_partials()
    cache.sweep_derived({e.key for e in cache.entries()})
    return collected


def push(remote: "Remote", recipes: Sequence[str] = (), set: Mapping[str, Any] | None = None,  # noqa: A002
         cache_dir: str | Path | None = None) -> Any:
    """`synthforge cache push`: upload the entries of `recipes` or lockfiles (every local entry when none is
    given) and their LLM responses; a `remote.Transfer` (failures raised as one error)."""
    cache = Cache(cache_dir)
    done = remote.push_many(recipe_keys(recipes, set) if recipes else [entry.key for entry in cache.entries()], cache)
    remote.raise_failures(done)
    return done


def pull(remote: "Remote", recipe: str, variant: str | None = None, steps: Sequence[str] = (),
         set: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None) -> Any:  # noqa: A002
    """`synthforge cache pull`: download a recipe's (or lockfile's) entries, each verified before it appears;
    a `remote.Transfer` (`.refused`: damaged entries left out)."""
    done = remote.pull_many(recipe_keys((recipe,), set, variant, steps), Cache(cache_dir), app.status_line)
    remote.raise_failures(done)
    return done


def recipe_keys(recipes: Sequence[str], sets: Mapping[str, Any] | None = None, variant: str | None = None,
                steps: Sequence[str] = ()) -> list[str]:
    """The keys of RECIPEs' (or lockfiles') steps (every variant unless one is named; every step unless some are)."""
    keys: list[str] = []
    for recipe_path in recipes:
        if recipe_path.endswith(".lock"):
            keys += _lock_keys(Path(recipe_path), variant, steps)
            continue
        graph = build_graph(load_recipe(recipe_path, dict(sets or {})))
        check_step_names(graph, list(steps))
        variants = graph.recipe.select_variants(variant)
        for v in variants:
            keys += [key for step, key in graph.keys[v.name].items() if not steps or step in steps]
    return list(dict.fromkeys(keys))


def _lock_keys(path: Path, variant: str | None, steps: Sequence[str]) -> list[str]:
    from synthforge.lockfile import read_lock

    lock = read_lock(path)
    if lock is None:
        raise UserError(f"{path} is not a synthforge lockfile", hint="pass a recipe, or the RECIPE.lock that build wrote")
    if variant is not None and variant not in lock.variants:
        raise UserError(f"no variant '{variant}' in {path}", field="--variant", hint=did_you_mean(variant, lock.variants) or "")
    chosen = [lock.variants[variant]] if variant is not None else list(lock.variants.values())
    return [key for step_keys in chosen for step, key in step_keys.items() if not steps or step in steps]


def _build(graph: Graph, cache: Cache, only: list[str], force: list[str], runtime: Runtime, log: Callable[[str], None],
           remote: "Remote | None", pull: bool, push: bool, executor: Executor | None, keep_going: bool) -> BuildResult:
    """Read through the remote, build, push, read back the selection warnings: all under one lease on every
    key of the graph (the builder's own lease nests in it), so `cache gc` removes nothing this command uses."""
    start = time.perf_counter()
    with cache.lease(graph.nodes):
        pulled = _read_through(graph, cache, remote, only, force, log) if remote is not None and pull else set()
        report = build(graph, cache, only=only, force=force, runtime=runtime, log=log, executor=executor,
                       keep_going=keep_going)
        pushed = remote.push_many([i.node.key for i in report.items], cache) if push else None
        warnings = selection_warnings(graph, cache, contents=report.contents)
    result = BuildResult(**{f.name: getattr(report, f.name) for f in fields(BuildReport)}, pulled=pulled,
                         pulled_from=remote.url if pulled else None, pushed=pushed,
                         pushed_to=remote.url if pushed is not None else None,
                         wall_seconds=time.perf_counter() - start, warnings=warnings)
    if pushed is not None:
        remote.raise_failures(pushed)
    return result


def _read_through(graph: Graph, cache: Cache, remote: "Remote", only: list[str], force: list[str],
                  log: Callable[[str], None]) -> set[str]:
    """Before building, fetch every step the remote has; before generating, merge its LLM responses."""
    items = plan(graph, cache, only, force)
    wanted = [i.node.key for i in items if i.action == "run" and i.node.step not in force]
    try:
        done = remote.pull_many(wanted, cache, log)
        still_to_run = [i for i in items if i.action == "run" and cache.problems(i.node.key) != []]
        added = remote.pull_responses(cache, log=log) if any(i.node.resolved.step.carries_responses for i in still_to_run) else 0
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


def selection_warnings(graph: Graph, cache: Cache, level_var: str = "diversity",
                       contents: dict[str, str] | None = None) -> list[str]:
    """Diversity levels that select identical rows or do not raise measured Vendi (see report.level_warnings).
    `contents` (key -> content hash, as a build reports them): when every selecting entry has one, the
    warnings are a derived record of those entries and variants, and a no-op build reads no manifest for them."""
    if not any(level_var in variant.matrix_values for variant in graph.recipe.variants):
        return []  # no level varies: nothing to compare, nothing to read
    from synthforge.report import LEVEL_WARNINGS_VERSION, level_warnings

    selecting = [key for key, node in graph.nodes.items() if node.resolved.step.reports_selection]
    record_key = None
    if contents is not None and all(key in contents for key in selecting):
        chosen = set(selecting)
        made_of = [[v.name, v.matrix_values, {step: [key, contents[key]] for step, key in graph.keys[v.name].items() if key in chosen}]
                   for v in graph.recipe.variants]
        record_key = key_of(["selection warnings", LEVEL_WARNINGS_VERSION, level_var, made_of])
        remembered = cache.read_derived(record_key)
        if remembered is not None and isinstance(remembered.get("warnings"), list):
            return remembered["warnings"]
    metas = {}  # each entry's manifest read once, not once per variant sharing it
    for key in selecting:
        entry = cache.get(key)
        if entry is not None and "selection_hash" in entry.manifest.meta:
            metas[key] = entry.manifest.meta
    records = [{"variant": variant.name, "vars": variant.matrix_values,
                "steps": {step: {"meta": metas[key]} for step, key in graph.keys[variant.name].items() if key in metas}}
               for variant in graph.recipe.variants]
    warnings = level_warnings(records, level_var)
    if record_key is not None:
        with contextlib.suppress(OSError, UserError):  # a read-only cache: read them again next time
            cache.write_derived(record_key, {"warnings": warnings}, selecting)
    return warnings


def _input_table(entry: Entry, table: str) -> InputTable:
    entry.table_path(table)  # a clear error for a table the step lacks, before anything is measured
    return InputTable(entry.path, table)


def _variant_records(graph: Graph, cache: Cache) -> list[dict[str, Any]]:
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


def _built_records(graph: Graph, cache: Cache) -> tuple[list[dict[str, Any]], str]:
    """The records of fully built variants, and a sentence naming what is not built (empty when all is).

    A report of a recipe with nothing fully built is a UserError: rows of unbuilt variants would be empty."""
    records = _variant_records(graph, cache)
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


def _html_report(recipe: "OpenRecipe", out_dir: Path, level_var: str, study: "Study | None", plots: list[Path]) -> Path:
    from synthforge.report import heading
    from synthforge.report_html import rejected_rows, subset_samples, write_html

    lines = [line.strip() for line in heading(study).splitlines() if line.strip()] if study else []
    subtitle = lines[0].lstrip("# ") if lines else ""
    notes = [line.removeprefix("> ") for line in lines[1:]]
    model = recipe.graph.recipe.model
    return write_html(out_dir, f"{recipe.name}: sweep report", subtitle, subset_samples(recipe, level_var),
                      description=model.description.strip(), notes=notes, rejects=rejected_rows(recipe), plots=plots)


def _short_name(graph: Graph, key: str) -> str:
    """A variant name that selects this output: the matrix values its variants share, else its first variant."""
    label = variant_label(graph, graph.nodes[key])
    shared = label.split(" (")[0]
    return shared if "=" in shared else graph.nodes[key].variants[0]
