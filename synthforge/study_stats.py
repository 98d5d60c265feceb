"""Statistics across a study's variants: replicates pooled per cell, paired tests against real-only data.

A *cell* is one combination of the matrix values other than `replicate`. For each cell:

  score interval  mean over replicates of the score (seed-averaged over seeds whose predictions
                  differ) +- t(R-1) * sqrt(s_rep^2 / R + v_test): s_rep^2 is the variance between
                  replicates (new real rows, generations and selections), v_test the bootstrap
                  variance of the replicate-averaged score over test rows (one resample of the test
                  rows shared by every replicate that has the same test rows). The two add up to a
                  slightly conservative interval for "this design on a new draw, scored on a new test
                  set". With one replicate it is the test-row percentile bootstrap alone.
  paired delta    the same interval for score(cell) - score(baseline) replicate by replicate, both
                  scored on the same (resampled) test rows; the baseline is the variant with the same
                  values, the same replicate and synthetic fraction 0 (real rows only).
  McNemar p       exact two-sided binomial test on the discordant test rows (cell right, baseline
                  wrong vs the reverse), pooled over replicates and seeds (accuracy, not macro-F1).
  adjusted p      Holm (default) or Benjamini-Hochberg across all cells that have a baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

REPLICATE_VAR = "replicate"
INTERVAL_METHOD = "t over replicates (df = R-1) + test-row bootstrap variance"
BOOTSTRAP_METHOD = "test-row percentile bootstrap (one replicate)"


@dataclass
class Run:
    """One variant's test predictions: truth and one prediction array per distinct seed (label indices)."""

    test_ids: tuple[str, ...]
    truth: Any  # np.ndarray of label indices
    predictions: list[Any]  # np.ndarray per distinct seed


@dataclass
class CellStats:
    values: dict[str, Any]  # the cell's matrix values (no replicate)
    variants: list[str]
    score: dict[str, float | None] = field(default_factory=dict)  # mean, lo, hi
    delta: dict[str, float | None] = field(default_factory=dict)  # mean, lo, hi
    p_mcnemar: float | None = None
    p_adj: float | None = None
    discordant: tuple[int, int] | None = None  # (cell right & baseline wrong, the reverse)


def cell_of(values: dict[str, Any]) -> tuple:
    return tuple((k, _hashable(v)) for k, v in values.items() if k != REPLICATE_VAR)


def study_statistics(
    variants: list[tuple[str, dict[str, Any]]],
    runs: dict[str, Run],
    *,
    fraction_var: str = "synthetic_fraction",
    score: str = "accuracy",
    confidence: float = 0.95,
    resamples: int = 1000,
    correction: Literal["holm", "bh"] = "holm",
    seed: int = 0,
) -> tuple[list[CellStats], str]:
    """Per cell: score interval, paired delta to the real-only baseline, McNemar p, adjusted p; and the interval method."""
    import numpy as np

    cells: dict[tuple, CellStats] = {}
    replicates: dict[tuple, dict[Any, str]] = {}
    for name, values in variants:
        if name not in runs:
            continue
        key = cell_of(values)
        cells.setdefault(key, CellStats({k: v for k, v in values.items() if k != REPLICATE_VAR}, []))
        cells[key].variants.append(name)
        replicates.setdefault(key, {})[values.get(REPLICATE_VAR, 0)] = name
    n_classes = 1 + max(int(max(r.truth.max(), *(p.max() for p in r.predictions))) for r in runs.values()) if runs else 0
    weights = _resample_weights(runs, resamples, np.random.default_rng(seed))
    n_reps = max((len(v) for v in replicates.values()), default=1)
    method = INTERVAL_METHOD if n_reps > 1 else BOOTSTRAP_METHOD
    for key, cell in cells.items():
        reps = replicates[key]
        cell.score = _interval({r: [(runs[v], 1.0)] for r, v in reps.items()}, weights, score, n_classes, confidence)
        baseline = _baseline_of(key, fraction_var, replicates)
        if baseline is None or _is_zero(cell.values.get(fraction_var)):
            continue
        shared = sorted(set(reps) & set(baseline))
        pairs = {r: [(runs[reps[r]], 1.0), (runs[baseline[r]], -1.0)] for r in shared}
        cell.delta = _interval(pairs, weights, score, n_classes, confidence)
        cell.discordant = _discordant([(runs[reps[r]], runs[baseline[r]]) for r in shared])
        cell.p_mcnemar = _mcnemar(*cell.discordant)
    tested = [c for c in cells.values() if c.p_mcnemar is not None]
    for cell, adjusted in zip(tested, adjust([c.p_mcnemar for c in tested], correction)):
        cell.p_adj = adjusted
    return list(cells.values()), method


