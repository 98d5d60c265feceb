"""`synthforge diff A B`: what changes between two recipes, lockfiles, git revisions or step outputs.

Sides are paired by (variant, step). For each pair whose keys differ it reports why (the fields, inputs,
files or code versions that differ) and, where both outputs are in the cache, rows added / removed /
changed (matched by id and a content hash), the label distribution, and deltas of every number the
steps put in their manifests (diversity metrics, scores with their intervals).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthforge.building import build
from synthforge.graph import Graph, build_graph
from synthforge.cache import Cache, Entry
from synthforge.errors import UserError, did_you_mean
from synthforge.lockfile import describe_changes, read_lock
from synthforge.metric_registry import RUN_FACTS, Interval, flatten_metrics
from synthforge.record_diff import SHOWN, compare_records, record_lines, record_markdown
from synthforge.recipe.resolve import load_recipe, read_recipe_text
from synthforge.stepapi import Runtime
from synthforge.text_tables import render_markdown as markdown_table

SCHEMA = "synthforge.diff/1"
EXAMPLES = 3


# -- sides ----------------------------------------------------------------


@dataclass
class Side:
    spec: str
    recipe: str
    keys: dict[str, dict[str, str]]  # variant -> step -> key
    components: dict[str, dict[str, Any]]  # key -> key components
    graph: Graph | None = None
    only_step: str | None = None  # RECIPE#STEP: compare this step's output only


def open_side(spec: str, sets: dict[str, Any] | None = None) -> Side:
    base, _, step = spec.partition("#")
    if base.endswith(".lock"):
        lock = read_lock(Path(base))
        if lock is None:
            raise UserError(f"not a synthforge lockfile: {base}", hint="pass a recipe, a .lock file or REV:path")
        side = Side(spec, lock.recipe, lock.variants, lock.nodes)
    else:
        path, text = _recipe_source(base)
        graph = build_graph(load_recipe(path, sets, text=text))
        components = {key: node.components for key, node in graph.nodes.items()}
        side = Side(spec, graph.recipe.name, graph.keys, components, graph)
    if step:
        _check_step(side, step)
        side.only_step = step
    return side


def _recipe_source(spec: str) -> tuple[Path, str]:
    """(path, text) of a recipe given as a path or as REV:path (read with git show)."""
    if ":" in spec and not Path(spec).exists():
        rev, _, path = spec.partition(":")
        top = _git(["rev-parse", "--show-toplevel"], Path.cwd()).strip()
        relative = (Path.cwd() / path).resolve().relative_to(Path(top).resolve())
        return Path(path), _git(["show", f"{rev}:{relative.as_posix()}"], Path(top))
    return Path(spec), read_recipe_text(Path(spec))


def _git(args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("git is not installed", hint="REV:path sides need git") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
        raise UserError(f"git {' '.join(args)}: {first}", hint="check the revision and the path (REV:path)")
    return proc.stdout


def _check_step(side: Side, step: str) -> None:
    steps = {s for variant in side.keys.values() for s in variant}
    if step not in steps:
        from synthforge.errors import did_you_mean

        raise UserError(f"no step '{step}' in {side.spec}", hint=did_you_mean(step, steps) or f"steps: {', '.join(sorted(steps))}")


# -- comparing ------------------------------------------------------------


@dataclass
class StepDiff:
    step: str
    variants: list[str]
    status: str  # changed | unchanged | added | removed
    key_a: str | None
    key_b: str | None
    reasons: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuned: dict[str, Any] = field(default_factory=dict)  # {"a": line, "b": line}: tuning.note_tuned_steps fills it

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "variants": self.variants, "status": self.status, "key_a": self.key_a,
            "key_b": self.key_b, "reasons": self.reasons, "outputs": self.outputs, "metrics": self.metrics,
            **({"tuned": self.tuned} if self.tuned else {}),
        }


@dataclass
class Diff:
    a: Side
    b: Side
    steps: list[StepDiff]
    variants_added: list[str]
    variants_removed: list[str]
    gates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tripped(self) -> bool:
        return any(g["tripped"] for g in self.gates)

    def to_json(self) -> dict[str, Any]:
        counts = {s: sum(d.status == s for d in self.steps) for s in ("changed", "unchanged", "added", "removed")}
        return {
            "schema": SCHEMA,
            "a": {"spec": self.a.spec, "recipe": self.a.recipe},
            "b": {"spec": self.b.spec, "recipe": self.b.recipe},
            "summary": {**counts, "variants_added": self.variants_added, "variants_removed": self.variants_removed},
            "steps": [d.to_json() for d in self.steps],
            "gates": self.gates,
        }


def diff_sides(a: Side, b: Side, cache: Cache, shown: int = SHOWN) -> Diff:
    variants = variant_pairs(a, b)
    pairs = _pairs(a, b, variants)
    grouped: dict[tuple[str, str | None, str | None], list[str]] = {}
    for variant, step, key_a, key_b in pairs:
        grouped.setdefault((step, key_a, key_b), []).append(variant)
    steps = [_compare(step, variants, key_a, key_b, a, b, cache, shown) for (step, key_a, key_b), variants in grouped.items()]
    paired_a = {name_a for name_a, _ in variants}
    paired_b = {name_b for _, name_b in variants}
    return Diff(a, b, steps, sorted(set(b.keys) - paired_b), sorted(set(a.keys) - paired_a))


def _pairs(a: Side, b: Side, variants: list[tuple[str, str]]) -> list[tuple[str, str, str | None, str | None]]:
    if a.only_step and b.only_step:  # two steps' outputs, whatever their names
        key_a = next(iter(a.keys.values()))[a.only_step]
        key_b = next(iter(b.keys.values()))[b.only_step]
        return [("default", f"{a.only_step} vs {b.only_step}", key_a, key_b)]
    pairs = []
    for name_a, name_b in variants:
        steps_a, steps_b = a.keys[name_a], b.keys[name_b]
        label = name_a if name_a == name_b else f"{name_a} vs {name_b}"
        for step in list(steps_a) + [s for s in steps_b if s not in steps_a]:
            if (a.only_step or b.only_step) and step not in (a.only_step, b.only_step):
                continue
            pairs.append((label, step, steps_a.get(step), steps_b.get(step)))
    return pairs


def variant_pairs(a: Side, b: Side) -> list[tuple[str, str]]:
    """Variants paired by name; when a matrix change renamed every variant, paired by position."""
    common = [(v, v) for v in a.keys if v in b.keys]
    if not common and len(a.keys) == len(b.keys):
        return list(zip(a.keys, b.keys))
    return common


def _compare(step: str, variants: list[str], key_a: str | None, key_b: str | None, a: Side, b: Side, cache: Cache,
             shown: int = SHOWN) -> StepDiff:
    if key_a is None or key_b is None:
        return StepDiff(step, variants, "added" if key_a is None else "removed", key_a, key_b)
    if key_a == key_b:
        return StepDiff(step, variants, "unchanged", key_a, key_b)
    result = StepDiff(step, variants, "changed", key_a, key_b)
    result.reasons = describe_changes(a.components.get(key_a, {}), b.components.get(key_b, {})) or ["outputs differ"]
    entry_a, entry_b = cache.get(key_a), cache.get(key_b)
    result.outputs = {"a_built": entry_a is not None, "b_built": entry_b is not None}
    if entry_a and entry_b:
        result.outputs.update(compare_rows(entry_a, entry_b, shown))
        result.metrics = compare_metrics(entry_a.manifest.meta, entry_b.manifest.meta)
    return result


def _tuned_lines(step: StepDiff) -> list[str]:
    return [f"tuned {side.upper()}: {line}" for side, line in step.tuned.items()]


def compare_rows(entry_a: Entry, entry_b: Entry, shown: int = SHOWN) -> dict[str, Any]:
    """Rows added, removed and changed (by id: any field) between two entries' main tables (each read checked);
    the first `shown` records of each kind with their changed fields (`record_diff`)."""
    import polars as pl

    def rows(entry: Entry) -> pl.DataFrame:
        columns = [c for c in ("id", "text", "label") if c in entry.manifest.tables["data"].columns]
        return entry.read_table("data", columns or None)

    a, b = rows(entry_a), rows(entry_b)
    records = compare_records(entry_a, entry_b, shown=shown)
    if records is None:  # no ids, e.g. a table of scores: counts only
        return {"rows_a": a.height, "rows_b": b.height}
    ids_a, ids_b = set(a["id"]), set(b["id"])
    out: dict[str, Any] = {
        "rows_a": a.height, "rows_b": b.height,
        "rows_added": len(ids_b - ids_a), "rows_removed": len(ids_a - ids_b), "rows_changed": records.pop("changed_count"),
        "examples": {
            "added": _texts(b.filter(pl.col("id").is_in(list(ids_b - ids_a)))),
            "removed": _texts(a.filter(pl.col("id").is_in(list(ids_a - ids_b)))),
        },
        "records": records,
    }
    if "label" in a.columns and "label" in b.columns:
        out["labels"] = _label_deltas(a, b)
    return out


def _texts(frame: Any) -> list[str]:
    if "text" not in frame.columns:
        return []
    return [t if len(t) <= 100 else t[:97] + "..." for t in frame.sort("id")["text"].head(EXAMPLES).to_list()]


def _label_deltas(a: Any, b: Any) -> dict[str, dict[str, int]]:
    count_a = dict(a.group_by("label").len().iter_rows())
    count_b = dict(b.group_by("label").len().iter_rows())
    return {
        str(label): {"a": count_a.get(label, 0), "b": count_b.get(label, 0), "delta": count_b.get(label, 0) - count_a.get(label, 0)}
        for label in sorted(set(count_a) | set(count_b), key=str)
    }


def numeric_metrics(meta: Any) -> dict[str, dict[str, Any]]:
    """The numbers in a manifest's meta by dotted name, each with its interval's bounds (or None); not the run's
    facts (`RUN_FACTS`: how the run went is no change of the data)."""
    return {name: {"value": value.mean, "ci": value.bounds} if isinstance(value, Interval) else {"value": float(value), "ci": None}
            for name, value in flatten_metrics(meta, skip=RUN_FACTS)
            if isinstance(value, Interval) or (isinstance(value, (int, float)) and not isinstance(value, bool))}


def compare_metrics(meta_a: dict[str, Any], meta_b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    flat_a, flat_b = numeric_metrics(meta_a), numeric_metrics(meta_b)
    out = {}
    for name in sorted(set(flat_a) & set(flat_b)):
        va, vb = flat_a[name]["value"], flat_b[name]["value"]
        out[name] = {
            "a": va, "b": vb, "delta": vb - va, "relative": (vb - va) / abs(va) if va else None,
            "a_ci": flat_a[name]["ci"], "b_ci": flat_b[name]["ci"],
        }
    return out


# -- gates ----------------------------------------------------------------

GATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|<|>)\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(%?)\s*$")
ROW_GATES = {"rows_added", "rows_removed", "rows_changed"}


def parse_gate(expression: str) -> tuple[str, str, float, bool]:
    match = GATE.match(expression)
    if not match:
        raise UserError(
            f"cannot read gate '{expression}'", field="--fail-on",
            hint="write METRIC OP NUMBER[%], e.g. 'accuracy < -0.01', 'vendi < -5%', 'rows_removed > 100'",
        )
    name, op, number, percent = match.groups()
    return name, op, float(number) / (100 if percent else 1), bool(percent)


def apply_gates(diff: Diff, expressions: list[str]) -> None:
    import operator

    ops = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
    parsed = [(expr, *parse_gate(expr)) for expr in expressions]
    for expr, name, op, threshold, relative in parsed:
        hits = []
        for step in diff.steps:
            for value, where in _gate_values(step, name, relative):
                if value is not None and ops[op](value, threshold):
                    hits.append(f"{step.step} [{', '.join(step.variants)}] {where}: {_signed(value, relative)}")
        diff.gates.append({"expr": expr, "tripped": bool(hits), "hits": hits})


def _gate_values(step: StepDiff, name: str, relative: bool) -> list[tuple[float | None, str]]:
    if name in ROW_GATES or name == "rows":
        if "rows_a" not in step.outputs:
            return []
        if name == "rows":
            delta = step.outputs["rows_b"] - step.outputs["rows_a"]
            return [(delta / step.outputs["rows_a"] if relative and step.outputs["rows_a"] else delta, "rows")]
        return [(step.outputs[name], name)] if name in step.outputs else []
    return [
        (m["relative"] if relative else m["delta"], path)
        for path, m in step.metrics.items()
        if path == name or path.endswith("." + name)
    ]


def _signed(value: float, relative: bool) -> str:
    return f"{value * 100:+.2f}%" if relative else f"{value:+.4g}"


# -- rendering ------------------------------------------------------------


def _changed(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Metrics that moved (the JSON keeps all; people read the ones that changed)."""
    return {name: m for name, m in metrics.items() if m["delta"] != 0}


