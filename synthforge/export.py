"""Exports that carry their provenance: files (parquet, jsonl, csv) and Hugging Face dataset folders.

Provenance = recipe, step, variant, key, rows and labels, the generator model and its
sampling settings, the diversity and shift metrics of the steps upstream, and the
recipe's text. Parquet files carry it as key-value metadata (key `synthforge`); a
Hugging Face folder (`datasets.load_from_disk`) carries it in its dataset card,
`README.md` in the Hub's card format.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.cache import check_table
from synthforge.errors import UserError, did_you_mean
from synthforge.frames import PROVENANCE_KEY, import_datasets
from synthforge.record_features import (Column, declared_columns, declared_labels, decode_expression, feature_rows,
                                        hf_feature)
from synthforge.text_tables import plural

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from synthforge.api import OpenRecipe

SAMPLING_FIELDS = ("temperature", "top_p", "max_new_tokens", "n", "few_shot_k", "num_topics")


def provenance(recipe: "OpenRecipe", step: str, variant: str | None, table: str) -> dict[str, Any]:
    """Where a table comes from; for a variant name that selects several outputs, theirs summed up (`_stacked`)."""
    outputs = recipe.entries(step, variant)
    return _provenance(recipe, step, variant, table) if len(outputs) == 1 else _stacked(recipe, step, outputs, table)[0]


def _provenance(recipe: "OpenRecipe", step: str, variant: str | None, table: str) -> dict[str, Any]:
    entry = recipe.entry(step, variant)
    manifest = entry.manifest
    check_table(manifest, table)
    labels = entry.scan(table).group_by("label").len() if "label" in manifest.tables[table].columns else None
    origins = entry.scan(table).group_by("source").len() if "source" in manifest.tables[table].columns else None
    lineage = _lineage(recipe, entry.key)
    model = recipe.graph.recipe.model
    return {
        "recipe": recipe.name,
        "recipe_path": str(recipe.path),
        "step": step,
        "kind": manifest.kind,
        "table": table,
        "variant": variant or (recipe.variants[0] if len(recipe.variants) == 1 else "shared by every variant"),
        "key": entry.key,
        "rows": manifest.tables[table].rows,  # the manifest is checked, and its tables against their files
        "label_counts": dict(sorted(labels.collect(engine="streaming").iter_rows())) if labels is not None else {},
        # a split step's parts, a DatasetDict's splits (an empty part, e.g. `validation: 0`, is left out)
        "row_sources": dict(sorted(origins.collect(engine="streaming").iter_rows())) if origins is not None else {},
        "splits": {name: manifest.tables[name].rows for name in manifest.tables[table].union or () if manifest.tables[name].rows},
        "license": model.license,
        "language": list(model.language),
        "sources": [_source(node) for node in lineage if node.kind == "load"],
        "generators": [_generator(recipe, node) for node in lineage if node.kind == "generate"],
        "metrics": _metrics(recipe, lineage),
        "examples": _examples(entry.scan(table)),
        "rebuild": _rebuild_commands(recipe, step, variant, table),
        "synthforge_version": manifest.versions.get("synthforge"),
        "recipe_text": recipe.path.read_text(),
    }


EXAMPLE_ROWS = 3
EXAMPLE_CHARS = 300


def _examples(scan: "pl.LazyFrame") -> list[dict[str, Any]]:
    """The first few rows' text, label and source (long texts cut), for the card."""
    import polars as pl

    columns = [c for c in ("text", "label", "source") if c in scan.collect_schema()]
    head = scan.select(columns).head(EXAMPLE_ROWS).collect()
    if "text" in columns:
        head = head.with_columns(pl.col("text").cast(pl.String).str.slice(0, EXAMPLE_CHARS))
    return head.to_dicts()


def _source(node) -> dict[str, Any]:
    """A load step's data: the packaged dataset's name, or the file's name and content hash (never its folder)."""
    params = node.resolved.params
    if getattr(params, "dataset", None):
        return {"step": node.step, "dataset": params.dataset}
    files = node.components.get("files") or {}
    return {"step": node.step, "file": Path(str(params.path)).name, "content_hash": next(iter(files.values()), None)}