def _baseline_of(key: tuple, fraction_var: str, replicates: dict[tuple, dict[Any, str]]) -> dict[Any, str] | None:
    """The real-only cell with the same other values; any real-only cell when none matches exactly."""
    wanted = tuple((k, 0.0 if k == fraction_var else v) for k, v in key)
    for other, reps in replicates.items():
        if tuple((k, 0.0 if k == fraction_var and _is_zero(v) else v) for k, v in other) == wanted:
            return reps
    return None


def _is_zero(value: Any) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _resample_weights(runs: dict[str, Run], resamples: int, rng) -> dict[tuple[str, ...], Any]:
    """Bootstrap count weights per distinct test set (replicates sharing test rows share resamples)."""
    import numpy as np

    out = {}
    for run in runs.values():
        if run.test_ids not in out:
            n = len(run.test_ids)
            out[run.test_ids] = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(float) if resamples else np.zeros((0, n))
    return out


def _score(run: Run, metric: str, n_classes: int, weights=None) -> float:
    import numpy as np

    from synthforge.training.scoring import confusion_matrix, scores_from_cm

    return float(np.mean([scores_from_cm(confusion_matrix(run.truth, p, n_classes, weights))[metric] for p in run.predictions]))


def _interval(terms: dict[Any, list[tuple[Run, float]]], weights, metric: str, n_classes: int, confidence: float) -> dict[str, float | None]:
    """Mean over replicates of sum(sign * score) and its interval (see the module docstring)."""
    import numpy as np
    from scipy import stats

    if not terms:
        return {}
    per_rep = np.array([sum(sign * _score(run, metric, n_classes) for run, sign in parts) for parts in terms.values()])
    mean = float(per_rep.mean())
    first_run = next(iter(terms.values()))[0][0]
    resamples = len(weights[first_run.test_ids])
    boot = np.array([
        np.mean([sum(sign * _score(run, metric, n_classes, weights[run.test_ids][b]) for run, sign in parts) for parts in terms.values()])
        for b in range(resamples)
    ]) if resamples else np.zeros(0)
    if len(per_rep) > 1:
        spread = math.sqrt(per_rep.var(ddof=1) / len(per_rep) + (boot.var(ddof=1) if len(boot) > 1 else 0.0))
        half = float(stats.t.ppf(0.5 + confidence / 2, df=len(per_rep) - 1)) * spread
        return {"mean": mean, "lo": mean - half, "hi": mean + half}
    if len(boot) < 2:
        return {"mean": mean, "lo": None, "hi": None}
    alpha = (1 - confidence) / 2
    return {"mean": mean, "lo": float(np.quantile(boot, alpha)), "hi": float(np.quantile(boot, 1 - alpha))}


def _discordant(pairs: list[tuple[Run, Run]]) -> tuple[int, int]:
    only_cell = only_base = 0
    for cell, base in pairs:
        for p_cell, p_base in zip(cell.predictions, base.predictions):  # seeds paired in order
            right_cell, right_base = p_cell == cell.truth, p_base == base.truth
            only_cell += int((right_cell & ~right_base).sum())
            only_base += int((~right_cell & right_base).sum())
    return only_cell, only_base


def _mcnemar(only_cell: int, only_base: int) -> float:
    from scipy.stats import binomtest

    n = only_cell + only_base
    return 1.0 if n == 0 else float(binomtest(only_cell, n, 0.5).pvalue)


def adjust(p_values: list[float], method: Literal["holm", "bh"] = "holm") -> list[float]:
    """Holm step-down (family-wise error) or Benjamini-Hochberg (false discovery rate) adjusted p-values."""
    import numpy as np

    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    if method == "holm":
        running = 0.0
        for rank, index in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[index]))
            adjusted[index] = running
    elif method == "bh":
        running = 1.0
        for rank in range(m - 1, -1, -1):
            index = order[rank]
            running = min(running, p[index] * m / (rank + 1))
            adjusted[index] = min(1.0, running)
    else:
        raise ValueError(f"unknown correction '{method}' (holm or bh)")
    return [float(v) for v in adjusted]


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