def _fmt_metric(name: str, m: dict[str, Any]) -> str:
    def one(value: float, ci: list[float] | None) -> str:
        return f"{value:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")

    rel = f", {m['relative'] * 100:+.1f}%" if m["relative"] is not None else ""
    return f"{name}: {one(m['a'], m['a_ci'])} -> {one(m['b'], m['b_ci'])} ({m['delta']:+.4g}{rel}{_verdict(name, m)})"


def _verdict(name: str, m: dict[str, Any]) -> str:
    """', better' / ', worse' from the metric registry's direction (nothing for metrics without one)."""
    from synthforge.metric_registry import verdict

    found = verdict(name, m["delta"])
    return f", {found}" if found else ""


def _fmt_rows(o: dict[str, Any]) -> str:
    if "rows_added" not in o:
        return f"rows: {o['rows_a']} -> {o['rows_b']}"
    return (f"rows: {o['rows_a']} -> {o['rows_b']} (+{o['rows_added']} added, -{o['rows_removed']} removed, "
            f"{o['rows_changed']} changed)")


def _fmt_labels(o: dict[str, Any]) -> str:
    return "labels: " + ", ".join(f"{k} {v['a']} -> {v['b']} ({v['delta']:+d})" for k, v in o.get("labels", {}).items())


def _not_built(o: dict[str, Any]) -> str | None:
    missing = [side for side in ("a", "b") if not o.get(f"{side}_built", True)]
    return f"output not built on side {' and '.join(missing).upper()} (use --build)" if missing else None


