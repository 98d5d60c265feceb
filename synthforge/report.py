"""The sweep report: one table row per variant, and plots of score vs diversity and synthetic fraction.

Input records look like
    {"variant": "div=high,frac=0.5", "vars": {"diversity": "high", "synthetic_fraction": 0.5},
     "steps": {"select": manifest, "mix": manifest, "train": manifest}}
where each manifest has a "meta" dict. A step whose meta has "scores" (the
`train` step) contributes `<step>.<metric>` (mean), `.lo`/`.hi` (its headline
interval) and `.std`; every other step contributes its scalar meta values,
flattened as `<step>.<key>[.<subkey>...]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.metric_registry import Interval, flatten_metrics
from synthforge.metric_registry import info as metric_info
from synthforge.metric_registry import label as metric_label
from synthforge.metric_registry import names as metric_names

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.cache import Cache
    from synthforge.graph import Graph

# Meta keys shown in the compact view (terminal, markdown) when a step reports them: the registry's
# diversity, shift and fidelity metrics (`label_agreement.overall` for the last).
DIVERSITY_METRICS = ("vendi", "dcscore")
SHIFT_METRICS = metric_names("shift")
COVERAGE_METRICS = metric_names("coverage")  # PRDC: on the real manifold (precision, density) vs spanning it
COMPACT_METRICS = (*DIVERSITY_METRICS, *SHIFT_METRICS, *COVERAGE_METRICS, "overall", "fidelity_corrected")
# Per-cell paired columns beside `delta_<score>` (see study_stats): the headline test is the paired t.
PAIRED_COLUMNS = ("delta_lo", "delta_hi", "delta_df", "p_t", "p_adj", "p_mcnemar_conditional", "mde", "mde_adj", "duplicate_of")
SHOWN_PAIRED = ("p_t", "p_adj", "p_mcnemar_conditional", "mde")
BOUNDED_SCORES = ("accuracy", "macro_f1")


@dataclass
class Study:
    """Cell statistics over replicates (see study_stats) and what the report heading states."""

    recipe: str
    cells: list[Any]  # study_stats.CellStats
    method: str  # how the intervals were computed
    score: str  # the metric the cells' intervals and deltas are about
    train_step: str
    n_test: int | None
    correction: str = "holm"
    confidence: float = 0.95
    warnings: list[str] = field(default_factory=list)
    fraction_var: str = "synthetic_fraction"
    overlap: list[dict[str, Any]] = field(default_factory=list)  # adjacent levels' shared rows (level_overlap)

    @property
    def paired(self) -> bool:
        """Whether a real-only baseline cell exists: without one there is no paired difference to show."""
        return any(_is_baseline(cell.values, self.fraction_var) for cell in self.cells)

    @property
    def replicates(self) -> int:
        return max((len(c.variants) for c in self.cells), default=1)


@dataclass
class _Sweep:
    rows: list[dict[str, Any]]  # one flat dict per variant
    var_names: list[str]
    train_steps: list[str]
    metric_columns: list[str]  # flattened meta columns of non-train steps


# -- table -------------------------------------------------------------------
def build_table(records: Sequence[dict[str, Any]], *, interval: str = "ci", study: Study | None = None,
                score: str = "macro_f1"):
    """The full table (polars), columns in `ordered_columns` order: the answer first, bookkeeping last.

    `interval` picks which of a score's intervals becomes `.lo`/`.hi`: `ci` (the train
    step's headline), `seed_ci` (t over seeds) or `bootstrap_ci` (over the test set).
    With a `study`, one row per cell (replicates pooled): the score interval and the paired
    columns `delta_<score>` and PAIRED_COLUMNS (intervals, paired t, adjusted p, McNemar, power) come from it.
    """
    import polars as pl

    sweep = _collect(records, interval, study)
    columns = ["variant", *sweep.var_names, *sweep.metric_columns, *_score_columns(sweep)]
    headline = _pick_score(sweep, study.score if study else score, study.train_step if study else None)
    data = {name: _column([row.get(name) for row in sweep.rows]) for name in ordered_columns(columns, sweep.var_names, headline)}
    return pl.DataFrame(data, strict=False)


# -- column order: the answer first ------------------------------------------------
ROLES = ("key", "headline", "delta", "test", "score", "metric", "size", "bookkeeping")
SIZE_NAMES = ("n_train", "n_real", "n_synthetic", "n_replicates", "rows_out")


def column_roles(columns: Sequence[str], var_names: Sequence[str] | None = None, headline: str | None = None,
                 variant_values: Sequence[Any] = ()) -> dict[str, str]:
    """What each sweep column is, from its name alone (so any table, whatever its exact columns, sorts the same way).

    key: `variant` and the matrix vars (`var_names`; else the names in `variant_values`, `k=v,...`; else
    names without a step prefix); headline: the score the study is
    about and its `.lo`/`.hi` (default: the first column that has an interval); delta: `delta_*`;
    test: `p_*`; score: other columns with an interval and their bounds, and the registry's scores; metric: the registry's
    diversity, shift and fidelity metrics; size: row counts; bookkeeping: everything else
    (settings, hashes, methods, spreads).
    """
    intervals = [c for c in columns if f"{c}.lo" in columns]
    headline = headline if headline in columns else (intervals[0] if intervals else None)
    bounds = {f"{c}.{b}": c for c in intervals for b in ("lo", "hi")}
    measured, scores = set(metric_names("diversity", "shift", "fidelity")), set(metric_names("score"))
    if var_names is None and variant_values:
        var_names = {part.split("=", 1)[0] for value in variant_values if value for part in str(value).split(",")}
    roles = {}
    for name in columns:
        last = name.rsplit(".", 1)[-1]
        if name == "variant" or (name in var_names if var_names is not None else "." not in name and not name.startswith(("delta_", "p_"))):
            roles[name] = "key"
        elif headline is not None and bounds.get(name, name) == headline:
            roles[name] = "headline"
        elif name.startswith("delta_"):
            roles[name] = "delta"
        elif name.startswith("p_"):
            roles[name] = "test"
        elif name in intervals or name in bounds or last in scores:
            roles[name] = "score"
        elif ".metric_methods." not in name and (last in measured or name.endswith("label_agreement.overall")):
            roles[name] = "metric"
        elif last in SIZE_NAMES:
            roles[name] = "size"
        else:
            roles[name] = "bookkeeping"
    return roles


def ordered_columns(columns: Sequence[str], var_names: Sequence[str] | None = None, headline: str | None = None,
                    variant_values: Sequence[Any] = ()) -> list[str]:
    """Columns by role (see `column_roles`), in table order within a role; adjusted p-values lead the tests,
    and each score is followed by its interval."""
    roles = column_roles(columns, var_names, headline, variant_values)

    def rank(item: tuple[int, str]) -> tuple:
        position, name = item
        role = roles[name]
        adjusted = role == "test" and "adj" not in name
        base = name.rsplit(".", 1)[0] if name.endswith((".lo", ".hi")) and role in ("headline", "score") else name
        return (ROLES.index(role), adjusted, columns.index(base) if base in columns else position, name != base,
                name.endswith(".hi"), position)

    return [name for _, name in sorted(enumerate(columns), key=rank)]


def format_table(
    records: Sequence[dict[str, Any]],
    *,
    diversity_metric: str | None = None,
    interval: str = "ci",
    digits: int = 3,
    markdown: bool = False,
    study: Study | None = None,
) -> str:
    """A compact view for the terminal: settings, diversity metrics and scores as `mean [lo, hi]`."""
    from synthforge.text_tables import render_markdown, render_table

    sweep = _collect(records, interval, study)
    headline = _pick_score(sweep, study.score if study else "macro_f1", study.train_step if study else None)
    headers, body, same = _compact(sweep, diversity_metric, digits, headline)
    table = render_markdown(headers, body) if markdown else render_table(headers, body)
    if not same:
        return table
    return table.rstrip("\n") + ("\n\n" if markdown else "\n") + "Same in every row: " + "; ".join(same) + ("\n" if markdown else "")


def heading(study: Study) -> str:
    """What the sweep table is: recipe, test rows, replicates, interval method, paired tests, warnings."""
    from synthforge.study_stats import headline_test

    replicates = study.replicates
    tested = [c for c in study.cells if c.p_adj is not None]
    distinct = sum(1 for c in tested if c.duplicate_of is None)
    correction = {"holm": "Holm", "bh": "Benjamini-Hochberg"}.get(study.correction, study.correction)
    lines = [
        f"# {study.recipe}: {metric_label(study.score)} by cell",
        "",
        f"n_test = {study.n_test} held-out real rows; {replicates} replicate(s) per cell; "
        f"{study.confidence:.0%} intervals: {study.method}.",
        f"Δ = {metric_label(study.score)} minus the real-only baseline (synthetic fraction 0) of the same replicate "
        f"on the same test rows. Headline test: {headline_test(replicates)} (p_t); p_adj: {correction}-adjusted over "
        f"{distinct} distinct cells (cells with predictions identical to another's in every replicate count once: duplicate_of)."
        if study.paired else
        f"No paired differences: no cell has {study.fraction_var} = 0 (a real-only baseline) to compare against.",
        *([] if not study.paired else ["p_mcnemar_conditional: exact McNemar on accuracy pooled over replicates, conditional on the drawn training "
        "sets (it ignores their variance; not a test of the design). mde: the smallest |Δ| the paired t detects "
        "with 80% power at alpha 0.05 (mde_adj: at the first Holm step), from the pooled within-cell SD of the Δs."]),
    ]
    lines += [f"", *(f"> warning: {w}" for w in study.warnings)] if study.warnings else []
    return "\n".join(lines) + "\n\n"


def analysis_text(study: Study, level_var: str, fraction_var: str, digits: int = 3) -> str:
    """Markdown sections under the sweep table: the level model with its contrasts, and the power table."""
    from synthforge.study_stats import level_analysis, power_table
    from synthforge.text_tables import render_markdown

    parts = []
    analyses = level_analysis(study.cells, level_var, fraction_var, study.confidence)
    if analyses:
        body = []
        for a in analyses:
            group = ", ".join(f"{k}={v}" for k, v in a.group.items()) or "all"
            body.append([group, a.formula, str(a.n), f"F({a.df_level[0]:.0f}, {a.df_level[1]:.0f}) = {a.f_level:.2f}",
                         _fmt_p(a.p_level), "-", "-"])
            for c in a.contrasts:
                body.append([group, f"contrast: {c.name}", "", "", _fmt_p(c.p),
                             _fmt_interval(c.estimate, c.lo, c.hi, digits, signed=True), ", ".join(f"{w:+.2f}" for w in c.weights.values())])
        parts.append(
            f"## The level: per-replicate Δ ~ {level_var} + {fraction_var} + replicate (OLS)\n\n"
            f"F test for {level_var}, and the paper's hypothesis as contrasts over the {level_var} means "
            f"(positive: moderate levels do better; {study.confidence:.0%} intervals, not adjusted).\n\n"
            + render_markdown(["group", "term", "n", "F", "p", "estimate [CI]", "weights by level"], body)
        )
    if study.overlap:
        body = [[r["step"], f"{r['from']} -> {r['to']}", str(r["pairs"]), f"{r['jaccard']:.2f}", f"{r['jaccard_max']:.2f}", f"{r['shared']:.2f}"]
                for r in study.overlap]
        parts.append(
            f"## Adjacent {level_var} levels: shared rows\n\n"
            "Jaccard index of the selected ids of adjacent levels (same replicate and other values), mean and max over "
            "replicates; `shared`: the share of the lower level's rows the higher level also selects.\n\n"
            + render_markdown(["step", "levels", "pairs", "Jaccard (mean)", "Jaccard (max)", "shared (mean)"], body)
        )
    power = power_table(study.cells)
    if power:
        body = [[str(r["replicates"]), f"{r['sd_delta']:.{digits}f}", _fmt(r["mde"], digits), _fmt(r["mde_adj"], digits)] for r in power]
        parts.append(
            f"## Power: the smallest Δ a cell can detect (80% power, paired t)\n\n"
            f"From the pooled within-cell SD of the per-replicate Δs ({power[0]['cells']} distinct cells; "
            f"this study: {study.replicates} replicates).\n\n"
            + render_markdown(["replicates", "SD of Δ", "mde (alpha 0.05)", f"mde (Holm over {power[0]['cells']})"], body)
        )
    return "".join(f"\n\n{p}" for p in parts)


def level_table(study: Study, level_var: str, fraction_var: str):
    """The level analyses as rows (polars): one per F test and contrast, for levels.csv."""
    import polars as pl

    from synthforge.study_stats import level_analysis

    rows = []
    for a in level_analysis(study.cells, level_var, fraction_var, study.confidence):
        group = ", ".join(f"{k}={v}" for k, v in a.group.items()) or "all"
        rows.append({"group": group, "term": f"F test: {level_var}", "n": a.n, "estimate": a.f_level, "lo": None, "hi": None,
                     "df_num": a.df_level[0], "df_den": a.df_level[1], "p": a.p_level})
        rows += [{"group": group, "term": f"contrast: {c.name}", "n": a.n, "estimate": c.estimate, "lo": c.lo, "hi": c.hi,
                  "df_num": 1.0, "df_den": a.df_level[1], "p": c.p} for c in a.contrasts]
    return pl.DataFrame(rows) if rows else None


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.1e}" if p < 0.001 else f"{p:.3f}")


def write_report(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    *,
    level_var: str = "diversity",
    fraction_var: str = "synthetic_fraction",
    score: str = "macro_f1",
    diversity_metric: str | None = None,
    train_step: str | None = None,
    interval: str = "ci",
    dpi: int = 150,
    study: Study | None = None,
) -> list[Path]:
    """Write sweep.parquet/.csv/.md and the plots the vars allow; return the paths written.

    A plot whose var or metric is missing from every record is skipped, not an error.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(records, interval=interval, study=study)
    written = [out / "sweep.parquet", out / "sweep.csv", out / "sweep.md"]
    table.write_parquet(written[0])
    table.write_csv(written[1])
    top = heading(study) if study else ""
    sections = analysis_text(study, level_var, fraction_var) if study else ""
    written[2].write_text(top + format_table(records, diversity_metric=diversity_metric, interval=interval, markdown=True, study=study) + sections)
    levels = level_table(study, level_var, fraction_var) if study else None
    if levels is not None:
        levels.write_csv(out / "levels.csv")
        written.append(out / "levels.csv")
    sweep = _collect(records, interval, study)
    caption = f"{study.confidence:.0%} intervals: {study.method}" if study else None
    plots = _Plots(sweep, level_var, fraction_var, score, diversity_metric, train_step, dpi, out, caption)
    drawn = [plots.score_vs_level(), plots.score_vs_fraction(), plots.measured_vs_level()]
    # score against a measured metric only where it is not the level axis relabelled (same order of points)
    drawn += [plots.score_vs_measured(metric) for metric in (*DIVERSITY_METRICS, *SHIFT_METRICS, "prdc_density", "prdc_coverage")
              if not plots.follows_level(metric)]
    written += [path for path in drawn if path]
    return written


