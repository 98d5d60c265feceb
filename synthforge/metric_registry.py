"""Every metric synthforge reports, once: its name, display label, meaning and which direction is better.

`stats`, `report` and `diff` read this table, so a metric a step produces shows up
under the same label everywhere, and a report's columns say what they measure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class MetricInfo:
    name: str  # the key in a step's meta (the last part of a flattened column)
    label: str
    meaning: str
    better: Literal["higher", "lower"] | None  # None: neither (a count, a setting)
    group: Literal["diversity", "shift", "coverage", "fidelity", "score", "size"]


_ALL = (
    MetricInfo("rows", "rows", "rows in the table", None, "size"),
    MetricInfo("vendi", "Vendi score", "effective number of distinct rows (cosine kernel)", "higher", "diversity"),
    MetricInfo("dcscore", "DCScore", "softmax-kernel diversity at temperature tau, in [1, n]", "higher", "diversity"),
    MetricInfo("mean_cosine_distance", "mean cosine distance", "average over pairs", "higher", "diversity"),
    MetricInfo("cluster_entropy", "cluster entropy", "k-means shares, 0..1", "higher", "diversity"),
    MetricInfo("distinct_1", "distinct-1", "unique unigrams / unigrams", "higher", "diversity"),
    MetricInfo("distinct_2", "distinct-2", "unique bigrams / bigrams", "higher", "diversity"),
    MetricInfo("nn_real_similarity", "nearest-real similarity", "mean cosine to the nearest reference row", "higher", "shift"),
    MetricInfo("mmd_rbf", "MMD^2 (RBF)", "squared MMD to the reference", "lower", "shift"),
    MetricInfo("frechet", "Frechet distance", "between Gaussians fitted to rows and reference", "lower", "shift"),
    MetricInfo("prdc_precision", "precision (PRDC)", "share of rows inside a real row's k-NN ball: on the real manifold", "higher", "coverage"),
    MetricInfo("prdc_density", "density (PRDC)", "mean real k-NN balls per row / k: about 1 when rows look real", "higher", "coverage"),
    MetricInfo("prdc_recall", "recall (PRDC)", "share of real rows inside a row's k-NN ball", "higher", "coverage"),
    MetricInfo("prdc_coverage", "coverage (PRDC)", "share of real rows whose k-NN ball holds a row: real modes reached", "higher", "coverage"),
    MetricInfo("label_agreement", "label agreement (in-sample probe)", "share of rows whose label a probe trained on the reference rows agrees with (weak with few rows)", "higher", "fidelity"),
    MetricInfo("fidelity_observed", "judged fidelity (raw)", "share of rows an oracle judge (probe on a large held-out real pool) gives their own label", "higher", "fidelity"),
    MetricInfo("fidelity_corrected", "judged fidelity", "the raw judged share corrected for the judge's cross-validated sensitivity and specificity", "higher", "fidelity"),
    MetricInfo("judge_pass_rate", "LLM-judge pass rate", "share of rows a judge step passes (every criterion, or a score of at least the pass score); a row without a valid verdict fails", "higher", "fidelity"),
    MetricInfo("accuracy", "accuracy", "share of test rows classified correctly", "higher", "score"),
    MetricInfo("macro_f1", "macro-F1", "F1 averaged over labels", "higher", "score"),
    MetricInfo("exact_match", "exact match", "share of held-out prompts whose greedy answer is their label (sft)", "higher", "score"),
    MetricInfo("response_loss", "response loss", "per-token negative log-likelihood of held-out real responses, nats (sft)", "lower", "score"),
    MetricInfo("perplexity", "perplexity", "exp of the per-token response loss on held-out real responses (sft)", "lower", "score"),
    MetricInfo("n_train", "n_train", "training rows", None, "size"),
    MetricInfo("n_test", "n_test", "test rows", None, "size"),
)

METRICS: dict[str, MetricInfo] = {m.name: m for m in _ALL}

# Short names a user may write (tune targets), each for one metric above. PRDC's coverage is written without
# its prefix in the literature (Naeem et al. 2020): `coverage` is its documented name. Precision and recall keep
# the prefix: a classifier's precision and recall are other metrics.
ALIASES: dict[str, str] = {"coverage": "prdc_coverage"}


def canonical(name: str) -> str | None:
    """The metric a name (or an alias) stands for; None when it names none."""
    name = ALIASES.get(name, name)
    return name if name in METRICS else None


def resolve(name: str, allowed: tuple[str, ...], *, file: str | None = None, line: int | None = None,
            field: str | None = None, what: str = "here") -> str:
    """`name` as the metric it stands for, one of `allowed`; else a one-line error at file:line: field listing
    the valid names (each alias beside its metric)."""
    from synthforge.errors import UserError, did_you_mean

    found = canonical(name)
    if found in allowed:
        return found
    written = [*allowed, *(alias for alias, target in ALIASES.items() if target in allowed)]
    close = did_you_mean(name, written)
    raise UserError(f"no metric '{name}' {what}", file=file, line=line, field=field,
                    hint=(f"{close} " if close else "") + f"metrics: {', '.join(_with_aliases(allowed))}")


def _with_aliases(allowed: tuple[str, ...]) -> list[str]:
    shorts = {target: alias for alias, target in ALIASES.items()}
    return [f"{shorts[m]} ({m})" if m in shorts else m for m in allowed]


def info(name: str) -> MetricInfo | None:
    """The entry for a metric name (or alias) or a flattened column ending in its name (`selected.metrics.vendi`)."""
    return METRICS.get(canonical(name) or "") or METRICS.get(name.rsplit(".", 1)[-1])


def names(*groups: str) -> tuple[str, ...]:
    return tuple(m.name for m in _ALL if m.group in groups)


def label(name: str) -> str:
    found = info(name)
    return found.label if found else name


def verdict(name: str, delta: float) -> str | None:
    """'better' / 'worse' for a change of a metric with a direction, else None."""
    found = info(name)
    if found is None or found.better is None or delta == 0:
        return None
    return "better" if (delta > 0) == (found.better == "higher") else "worse"


# Manifest meta fields that say how a run went (time, speed, cache hits, retries, shards), not what it made:
# two builds of the same output differ in them, so `diff` and its gates do not list them as changes.
RUN_FACTS = frozenset({
    "seconds", "train_seconds", "rows_per_s", "tokens_per_s", "responses_cached", "responses_generated",
    "responses_from_other_process", "generated_prompt_tokens", "generated_completion_tokens", "retries",
    "rate_limited", "shards", "shards_resumed", "iterations", "endpoint_events",
})


@dataclass(frozen=True)
class Interval:
    """A score with its interval: the one shape every reader uses (diff, report, study statistics).
    `lo`/`hi` are None when there is no interval; `df` is the t interval's degrees of freedom (None: a
    percentile bootstrap, or none). Manifests store a train score as {"mean", "ci": [lo, hi], ...} (`read`)."""

    mean: float
    lo: float | None = None
    hi: float | None = None
    df: float | None = None

    @classmethod
    def read(cls, summary: Any, bounds: str = "ci") -> "Interval | None":
        """The interval a stored summary holds ({"mean": m, bounds: [lo, hi] or null}), None when it holds none;
        `bounds` picks which pair of a train score: `ci` (the headline), `seed_ci` or `bootstrap_ci`."""
        if not isinstance(summary, dict) or not _is_number(summary.get("mean")):
            return None
        pair = summary.get(bounds)
        lo, hi = pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else (None, None)
        return cls(float(summary["mean"]), _float_or_none(lo), _float_or_none(hi))

    @property
    def bounds(self) -> list[float] | None:
        return [self.lo, self.hi] if self.lo is not None and self.hi is not None else None


def flatten_metrics(meta: Any, prefix: str = "", *, intervals: bool = True,
                    skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, Any]]:
    """Every scalar in a step's meta by dotted name (`prefix.a.b`), lists left out, keys in `skip` left out at any
    depth; with `intervals`, a summary with a numeric `mean` is one `Interval` (not its parts). The one walk of a
    manifest's meta: `diff` compares what it yields, `report` makes its columns of it."""
    if isinstance(meta, dict):
        interval = Interval.read(meta) if intervals else None
        if interval is not None:
            yield prefix, interval
            return
        for key, value in meta.items():
            if key not in skip:
                yield from flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key), intervals=intervals, skip=skip)
    elif (meta is None or isinstance(meta, (bool, int, float, str))) and prefix:
        yield prefix, meta


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float_or_none(value: Any) -> float | None:
    return float(value) if _is_number(value) else None
