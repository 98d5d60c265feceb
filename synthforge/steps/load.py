"""`load`: real labelled rows from a file or a packaged dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_serializer, model_validator

from synthforge.errors import UserError
from synthforge.stepapi import FilePath, Labels, StepContext, StepParams, StepResult
from synthforge.steps.base import Step

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

READERS = {
    ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
}
COMPRESSIONS = {".bz2", ".gz", ".xz", ".zst"}


class LoadParams(StepParams):
    model_config = ConfigDict(json_schema_extra={"examples": [{"path": "rows.csv"}, {"dataset": "rotten_tomatoes"}]})

    dataset: Literal["rotten_tomatoes", "bbc_news"] | None = Field(
        None,
        description="a packaged dataset: 'rotten_tomatoes' (13.9k snippets: fresh, rotten, plot) or 'bbc_news' "
        "(2.2k articles, 5 classes); give exactly one of dataset and path",
    )
    path: FilePath | None = Field(None, description="a .csv/.tsv/.jsonl/.json/.parquet file, optionally .gz/.bz2/.xz/.zst, relative to the recipe")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = Field(
        "auto", description="the file format: csv, tsv, jsonl, json, parquet, or auto to use the suffix"
    )
    text_column: str = Field("text", description="the column holding the text")
    label_column: str = Field("label", description="the column holding the label")
    labels: Labels | None = Field(
        None, description="labels to keep (a list), or a mapping from old to new label names (keeps only those)"
    )
    encoding: str = Field("utf-8", description="the text encoding of a csv/tsv/jsonl/json file, e.g. latin-1 or cp1252")
    dedup: bool = Field(True, description="drop rows whose text repeats (keeps the first)")
    limit: int | None = Field(None, gt=0, description="keep at most this many rows (a seeded sample)")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            return codecs.lookup(value).name
        except LookupError:
            raise UserError(f"unknown encoding '{value}'", field="encoding",
                            hint="e.g. utf-8, latin-1, cp1252, utf-16") from None

    @model_serializer(mode="wrap")
    def _utf8_is_implicit(self, handler) -> dict[str, Any]:
        data = handler(self)
        if data.get("encoding") == "utf-8":  # absent means utf-8: keys from before `encoding:` existed stay valid
            del data["encoding"]
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "LoadParams":
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of 'dataset' (packaged) or 'path' (a file)")
        return self


class LoadStep(Step):
    seeded = False  # `limit` samples the population, which replicates share
    kind = "load"
    version = "1"
    Params = LoadParams

    def identity(self, params: LoadParams) -> dict[str, Any]:
        if params.dataset is None:
            return {}
        from synthforge.datasets import PACKAGED

        dataset = PACKAGED[params.dataset]
        return {"dataset package": f"{dataset.package}=={dataset.version()}"}

    def run(self, ctx: StepContext) -> StepResult:
        import polars as pl

        from synthforge.steps.rows import describe_dropped, stable_ids, standard_first

        params: LoadParams = ctx.params
        frame = read_source(params)
        if frame.height == 0:
            raise UserError("the data has no rows", field="path" if params.path else "dataset",
                            hint="check the file: it holds a header or nothing")
        frame, dropped = _usable_rows(_standard_columns(frame, params))
        frame = _filter_labels(frame, params.labels)
        before = frame.height
        if params.dedup:
            frame = frame.unique(subset="text", keep="first", maintain_order=True)
        dropped["duplicates"] = before - frame.height
        if params.limit is not None and frame.height > params.limit:
            frame = frame.sample(params.limit, seed=ctx.seed, shuffle=False)
        if frame.height == 0:
            raise UserError(f"no rows left ({describe_dropped(dropped)})", field="text_column",
                            hint="check text_column and label_column")
        frame = frame.with_columns(
            stable_ids(frame["text"], frame["label"]),
            pl.lit("real").alias("source"),
        )
        counts = dict(frame.group_by("label").len().sort("label").iter_rows())
        return StepResult(standard_first(frame), meta={"label_counts": counts, "dropped": dropped})


def read_source(params: LoadParams) -> "pl.DataFrame":
    if params.dataset is not None:
        from synthforge.datasets import PACKAGED

        frame = PACKAGED[params.dataset].loader()
        return frame
    return read_file(Path(params.path), params.format, params.encoding)


def read_file(path: Path, fmt: str = "auto", encoding: str = "utf-8") -> "pl.DataFrame":
    import polars as pl

    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSIONS
    if fmt == "auto":
        data_suffix = suffixes[-2] if compressed and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
        fmt = READERS.get(data_suffix, "")
        if not fmt:
            raise UserError(f"cannot tell the format of {path.name}", field="format", hint="set format: csv|tsv|jsonl|json|parquet")
    data: Any = _decompressed(path) if compressed else path
    if fmt != "parquet" and encoding != "utf-8":
        data = _as_utf8(data, path, encoding)
    try:
        if fmt in ("csv", "tsv"):
            return pl.read_csv(data, separator="\t" if fmt == "tsv" else ",", infer_schema_length=10000)
        if fmt == "jsonl":
            return pl.read_ndjson(data)
        if fmt == "json":
            return pl.read_json(data)
        return pl.read_parquet(data)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        if fmt != "parquet":
            _check_utf8(data, path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"cannot read {path.name} as {fmt}: {first}", field="path", hint="check the file or set format:") from None


ENCODING_HINT = "set encoding: on the load step, e.g. encoding: latin-1 or encoding: cp1252"


def _as_utf8(data: bytes | Path, path: Path, encoding: str) -> bytes:
    raw = data if isinstance(data, bytes) else path.read_bytes()
    try:
        return raw.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_text(raw, exc, path, encoding, "set the file's real encoding") from None


def _check_utf8(data: bytes | Path, path: Path) -> None:
    """Raise the precise error when a read failed because the file is not UTF-8."""
    raw = data if isinstance(data, bytes) else path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_text(raw, exc, path, "UTF-8", ENCODING_HINT) from None


def _not_text(raw: bytes, exc: UnicodeDecodeError, path: Path, encoding: str, hint: str) -> UserError:
    line = raw.count(b"\n", 0, exc.start) + 1
    return UserError(f"{path.name} line {line} is not {encoding} text (byte 0x{raw[exc.start]:02x})", field="encoding",
                     hint=hint)


def _decompressed(path: Path) -> bytes:
    import bz2
    import gzip
    import io
    import lzma

    suffix = path.suffix.lower()
    if suffix == ".bz2":
        return bz2.decompress(path.read_bytes())
    if suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    import zstandard  # pragma: no cover - optional

    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read()  # pragma: no cover


def _standard_columns(frame: "pl.DataFrame", params: LoadParams) -> "pl.DataFrame":
    import polars as pl

    text_col, label_col = params.text_column, params.label_column
    for field_name, column in (("text_column", text_col), ("label_column", label_col)):
        if column not in frame.columns:
            from synthforge.errors import did_you_mean

            columns = f"columns in the data: {', '.join(frame.columns)}"
            hint = f"{did_you_mean(column, frame.columns) or 'set ' + field_name}; {columns}"
            raise UserError(f"no column '{column}' in the data", field=field_name, hint=hint)
    extras = [c for c in frame.columns if c not in (text_col, label_col, "id", "source", "text", "label")]
    return frame.select(
        pl.col(text_col).cast(pl.String).alias("text"),
        pl.col(label_col).cast(pl.String).alias("label"),
        *[pl.col(c) for c in extras],
    )


def _usable_rows(frame: "pl.DataFrame") -> tuple["pl.DataFrame", dict[str, int]]:
    """Rows with a non-blank text and a label, and how many of each kind were dropped."""
    import polars as pl

    # `^\s*$` matches exactly the texts that strip_chars() empties (both: Unicode White_Space), without
    # building a stripped copy of every text
    blank = pl.col("text").is_null() | pl.col("text").str.contains(r"^\s*$")
    unlabelled = ~blank & pl.col("label").is_null()
    counts = frame.select(blank.sum().alias("blank_text"), unlabelled.sum().alias("missing_label")).row(0, named=True)
    return frame.filter(~blank & pl.col("label").is_not_null()), {k: int(v) for k, v in counts.items()}


def _filter_labels(frame: "pl.DataFrame", labels: list[str] | dict[str, str] | None) -> "pl.DataFrame":
    import polars as pl

    if labels is None:
        return frame
    present = set(frame["label"].unique().to_list())
    wanted = list(labels)
    missing = [label for label in wanted if label not in present]
    if missing:
        from synthforge.errors import did_you_mean

        hint = did_you_mean(missing[0], present) or f"labels in the data: {', '.join(sorted(present))}"
        raise UserError(f"label '{missing[0]}' does not occur in the data", field="labels", hint=hint)
    frame = frame.filter(pl.col("label").is_in(wanted))
    if isinstance(labels, dict):
        frame = frame.with_columns(pl.col("label").replace_strict(labels, return_dtype=pl.String))
    return frame