# -- collecting ----------------------------------------------------------------
def _collect(records: Sequence[dict[str, Any]], interval: str = "ci", study: Study | None = None) -> _Sweep:
    sweep = _collect_variants(records, interval)
    return _pool_cells(sweep, study) if study is not None else sweep


def _collect_variants(records: Sequence[dict[str, Any]], interval: str) -> _Sweep:
    rows, var_names, train_steps, metric_columns = [], [], [], []
    for record in records:
        row: dict[str, Any] = {"variant": str(record.get("variant", ""))}
        for name, value in (record.get("vars") or {}).items():
            _append_new(var_names, name)
            row[name] = value
        for step, manifest in (record.get("steps") or {}).items():
            meta = (manifest or {}).get("meta") or {}
            if isinstance(meta.get("scores"), dict):
                _append_new(train_steps, step)
                row.update(_train_columns(step, meta, interval))
            else:
                for name, value in flatten_metrics(meta, step, intervals=False):
                    _append_new(metric_columns, name)
                    row[name] = value
        for step in _unused_selections(record):
            for name in [n for n in row if n.startswith(f"{step}.")]:
                row[name] = None  # real-only rows do not use the selection their mix step read
        rows.append(row)
    return _Sweep(rows, var_names, train_steps, metric_columns)


def _unused_selections(record: dict[str, Any]) -> list[str]:
    """Steps whose rows the variant's training set does not contain (a mix that took no synthetic rows)."""
    steps = record.get("steps") or {}
    metas = {step: (manifest or {}).get("meta") or {} for step, manifest in steps.items()}
    if not any(meta.get("n_synthetic") == 0 for meta in metas.values()):
        return []
    return [step for step, meta in metas.items() if isinstance(meta.get("metrics"), dict)]


