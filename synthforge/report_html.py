"""`report --html`: one self-contained HTML file beside the sweep table that `report.py` writes.

It shows whatever columns `sweep.parquet` has (sortable by clicking a header), the
PNG plots (inlined as data URIs), a paired-difference view when the table has
`delta_*` columns (with `delta_lo`/`delta_hi` intervals and `p_adj` where present),
and for each `select` step a seeded sample of rows per label side by side across
the levels of the level variable: what a person reads to judge diversity.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.cache import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from synthforge.api import OpenRecipe

SAMPLE_SEED = 0
DELTA_BOUNDS = ("delta_lo", "delta_hi")


@dataclass
class SubsetSamples:
    """Rows of one select step, per level of the level variable, per label."""

    step: str
    level_var: str
    levels: list[Any] = field(default_factory=list)
    metrics: dict[Any, dict[str, Any]] = field(default_factory=dict)  # level -> the step's recorded metrics
    rows: dict[str, dict[Any, list[str]]] = field(default_factory=dict)  # label -> level -> texts


def subset_samples(recipe: "OpenRecipe", level_var: str, per_label: int = 4) -> list[SubsetSamples]:
    """A seeded sample of each select step's rows at every level of `level_var` (steps that do not vary with it are skipped)."""
    import polars as pl

    from synthforge.api import read_table

    found = []
    for step in recipe.steps:
        nodes = [n for n in recipe.graph.nodes_of_step(step) if n.kind == "select"]
        by_level = {}
        for node in nodes:
            values = {_matrix_value(recipe, v, level_var) for v in node.variants}
            entry = recipe.cache.get(node.key)
            if len(values) == 1 and None not in values and entry is not None:
                by_level[values.pop()] = entry
        if len(by_level) < 2:
            continue
        samples = SubsetSamples(step, level_var, sorted(by_level))
        for level in samples.levels:
            entry = by_level[level]
            samples.metrics[level] = entry.manifest.meta.get("metrics", {})
            frame = read_table(entry, columns=["text", "label"])
            for label in sorted(frame["label"].unique().to_list()):
                rows = frame.filter(pl.col("label") == label)
                picked = rows.sample(min(per_label, rows.height), seed=SAMPLE_SEED)
                samples.rows.setdefault(label, {})[level] = picked["text"].to_list()
        found.append(samples)
    return found


def _matrix_value(recipe: "OpenRecipe", variant: str, name: str) -> Any:
    return next(v.matrix_values.get(name) for v in recipe.graph.recipe.variants if v.name == variant)


def write_html(out_dir: str | Path, title: str, subtitle: str = "", samples: list[SubsetSamples] = ()) -> Path:
    """Write `<out_dir>/report.html` from `<out_dir>/sweep.parquet` and the PNG plots there."""
    import polars as pl

    out = Path(out_dir)
    table = pl.read_parquet(out / "sweep.parquet")
    plots = [(p.stem.replace("_", " "), _data_uri(p)) for p in sorted(out.glob("*.png"))]
    html = _template().render(
        title=title, subtitle=subtitle, table=_cells(table), deltas=_delta_view(table), plots=plots,
        samples=samples, fmt=_fmt,
    )
    path = out / "report.html"
    atomic_write_text(path, html)
    return path


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cells(table: "pl.DataFrame") -> dict[str, Any]:
    """Columns that differ between variants, sortable; the ones equal in every variant listed once, apart."""
    varying = [c for c in table.columns if c == "variant" or table.height < 2 or table[c].n_unique() > 1]
    constant = [(c, table[c][0]) for c in table.columns if c not in varying]
    numeric = [table.schema[c].is_numeric() for c in varying]
    return {"columns": list(zip(varying, numeric)), "rows": table.select(varying).rows(), "constant": constant}


def _delta_view(table: "pl.DataFrame") -> dict[str, Any] | None:
    """Rows with a paired difference: the estimate, its interval and adjusted p, plus an SVG forest plot."""
    import polars as pl

    deltas = [c for c in table.columns if c.startswith("delta_") and c not in DELTA_BOUNDS]
    if not deltas:
        return None
    estimate = deltas[0]
    lo, hi = (c if c in table.columns else None for c in DELTA_BOUNDS)
    labels = [c for c in table.columns if not c.startswith(("delta_", "p_")) and table.schema[c] == pl.String]
    shown = [c for c in table.columns if c in labels[:1] or c.startswith("delta_") or c.startswith("p_")]
    rows = [r for r in table.select(shown).iter_rows(named=True) if r.get(estimate) is not None]
    return {"estimate": estimate, "columns": shown, "rows": rows,
            "svg": _forest_svg(rows, labels[0] if labels else None, estimate, lo, hi)}


