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

from synthforge.cache import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from synthforge.api import OpenRecipe

SAMPLE_SEED = 0
DELTA_BOUNDS = ("delta_lo", "delta_hi")
DELTA_FACTS = (*DELTA_BOUNDS, "delta_df")  # `delta_*` columns that describe a Δ, not Δs themselves (unsigned)
INTERVAL_ROLES = ("headline", "delta", "score")
WIDE_PLOT_PX = 1200  # a figure of small multiples: shown at full width


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

    from synthforge.cache import read_table

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


@dataclass
class Rejects:
    """Rows a step set aside (its `rejects` table), for one entry: why, and a few of them."""

    step: str
    where: str  # the variants the entry belongs to
    total: int
    reasons: dict[str, int]
    columns: list[str]
    rows: list[dict[str, Any]]


def rejected_rows(recipe: "OpenRecipe", per_entry: int = 20) -> list[Rejects]:
    """Each built entry's non-empty `rejects` table (generate: hygiene, select: label check and shift band)."""
    from synthforge.cache import read_table

    found = []
    for node in recipe.graph.nodes.values():
        entry = recipe.cache.get(node.key)
        info = entry.manifest.tables.get("rejects") if entry is not None else None
        if info is None or not info.rows:
            continue
        columns = [c for c in ("reason", "text", "raw", "label") if c in info.columns]
        frame = read_table(entry, "rejects", columns=columns)
        reasons = dict(frame["reason"].value_counts(sort=True).iter_rows()) if "reason" in columns else {}
        where = node.variants[0] + (f" (+{len(node.variants) - 1} variants)" if len(node.variants) > 1 else "")
        found.append(Rejects(node.step, where, frame.height, reasons, columns, frame.head(per_entry).to_dicts()))
    return found


def write_html(out_dir: str | Path, title: str, subtitle: str = "", samples: list[SubsetSamples] = (),
               description: str = "", notes: list[str] = (), rejects: list[Rejects] = (),
               plots: list[Path] | None = None) -> Path:
    """Write `<out_dir>/report.html` from `<out_dir>/sweep.parquet` and the PNG plots.

    `subtitle`: one line under the title; `description`: the recipe's own words, a paragraph of its own;
    `notes`: what the table is (test rows, replicates, interval method), one paragraph each;
    `plots`: in the order shown (default: every PNG in `out_dir`)."""
    import polars as pl

    out = Path(out_dir)
    table = pl.read_parquet(out / "sweep.parquet")
    plots = [(p.stem.replace("_", " "), _data_uri(p), _png_width(p) > WIDE_PLOT_PX)
             for p in (sorted(out.glob("*.png")) if plots is None else plots)]
    html = _template().render(
        title=title, subtitle=subtitle, description=description, notes=notes, table=_cells(table),
        deltas=_delta_view(table), plots=plots, samples=samples, rejects=rejects, fmt=_fmt,
    )
    path = out / "report.html"
    atomic_write(path, html)
    return path


def _png_width(path: Path) -> int:
    """The width in pixels from the PNG header (bytes 16-19 of the IHDR chunk)."""
    return int.from_bytes(path.read_bytes()[16:20], "big")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@dataclass
class _Column:
    name: str  # the sweep column (an interval's estimate: its bounds are shown in the same cell)
    numeric: bool
    bounds: tuple[str, str] | None = None
    signed: bool = False
    style: str = "general"  # fixed: 3 decimals (scores, differences); p: p-values; general: 4 significant digits


def _roles(table: "pl.DataFrame") -> dict[str, str]:
    """report.column_roles of the table's columns, its vars named by the `variant` column (`k=v,...`)."""
    from synthforge.report import column_roles

    return column_roles(table.columns, variant_values=table["variant"].to_list() if "variant" in table.columns else [])