def _pool_cells(sweep: _Sweep, study: Study) -> _Sweep:
    """One row per cell: numbers averaged over its replicates, scores and paired columns from the study."""
    from synthforge.study_stats import REPLICATE_VAR

    by_variant = {row["variant"]: row for row in sweep.rows}
    var_names = [v for v in sweep.var_names if v != REPLICATE_VAR]
    rows = []
    for cell in study.cells:
        members = [by_variant[v] for v in cell.variants if v in by_variant]
        row: dict[str, Any] = {"variant": ",".join(f"{k}={v}" for k, v in cell.values.items()) or "default"}
        row.update(cell.values)
        for name in {n for m in members for n in m} - {"variant", *sweep.var_names}:
            row[name] = _pooled([m.get(name) for m in members])
        for name in [n for n in row if n.startswith(f"{study.train_step}.") and n.endswith((".lo", ".hi"))]:
            row[name] = None  # averaged per-replicate intervals are no interval: only the study's score has one
        column = f"{study.train_step}.{study.score}"
        row[column], row[f"{column}.lo"], row[f"{column}.hi"] = _parts(cell.score, "mean", "lo", "hi")
        row[f"{study.train_step}.n_replicates"] = len(members)
        if study.paired:  # without a real-only cell every "difference" would be a cell against itself
            row[f"delta_{study.score}"], row["delta_lo"], row["delta_hi"], row["delta_df"] = _parts(cell.delta, "mean", "lo", "hi", "df")
            row["p_t"], row["p_adj"], row["p_mcnemar_conditional"] = cell.p_t, cell.p_adj, cell.p_mcnemar
            row["mde"], row["mde_adj"], row["duplicate_of"] = cell.mde, cell.mde_adj, cell.duplicate_of
        rows.append(row)
    return _Sweep(rows, var_names, sweep.train_steps, sweep.metric_columns)


