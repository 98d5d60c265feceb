"""What a table's columns are, read from the recipe that made them: typed `datasets` features for exports.

A `generate` step's structured field (`json_schema` or `json_fields`) is stored as compact JSON text;
here its schema becomes one Arrow shape (objects: dicts of typed values, arrays: lists, string enums:
`ClassLabel`), so an export holds the parsed records. A category sampler's values and the label set
(the observed labels and the ones the recipe declares) are `ClassLabel`s too. A schema with no single
Arrow shape (anyOf/oneOf, an object open to other keys, mixed types, recursion) keeps its JSON text,
and the card says why. Nothing here reads rows: `decode_expression` is a polars expression.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

SCALARS = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}
MAX_REF_DEPTH = 32  # deeper `$ref` chains are taken for recursion: the JSON text is kept
STANDARD_MEANINGS = {
    "id": "stable row id (generated rows: <step>-<row index>)",
    "text": "the row's text",
    "label": "the row's class",
    "source": "real (loaded) or synthetic (generated)",
    "split": "train, test or validation",
    "embedding": "sentence embedding (float32 vector)",
    "selection_rank": "the order in which `select` picked the row (0 first)",
    "mode": "how a generated row was asked for: topic (its template) or paraphrase",
    "paraphrase_of": "the id of the row a paraphrase rewrites",
    "temperature": "sampling temperature of the row's request",
    "top_p": "nucleus sampling share of the row's request",
    "max_new_tokens": "the most tokens the row's request could generate",
    "row_seed": "the seed of the row's request",
    "model": "the model that generated the row",
    "variant": "the matrix variant the row comes from",
}


class Unmapped(Exception):
    """A schema part with no single Arrow shape; the message says which and why."""


@dataclass
class Shape:
    """One Arrow shape: a scalar `Value`, a class label, a dict of shapes, or a list of one shape."""

    kind: str  # value | label | dict | list
    dtype: str = ""  # value: a datasets dtype name
    names: list[str] = field(default_factory=list)  # label: the class names, in order
    fields: dict[str, "Shape"] = field(default_factory=dict)  # dict
    item: "Shape | None" = None  # list
    description: str = ""  # the schema's own `description`, for the card


@dataclass
class Column:
    """What the recipe says of one column: its shape (None: stored as it is), where it was declared, and why a
    structured field keeps its JSON text (`kept_as_json`)."""

    shape: Shape | None
    meaning: str
    structured: bool = False  # stored as JSON text, decoded into `shape`
    kept_as_json: str | None = None


# -- JSON Schema -> shape ------------------------------------------------------------------------
def schema_shape(schema: dict[str, Any]) -> Shape:
    """The Arrow shape of a JSON Schema's values, or `Unmapped` naming the part that has none."""
    return _shape(schema, schema, "", 0)


def _shape(root: dict[str, Any], node: Any, path: str, depth: int) -> Shape:
    where = path or "the schema"
    if not isinstance(node, dict):
        raise Unmapped(f"{where}: a boolean schema allows any value")
    if "$ref" in node:
        if depth >= MAX_REF_DEPTH:
            raise Unmapped(f"{where}: a recursive $ref has no fixed depth")
        return _shape(root, _resolve(root, node["$ref"]), path, depth + 1)
    for keyword in ("anyOf", "oneOf", "allOf", "not", "if", "prefixItems", "patternProperties"):
        if keyword in node:
            raise Unmapped(f"{where}: '{keyword}' may mix shapes")
    described = str(node.get("description") or "")
    if "enum" in node or "const" in node:
        return _enum_shape(node, where, described)
    kind = _single_type(node, where)
    if kind == "object":
        properties = node.get("properties") or {}
        if node.get("additionalProperties", True) is not False or not properties:
            raise Unmapped(f"{where}: an object open to other keys (set additionalProperties: false and its properties)")
        fields = {name: _shape(root, sub, f"{path}.{name}" if path else name, depth) for name, sub in properties.items()}
        return Shape("dict", fields=fields, description=described)
    if kind == "array":
        if not isinstance(node.get("items"), dict):
            raise Unmapped(f"{where}: an array without one `items` schema")
        return Shape("list", item=_shape(root, node["items"], f"{path}[]", depth), description=described)
    return Shape("value", dtype=SCALARS[kind], description=described)