def _forest_svg(rows: list[dict[str, Any]], name: str | None, estimate: str, lo: str | None, hi: str | None) -> str:
    """Each row's difference as a dot with its interval as a bar, against a zero line."""
    from html import escape

    values = [r[estimate] for r in rows] + [r[c] for r in rows for c in (lo, hi) if c and r.get(c) is not None]
    low, high = min(values + [0.0]), max(values + [0.0])
    span = (high - low) or 1.0
    left, width, step = 230, 420, 22

    def x(value: float) -> float:
        return left + (value - low) / span * width

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{step * len(rows) + 40}" '
             f'role="img" aria-label="paired differences">',
             f'<line x1="{x(0):.1f}" y1="5" x2="{x(0):.1f}" y2="{step * len(rows) + 10}" stroke="#888" stroke-dasharray="4 3"/>']
    for i, row in enumerate(rows):
        y = 18 + i * step
        label = escape(str(row.get(name, i))) if name else str(i)
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" font-size="12">{label}</text>')
        if lo and hi and row.get(lo) is not None and row.get(hi) is not None:
            parts.append(f'<line x1="{x(row[lo]):.1f}" y1="{y}" x2="{x(row[hi]):.1f}" y2="{y}" stroke="#1f77b4" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(row[estimate]):.1f}" cy="{y}" r="4" fill="#1f77b4"/>')
    axis_y = step * len(rows) + 30
    parts += [f'<text x="{left}" y="{axis_y}" font-size="11">{_fmt(low)}</text>',
              f'<text x="{left + width}" y="{axis_y}" font-size="11" text-anchor="end">{_fmt(high)}</text>',
              f'<text x="{x(0):.1f}" y="{axis_y}" font-size="11" text-anchor="middle">0</text>', "</svg>"]
    return "".join(parts)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0 turns -0.0 into 0.0
    return str(value)


def _template():
    import jinja2

    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_PAGE)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px 32px; color: #222; }
h1 { margin-bottom: 0 } .subtitle { color: #555; margin-top: 4px }
table { border-collapse: collapse; margin: 8px 0 24px } th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top }
th { background: #f3f3f3; position: sticky; top: 0 } table.sortable th { cursor: pointer } td.num { text-align: right; font-variant-numeric: tabular-nums }
th.asc::after { content: " \\25B2" } th.desc::after { content: " \\25BC" }
.plots { display: flex; flex-wrap: wrap; gap: 16px } figure { margin: 0 } figure img { max-width: 560px; border: 1px solid #eee }
table.samples td { max-width: 260px; font-size: 13px } .wide { overflow-x: auto }
</style></head>
<body>
<h1>{{ title }}</h1>
{% if subtitle %}<p class="subtitle">{{ subtitle }}</p>{% endif %}

<h2 id="sweep">Sweep table</h2>
<p>One row per variant, the columns that differ between variants; click a column header to sort.</p>
<div class="wide"><table class="sortable" id="sweep-table">
<thead><tr>{% for name, numeric in table.columns %}<th data-numeric="{{ 1 if numeric else 0 }}">{{ name }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in table.rows %}<tr>{% for value in row %}{% set numeric = table.columns[loop.index0][1] %}<td{% if numeric %} class="num" data-value="{{ value if value is not none else '' }}"{% endif %}>{{ fmt(value) }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% if table.constant %}<details><summary>{{ table.constant | length }} columns are the same in every variant</summary>
<table id="constant-table">{% for name, value in table.constant %}<tr><th>{{ name }}</th><td>{{ fmt(value) }}</td></tr>{% endfor %}</table>
</details>{% endif %}

{% if deltas %}<h2 id="paired">Paired differences</h2>
<p>{{ deltas.estimate }} per row with its interval; the dashed line is no difference.</p>
{{ deltas.svg | safe }}
<table class="sortable" id="paired-table"><thead><tr>{% for c in deltas.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in deltas.rows %}<tr>{% for c in deltas.columns %}<td>{{ fmt(row[c]) }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% endif %}

{% if plots %}<h2 id="plots">Plots</h2><div class="plots">
{% for name, uri in plots %}<figure><img src="{{ uri }}" alt="{{ name }}"><figcaption>{{ name }}</figcaption></figure>{% endfor %}
</div>{% endif %}

{% for s in samples %}<h2 id="samples-{{ s.step }}">Rows of {{ s.step }} by {{ s.level_var }}</h2>
<p>A seeded sample of each label's rows at every {{ s.level_var }} level, side by side.</p>
<div class="wide"><table class="samples"><thead><tr><th>label</th>{% for level in s.levels %}<th>{{ s.level_var }}={{ level }}{% if s.metrics[level].vendi is defined %}<br><small>vendi {{ fmt(s.metrics[level].vendi) }}</small>{% endif %}</th>{% endfor %}</tr></thead>
<tbody>{% for label, by_level in s.rows.items() %}{% for i in range(by_level.values() | map('length') | max) %}<tr>{% if loop.first %}<th rowspan="{{ by_level.values() | map('length') | max }}">{{ label }}</th>{% endif %}{% for level in s.levels %}<td>{{ (by_level.get(level) or [])[i] if i < (by_level.get(level) or []) | length else '' }}</td>{% endfor %}</tr>{% endfor %}{% endfor %}</tbody></table></div>
{% endfor %}

<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var descending = th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(descending ? "desc" : "asc");
      function key(row) {
        var cell = row.cells[column], raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
        var number = parseFloat(raw);
        return isNaN(number) ? raw : number;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return descending ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
</script>
</body></html>
"""