def _rebuild_commands(recipe: "OpenRecipe", step: str, variant: str | None, table: str) -> list[str]:
    """The commands that rebuild this table from the recipe (cached steps are reused, not rerun)."""
    import shlex

    narrowed = "".join(f" --set {shlex.quote(f'{k}={v}')}" for k, v in recipe.graph.recipe.narrowed.items())
    path = shlex.quote(str(recipe.path))
    chosen = f" --variant {shlex.quote(variant)}" if variant else ""
    picked = f" --table {shlex.quote(table)}" if table != "data" else ""
    return [f"synthforge build {path} --only {shlex.quote(step)}{narrowed}",
            f"synthforge export {path} {shlex.quote(step)}{chosen}{picked}{narrowed} --format hf --to OUT"]


def _lineage(recipe: "OpenRecipe", key: str) -> list:
    """The nodes that `key` was built from, itself included, in dependency order."""
    ancestors = recipe.graph.ancestors({key})
    return [node for k, node in recipe.graph.nodes.items() if k in ancestors]


def _metrics(recipe: "OpenRecipe", lineage: list) -> dict[str, dict[str, Any]]:
    """The diversity and shift metrics that steps of the lineage recorded (e.g. `select`)."""
    found = {}
    for node in lineage:
        entry = recipe.cache.get(node.key)
        meta = entry.manifest.meta if entry else {}
        if isinstance(meta.get("metrics"), dict):
            found[node.step] = meta["metrics"]
    return found


def _generator(recipe: "OpenRecipe", node) -> dict[str, Any]:
    params = node.resolved.params.model_dump(mode="json")
    backend = {k: v for k, v in params.get("backend", {}).items() if k in ("type", "model", "base_url", "gguf_file")}
    entry = recipe.cache.get(node.key)
    identity = entry.manifest.meta.get("backend", {}) if entry else {}
    merged = {**backend, **{("model_files_hash" if k == "files" else k): v for k, v in identity.items()}}
    from synthforge.backends.llm import model_card_facts

    return {"step": node.step, "backend": {k: v for k, v in merged.items() if v is not None},
            **model_card_facts(node.resolved.params.backend),
            "sampling": {k: params[k] for k in SAMPLING_FIELDS if params.get(k) is not None}}


# -- writing ---------------------------------------------------------------------
def export(recipe: "OpenRecipe", step: str, to: str | Path, variant: str | None = None, table: str = "data",
           fmt: str | None = None, roles: "dict[str, str | None] | None" = None) -> str:
    """Write a step's table to `to` with its provenance; returns a one-line summary. `roles`: for the
    `messages` format, the columns of the chat turns ({"user": ..., "assistant": ..., "system": ...})."""
    target = Path(to)
    fmt = fmt or _format_from_name(target)
    _check_roles_apply(fmt, roles or {})
    outputs = recipe.entries(step, variant)
    if len(outputs) == 1:
        facts, frame = _provenance(recipe, step, variant, table), outputs[0][1].scan(table)
    else:  # a partial variant name (e.g. every replicate of a cell): the outputs stacked, with a `variant` column
        facts, frame = _stacked(recipe, step, outputs, table)
    if fmt == "hf":
        # a split's parts each their own Dataset (the `split` column would only repeat the split's name);
        # several outputs stacked (a partial variant name) stay one Dataset with a `variant` column
        splits = facts["splits"] if len(outputs) == 1 else {}
        parts = {name: _without(outputs[0][1].scan(name), "split") for name in splits} or {None: frame}
        lineage = [node for _, entry in outputs for node in _lineage(recipe, entry.key)]
        names = sorted(set(facts["label_counts"]) | declared_labels(lineage))
        write_hf_folder(parts, target, {**facts, "splits": splits, "label_names": names}, declared_columns(lineage))
        kind = f"a DatasetDict ({', '.join(splits)})" if splits else "a Dataset"
        return (f"wrote {plural(facts['rows'], 'row')} to {target}/ as {kind} "
                f"(datasets.load_from_disk; card in {target / 'README.md'})")
    if fmt == "messages":
        write_messages(frame, target, roles or {}, f"{step}'s {table} table")
        return f"wrote {plural(facts['rows'], 'chat')} to {target} (one {{\"messages\": [...]}} per line)"
    write_file(frame, target, fmt, facts)
    return f"wrote {plural(facts['rows'], 'row')} to {target}"