def _resolve(root: dict[str, Any], ref: str) -> Any:
    target: Any = root
    for part in [p for p in ref.lstrip("#").split("/") if p]:  # refs are checked to point inside at plan time
        part = part.replace("~1", "/").replace("~0", "~")
        target = target[int(part)] if isinstance(target, list) else target[part]
    return target


def _single_type(node: dict[str, Any], where: str) -> str:
    declared = node.get("type")
    kinds = [declared] if isinstance(declared, str) else list(declared or [])
    kinds = [k for k in kinds if k != "null"]  # a nullable value is a value that may be None
    if len(kinds) != 1 or kinds[0] not in (*SCALARS, "object", "array"):
        raise Unmapped(f"{where}: type {declared!r} is not one of string, integer, number, boolean, object, array")
    return kinds[0]


def _enum_shape(node: dict[str, Any], where: str, described: str) -> Shape:
    values = [node["const"]] if "const" in node else list(node["enum"])
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        return Shape("label", names=list(dict.fromkeys(values)), description=described)
    for kind, test in (("bool", lambda v: isinstance(v, bool)),
                       ("int64", lambda v: isinstance(v, int) and not isinstance(v, bool)),
                       ("float64", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))):
        if values and all(test(v) for v in values):
            return Shape("value", dtype=kind, description=described)
    raise Unmapped(f"{where}: an enum of mixed or non-scalar values")


# -- shape -> polars and datasets ----------------------------------------------------------------
def decode_dtype(shape: Shape) -> "pl.DataType":
    """The polars dtype JSON text is decoded into: class labels as `pl.Enum` (their codes are the ClassLabel ids)."""
    import polars as pl

    if shape.kind == "label":
        return pl.Enum(shape.names)
    if shape.kind == "dict":
        return pl.Struct({name: decode_dtype(sub) for name, sub in shape.fields.items()})
    if shape.kind == "list":
        return pl.List(decode_dtype(shape.item))
    return {"string": pl.String, "int64": pl.Int64, "float64": pl.Float64, "bool": pl.Boolean}[shape.dtype]


def stored_dtype(shape: Shape) -> "pl.DataType":
    """`decode_dtype` with every class label as its int64 id (a ClassLabel's Arrow storage)."""
    import polars as pl

    if shape.kind == "label":
        return pl.Int64
    if shape.kind == "dict":
        return pl.Struct({name: stored_dtype(sub) for name, sub in shape.fields.items()})
    if shape.kind == "list":
        return pl.List(stored_dtype(shape.item))
    return decode_dtype(shape)


def decode_expression(name: str, column: Column) -> "pl.Expr":
    """The column as its shape's Arrow values: JSON text parsed, labels (at any depth) as ids."""
    import polars as pl

    expr = pl.col(name)
    decoded = expr.str.json_decode(decode_dtype(column.shape)) if column.structured else expr.cast(decode_dtype(column.shape))
    return decoded.to_physical().cast(stored_dtype(column.shape)).alias(name)


def hf_feature(shape: Shape) -> Any:
    """The `datasets` feature of a shape: Value, ClassLabel, a dict of features, or a List."""
    import datasets

    if shape.kind == "label":
        return datasets.ClassLabel(names=shape.names)
    if shape.kind == "dict":
        return {name: hf_feature(sub) for name, sub in shape.fields.items()}
    if shape.kind == "list":
        item = hf_feature(shape.item)
        listed = getattr(datasets, "List", None)  # datasets >= 4; before, a Python list is a list feature
        return listed(item) if listed is not None else [item]
    return datasets.Value(shape.dtype)


