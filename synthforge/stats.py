"""Diversity (and shift) statistics of any step output, cached beside the entry.

`entry_stats` reads a cached table, uses its `embedding` column or embeds its
`text` column with the default embedder, computes `metrics.diversity_metrics`
and stores the result as `<entry>/stats/<reference key or 'none'>.json`
(`<table>.<...>.json` for side tables). Tables in an entry never change, so the
file stays valid until the metrics code, the model or the seed changes; those
are recorded in the file and checked on read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.cache import atomic_write_text
from synthforge.errors import UserError
from synthforge.steps.base import InputTable
from synthforge.steps.embed import EMBEDDING_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl



def stats_path(entry: InputTable, reference: InputTable | None = None) -> Path:
    name = reference.key if reference is not None else "none"
    prefix = "" if entry.table == "data" else f"{entry.table}."
    return entry.entry_dir / "stats" / f"{prefix}{name}.json"


def entry_stats(
    entry: InputTable | Path | str,
    reference: InputTable | Path | str | None = None,
    *,
    model: str = "minilm",
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
) -> dict[str, Any]:
    """Metrics of one cached table (and its shift to `reference`), from the stats cache when possible."""
    from synthforge.metrics import METRICS_VERSION, diversity_metrics, metric_methods

    entry, reference = _as_table(entry), _as_table(reference) if reference is not None else None
    path = stats_path(entry, reference)
    wanted = {"version": METRICS_VERSION, "model": model, "seed": seed}
    cached = _read(path)
    if cached is not None and not force and all(cached.get(k) == v for k, v in wanted.items()):
        return cached
    emb, texts = _embeddings_and_texts(entry, model, device)
    ref_emb = _embeddings_and_texts(reference, model, device)[0] if reference is not None else None
    if ref_emb is not None and len(ref_emb) and len(emb) and ref_emb.shape[1] != emb.shape[1]:
        raise UserError(
            f"embedding sizes differ: {emb.shape[1]} vs reference {ref_emb.shape[1]}",
            hint="embed both with the same model",
        )
    stats = {
        **wanted,
        "entry": entry.key,
        "table": entry.table,
        "reference": reference.key if reference is not None else None,
        "metrics": diversity_metrics(emb, texts, reference_emb=ref_emb, seed=seed),
        "metric_methods": metric_methods(len(emb), len(ref_emb) if ref_emb is not None else None),
    }
    atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _as_table(value: InputTable | Path | str) -> InputTable:
    return value if isinstance(value, InputTable) else InputTable(Path(value))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _embeddings_and_texts(table: InputTable, model: str, device: str) -> tuple["np.ndarray", "pl.Series | None"]:
    import polars as pl

    from synthforge.steps.embed import embeddings_of

    frame = table.frame()
    texts = frame["text"].cast(pl.Utf8).fill_null("") if "text" in frame.columns else None
    if EMBEDDING_COLUMN in frame.columns:
        return embeddings_of(frame), texts
    if texts is None:
        raise UserError(f"{table} has neither an '{EMBEDDING_COLUMN}' nor a 'text' column")
    from synthforge.backends.embedder import get_embedder

    return get_embedder(model, device).embed(texts.to_list()), texts


# -- display -------------------------------------------------------------------
_LABELS = {
    "rows": ("rows", "rows in the table"),
    "vendi": ("Vendi score", "effective number of distinct rows (higher = more diverse)"),
    "dcscore": ("DCScore", "softmax-kernel diversity (higher = more diverse)"),
    "mean_cosine_distance": ("mean cosine distance", "average over pairs"),
    "cluster_entropy": ("cluster entropy", "k-means shares, 0..1"),
    "distinct_1": ("distinct-1", "unique unigrams / unigrams"),
    "distinct_2": ("distinct-2", "unique bigrams / bigrams"),
    "mmd_rbf": ("MMD^2 (RBF)", "vs reference (lower = closer)"),
    "frechet": ("Frechet distance", "vs reference (lower = closer)"),
    "nn_real_similarity": ("nearest-real similarity", "vs reference (higher = closer)"),
}


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text table of the metrics in `stats` (as returned by `entry_stats`)."""
    from synthforge.tables import render_table

    metrics = stats.get("metrics", stats)
    order = list(_LABELS)
    metrics = dict(sorted(metrics.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    rows = [(_LABELS.get(k, (k, ""))[0], _format_value(v), _LABELS.get(k, (k, ""))[1]) for k, v in metrics.items()]
    table = render_table(("metric", "value", "meaning"), rows, align_right=(1,))
    return table + (f"\nreference: {stats['reference']}" if stats.get("reference") else "")


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