def _stacked(recipe: "OpenRecipe", step: str, outputs: list, table: str) -> tuple[dict[str, Any], Any]:
    """The provenance and the lazy stacked table of several outputs of one step: each output's facts under
    `outputs`; variant, key, rows and label counts summed up at the top."""
    from synthforge.frames import stack_variants

    parts = [_provenance(recipe, step, recipe.graph.nodes[entry.key].variants[0], table) for _, entry in outputs]
    labels: dict[str, int] = {}
    for part in parts:
        for label, count in part["label_counts"].items():
            labels[label] = labels.get(label, 0) + count
    facts = {**parts[0], "variant": "; ".join(label for label, _ in outputs), "key": ", ".join(p["key"] for p in parts),
             "rows": sum(p["rows"] for p in parts), "label_counts": dict(sorted(labels.items())),
             "outputs": [{k: p[k] for k in ("variant", "key", "rows", "label_counts")} for p in parts]}
    return facts, stack_variants([(label, entry.scan(table)) for label, entry in outputs])


def _without(scan: "pl.LazyFrame", column: str) -> "pl.LazyFrame":
    return scan.drop(column) if column in scan.collect_schema() else scan


def _format_from_name(target: Path) -> str:
    suffix = target.suffix.lower().lstrip(".")
    if suffix in ("parquet", "jsonl", "csv"):
        return suffix
    raise UserError(f"cannot tell the format of '{target.name}'", field="--to",
                    hint="use a .parquet, .jsonl or .csv file name, or --format hf with a folder")


def write_file(scan: "pl.LazyFrame", target: Path, fmt: str, facts: dict[str, Any]) -> None:
    """Stream a (checked) table scan into `target`, batch by batch: memory stays flat however many rows."""
    import polars as pl

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    if fmt == "parquet":
        scan.sink_parquet(tmp, metadata={PROVENANCE_KEY: json.dumps(facts, sort_keys=True)})
    elif fmt == "jsonl":
        scan.sink_ndjson(tmp)
    else:
        vectors = [c for c, t in scan.collect_schema().items() if isinstance(t, (pl.Array, pl.List))]
        scan.with_columns(pl.col(c).cast(pl.List(pl.Float32)).list.eval(pl.element().cast(pl.String)).list.join(" ")
                          for c in vectors).sink_csv(tmp)
    tmp.replace(target)