def _cells(table: "pl.DataFrame") -> dict[str, Any]:
    """The answer first (report.column_roles): key, score, Δ and tests, metrics and sizes that differ between
    variants; bookkeeping columns that differ, and columns equal in every variant, folded below."""
    from synthforge.report import ordered_columns

    roles = _roles(table)
    columns = ordered_columns(table.columns, variant_values=table["variant"].to_list() if "variant" in table.columns else [])
    varying = [c for c in columns if c == "variant" or table.height < 2 or table[c].n_unique() > 1]
    constant = [(c, table[c][0]) for c in columns if c not in varying]
    keys = [c for c in varying if roles[c] == "key" and c != "variant"]
    # the variant's name only repeats the settings beside it; it stays in the folded table
    shown = _merged([c for c in varying if roles[c] != "bookkeeping" and not (c == "variant" and keys)], table, roles)
    folded = _merged([c for c in varying if roles[c] == "bookkeeping"], table, roles)
    return {"columns": shown, "rows": _rows(table, shown), "folded": folded, "folded_rows": _rows(table, ["variant", *folded]),
            "constant": constant}


def _merged(columns: list[str], table: "pl.DataFrame", roles: dict[str, str]) -> list[_Column]:
    """Columns to show, an interval's bounds folded into its estimate's cell (`X.lo`/`X.hi`, `delta_lo`/`delta_hi`)."""
    deltas = [c for c in columns if c.startswith("delta_") and c not in DELTA_FACTS]
    merged = []
    for name in columns:
        bounds = (f"{name}.lo", f"{name}.hi") if f"{name}.lo" in table.columns else None
        if deltas and name == deltas[0] and all(b in table.columns for b in DELTA_BOUNDS):
            bounds = DELTA_BOUNDS
        if name in DELTA_BOUNDS and deltas or name.endswith((".lo", ".hi")) and name[:-3] in columns:
            continue
        merged.append(_Column(name, table.schema[name].is_numeric(), bounds, name.startswith("delta_") and name != "delta_df",
                              "p" if name.startswith("p_") else "fixed" if roles[name] in INTERVAL_ROLES else "general"))
    return merged


def _rows(table: "pl.DataFrame", columns: list) -> list[list[tuple[Any, str]]]:
    """Per row and column: the sort value and the text shown (`mean [lo, hi]` for an interval)."""
    columns = [c if isinstance(c, _Column) else _Column(c, table.schema[c].is_numeric()) for c in columns]
    rows = []
    for row in table.iter_rows(named=True):
        cells = []
        for c in columns:
            value = row[c.name]
            text = _fmt(value, c.signed, c.style)
            if c.bounds and value is not None and None not in (row[c.bounds[0]], row[c.bounds[1]]):
                text += f" [{_fmt(row[c.bounds[0]], c.signed, c.style)}, {_fmt(row[c.bounds[1]], c.signed, c.style)}]"
            cells.append((value, text))
        rows.append(cells)
    return rows


def _delta_view(table: "pl.DataFrame") -> dict[str, Any] | None:
    """Rows with a paired difference: the estimate, its interval and adjusted p, plus an SVG forest plot."""
    import polars as pl

    deltas = [c for c in table.columns if c.startswith("delta_") and c not in DELTA_FACTS]
    if not deltas:
        return None
    estimate = deltas[0]
    lo, hi = (c if c in table.columns else None for c in DELTA_BOUNDS)
    roles = _roles(table)
    keys = [c for c in table.columns if roles[c] == "key" and c != "variant" and table[c].n_unique() > 1]
    paired = table.filter(pl.col(estimate).is_not_null())
    columns = _merged([*keys, *(c for c in table.columns if c.startswith("delta_") or c.startswith("p_"))], paired, roles)
    rows = paired.select(["variant", *keys, estimate, *(c for c in (lo, hi) if c)]).to_dicts()
    for row in rows:  # the settings that vary, not the whole variant name: short enough to read beside the plot
        row["cell"] = ", ".join(f"{k}={_fmt(row[k])}" for k in keys) or row["variant"]
    return {"estimate": estimate, "columns": columns, "rows": _rows(paired, columns), "svg": _forest_svg(rows, estimate, lo, hi)}


