"""The Python API: open a recipe, plan and build it, read any step's table.

    import synthforge as sf
    r = sf.open("recipes/diversity_study.yaml", set={"pool": 800})
    r.plan(); r.build()
    df = r.table("selected", variant="diversity=0.5,synthetic_fraction=0.5")   # polars
    ds = r.to_hf("selected", variant=...)                                       # datasets.Dataset, label as ClassLabel

The CLI is a client of this module. Reading a built table imports polars only
(no torch); `to_hf` imports `datasets` (the `hf` extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.building import BuildReport, build
from synthforge.graph import Graph, build_graph
from synthforge.planning import PlanItem, plan
from synthforge.cache import Cache, Entry
from synthforge.errors import UserError, did_you_mean
from synthforge.recipe.resolve import load_recipe
from synthforge.stepapi import Runtime
from synthforge.tables import plural

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import pandas as pd
    import polars as pl

    from synthforge.tuning import TuneResult

PROVENANCE_KEY = "synthforge"  # parquet key-value metadata key holding the provenance JSON


def open(path: str | Path, set: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None) -> "OpenRecipe":  # noqa: A001
    """Load and resolve the recipe at `path`; `set` overrides its variables (typed values, like `--set`).

    `cache_dir=None` uses the CLI's default: `$SYNTHFORGE_CACHE`, else `cache/` in the current folder.
    """
    cache = Cache(cache_dir)
    return OpenRecipe(build_graph(load_recipe(path, dict(set or {})), cache), cache)


def table_path(entry: Entry, table: str = "data") -> Path:
    """The parquet file of one table of an entry; a clear error when the step has no such table."""
    manifest = entry.manifest
    if table not in manifest.tables:
        raise UserError(f"step '{manifest.step}' has no table '{table}'", field="--table",
                        hint=f"tables: {', '.join(manifest.tables)}")
    return entry.table_path(table)


def read_table(entry: Entry, table: str = "data", columns: Sequence[str] | None = None) -> "pl.DataFrame":
    """One table of a cache entry as polars, its bytes checked against the manifest (the one place tables are read for users)."""
    table_path(entry, table)
    return entry.read_table(table, columns=list(columns) if columns is not None else None)


class Plan(list):
    """The plan's items (`PlanItem`: .action, .node.step, .reasons), shown as the table `synthforge plan` prints."""

    def __init__(self, items: list[PlanItem], text: str):
        super().__init__(items)
        self.text = text

    def __repr__(self) -> str:
        return self.text


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
    def plan(self, only: Sequence[str] = (), force: Sequence[str] = ()) -> "Plan":
        """What is cached and what would run, with the reasons (nothing is built)."""
        from synthforge.app import format_plan

        items = plan(self.graph, self.cache, list(only), list(force))
        return Plan(items, format_plan(self.graph, self.cache, items))

    def build(self, only: Sequence[str] = (), force: Sequence[str] = (), *, device: str = "auto",
              progress: bool = True, concurrency: int | None = None, batch_size: int | None = None,
              keep_going: bool = False) -> BuildReport:
        """Build what is missing (in dependency order) and write the recipe's lockfile.

        `keep_going=True`: a failing step does not stop the steps that do not depend on it; at the end
        `synthforge.errors.BuildFailed` says how many were built, failed and skipped (`.report` has them)."""
        import logging

        from synthforge.progress import LOGGER, ensure_logging

        ensure_logging()
        runtime = Runtime(device=device, progress=progress, concurrency=concurrency, batch_size=batch_size)
        log = logging.getLogger(LOGGER).info
        return build(self.graph, self.cache, only=list(only), force=list(force), runtime=runtime, log=log,
                     keep_going=keep_going)

    def tune(self, step: str, *, targets: Sequence[str] = (), space: Sequence[str] = (), reference: str | None = None,
             embed: str | None = None, judge: str | None = None, probe_rows: int | None = None, probes: int | None = None, seed: int | None = None,
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
                             judge=judge, probe_rows=probe_rows, probes=probes, seed=seed, max_requests=max_requests,
                             max_tokens=max_tokens)
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
        from synthforge.planning import variant_label

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


def _short_name(graph: Graph, key: str) -> str:
    """A variant name that selects this output: the matrix values its variants share, else its first variant."""
    from synthforge.planning import variant_label

    label = variant_label(graph, graph.nodes[key])
    shared = label.split(" (")[0]
    return shared if "=" in shared else graph.nodes[key].variants[0]


def stack_variants(frames: list[tuple[str, Any]]) -> Any:
    """Tables (polars, eager or lazy) of several variants as one, with a leading `variant` column naming each row's."""
    import polars as pl

    labelled = [frame.select(pl.lit(label).alias("variant"), pl.all()) for label, frame in frames]
    return pl.concat(labelled, how="vertical_relaxed")


def import_datasets() -> Any:
    """The `datasets` module, or a clear error when it is not installed."""
    try:
        import datasets
    except ImportError:
        raise UserError("reading into Hugging Face datasets needs the 'datasets' package",
                        hint="pip install 'synthforge[hf]' (scripts/setup.sh installs it)") from None
    return datasets


def to_hf_dataset(frame: "pl.DataFrame", labels: Sequence[str] | None = None, description: str = "") -> "datasets.Dataset":
    datasets = import_datasets()
    if "label" not in frame.columns:
        return datasets.Dataset(frame.to_arrow(), info=datasets.DatasetInfo(description=description))
    import polars as pl

    present = sorted(set(frame["label"].drop_nulls().to_list()))
    names = list(labels) if labels is not None else present
    unknown = sorted(set(present) - set(names))
    if unknown:
        raise UserError(f"labels {unknown} are not in the given label names {names}", field="labels")
    # Labels become ClassLabel ids here, not by Dataset.cast_column (which draws a progress bar per call).
    codes = frame.with_columns(pl.col("label").replace_strict(names, list(range(len(names))), return_dtype=pl.Int64))
    table = codes.to_arrow()
    features = datasets.Features.from_arrow_schema(table.schema)
    features["label"] = datasets.ClassLabel(names=names)
    return datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(description=description, features=features))