def write_hf_folder(parts: "dict[str | None, pl.LazyFrame]", target: Path, facts: dict[str, Any],
                    columns: dict[str, Column] | None = None) -> None:
    """A `datasets.save_to_disk` folder plus README.md, written beside and renamed into place.

    `parts`: {None: scan} for one Dataset, or {split name: scan} for a DatasetDict (a `split` step's
    train/test/validation), every split with the same ClassLabel names. `columns`: what the recipe declares
    of the record columns (`record_features.declared_columns`): structured fields become typed features."""
    from synthforge.progress import verbose

    datasets = import_datasets()
    if not verbose():
        datasets.disable_progress_bars()  # one status line is enough
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        built = {name: _streamed_dataset(scan, work / (name or "all"), facts, columns or {})
                 for name, scan in parts.items()}
        dataset = built[None] if None in built else datasets.DatasetDict(built)
        dataset.save_to_disk(str(work / "dataset"))
        features = next(iter(built.values())).features
        (work / "dataset" / "README.md").write_text(dataset_card(facts, features, columns))
        if target.exists():
            if not any((target / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json")):
                raise UserError(f"{target} exists and is not an exported dataset", field="--to", hint="pick a new folder")
            shutil.rmtree(target)
        (work / "dataset").rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _streamed_dataset(scan: "pl.LazyFrame", work: Path, facts: dict[str, Any], columns: dict[str, Column]) -> Any:
    """The table as a `datasets.Dataset`, labels as `ClassLabel` ids, record columns typed (structured fields
    parsed into dicts and lists, enums as ClassLabel ids), never whole in memory: polars streams it into a
    parquet file, which `datasets` converts batch by batch into its memory-mapped Arrow files (10M rows:
    1.9 GiB max RSS, mostly mapped file pages, against 6.2 GiB built in memory)."""
    import polars as pl
    import pyarrow.parquet as pq

    datasets = import_datasets()
    names = facts.get("label_names") or sorted(label for label in facts["label_counts"] if label is not None)
    schema = scan.collect_schema()
    typed = {name: column for name, column in columns.items()
             if column.shape is not None and schema.get(name) == pl.String}
    if "label" in schema:
        scan = scan.with_columns(pl.col("label").replace_strict(names, list(range(len(names))), return_dtype=pl.Int64))
    scan = scan.with_columns(decode_expression(name, column) for name, column in typed.items())
    work.mkdir(parents=True, exist_ok=True)
    rows = work / "rows.parquet"
    try:
        scan.sink_parquet(rows)
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"the record columns ({', '.join(typed)}) do not fit their declared types: {first}",
                        field="--format", hint="--format parquet or jsonl keep them as stored (JSON text)") from None
    features = datasets.Features.from_arrow_schema(pq.read_schema(rows))
    if "label" in features:
        features["label"] = datasets.ClassLabel(names=names)
    for name, column in typed.items():
        features[name] = hf_feature(column.shape)
    dataset = datasets.Dataset.from_parquet(str(rows), features=features, cache_dir=str(work / "arrow"))
    dataset.info.description = json.dumps({k: v for k, v in facts.items() if k != "recipe_text"})
    return dataset


# -- chat messages -------------------------------------------------------------------------------------
ROLE_OPTIONS = {"system": "--system", "user": "--prompt", "assistant": "--response"}


def _check_roles_apply(fmt: str, roles: dict[str, str | None]) -> None:
    given = [ROLE_OPTIONS[role] for role, column in roles.items() if column]
    if fmt != "messages" and given:
        raise UserError(f"{given[0]} applies to --format messages only", field=given[0],
                        hint="add --format messages, or leave the option out")
    if fmt == "messages":
        for role in ("user", "assistant"):
            if not roles.get(role):
                raise UserError(f"--format messages needs {ROLE_OPTIONS[role]} COLUMN (the {role} turn)",
                                field=ROLE_OPTIONS[role], hint=f"e.g. {ROLE_OPTIONS[role]} text")


def write_messages(scan: "pl.LazyFrame", target: Path, roles: dict[str, str | None], what: str) -> None:
    """One `{"messages": [{"role": ..., "content": ...}, ...]}` per row (the OpenAI and TRL chat format): the system
    turn (when a column is given), the user turn, the assistant turn; each column's values as text. Streamed."""
    import polars as pl

    schema = scan.collect_schema()
    turns = [(role, roles[role]) for role in ("system", "user", "assistant") if roles.get(role)]
    for role, column in turns:
        if column not in schema:
            raise UserError(f"{what} has no column '{column}'", field=ROLE_OPTIONS[role],
                            hint=did_you_mean(column, list(schema)) or f"columns: {', '.join(schema)}")
    message = [pl.struct(pl.lit(role).alias("role"), _as_text(column, schema[column], ROLE_OPTIONS[role]).alias("content"))
               for role, column in turns]
    _refuse_missing_turns(scan, turns, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    scan.select(pl.concat_list(message).alias("messages")).sink_ndjson(tmp)
    tmp.replace(target)


def _as_text(column: str, dtype: Any, option: str) -> "pl.Expr":
    """A column's values as message text: strings (structured fields are JSON text) as they are, numbers written out."""
    import polars as pl

    if dtype == pl.String:
        return pl.col(column)
    if dtype.is_numeric() or dtype == pl.Boolean:
        return pl.col(column).cast(pl.String)
    raise UserError(f"column '{column}' holds {dtype}, not text", field=option, hint="pick a text column")


def _refuse_missing_turns(scan: "pl.LazyFrame", turns: list[tuple[str, str]], what: str) -> None:
    """A row without a turn's content (null) would be a broken chat: one line naming the column and a row."""
    import polars as pl

    nulls = scan.select([pl.col(column).null_count().alias(role) for role, column in turns]).collect().row(0, named=True)
    for role, column in turns:
        if nulls[role]:
            first = scan.filter(pl.col(column).is_null()).select("id").head(1).collect() if "id" in scan.collect_schema() else None
            where = f" (first: id {first['id'][0]})" if first is not None and first.height else ""
            raise UserError(f"{plural(nulls[role], 'row')} of {what} have no '{column}'{where}", field=ROLE_OPTIONS[role],
                            hint="export the data table (a rejected row lacks its later fields), or pick another column")


SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(rows: int) -> str:
    """The Hub's size bucket for a row count."""
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1B")


def dataset_card(facts: dict[str, Any], features: Any = None, columns: dict[str, Column] | None = None) -> str:
    """A Hub dataset card: YAML metadata (license, language, tasks, size, sources, creators, the splits' files,
    the features), then what the data is, how it was made, each feature, a few rows, and the commands that
    rebuild it."""
    from huggingface_hub import DatasetCard, DatasetCardData

    origins = facts.get("row_sources") or {}  # the rows' `source` column; without one, what the lineage holds
    synthetic = bool(origins.get("synthetic")) if origins else bool(facts["generators"])
    real = bool(origins.get("real")) if origins else bool(facts["sources"])
    creators = (["found"] if real else []) + (["machine-generated"] if synthetic else [])
    labelled = bool(facts["label_counts"])
    splits = facts.get("splits") or {}
    files = [{"split": name, "path": f"{name}/data-*.arrow"} for name in splits] or [{"split": "train", "path": "data-*.arrow"}]
    data = DatasetCardData(
        pretty_name=f"{facts['recipe']}: {facts['step']} ({facts['variant']})",
        license=facts.get("license") or "unknown",
        language=facts.get("language") or None,
        task_categories=["text-classification"] if labelled else None,
        task_ids=["multi-class-classification"] if labelled else None,
        size_categories=[size_category(facts["rows"])],
        source_datasets=[f"extended|{s['dataset']}" for s in facts["sources"] if s.get("dataset")]
        or (["original"] if not facts["sources"] else None),
        annotations_creators=list(creators) or None,
        language_creators=list(creators) or None,  # a copy: one shared list would be written as a YAML anchor
        multilinguality="monolingual" if len(facts.get("language") or []) == 1 else None,
        configs=[{"config_name": "default", "data_files": files}],
        tags=["synthforge"] + (["synthetic"] if synthetic else []),
    )
    if features is not None:  # the Hub's viewer and `load_dataset` read the types from here
        data.dataset_info = {"features": features._to_yaml_list()}
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n{_card_body(facts, features, columns or {})}")
    return str(card)


def _card_body(facts: dict[str, Any], features: Any, columns: dict[str, Column]) -> str:
    from synthforge.text_tables import render_markdown

    lines = [
        f"# {facts['recipe']}: step `{facts['step']}`",
        "",
        f"Built by synthforge {facts.get('synthforge_version') or ''} from the recipe `{facts['recipe_path']}` "
        "(its full text is at the end of this card).",
        "",
        render_markdown(["field", "value"], [
            ["recipe", facts["recipe"]], ["step", f"{facts['step']} ({facts['kind']})"], ["table", facts["table"]],
            ["variant", facts["variant"]], ["cache key", f"`{facts['key']}`"], ["rows", facts["rows"]],
            ["license", facts.get("license") or "unknown"],
        ]),
    ]
    if facts.get("splits"):
        lines += ["## Splits", "", render_markdown(["split", "rows"], list(facts["splits"].items()))]
    if facts["label_counts"]:
        lines += ["## Labels", "", render_markdown(["label", "rows"], list(facts["label_counts"].items()))]
    if features is not None:
        lines += ["## Features", "", render_markdown(["feature", "type", "meaning"], feature_rows(features, columns))]
    for source in facts.get("sources", []):
        what = f"the packaged dataset `{source['dataset']}`" if source.get("dataset") else \
            f"the file `{source['file']}` (content hash `{source.get('content_hash')}`)"
        lines += [f"## Source data (step `{source['step']}`)", "", f"Real rows from {what}.", ""]
    for generator in facts["generators"]:
        backend = ", ".join(f"{k}: {v}" for k, v in generator["backend"].items())
        sampling = ", ".join(f"{k}={v}" for k, v in generator["sampling"].items())
        lines += [f"## Generator (step `{generator['step']}`)", "",
                  f"- model: `{generator.get('model_id', '?')}`", f"- quantization: {generator.get('quantization', 'unknown')}",
                  f"- backend: {backend}", f"- sampling: {sampling}", ""]
    for step, metrics in facts["metrics"].items():
        rows = [[name, f"{value:.4g}" if isinstance(value, float) else value] for name, value in metrics.items()]
        lines += [f"## Diversity and shift metrics (step `{step}`)", "", render_markdown(["metric", "value"], rows)]
    if facts.get("examples"):
        columns = list(facts["examples"][0])
        cells = [[str(row[c]).replace("|", "\\|").replace("\n", " ") for c in columns] for row in facts["examples"]]
        lines += ["## Example rows", "", render_markdown(columns, cells)]
    if facts.get("rebuild"):
        lines += ["## Rebuild", "", "From a checkout holding the recipe (steps already in the cache are reused):", "",
                  "```bash", *facts["rebuild"], "```", ""]
    lines += ["## Recipe", "", "```yaml", facts["recipe_text"].rstrip(), "```", ""]
    return "\n".join(lines)