# -- the recipe's columns ------------------------------------------------------------------------
def declared_columns(lineage: list) -> dict[str, Column]:
    """Per column a step of `lineage` (graph nodes) declares as a record field: its shape and meaning. A column
    two steps declare differently keeps what is stored (its meaning says so)."""
    found: dict[str, list[tuple[str, Column]]] = {}
    for node in lineage:
        params = node.resolved.run_params  # with its files' absolute paths (a category's values file)
        for name in getattr(params, "variables", None) or {}:
            found.setdefault(name, []).append((node.step, Column(None, "template variable drawn per row")))
        for name, spec in (getattr(params, "fields", None) or {}).items():
            found.setdefault(name, []).append((node.step, _field_column(name, spec)))
    return {name: _agreed(declared) for name, declared in found.items()}


def _agreed(declared: list[tuple[str, Column]]) -> Column:
    """One column from every step's declaration of it: theirs when they agree, else the stored values."""
    steps = list(dict.fromkeys(step for step, _ in declared))
    where = f" of step{'s' if len(steps) > 1 else ''} " + ", ".join(f"`{step}`" for step in steps)
    columns = [column for _, column in declared]
    first = columns[0]
    if all((c.shape, c.structured, c.kept_as_json) == (first.shape, first.structured, first.kept_as_json) for c in columns):
        return replace(first, meaning=first.meaning + where)
    structured = any(c.structured for c in columns)
    return Column(None, "record field" + where, structured=structured,
                  kept_as_json="the steps declare it differently" if structured else None)


def _field_column(name: str, spec: Any) -> Column:
    from synthforge.generation.fields import category_values

    if not spec.generated:
        what = f"sampled ({spec.sample}) field"
        if spec.sample != "category":
            return Column(None, what)
        return Column(Shape("label", names=list(dict.fromkeys(category_values(spec, name)))), what)
    schema = spec.reply_schema()
    if schema is None:
        return Column(None, "generated field")
    meaning = "structured (JSON Schema) field"
    try:
        return Column(schema_shape(schema), meaning, structured=True)
    except Unmapped as exc:
        return Column(None, meaning, structured=True, kept_as_json=str(exc))


def declared_labels(lineage: list) -> set[str]:
    """The labels the recipe names for its rows: a generate step's labels, a load step's kept or renamed ones."""
    labels: set[str] = set()
    for node in lineage:
        declared = getattr(node.resolved.params, "labels", None)
        if node.kind == "generate" and declared:
            labels |= set(declared)  # a list, or label -> description
        elif node.kind == "load" and declared:
            labels |= set(declared.values() if isinstance(declared, dict) else declared)  # kept, or old -> new
    return labels


# -- the card --------------------------------------------------------------------------------------
def feature_rows(features: Any, columns: dict[str, Column]) -> list[list[str]]:
    """One row per feature, nested ones by path (`review.tags[]`): [path, type, meaning]."""
    rows: list[list[str]] = []
    for name, feature in features.items():
        column = columns.get(name)
        meaning = column.meaning if column else STANDARD_MEANINGS.get(name, "")
        if column and column.kept_as_json:
            meaning += f" (kept as JSON text: {column.kept_as_json})"
        _walk(name, feature, meaning, column.shape if column else None, rows)
    return [[_cell(cell) for cell in row] for row in rows]


def _walk(path: str, feature: Any, meaning: str, shape: Shape | None, rows: list[list[str]]) -> None:
    described = shape.description if shape else ""
    meaning = "; ".join(part for part in (meaning, described) if part)
    if isinstance(feature, dict):
        rows.append([path, "dict", meaning])
        for name, sub in feature.items():
            _walk(f"{path}.{name}", sub, "", shape.fields.get(name) if shape else None, rows)
        return
    item = getattr(feature, "feature", None)
    if isinstance(feature, list) or item is not None:
        inner = feature[0] if isinstance(feature, list) else item
        rows.append([path, "list", meaning])
        _walk(f"{path}[]", inner, "", shape.item if shape else None, rows)
        return
    names = getattr(feature, "names", None)
    if names is not None:
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        rows.append([path, f"class label ({shown})", meaning])
        return
    rows.append([path, str(getattr(feature, "dtype", feature)), meaning])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
