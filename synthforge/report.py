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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Meta keys shown in the compact view (terminal, markdown) when a step reports them.
DIVERSITY_METRICS = ("vendi", "dcscore", "mmd", "mauve", "fid", "kl", "energy", "coverage", "self_bleu", "distinct_2", "shift")


@dataclass
class _Sweep:
    rows: list[dict[str, Any]]  # one flat dict per variant
    var_names: list[str]
    train_steps: list[str]
    metric_columns: list[str]  # flattened meta columns of non-train steps


# -- table -------------------------------------------------------------------
def build_table(records: Sequence[dict[str, Any]], *, interval: str = "ci"):
    """The full table (polars): variant, vars, every step's scalar meta, scores with intervals.

    `interval` picks which of a score's intervals becomes `.lo`/`.hi`: `ci` (the train
    step's headline), `seed_ci` (t over seeds) or `bootstrap_ci` (over the test set).
    """
    import polars as pl

    sweep = _collect(records, interval)
    columns = ["variant", *sweep.var_names, *sweep.metric_columns, *_score_columns(sweep)]
    data = {name: _column([row.get(name) for row in sweep.rows]) for name in columns}
    return pl.DataFrame(data, strict=False)


def format_table(
    records: Sequence[dict[str, Any]],
    *,
    diversity_metric: str | None = None,
    interval: str = "ci",
    digits: int = 3,
    markdown: bool = False,
) -> str:
    """A compact view for the terminal: settings, diversity metrics and scores as `mean [lo, hi]`."""
    from synthforge.tables import render_markdown, render_table

    sweep = _collect(records, interval)
    headers, body = _compact(sweep, diversity_metric, digits)
    return render_markdown(headers, body) if markdown else render_table(headers, body)


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
) -> list[Path]:
    """Write sweep.parquet/.csv/.md and the plots the vars allow; return the paths written.

    A plot whose var or metric is missing from every record is skipped, not an error.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(records, interval=interval)
    written = [out / "sweep.parquet", out / "sweep.csv", out / "sweep.md"]
    table.write_parquet(written[0])
    table.write_csv(written[1])
    written[2].write_text(format_table(records, diversity_metric=diversity_metric, interval=interval, markdown=True))
    sweep = _collect(records, interval)
    plots = _Plots(sweep, level_var, fraction_var, score, diversity_metric, train_step, dpi, out)
    written += [path for path in (plots.score_vs_level(), plots.score_vs_fraction(), plots.diversity_vs_level()) if path]
    return written


# -- collecting ----------------------------------------------------------------
def _collect(records: Sequence[dict[str, Any]], interval: str = "ci") -> _Sweep:
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
                for name, value in _flatten(meta, step):
                    _append_new(metric_columns, name)
                    row[name] = value
        rows.append(row)
    return _Sweep(rows, var_names, train_steps, metric_columns)


def _train_columns(step: str, meta: dict[str, Any], interval: str) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for metric, summary in meta["scores"].items():
        if not isinstance(summary, dict) or "mean" not in summary:
            continue
        ci = summary.get(interval) or [None, None]
        columns[f"{step}.{metric}"] = summary["mean"]
        columns[f"{step}.{metric}.lo"] = ci[0]
        columns[f"{step}.{metric}.hi"] = ci[1]
        columns[f"{step}.{metric}.std"] = summary.get("std")
    columns[f"{step}.n_seeds"] = len(meta.get("seeds") or [])
    for name in ("method", "n_train", "n_test"):
        if name in meta:
            columns[f"{step}.{name}"] = meta[name]
    return columns


def _score_columns(sweep: _Sweep) -> list[str]:
    names: list[str] = []
    for row in sweep.rows:
        for name in row:
            if any(name.startswith(f"{step}.") for step in sweep.train_steps):
                _append_new(names, name)
    return names


def _flatten(meta: dict[str, Any], prefix: str):
    for key, value in meta.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name)
        elif value is None or isinstance(value, (bool, int, float, str)):
            yield name, value


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
def _compact(sweep: _Sweep, diversity_metric: str | None, digits: int) -> tuple[list[str], list[list[str]]]:
    wanted = set(DIVERSITY_METRICS) | ({diversity_metric} if diversity_metric else set())
    shown_metrics = [c for c in sweep.metric_columns if c.rsplit(".", 1)[-1] in wanted or c == diversity_metric]
    scores = [
        f"{step}.{metric}"
        for step in sweep.train_steps
        for metric in _metrics_of(sweep, step)
    ]
    headers = ["variant", *sweep.var_names, *shown_metrics, *scores]
    body = []
    for row in sweep.rows:
        cells = [row["variant"], *(_fmt(row.get(v), digits) for v in sweep.var_names)]
        cells += [_fmt(row.get(c), digits) for c in shown_metrics]
        cells += [_fmt_interval(row.get(c), row.get(f"{c}.lo"), row.get(f"{c}.hi"), digits) for c in scores]
        body.append(cells)
    return headers, body


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


def _fmt_interval(mean: Any, low: Any, high: Any, digits: int) -> str:
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# -- plots -------------------------------------------------------------------
@dataclass
class _Point:
    x: Any
    y: float
    lo: float | None
    hi: float | None
    group: tuple[tuple[str, Any], ...]


class _Plots:
    def __init__(self, sweep, level_var, fraction_var, score, diversity_metric, train_step, dpi, out):
        self.sweep, self.level, self.fraction, self.dpi, self.out = sweep, level_var, fraction_var, dpi, out
        self.score_column = _pick_score(sweep, score, train_step)
        self.diversity_column = _pick_diversity(sweep, diversity_metric)

    def has_var(self, name: str) -> bool:
        return any(row.get(name) is not None for row in self.sweep.rows)

    def score_vs_level(self) -> Path | None:
        if not (self.score_column and self.has_var(self.level)):
            return None
        rows = [r for r in self.sweep.rows if not _is_baseline(r, self.fraction)]
        points = self.points(rows, self.level, self.score_column)
        title = f"{_nice(self.score_column)} vs {self.level}"
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
        title = f"{_nice(self.score_column)} vs {self.fraction}"
        return self.draw(points, self.fraction, self.score_column, title, f"{slug(_nice(self.score_column))}_vs_{slug(self.fraction)}.png", baseline=True)

    def diversity_vs_level(self) -> Path | None:
        if not (self.diversity_column and self.has_var(self.level)):
            return None
        points = self.points(self.sweep.rows, self.level, self.diversity_column)
        title = f"{_nice(self.diversity_column)} vs {self.level}"
        return self.draw(points, self.level, self.diversity_column, title, f"{slug(_nice(self.diversity_column))}_vs_{slug(self.level)}.png", baseline=False)

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

    def draw(self, points: list[_Point], x_var: str, column: str, title: str, filename: str, baseline: bool) -> Path | None:
        if not points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        positions, ticks = _x_positions([p.x for p in points])
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
        ax.set_xlabel(x_var.replace("_", " "))
        ax.set_ylabel(_nice(column).replace("_", " "))
        ax.set_title(title.replace("_", " "))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
        fig.tight_layout()
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
    ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label="real only (baseline)")
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


def slug(text: str) -> str:
    """A safe file or folder name: letters, digits, '-' and '_' only (no '/', no '..')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "_"
