"""Built tables as users take them: several variants' tables stacked, Hugging Face datasets (label as
`ClassLabel`), and the parquet metadata key export writes provenance under. Imports polars and datasets
only when called."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from synthforge.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import polars as pl

PROVENANCE_KEY = "synthforge"  # parquet key-value metadata key holding the provenance JSON


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