def render_text(diff: Diff) -> str:
    data = diff.to_json()
    s = data["summary"]
    lines = [
        f"synthforge diff: A = {diff.a.spec}  ->  B = {diff.b.spec}",
        f"{s['changed']} changed, {s['unchanged']} unchanged, {s['added']} added, {s['removed']} removed step outputs",
    ]
    if diff.variants_added or diff.variants_removed:
        lines.append(f"variants added: {', '.join(diff.variants_added) or '-'}; removed: {', '.join(diff.variants_removed) or '-'}")
    marks = {"changed": "~", "added": "+", "removed": "-"}
    for step in diff.steps:
        if step.status == "unchanged":
            continue
        lines.append("")
        keys = f"{(step.key_a or '-')[:12]} -> {(step.key_b or '-')[:12]}"
        lines.append(f"{marks[step.status]} {step.step} [{', '.join(step.variants)}]  {keys}")
        lines += [f"    why: {r}" for r in step.reasons]
        lines += [f"    {line}" for line in _tuned_lines(step)]
        if _not_built(step.outputs):
            lines.append(f"    {_not_built(step.outputs)}")
        if "rows_a" in step.outputs:
            o = step.outputs
            lines.append(f"    {_fmt_rows(o)}")
            if o.get("labels"):
                lines.append(f"    {_fmt_labels(o)}")
            examples = o.get("examples", {"added": [], "removed": []})
            lines += [f"    + {t}" for t in examples["added"]] + [f"    - {t}" for t in examples["removed"]]
            lines += [f"    {line}" for line in record_lines(o["records"])] if o.get("records") else []
        lines += [f"    {_fmt_metric(n, m)}" for n, m in _changed(step.metrics).items()]
    lines += [""] + _gate_lines(diff) if diff.gates else []
    return "\n".join(lines)