def _pooled(values: list[Any]) -> Any:
    """Mean of the numbers; a text value when every replicate agrees; else None."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return sum(present) / len(present)
    return present[0] if present and all(v == present[0] for v in present) else None


def _train_columns(step: str, meta: dict[str, Any], interval: str) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for metric, summary in meta["scores"].items():
        score = Interval.read(summary, interval)
        if score is None:
            continue
        columns[f"{step}.{metric}"] = summary["mean"]
        columns[f"{step}.{metric}.lo"], columns[f"{step}.{metric}.hi"] = score.lo, score.hi
        columns[f"{step}.{metric}.std"] = summary.get("std")
    columns[f"{step}.n_seeds"] = meta.get("n_distinct_seeds", len(meta.get("seeds") or []))
    for name in ("method", "n_train", "n_test"):
        if name in meta:
            columns[f"{step}.{name}"] = meta[name]
    return columns


def _score_columns(sweep: _Sweep) -> list[str]:
    names: list[str] = []
    for row in sweep.rows:
        for name in row:
            if any(name.startswith(f"{step}.") for step in sweep.train_steps) or name.startswith("delta_") or name in PAIRED_COLUMNS:
                _append_new(names, name)
    return names


def _parts(interval: Interval | None, *names: str) -> tuple[float | None, ...]:
    """The named parts of an interval, all None when there is none (a cell without a run or a baseline)."""
    return tuple(getattr(interval, name) if interval is not None else None for name in names)


def _append_new(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _column(values: list[Any]) -> list[Any]:
    """One type per column: numbers stay numbers, anything mixed becomes text."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present):
        return values
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return [None if v is None else float(v) for v in values] if any(isinstance(v, float) for v in present) else values
    return [None if v is None else str(v) for v in values]