def _forest_svg(rows: list[dict[str, Any]], estimate: str, lo: str | None, hi: str | None) -> str:
    """Each row's difference as a dot with its interval as a bar, against a zero line, with a titled axis."""
    from html import escape

    values = [r[estimate] for r in rows] + [r[c] for r in rows for c in (lo, hi) if c and r.get(c) is not None]
    low, high = min(values + [0.0]), max(values + [0.0])
    span = (high - low) or 1.0
    # room for the longest label (about 7 px per character at 12 px) so none is clipped
    left, width, step = 16 + 7 * max((len(r["cell"]) for r in rows), default=4), 420, 22
    bottom = step * len(rows) + 10

    def x(value: float) -> float:
        return left + (value - low) / span * width

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{bottom + 48}" '
             f'role="img" aria-label="paired differences">',
             f'<line x1="{x(0):.1f}" y1="5" x2="{x(0):.1f}" y2="{bottom}" stroke="#888" stroke-dasharray="4 3"/>',
             f'<line x1="{left}" y1="{bottom}" x2="{left + width}" y2="{bottom}" stroke="#444"/>']
    for i, row in enumerate(rows):
        y = 18 + i * step
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" font-size="12">{escape(row["cell"])}</text>')
        if lo and hi and row.get(lo) is not None and row.get(hi) is not None:
            parts.append(f'<line x1="{x(row[lo]):.1f}" y1="{y}" x2="{x(row[hi]):.1f}" y2="{y}" stroke="#1f77b4" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(row[estimate]):.1f}" cy="{y}" r="4" fill="#1f77b4"/>')
    ticks = {low: "start", 0.0: "middle", high: "end"}
    parts += [f'<text x="{x(v):.1f}" y="{bottom + 16}" font-size="11" text-anchor="{anchor}">{_fmt(v, True)}</text>'
              for v, anchor in ticks.items()]
    axis = f"Δ {estimate[len('delta_'):]}: cell minus the real-only baseline (bar: its interval)"
    parts += [f'<text x="{left + width / 2:.1f}" y="{bottom + 38}" font-size="12" text-anchor="middle">{escape(axis)}</text>', "</svg>"]
    return "".join(parts)


def _fmt(value: Any, signed: bool = False, style: str = "general") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and style == "p":
        return "< 0.001" if value < 0.001 else f"{value:.3f}"
    if isinstance(value, float):
        value += 0.0  # turns -0.0 into 0.0
        sign = "+" if signed and value != 0 else ""
        return f"{value:{sign}.3f}" if style == "fixed" else f"{value:{sign}.4g}"
    return str(value)


def _template():
    import jinja2

    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_PAGE)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px 32px; color: #222; }