def _gate_lines(diff: Diff) -> list[str]:
    lines = []
    for gate in diff.gates:
        lines.append(f"gate {'FAILED' if gate['tripped'] else 'passed'}: {gate['expr']}")
        lines += [f"    {hit}" for hit in gate["hits"]]
    return lines


def _markdown_metric_row(name: str, m: dict[str, Any]) -> list[str]:
    rel = f" ({m['relative'] * 100:+.1f}%)" if m["relative"] is not None else ""
    ci_a = f" [{m['a_ci'][0]:.3g}, {m['a_ci'][1]:.3g}]" if m["a_ci"] else ""
    ci_b = f" [{m['b_ci'][0]:.3g}, {m['b_ci'][1]:.3g}]" if m["b_ci"] else ""
    return [name, f"{m['a']:.4g}{ci_a}", f"{m['b']:.4g}{ci_b}", f"{m['delta']:+.4g}{rel}{_verdict(name, m)}"]


def render_markdown(diff: Diff) -> str:
    data = diff.to_json()
    s = data["summary"]
    lines = [
        f"### synthforge diff: `{diff.a.spec}` → `{diff.b.spec}`",
        "",
        f"**{s['changed']} changed**, {s['unchanged']} unchanged, {s['added']} added, {s['removed']} removed step outputs.",
    ]
    if diff.gates:
        rows = [[f"`{g['expr']}`", "❌ failed: " + "; ".join(g["hits"]) if g["tripped"] else "✅ passed"] for g in diff.gates]
        lines += ["", markdown_table(["gate", "result"], rows).rstrip("\n")]
    for step in diff.steps:
        if step.status == "unchanged":
            continue
        lines += ["", f"#### `{step.step}` ({step.status}) — {', '.join(f'`{v}`' for v in step.variants)}", ""]
        lines += [f"- why: {r}" for r in step.reasons]
        lines += [f"- {line}" for line in _tuned_lines(step)]
        if _not_built(step.outputs):
            lines.append(f"- {_not_built(step.outputs)}")
        if "rows_a" in step.outputs:
            lines.append(f"- {_fmt_rows(step.outputs)}")
            if step.outputs.get("labels"):
                lines.append(f"- {_fmt_labels(step.outputs)}")
            lines += record_markdown(step.outputs["records"]) if step.outputs.get("records") else []
        if _changed(step.metrics):
            rows = [_markdown_metric_row(name, m) for name, m in _changed(step.metrics).items()]
            lines += ["", markdown_table(["metric", "A", "B", "Δ"], rows).rstrip("\n")]
    return "\n".join(lines) + "\n"