# -- compact view --------------------------------------------------------------
def _compact(sweep: _Sweep, diversity_metric: str | None, digits: int,
             headline: str | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows and a footnote: settings, then score with interval, Δ with interval and the tests, then
    measured metrics and sizes; columns equal in every row are folded into the footnote."""
    wanted = set(COMPACT_METRICS) | ({diversity_metric} if diversity_metric else set())
    shown_metrics = [c for c in _numeric_columns(sweep) if c.rsplit(".", 1)[-1] in wanted or c == diversity_metric]
    order = list(COMPACT_METRICS)
    shown_metrics.sort(key=lambda c: order.index(c.rsplit(".", 1)[-1]) if c.rsplit(".", 1)[-1] in order else len(order))
    sizes = [f"{step}.{name}" for step in sweep.train_steps for name in ("n_train", "n_replicates")
             if any(row.get(f"{step}.{name}") is not None for row in sweep.rows)]
    scores = [f"{step}.{metric}" for step in sweep.train_steps for metric in _metrics_of(sweep, step)]
    names = ["variant", *sweep.var_names, *scores, *_delta_columns(sweep), *shown_metrics, *sizes]
    scores = [c for c in ordered_columns(names, sweep.var_names, headline) if c in scores]
    power = [c for c in ("mde",) if any(row.get(c) is not None for row in sweep.rows)]
    columns = [*scores[:1], *_delta_columns(sweep), *_test_columns(sweep), *power, *scores[1:], *shown_metrics, *sizes]
    cells = {c: [_compact_cell(row, c, sweep, digits) for row in sweep.rows] for c in columns}
    constant = [c for c in columns if len(sweep.rows) > 1 and len(set(cells[c])) == 1]
    shown = [c for c in columns if c not in constant]
    keys = sweep.var_names or ["variant"]  # a variant's name only repeats its vars
    headers = [*keys, *(_compact_header(c) for c in shown)]
    body = [[_fmt(row.get(v), digits) for v in keys] + [cells[c][i] for c in shown] for i, row in enumerate(sweep.rows)]
    footnote = [f"{_compact_header(c)} = {cells[c][0]}" for c in constant]
    return headers, body, footnote


def _delta_columns(sweep: _Sweep) -> list[str]:
    first = sweep.rows[0] if sweep.rows else {}
    return [n for n in first if n.startswith("delta_") and n not in PAIRED_COLUMNS]


def _test_columns(sweep: _Sweep) -> list[str]:
    """The p-value columns, adjusted ones first (the rule `ordered_columns` applies to the full table)."""
    first = sweep.rows[0] if sweep.rows else {}
    tests = [n for n in first if n.startswith("p_")]
    return [n for n in ordered_columns(tests) if n in tests]


def _compact_cell(row: dict[str, Any], column: str, sweep: _Sweep, digits: int) -> str:
    if column.startswith("delta_"):
        return _fmt_interval(row.get(column), row.get("delta_lo"), row.get("delta_hi"), digits, signed=True)
    if any(column == f"{step}.{m}" for step in sweep.train_steps for m in _metrics_of(sweep, step)):
        return _fmt_interval(row.get(column), row.get(f"{column}.lo"), row.get(f"{column}.hi"), digits)
    if column.startswith("p_") and _number(row.get(column)) is not None and row[column] < 10 ** -digits:
        return f"<{10 ** -digits:.{digits}f}"
    return _fmt(row.get(column), 0 if column.endswith(("n_train", "n_replicates")) else digits)


def _compact_header(column: str) -> str:
    if column.startswith("delta_"):
        return f"Δ {metric_label(column[len('delta_'):])}"
    return column if column.startswith("p_") else _header(column)


def _numeric_columns(sweep: _Sweep) -> list[str]:
    """Metric columns holding numbers (not e.g. `metric_methods.vendi`, which says how vendi was computed)."""
    return [c for c in sweep.metric_columns if any(_number(row.get(c)) is not None for row in sweep.rows)]


def _header(column: str) -> str:
    """`selected.metrics.vendi` -> `Vendi score`; `selected.label_agreement.overall` -> `label agreement`."""
    if column.endswith("label_agreement.overall"):
        return metric_label("label_agreement")
    name = column.rsplit(".", 1)[-1]
    return metric_label(name) if name not in ("n_replicates",) else "replicates"


def _metrics_of(sweep: _Sweep, step: str) -> list[str]:
    metrics: list[str] = []
    for row in sweep.rows:
        for name in row:
            if name.startswith(f"{step}.") and f"{name}.lo" in row:
                _append_new(metrics, name[len(step) + 1 :])
    return metrics


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_interval(mean: Any, low: Any, high: Any, digits: int, signed: bool = False) -> str:
    if mean is None:
        return "-"
    sign = "+" if signed else ""
    if low is None or high is None:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


# -- plots -------------------------------------------------------------------
@dataclass
class _Point:
    x: Any
    y: float
    lo: float | None
    hi: float | None
    group: tuple[tuple[str, Any], ...]


class _Plots:
    def __init__(self, sweep, level_var, fraction_var, score, diversity_metric, train_step, dpi, out, caption=None):
        self.sweep, self.level, self.fraction, self.dpi, self.out = sweep, level_var, fraction_var, dpi, out
        self.caption = caption
        self.score_column = _pick_score(sweep, score, train_step)
        self.diversity_column = _pick_diversity(sweep, diversity_metric)

    def has_var(self, name: str) -> bool:
        return any(row.get(name) is not None for row in self.sweep.rows)

    def score_vs_level(self) -> Path | None:
        if not (self.score_column and self.has_var(self.level)):
            return None
        rows = [r for r in self.sweep.rows if not _is_baseline(r, self.fraction)]
        points = self.points(rows, self.level, self.score_column)
        title = f"{metric_label(_nice(self.score_column))} vs {self.level}"
        return self.draw(points, self.level, self.score_column, title, f"{slug(_nice(self.score_column))}_vs_{slug(self.level)}.png", baseline=True)

    def score_vs_fraction(self) -> Path | None:
        if not (self.score_column and self.has_var(self.fraction)):
            return None
        rows = [r for r in self.sweep.rows if not _is_baseline(r, self.fraction)]
        points = self.points(rows, self.fraction, self.score_column)
        reference = self.baseline()
        if reference:
            # Real-only data does not depend on the other vars: every line starts from it at fraction 0.
            groups = list(dict.fromkeys(p.group for p in points)) or [()]
            points += [_Point(0.0, *reference, group) for group in groups]
        title = f"{metric_label(_nice(self.score_column))} vs {self.fraction}"
        return self.draw(points, self.fraction, self.score_column, title, f"{slug(_nice(self.score_column))}_vs_{slug(self.fraction)}.png", baseline=True)

    def measured_columns(self) -> list[str]:
        """The chosen diversity metric, then every other registry diversity and shift metric the selection measured."""
        wanted = (*DIVERSITY_METRICS, *SHIFT_METRICS)
        found = [c for c in _numeric_columns(self.sweep) if c.rsplit(".", 1)[-1] in wanted]
        found.sort(key=lambda c: wanted.index(c.rsplit(".", 1)[-1]))
        first = [self.diversity_column] if self.diversity_column else []
        return first + [c for c in found if c not in first]

    def measured_vs_level(self) -> Path | None:
        """What the level knob does to each measured metric: one small panel per metric."""
        columns = self.measured_columns()
        if not (columns and self.has_var(self.level)):
            return None
        panels = [(c, self.points(self.sweep.rows, self.level, c)) for c in columns]
        panels = [(c, points) for c, points in panels if points]
        if not panels:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        across = min(3, len(panels))
        down = -(-len(panels) // across)
        fig, axes = plt.subplots(down, across, figsize=(3.4 * across, 2.8 * down + 0.5), squeeze=False)
        for ax, (column, points) in zip(axes.flat, panels):
            positions, ticks = _x_positions([p.x for p in points])
            groups: dict[tuple, list[_Point]] = {}
            for point in points:
                groups.setdefault(point.group, []).append(point)
            for members in groups.values():
                xs, ys, _ = _line(members, positions)
                ax.plot(xs, ys, marker="o", linewidth=1.5)
            if ticks:
                ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
            found = metric_info(column)
            better = f" ({found.better} = {'more diverse' if found.group == 'diversity' else 'closer'})" if found and found.better else ""
            ax.set_title(metric_label(column) + better, fontsize=9)
            ax.set_xlabel(self.level.replace("_", " "), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"measured metrics of the selection vs {self.level}", fontsize=11)
        fig.tight_layout()
        path = self.out / f"measured_vs_{slug(self.level)}.png"
        fig.savefig(path, dpi=self.dpi)
        plt.close(fig)
        return path

    def follows_level(self, metric: str) -> bool:
        """Whether `metric` orders the cells exactly as the level does (other vars fixed): a plot of the score
        against it would be the score-vs-level plot with a relabelled axis."""
        column = next((c for c in _numeric_columns(self.sweep) if c.rsplit(".", 1)[-1] == metric), None)
        if column is None or not self.has_var(self.level):
            return False
        groups: dict[tuple, dict[Any, float]] = {}
        for row in self.sweep.rows:
            value, level = _number(row.get(column)), row.get(self.level)
            if value is not None and level is not None:
                fixed = tuple(_hashable(row.get(v)) for v in self.sweep.var_names if v != self.level)
                groups.setdefault(fixed, {})[_hashable(level)] = value
        positions, _ = _x_positions([level for group in groups.values() for level in group])
        for group in groups.values():
            values = [group[level] for level in sorted(group, key=lambda k: positions[k])]
            steps = [b - a for a, b in zip(values, values[1:])]
            if steps and not (all(d > 0 for d in steps) or all(d < 0 for d in steps)):
                return False
        return bool(groups)

    def score_vs_measured(self, metric: str) -> Path | None:
        """Score against a measured diversity or shift metric of the selection (not the knob), one line per fraction."""
        x_column = next((c for c in _numeric_columns(self.sweep) if c.rsplit(".", 1)[-1] == metric), None)
        if not (self.score_column and x_column):
            return None
        rows = [r for r in self.sweep.rows if not _is_baseline(r, self.fraction) and _number(r.get(x_column)) is not None]
        points = [
            _Point(float(r[x_column]), float(r[self.score_column]), _number(r.get(f"{self.score_column}.lo")),
                   _number(r.get(f"{self.score_column}.hi")), ((self.fraction, r.get(self.fraction)),) if self.has_var(self.fraction) else ())
            for r in rows if _number(r.get(self.score_column)) is not None
        ]
        title = f"{metric_label(_nice(self.score_column))} vs measured {metric_label(metric)}"
        return self.draw(points, metric_label(metric), self.score_column, title,
                         f"{slug(_nice(self.score_column))}_vs_{slug(metric)}.png", baseline=True, numeric_x=True)

    def points(self, rows, x_var: str, column: str) -> list[_Point]:
        usable = [r for r in rows if r.get(x_var) is not None and _number(r.get(column)) is not None]
        # A line per combination of the other vars that vary among the plotted rows.
        others = [
            v for v in self.sweep.var_names
            if v != x_var and len({_hashable(r.get(v)) for r in usable}) > 1 and _depends_on(usable, v, column, self.sweep.var_names)
        ]
        return [
            _Point(r[x_var], float(r[column]), _number(r.get(f"{column}.lo")), _number(r.get(f"{column}.hi")),
                   tuple((v, r.get(v)) for v in others))
            for r in usable
        ]

    def baseline(self) -> tuple[float, float | None, float | None] | None:
        rows = [r for r in self.sweep.rows if _is_baseline(r, self.fraction) and _number(r.get(self.score_column)) is not None]
        if not rows:
            return None
        mean = sum(float(r[self.score_column]) for r in rows) / len(rows)
        lows = [_number(r.get(f"{self.score_column}.lo")) for r in rows]
        highs = [_number(r.get(f"{self.score_column}.hi")) for r in rows]
        low = sum(lows) / len(lows) if None not in lows else None
        high = sum(highs) / len(highs) if None not in highs else None
        return mean, low, high

    def draw(self, points: list[_Point], x_var: str, column: str, title: str, filename: str, baseline: bool,
             numeric_x: bool = False) -> Path | None:
        if not points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        positions, ticks = _x_positions([p.x for p in points])
        if numeric_x:  # measured values: every point where it lies, lines in x order
            positions, ticks = {_hashable(p.x): float(p.x) for p in points}, None
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        groups: dict[tuple, list[_Point]] = {}
        for point in points:
            groups.setdefault(point.group, []).append(point)
        for group, members in groups.items():
            xs, ys, errs = _line(members, positions)
            label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in group) or None
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, linewidth=1.5, label=label)
        reference = self.baseline() if baseline else None
        if reference:
            _draw_baseline(ax, reference)
        if ticks:
            ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
        if self.caption:
            fig.text(0.01, 0.01, self.caption, fontsize=7, color="dimgray")
        if _nice(column) in BOUNDED_SCORES:  # an interval past [0, 1] is cut at the edge, not drawn to -3
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, -0.02), min(high, 1.02))
        ax.set_xlabel(x_var.replace("_", " "))
        ax.set_ylabel(metric_label(_nice(column)))
        ax.set_title(title.replace("_", " "))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.04, 1, 1) if self.caption else None)
        path = self.out / filename
        fig.savefig(path, dpi=self.dpi)
        plt.close(fig)
        return path


def _depends_on(rows: list[dict[str, Any]], var: str, column: str, var_names: list[str]) -> bool:
    """Whether `column` changes with `var` when every other var is held fixed (else one line suffices)."""
    groups: dict[tuple, set] = {}
    for row in rows:
        fixed = tuple(_hashable(row.get(v)) for v in var_names if v != var)
        groups.setdefault(fixed, set()).add(_hashable(row.get(column)))
    return any(len(values) > 1 for values in groups.values())


def _line(members: list[_Point], positions: dict) -> tuple[list[float], list[float], list[list[float]]]:
    """Points of one line sorted by x; repeated x values are averaged."""
    by_x: dict[Any, list[_Point]] = {}
    for point in members:
        by_x.setdefault(_hashable(point.x), []).append(point)
    xs, ys, below, above = [], [], [], []
    for key in sorted(by_x, key=lambda k: positions[k]):
        same = by_x[key]
        y = sum(p.y for p in same) / len(same)
        lo = [p.lo for p in same]
        hi = [p.hi for p in same]
        xs.append(positions[key])
        ys.append(y)
        below.append(max(0.0, y - sum(lo) / len(lo)) if None not in lo else 0.0)
        above.append(max(0.0, sum(hi) / len(hi) - y) if None not in hi else 0.0)
    return xs, ys, [below, above]


def _draw_baseline(ax, reference: tuple[float, float | None, float | None]) -> None:
    mean, low, high = reference
    ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label="real only (baseline; band: its interval)")
    if low is not None and high is not None:
        ax.axhspan(low, high, color="grey", alpha=0.2, linewidth=0)


def _x_positions(values: list[Any]) -> tuple[dict[Any, float], list[Any] | None]:
    """Numeric x values map to themselves; otherwise categories in order of first appearance."""
    if all(_number(v) is not None for v in values):
        return {_hashable(v): float(v) for v in values}, None
    categories: list[Any] = []
    for value in values:
        if _hashable(value) not in categories:
            categories.append(_hashable(value))
    return {c: float(i) for i, c in enumerate(categories)}, categories


def _pick_score(sweep: _Sweep, score: str, train_step: str | None) -> str | None:
    steps = [train_step] if train_step else sweep.train_steps
    for metric in (score, "macro_f1", "accuracy"):
        for step in steps:
            column = f"{step}.{metric}"
            if any(_number(row.get(column)) is not None for row in sweep.rows):
                return column
    return None


def _pick_diversity(sweep: _Sweep, metric: str | None) -> str | None:
    candidates = [metric] if metric else list(DIVERSITY_METRICS)
    for name in candidates:
        for column in sweep.metric_columns:
            if column == name or column.rsplit(".", 1)[-1] == name:
                if any(_number(row.get(column)) is not None for row in sweep.rows):
                    return column
    return None


def _is_baseline(row: dict[str, Any], fraction_var: str) -> bool:
    value = _number(row.get(fraction_var))
    return value is not None and value == 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(value) else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _nice(column: str) -> str:
    """`train.macro_f1` -> `macro_f1`: the metric name without its step."""
    return column.rsplit(".", 1)[-1]


LEVEL_WARNINGS_VERSION = "1"  # bump when level_warnings says something else of the same selections (a build remembers them)


def level_warnings(records: Sequence[dict[str, Any]], level_var: str, select_step: str | None = None) -> list[str]:
    """Levels that pick identical rows, and measured Vendi that does not rise with the level (other vars fixed)."""
    groups: dict[tuple, list[tuple[Any, dict[str, Any]]]] = {}
    for record in records:
        values = record.get("vars") or {}
        if level_var not in values:
            continue
        for step, manifest in (record.get("steps") or {}).items():
            meta = (manifest or {}).get("meta") or {}
            if "selection_hash" in meta and (select_step in (None, step)):
                fixed = tuple((k, _hashable(v)) for k, v in values.items() if k != level_var)
                groups.setdefault((step, fixed), []).append((values[level_var], meta))
    found = []
    for (step, fixed), members in groups.items():
        by_level = {}
        for level, meta in members:
            by_level.setdefault(_hashable(level), meta)
        ordered = sorted(by_level.items(), key=lambda kv: (_number(kv[0]) is None, _number(kv[0]) or 0.0, str(kv[0])))
        where = ", ".join(f"{k}={v}" for k, v in fixed) or "all variants"
        for (level_a, a), (level_b, b) in zip(ordered, ordered[1:]):
            if a["selection_hash"] == b["selection_hash"]:
                found.append(f"{step}: {level_var} {level_a} and {level_b} select identical rows ({where})")
            vendi_a, vendi_b = ((m.get("metrics") or {}).get("vendi") for m in (a, b))
            if vendi_a is not None and vendi_b is not None and vendi_b <= vendi_a:
                found.append(f"{step}: measured Vendi does not rise from {level_var} {level_a} to {level_b} ({vendi_a:.2f} -> {vendi_b:.2f}; {where})")
    return list(dict.fromkeys(found))


def level_overlap(selections: Sequence[tuple[dict[str, Any], str, str, set[str]]], level_var: str,
                  limit: float = 0.5) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows shared by adjacent levels: [(matrix values, select step, entry key, selected ids)] ->
    per step and pair of levels the mean and max Jaccard index over the groups (replicates and other values),
    and warnings where the mean exceeds `limit`."""
    groups: dict[tuple, dict[Any, tuple[str, set[str]]]] = {}
    for values, step, key, ids in selections:
        if level_var in values:
            rest = tuple((k, _hashable(v)) for k, v in values.items() if k != level_var)
            groups.setdefault((step, rest), {})[_hashable(values[level_var])] = (key, ids)
    pairs: dict[tuple, dict[tuple[str, str], tuple[float, float]]] = {}
    for (step, _), by_level in groups.items():
        ordered = sorted(by_level, key=lambda v: (_number(v) is None, _number(v) or 0.0, str(v)))
        for low, high in zip(ordered, ordered[1:]):
            (key_a, a), (key_b, b) = by_level[low], by_level[high]
            if a and b:  # each pair of entries once, however many variants share it
                pairs.setdefault((step, low, high), {})[(key_a, key_b)] = (len(a & b) / len(a | b), len(a & b) / len(a))
    rows, warnings = [], []
    for (step, low, high), found in pairs.items():
        jaccards = [j for j, _ in found.values()]
        row = {"step": step, "from": low, "to": high, "pairs": len(found), "jaccard": sum(jaccards) / len(jaccards),
               "jaccard_max": max(jaccards), "shared": sum(s for _, s in found.values()) / len(found)}
        rows.append(row)
        if row["jaccard"] > limit:
            warnings.append(f"{step}: {level_var} {low} and {high} share {row['jaccard']:.0%} of their rows (Jaccard, mean "
                            f"over {len(found)} selections): the levels barely differ (a larger pool or fewer rows selected)")
    return rows, warnings


def reported_score(records: Sequence[dict[str, Any]], score: str) -> str:
    """`score` when the train steps report it; for the default (macro_f1) a method without it (sft) gets its
    first score (exact_match, else perplexity); any other name they lack is an error naming theirs."""
    from synthforge.errors import UserError

    reported = [name for record in records for step in record["steps"].values()
                for name, summary in ((step.get("meta") or {}).get("scores") or {}).items()
                if isinstance(summary, dict) and "mean" in summary]  # a train step's scores (as _train_columns reads them)
    if not reported or score in reported:
        return score
    if score == "macro_f1":
        return reported[0]
    raise UserError(f"no train step reports '{score}'", field="--score", hint=f"scores reported: {', '.join(dict.fromkeys(reported))}")


def study_of(graph: "Graph", cache: "Cache", records: list[dict[str, Any]], level_var: str, fraction_var: str,
             score: str, correction: str) -> Study | None:
    """Replicate-pooled cell statistics from the train step's predictions; None when no train step is built."""
    from synthforge.study_stats import prediction_runs, study_statistics

    train_steps = [name for name, step in graph.recipe.variants[0].steps.items() if step.kind == "train"]
    if not train_steps:
        return None
    train_step = train_steps[0]
    built = {v.name: cache.get(graph.keys[v.name][train_step]) for v in graph.recipe.variants}
    runs, n_test, confidence = prediction_runs({name: entry for name, entry in built.items() if entry is not None})
    if not runs:
        return None
    variants = [(v.name, v.matrix_values) for v in graph.recipe.variants]
    cells, method = study_statistics(variants, runs, fraction_var=fraction_var, score=score, correction=correction,
                                     confidence=confidence, seed=graph.recipe.seed)
    overlap, overlap_warnings = level_overlap(selected_ids(graph, cache), level_var)
    return Study(graph.recipe.name, cells, method, score, train_step, n_test, correction, confidence,
                 level_warnings(records, level_var) + overlap_warnings, fraction_var, overlap)


def selected_ids(graph: "Graph", cache: "Cache") -> list[tuple[dict[str, Any], str, str, set[str]]]:
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


def slug(text: str) -> str:
    """A safe file or folder name: letters, digits, '-' and '_' only (no '/', no '..')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "_"