h1 { margin-bottom: 0 } .subtitle { color: #555; margin: 4px 0 12px; font-weight: 600 }
.description { max-width: 80ch; margin: 0 0 8px } .note { color: #444; max-width: 110ch; margin: 0 0 6px; font-size: 13px }
details { margin: 4px 0 12px } summary { cursor: pointer; color: #225 }
table { border-collapse: collapse; margin: 8px 0 24px } th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top }
th { background: #f3f3f3; position: sticky; top: 0 } td.num { white-space: nowrap } table.sortable th { cursor: pointer } td.num { text-align: right; font-variant-numeric: tabular-nums }
th.asc::after { content: " \\25B2" } th.desc::after { content: " \\25BC" }
.plots { display: flex; flex-wrap: wrap; gap: 16px } figure { margin: 0 } figure img { width: 560px; max-width: 100%; border: 1px solid #eee } figure.wide-plot img { width: 1136px }
table.samples td { max-width: 260px; font-size: 13px } .wide { overflow-x: auto }
</style></head>
<body>
<h1>{{ title }}</h1>
{% if subtitle %}<p class="subtitle">{{ subtitle }}</p>{% endif %}
{% if description %}<p class="description">{{ description }}</p>{% endif %}
{% for note in notes %}<p class="note">{{ note }}</p>{% endfor %}

<h2 id="sweep">Sweep table</h2>
<p>One row per cell: the settings, then the score with its interval, the difference to the real-only baseline and its tests,
then the measured metrics. Columns that differ between rows only; click a column header to sort.</p>
<div class="wide"><table class="sortable" id="sweep-table">
<thead><tr>{% for c in table.columns %}<th data-numeric="{{ 1 if c.numeric else 0 }}">{{ c.name }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in table.rows %}<tr>{% for value, text in row %}{% set c = table.columns[loop.index0] %}<td{% if c.numeric %} class="num" data-value="{{ value if value is not none else '' }}"{% endif %}>{{ text }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% if table.folded %}<details><summary>{{ table.folded | length }} bookkeeping columns (settings, methods, spreads, hashes)</summary>
<div class="wide"><table class="sortable" id="folded-table"><thead><tr><th>variant</th>{% for c in table.folded %}<th>{{ c.name }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in table.folded_rows %}<tr>{% for value, text in row %}<td>{{ text }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div></details>{% endif %}
{% if table.constant %}<details><summary>{{ table.constant | length }} columns are the same in every row</summary>
<table id="constant-table">{% for name, value in table.constant %}<tr><th>{{ name }}</th><td>{{ fmt(value) }}</td></tr>{% endfor %}</table>
</details>{% endif %}

{% if deltas %}<h2 id="paired">Paired differences</h2>
<p>{{ deltas.estimate }} per cell with its interval; the dashed line is no difference.</p>
<div class="wide">{{ deltas.svg | safe }}</div>
<table class="sortable" id="paired-table"><thead><tr>{% for c in deltas.columns %}<th>{{ c.name }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in deltas.rows %}<tr>{% for value, text in row %}{% set c = deltas.columns[loop.index0] %}<td{% if c.numeric %} class="num" data-value="{{ value if value is not none else '' }}"{% endif %}>{{ text }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% endif %}

{% for s in samples %}<h2 id="samples-{{ s.step }}">Rows of {{ s.step }} by {{ s.level_var }}</h2>
<p>A seeded sample of each label's rows at every {{ s.level_var }} level, side by side.</p>
<div class="wide"><table class="samples"><thead><tr><th>label</th>{% for level in s.levels %}<th>{{ s.level_var }}={{ level }}{% if s.metrics[level].vendi is defined %}<br><small>vendi {{ fmt(s.metrics[level].vendi) }}</small>{% endif %}</th>{% endfor %}</tr></thead>
<tbody>{% for label, by_level in s.rows.items() %}{% for i in range(by_level.values() | map('length') | max) %}<tr>{% if loop.first %}<th rowspan="{{ by_level.values() | map('length') | max }}">{{ label }}</th>{% endif %}{% for level in s.levels %}<td>{{ (by_level.get(level) or [])[i] if i < (by_level.get(level) or []) | length else '' }}</td>{% endfor %}</tr>{% endfor %}{% endfor %}</tbody></table></div>
{% endfor %}
{% if rejects %}<h3 id="rejects">Rejected rows</h3>
{% for r in rejects %}<details class="rejects"><summary>{{ r.step }} ({{ r.where }}): {{ r.total }} rejected{% if r.reasons %}: {% for reason, n in r.reasons.items() %}{{ reason }}: {{ n }}{% if not loop.last %}; {% endif %}{% endfor %}{% endif %}</summary>
<div class="wide"><table class="samples"><thead><tr>{% for c in r.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in r.rows %}<tr>{% for c in r.columns %}<td>{{ fmt(row[c]) }}</td>{% endfor %}</tr>{% endfor %}</tbody></table></div>
{% if r.total > r.rows | length %}<p>the first {{ r.rows | length }} of {{ r.total }}: <code>synthforge show RECIPE {{ r.step }} --table rejects</code> for more</p>{% endif %}</details>
{% endfor %}{% endif %}

{% if plots %}<h2 id="plots">Plots</h2><div class="plots">
{% for name, uri, wide in plots %}<figure{% if wide %} class="wide-plot"{% endif %}><img src="{{ uri }}" alt="{{ name }}"><figcaption>{{ name }}</figcaption></figure>{% endfor %}
</div>{% endif %}

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