# -- entry point ------------------------------------------------------------


def run_diff(spec_a: str, spec_b: str, cache: Cache, *, fail_on: list[str] = (), build_missing: bool = False,
             runtime: Runtime = Runtime(), sets: dict[str, Any] | None = None, log: Any = None, records: int = SHOWN) -> Diff:
    for expression in fail_on:  # reject bad gates before any work
        parse_gate(expression)
    a, b = open_side(spec_a, sets), open_side(spec_b, sets)
    if build_missing:
        for side in (a, b):
            if side.graph is None:
                raise UserError(f"cannot build from a lockfile: {side.spec}", field="--build", hint="pass the recipe instead")
            only = [side.only_step] if side.only_step else []
            build(side.graph, cache, only=only, runtime=runtime, log=log or (lambda m: None), write_lockfile=False)
    check_gate_metrics(list(fail_on), side_metric_names(a, cache) | side_metric_names(b, cache))
    diff = diff_sides(a, b, cache, records)
    apply_gates(diff, list(fail_on))
    return diff


def side_metric_names(side: Side, cache: Cache) -> set[str]:
    """Dotted names of every metric in the built outputs of a side (what a gate may name)."""
    names: set[str] = set()
    for key in {key for steps in side.keys.values() for key in steps.values()}:
        entry = cache.get(key)
        if entry is not None:
            names |= set(numeric_metrics(entry.manifest.meta))
    return names


def check_gate_metrics(expressions: list[str], names: set[str]) -> None:
    """A gate on a metric neither side has could never trip: a usage error, not a pass."""
    suffixes = {".".join(path.split(".")[i:]) for path in names for i in range(path.count(".") + 1)}
    known = suffixes | ROW_GATES | {"rows"}
    for expression in expressions:
        name = parse_gate(expression)[0]
        if name in known:
            continue
        hint = did_you_mean(name, known) or (
            f"metrics: {', '.join(sorted(suffixes))[:300]}" if names else "nothing is built on either side: add --build")
        raise UserError(f"gate '{expression}' names metric '{name}', which occurs on neither side", field="--fail-on",
                        hint=hint)
