"""Diversity (and shift) statistics of any step output, cached as a derived result.

`entry_stats` reads a cached table, uses its `embedding` column or embeds its
`text` column with the default embedder, computes `metrics.diversity_metrics`
and stores the result in the cache's derived records (never inside the entry:
entries are immutable) under `stats_key`: the entry, table, reference, metrics
code version, seed, (when it embeds) the model's identity, and for rows a step
already measured (`select`) how it measured them (`measured_as`: pool, seed, tau),
so `stats`, the manifest and an export's card give one number for the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.cache import Cache
from synthforge.errors import UserError
from synthforge.stepapi import InputTable
from synthforge.steps.rows import EMBEDDING_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl



@dataclass(frozen=True)
class Measured:
    """How the step that wrote a table measured its rows (a `select` step's `metrics`), so that `stats` of those
    rows gives the same numbers: cluster entropy's clusters fit on the same pool, the same seed and DCScore tau."""

    pool: InputTable | None = None  # the rows the table was drawn from (the step's `input`)
    seed: int | None = None
    tau: float | None = None
    missing_pool: str | None = None  # the pool's key when its entry is no longer in the cache

    def identity(self) -> dict[str, Any]:
        pool = f"{self.pool.key}:{self.pool.table}" if self.pool is not None else self.missing_pool
        return {"pool": pool, "seed": self.seed, "tau": self.tau}


def measured_as(table: InputTable, cache: Cache) -> Measured:
    """`Measured` for a data table whose step recorded diversity metrics; empty otherwise."""
    manifest = table.manifest
    if table.table != "data" or not isinstance(manifest.meta.get("metrics"), dict):
        return Measured()
    components = manifest.components
    source = (components.get("inputs") or {}).get("input")
    tau = (components.get("params") or {}).get("dcscore_tau")
    if not isinstance(source, str):
        return Measured(seed=components.get("seed"), tau=tau)
    key, _, name = source.partition(":")
    found = cache.get(key)
    pool = InputTable(found.path, name or "data") if found is not None else None
    return Measured(pool, components.get("seed"), tau, None if pool is not None else key)


def stats_key(entry: InputTable, reference: InputTable | None, model: str, seed: int, measured: Measured = Measured()) -> str:
    """Everything the stats of `entry` depend on."""
    from synthforge.keys import key_of
    from synthforge.metrics import METRICS_VERSION

    def identity(table: InputTable) -> dict[str, Any]:
        embeds = EMBEDDING_COLUMN not in table.manifest.tables[table.table].columns
        return {"entry": table.key, "table": table.table, "model": _model_identity(model) if embeds else None}

    return key_of({"derived": "stats", "metrics version": METRICS_VERSION, "seed": seed, "of": identity(entry),
                   "reference": identity(reference) if reference is not None else None, "measured as": measured.identity()})


def _model_identity(model: str) -> dict[str, str]:
    from synthforge.backends.embedder import model_identity

    return model_identity(model)


def entry_stats(
    entry: InputTable | Path | str,
    reference: InputTable | Path | str | None = None,
    *,
    cache: Cache,
    model: str = "minilm",
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
) -> dict[str, Any]:
    """Metrics of one cached table (and its shift to `reference`), from the cache's derived records when possible.

    Rows a step already measured (`select`) are measured the same way (`measured_as`): one definition of
    each metric, one number for the same rows, in `stats`, the manifest and an export's card."""
    from synthforge.metrics import DCSCORE_TAU, METRICS_VERSION, diversity_metrics, metric_methods

    entry, reference = _as_table(entry), _as_table(reference) if reference is not None else None
    measured = measured_as(entry, cache)
    seed = measured.seed if measured.seed is not None else seed
    key = stats_key(entry, reference, model, seed, measured)
    cached = cache.read_derived(key)
    if cached is not None and not force:
        return _with_judge_scores(cached, entry)
    emb, texts, labels = _embeddings_and_texts(entry, model, device)
    ref_emb, _, ref_labels = _embeddings_and_texts(reference, model, device) if reference is not None else (None, None, None)
    pool_emb = _embeddings_and_texts(measured.pool, model, device)[0] if measured.pool is not None else None
    if ref_emb is not None and len(ref_emb) and len(emb) and ref_emb.shape[1] != emb.shape[1]:
        raise UserError(
            f"embedding sizes differ: {emb.shape[1]} vs reference {ref_emb.shape[1]}",
            hint="embed both with the same model",
        )
    stats = {
        "version": METRICS_VERSION,
        "model": model,
        "seed": seed,
        "entry": entry.key,
        "table": entry.table,
        "reference": reference.key if reference is not None else None,
        "metrics": diversity_metrics(emb, texts, reference_emb=ref_emb, seed=seed, pool_emb=pool_emb,
                                     tau=measured.tau if measured.tau is not None else DCSCORE_TAU),
        "cluster_basis": _cluster_basis(measured, reference),
        "label_agreement": _agreement(emb, labels, ref_emb, ref_labels, seed),
        "metric_methods": metric_methods(len(emb), len(ref_emb) if ref_emb is not None else None),
    }
    sources = [entry.key] + [t.key for t in (reference, measured.pool) if t is not None]
    return _with_judge_scores(cache.write_derived(key, stats, sources), entry)


def _with_judge_scores(stats: dict[str, Any], entry: InputTable) -> dict[str, Any]:
    """The score distribution a `judge` step recorded for its rows (read from its manifest, never stored here)."""
    scores = entry.manifest.meta.get("scores") if entry.table == "data" else None
    return {**stats, "judge_scores": scores} if isinstance(scores, dict) else stats


INTERVALS_VERSION = "1"


def entry_intervals(entry: InputTable | Path | str, reference: InputTable | Path | str | None = None, *, cache: Cache,
                    model: str = "minilm", seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """95% intervals of `entry_stats`'s metrics over the draw of the rows (`metrics.jackknife_intervals`; label
    agreement: Wilson), a derived record of its own beside the stats: {"intervals": {metric: [lo, hi]},
    "methods": {metric: method}}."""
    from synthforge.metrics import DCSCORE_TAU, jackknife_intervals, wilson_interval

    entry, reference = _as_table(entry), _as_table(reference) if reference is not None else None
    measured = measured_as(entry, cache)
    seed = measured.seed if measured.seed is not None else seed
    key = _derived_key("stats intervals", INTERVALS_VERSION, stats_key(entry, reference, model, seed, measured))
    cached = cache.read_derived(key)
    if cached is not None:
        return cached
    stats = entry_stats(entry, reference, cache=cache, model=model, seed=seed, device=device)
    emb, texts, _ = _embeddings_and_texts(entry, model, device)
    ref_emb = _embeddings_and_texts(reference, model, device)[0] if reference is not None else None
    pool_emb = _embeddings_and_texts(measured.pool, model, device)[0] if measured.pool is not None else None
    intervals = jackknife_intervals(emb, texts, reference_emb=ref_emb, seed=seed, pool_emb=pool_emb,
                                    tau=measured.tau if measured.tau is not None else DCSCORE_TAU)
    methods = dict.fromkeys(intervals, "jackknife")
    agreement = stats.get("label_agreement") or {}
    if agreement.get("overall") is not None:
        intervals["label_agreement"] = wilson_interval(agreement["overall"], agreement["rows"])
        methods["label_agreement"] = "wilson"
    record = {"intervals": intervals, "methods": methods, "seed": seed}
    return cache.write_derived(key, record, [entry.key] + [t.key for t in (reference, measured.pool) if t is not None])


def entry_fidelity(entry: InputTable | Path | str, judge: InputTable | Path | str, *, cache: Cache,
                   model: str = "minilm", seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """The rows' label fidelity judged by an oracle (`fidelity.fit_judge` on the `judge` rows, real and held
    out), with 95% intervals: the observed share Wilson's, the corrected one the jackknife's over the rows
    (the judge's error rates held fixed). A derived record keyed by both tables."""
    from synthforge.fidelity import JUDGE_FOLDS, fit_judge, judged_fidelity
    from synthforge.metrics import jackknife_interval, jackknife_subsets, wilson_interval

    entry, judge_rows = _as_table(entry), _as_table(judge)
    key = _derived_key("judged fidelity", f"{INTERVALS_VERSION}/{JUDGE_FOLDS}", stats_key(entry, judge_rows, model, seed))
    cached = cache.read_derived(key)
    if cached is not None:
        return cached
    emb, _, labels = _embeddings_and_texts(entry, model, device)
    judge_emb, _, judge_labels = _embeddings_and_texts(judge_rows, model, device)
    if labels is None or judge_labels is None:
        raise UserError(f"judged fidelity needs a 'label' column in {entry} and in the judge's rows {judge_rows}")
    fitted = fit_judge(judge_emb, judge_labels, seed=seed)
    if fitted is None:
        raise UserError(f"the judge's rows {judge_rows} hold fewer than 2 labels", hint="name real rows of every label")
    found = judged_fidelity(fitted, emb, labels)
    intervals: dict[str, Any] = {}
    if found["fidelity_observed"] is not None:
        intervals["fidelity_observed"] = wilson_interval(found["fidelity_observed"], len(labels))
    if found["fidelity_corrected"] is not None and len(labels) >= 3:
        held_out = [judged_fidelity(fitted, emb[keep], [labels[i] for i in keep])["fidelity_corrected"]
                    for keep in jackknife_subsets(len(labels), seed)]
        intervals["fidelity_corrected"] = jackknife_interval(found["fidelity_corrected"], held_out)
    record = {**found, "judge_summary": fitted.summary(), "intervals": intervals,
              "methods": {"fidelity_observed": "wilson", "fidelity_corrected": "jackknife"}}
    return cache.write_derived(key, record, [entry.key, judge_rows.key])


def judge_pass_rate(judged: InputTable, column: str = "score", pass_score: int | None = None) -> dict[str, Any]:
    """The share of the rows a `judge` step saw that it passed, with its 95% Wilson interval: every criterion
    passed (`pass_score` None: the score, the share of criteria passed, is 1), or an integer score of at least
    `pass_score`. A row without a valid verdict (the judge's rejects) counts as not passed."""
    from synthforge.metrics import wilson_interval

    scores = judged.scan().select(column).collect().get_column(column)  # one column: not the rows' embeddings
    passed = int((scores >= pass_score).sum() if pass_score is not None else (scores == 1).sum())
    rows_in = judged.manifest.meta.get("rows_in")  # rows without a valid verdict are in rejects, not in `scores`
    seen = rows_in if isinstance(rows_in, int) else len(scores)
    share = passed / seen if seen else None
    intervals = {"judge_pass_rate": wilson_interval(share, seen)} if share is not None else {}
    return {"judge_pass_rate": share, "passed": passed, "rows": seen, "intervals": intervals,
            "methods": {"judge_pass_rate": "wilson"}}


def _derived_key(kind: str, version: str, of: str) -> str:
    from synthforge.keys import key_of

    return key_of({"derived": kind, "version": version, "of": of})


def _cluster_basis(measured: Measured, reference: InputTable | None) -> str:
    """What cluster entropy's k-means was fit on (metrics.diversity_metrics: the pool, else the reference, else the rows)."""
    if measured.pool is not None:
        return f"the pool the rows were drawn from ({measured.pool.step}, key {measured.pool.key[:12]})"
    if reference is not None:
        return "the reference"
    gone = f"; the pool they were drawn from ({measured.missing_pool[:12]}) is no longer cached" if measured.missing_pool else ""
    return f"the rows themselves{gone}"


def _as_table(value: InputTable | Path | str) -> InputTable:
    return value if isinstance(value, InputTable) else InputTable(Path(value))


def _agreement(emb, labels, ref_emb, ref_labels, seed: int) -> dict[str, Any] | None:
    """Label agreement of the rows with a probe trained on the reference (both need labels)."""
    if ref_emb is None or labels is None or ref_labels is None:
        return None
    from synthforge.fidelity import label_agreement

    found = label_agreement(emb, labels, ref_emb, ref_labels, seed)
    return found.summary(labels) if found is not None else None


def _embeddings_and_texts(table: InputTable, model: str, device: str) -> tuple["np.ndarray", "pl.Series | None", list[str] | None]:
    import polars as pl

    from synthforge.steps.rows import embeddings_of

    frame = table.frame()
    texts = frame["text"].cast(pl.Utf8).fill_null("") if "text" in frame.columns else None
    labels = frame["label"].cast(pl.Utf8).to_list() if "label" in frame.columns else None
    if EMBEDDING_COLUMN in frame.columns:
        return embeddings_of(frame), texts, labels
    if texts is None:
        raise UserError(f"{table} has neither an '{EMBEDDING_COLUMN}' nor a 'text' column")
    from synthforge.backends.embedder import get_embedder

    return get_embedder(model, device).embed(texts.to_list()), texts, labels


# -- display -------------------------------------------------------------------
def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text table of the metrics in `stats` (as returned by `entry_stats`)."""
    from synthforge.text_tables import render_table

    from synthforge.metric_registry import METRICS

    metrics = stats.get("metrics", stats)
    order = list(METRICS)
    metrics = dict(sorted(metrics.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    rows = [(_label_and_meaning(k)[0], _format_value(v), _label_and_meaning(k)[1]) for k, v in metrics.items()]
    agreement = stats.get("label_agreement")
    if agreement:
        rows += [(f"label agreement: {name}", _format_value(rate), "probe trained on the reference agrees")
                 for name, rate in {"all": agreement["overall"], **agreement["per_label"]}.items()]
    if stats.get("judge_scores"):
        from synthforge.generation.rubric import distribution_rows

        rows += distribution_rows(stats["judge_scores"])
    table = render_table(("metric", "value", "meaning"), rows, align_right=(1,))
    notes = [f"reference: {stats['reference']}"] if stats.get("reference") else []
    notes += [f"cluster entropy: k-means fit on {stats['cluster_basis']}"] if stats.get("cluster_basis") else []
    return "\n".join([table, *notes])


def _label_and_meaning(name: str) -> tuple[str, str]:
    from synthforge.metric_registry import info

    found = info(name)
    if found is None:
        return name, ""
    wording = {"diversity": "more diverse", "shift": "closer", "coverage": "more of the real distribution"}
    direction = f" ({found.better} = {wording.get(found.group, 'better')})" if found.better else ""
    return found.label, found.meaning + direction


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
