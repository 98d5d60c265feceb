"""Statistics across a study's variants: replicates pooled per cell, paired tests against real-only data.

A *cell* is one combination of the matrix values other than `replicate`. For each cell:

  score interval  mean over R replicates of the score (seed-averaged over seeds whose predictions
                  differ) +- t(df) * sqrt(s_rep^2 / R + v_test): s_rep^2 is the variance between
                  replicates (new real rows, generations and selections), v_test the bootstrap
                  variance of the replicate-averaged score over test rows (one resample of the test
                  rows shared by every replicate that has the same test rows). df is the
                  Welch-Satterthwaite degrees of freedom of that sum (R-1 for the first term, B-1 for
                  the second, B bootstrap resamples). With one replicate: the test-row percentile bootstrap.
  paired delta    the same interval for score(cell) - score(baseline) replicate by replicate, both
                  scored on the same (resampled) test rows; the baseline is the variant with the same
                  values, the same replicate and synthetic fraction 0 (real rows only).
  p_t             the headline test: paired t over the R per-replicate deltas (H0: mean delta 0 over new
                  draws of training rows, generations and selections); p_adj adjusts it across cells
                  (Holm by default, or Benjamini-Hochberg). Cells whose predictions are identical to an
                  earlier cell's in every replicate are the same test and are counted once.
  McNemar p       exact binomial test on the discordant test rows, pooled over replicates: conditional on
                  the drawn training sets (it ignores their variance), so never the headline.
  mde             the smallest |mean delta| the paired t would detect with 80% power at alpha 0.05
                  (mde_adj: at the first Holm step, alpha / cells), from the pooled within-cell SD of the deltas.

`level_analysis` fits delta ~ level + fraction + replicate on the per-replicate deltas (statsmodels OLS),
with the F test for the level and two declared contrasts: moderate levels minus the extremes, and the
(inverted) quadratic trend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from synthforge.metric_registry import Interval

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.cache import Entry

REPLICATE_VAR = "replicate"  # the variable a recipe's `replicates: N` adds (0..N-1)
INTERVAL_METHOD = "t (Welch-Satterthwaite df) over replicates + test-row bootstrap variance"
BOOTSTRAP_METHOD = "test-row percentile bootstrap (one replicate)"
PAIRED_T = "paired t over replicate deltas"
MCNEMAR = "exact McNemar on accuracy (one replicate: conditional on the drawn training set)"
POWER = 0.8
ALPHA = 0.05


@dataclass
class Run:
    """One variant's test predictions: truth and one prediction array per distinct seed (label indices);
    for sft also the test responses' summed NLL per row and seed, and their token counts."""

    test_ids: tuple[str, ...]
    truth: Any  # np.ndarray of label indices (empty when the responses are no labels)
    predictions: list[Any]  # np.ndarray per distinct seed
    losses: list[Any] = field(default_factory=list)  # np.ndarray of per-row NLL per seed (sft)
    tokens: Any = None  # np.ndarray of per-row response tokens (sft)


def prediction_runs(entries: dict[str, "Entry"]) -> tuple[dict[str, Run], int | None, float]:
    """Per built variant (name -> its train step's entry): its test truth and the predictions of each seed
    with distinct predictions; with the test rows' count and the confidence the step scored at."""
    import numpy as np

    runs, n_test, confidence = {}, None, 0.95
    for name, entry in entries.items():
        meta = entry.manifest.meta or {}
        labels = list(meta.get("labels") or [])
        index = {label: i for i, label in enumerate(labels)}
        losses = meta.get("method") == "sft"  # per-row response NLL; any answer outside the labels is one more class
        columns = ["seed", "id", "label", "prediction", *(["response_nll", "response_tokens"] if losses else [])]
        per_seed = entry.read_table("predictions", columns=columns).partition_by("seed", maintain_order=True)
        first = per_seed[0]
        truth = np.array([index[v] for v in first["label"].to_list()] if labels else [], dtype=np.int64)
        predictions, seen = [], set()
        for part in per_seed if labels else []:
            pred = np.array([index.get(v, len(labels)) for v in part["prediction"].to_list()], dtype=np.int64)
            if losses or pred.tobytes() not in seen:  # identical classifier seeds count once; LoRA seeds always differ
                seen.add(pred.tobytes())
                predictions.append(pred)
        runs[name] = Run(tuple(first["id"].to_list()), truth, predictions)
        if losses:
            runs[name].losses = [part["response_nll"].to_numpy() for part in per_seed]
            runs[name].tokens = first["response_tokens"].to_numpy()
        n_test, confidence = meta.get("n_test", n_test), meta.get("confidence", confidence)
    return runs, n_test, confidence


@dataclass
class CellStats:
    values: dict[str, Any]  # the cell's matrix values (no replicate)
    variants: list[str]
    score: Interval | None = None  # over replicates (None: no run)
    delta: Interval | None = None  # paired against the real-only baseline (None: no baseline)
    replicate_deltas: dict[Any, float] = field(default_factory=dict)  # replicate -> score(cell) - score(baseline)
    p_t: float | None = None  # paired t over replicate deltas (the headline test)
    p_mcnemar: float | None = None  # conditional on the drawn training sets
    p_adj: float | None = None  # p_t (McNemar with one replicate) adjusted across distinct cells
    duplicate_of: str | None = None  # an earlier cell with identical predictions in every replicate
    mde: float | None = None
    mde_adj: float | None = None
    discordant: tuple[int, int] | None = None  # (cell right & baseline wrong, the reverse)

    @property
    def name(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values.items()) or "default"


@dataclass
class Contrast:
    name: str
    estimate: float
    lo: float
    hi: float
    p: float
    weights: dict[Any, float]  # level -> weight (sum 0)


@dataclass
class LevelAnalysis:
    """delta ~ level + fraction + replicate within one group of the other matrix values."""

    group: dict[str, Any]
    n: int  # per-replicate deltas in the model
    f_level: float
    df_level: tuple[float, float]
    p_level: float
    contrasts: list[Contrast]
    formula: str


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
    """Per cell: score interval, paired delta to the real-only baseline, paired t, McNemar, adjusted p, power."""
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
    n_classes = 1 + max((int(max(r.truth.max(), *(p.max() for p in r.predictions))) for r in runs.values() if len(r.truth)),
                        default=-1)
    scorer = _Scorer(runs, score, n_classes, resamples, np.random.default_rng(seed))
    n_reps = max((len(v) for v in replicates.values()), default=1)
    method = INTERVAL_METHOD if n_reps > 1 else BOOTSTRAP_METHOD
    fingerprints: dict[bytes, str] = {}
    for key, cell in cells.items():
        reps = replicates[key]
        cell.score = _interval(scorer, {r: [(v, 1.0)] for r, v in reps.items()}, confidence)
        baseline = _baseline_of(key, fraction_var, replicates)
        if baseline is None or _is_zero(cell.values.get(fraction_var)):
            continue
        shared = sorted(set(reps) & set(baseline), key=_sort_key)
        pairs = {r: [(reps[r], 1.0), (baseline[r], -1.0)] for r in shared}
        cell.delta = _interval(scorer, pairs, confidence)
        cell.replicate_deltas = {r: scorer.point(parts) for r, parts in pairs.items()}
        cell.p_t = paired_t(list(cell.replicate_deltas.values()))
        cell.discordant = _discordant([(runs[reps[r]], runs[baseline[r]]) for r in shared])
        cell.p_mcnemar = _mcnemar(*cell.discordant) if any(runs[reps[r]].predictions for r in shared) else None
        cell.duplicate_of = fingerprints.setdefault(_fingerprint(runs, reps, shared), cell.name)
        if cell.duplicate_of == cell.name:
            cell.duplicate_of = None
    _adjust_cells(list(cells.values()), correction, headline_t=n_reps > 1)
    _power(list(cells.values()))
    return list(cells.values()), method


def headline_test(replicates: int) -> str:
    return PAIRED_T if replicates > 1 else MCNEMAR


def _adjust_cells(cells: list[CellStats], correction: Literal["holm", "bh"], headline_t: bool) -> None:
    """Adjust the headline p across distinct cells; a duplicate cell takes its original's adjusted p."""
    headline = (lambda c: c.p_t) if headline_t else (lambda c: c.p_mcnemar)
    tested = [c for c in cells if headline(c) is not None and c.duplicate_of is None]
    for cell, adjusted in zip(tested, adjust([headline(c) for c in tested], correction)):
        cell.p_adj = adjusted
    by_name = {c.name: c for c in tested}
    for cell in cells:
        if cell.duplicate_of is not None:
            cell.p_adj = by_name[cell.duplicate_of].p_adj


def _power(cells: list[CellStats]) -> None:
    tested = [c for c in cells if len(c.replicate_deltas) > 1 and c.duplicate_of is None]
    sd = pooled_sd([list(c.replicate_deltas.values()) for c in tested])
    if not sd:
        return
    for cell in cells:
        if len(cell.replicate_deltas) > 1:
            cell.mde = detectable_effect(sd, len(cell.replicate_deltas))
            cell.mde_adj = detectable_effect(sd, len(cell.replicate_deltas), ALPHA / max(len(tested), 1))


def paired_t(deltas: list[float]) -> float | None:
    """Two-sided one-sample t test of the per-replicate deltas against 0 (= the paired t of cell vs baseline)."""
    import numpy as np
    from scipy import stats

    values = np.asarray(deltas, dtype=float)
    if len(values) < 2:
        return None
    if np.ptp(values) == 0:  # no spread: exactly zero deltas are no evidence, any other constant is certain
        return 1.0 if values[0] == 0 else 0.0
    return float(stats.ttest_1samp(values, 0.0).pvalue)


def pooled_sd(groups: list[list[float]]) -> float | None:
    """The within-group SD pooled over groups (each with its own mean)."""
    import numpy as np

    usable = [np.asarray(g, dtype=float) for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in usable)
    if not dof:
        return None
    return float(math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in usable) / dof))


def detectable_effect(sd: float, replicates: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest |mean delta| a two-sided paired t over `replicates` deltas detects with `power` (statsmodels)."""
    from statsmodels.stats.power import TTestPower

    if replicates < 2 or sd <= 0:
        return None
    return float(TTestPower().solve_power(nobs=replicates, alpha=alpha, power=power, alternative="two-sided")) * sd


def power_table(cells: list[CellStats], replicates: tuple[int, ...] = (3, 5, 10, 20)) -> list[dict[str, Any]]:
    """Smallest detectable delta for R replicates, from the study's pooled within-cell SD of the deltas."""
    tested = [c for c in cells if len(c.replicate_deltas) > 1 and c.duplicate_of is None]
    sd = pooled_sd([list(c.replicate_deltas.values()) for c in tested])
    if not sd:
        return []
    return [
        {"replicates": r, "sd_delta": sd, "mde": detectable_effect(sd, r),
         "mde_adj": detectable_effect(sd, r, ALPHA / max(len(tested), 1)), "cells": len(tested)}
        for r in replicates
    ]


def _fingerprint(runs: dict[str, Run], reps: dict[Any, str], shared: list[Any]) -> bytes:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for replicate in shared:
        run = runs[reps[replicate]]
        digest.update(repr((replicate, len(run.test_ids))).encode())
        for prediction in [*run.predictions, *run.losses]:
            digest.update(prediction.tobytes())
    return digest.digest()


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


class _Scorer:
    """Each variant's score and its score on every bootstrap resample of its test rows, computed once."""

    def __init__(self, runs: dict[str, Run], metric: str, n_classes: int, resamples: int, rng) -> None:
        self.runs, self.metric, self.n_classes, self.resamples = runs, metric, n_classes, resamples
        self.weights = _resample_weights(runs, resamples, rng)
        self._points: dict[str, float] = {}
        self._boots: dict[str, Any] = {}

    def score(self, name: str) -> float:
        if name not in self._points:
            self._points[name], self._boots[name] = self._compute(self.runs[name])
        return self._points[name]

    def boot(self, name: str):
        self.score(name)
        return self._boots[name]

    def point(self, parts: list[tuple[str, float]]) -> float:
        return sum(sign * self.score(name) for name, sign in parts)

    def _compute(self, run: Run) -> tuple[float, Any]:
        """Seed-averaged score, and per resample (one matrix product per seed: resamples x label pairs)."""
        import numpy as np

        from synthforge.training.scoring import LOSS_METRICS, loss_scores, scores_from_cms

        k = self.n_classes
        weights = np.vstack([np.ones((1, len(run.test_ids))), self.weights[run.test_ids]])
        if self.metric in LOSS_METRICS:
            mean = np.mean([loss_scores(nll, run.tokens, weights)[self.metric] for nll in run.losses], axis=0)
            return float(mean[0]), mean[1:]
        metric = "accuracy" if self.metric == "exact_match" else self.metric  # sft: exact match is accuracy on labels
        values = []
        for prediction in run.predictions:
            onehot = np.zeros((len(run.truth), k * k))
            onehot[np.arange(len(run.truth)), run.truth * k + prediction] = 1.0
            values.append(scores_from_cms((weights @ onehot).reshape(-1, k, k))[metric])
        mean = np.mean(values, axis=0)
        return float(mean[0]), mean[1:]


def _resample_weights(runs: dict[str, Run], resamples: int, rng) -> dict[tuple[str, ...], Any]:
    """Bootstrap count weights per distinct test set (replicates sharing test rows share resamples)."""
    import numpy as np

    out = {}
    for run in runs.values():
        if run.test_ids not in out:
            n = len(run.test_ids)
            out[run.test_ids] = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(float) if resamples else np.zeros((0, n))
    return out


def _interval(scorer: _Scorer, terms: dict[Any, list[tuple[str, float]]], confidence: float) -> Interval | None:
    """Mean over replicates of sum(sign * score) and its interval (see the module docstring)."""
    import numpy as np
    from scipy import stats

    if not terms:
        return None
    per_rep = np.array([scorer.point(parts) for parts in terms.values()])
    mean = float(per_rep.mean())
    boot = np.mean([sum(sign * scorer.boot(name) for name, sign in parts) for parts in terms.values()], axis=0) \
        if scorer.resamples else np.zeros(0)
    if len(per_rep) > 1:
        between = per_rep.var(ddof=1) / len(per_rep)
        test = boot.var(ddof=1) if len(boot) > 1 else 0.0
        df = satterthwaite_df([(between, len(per_rep) - 1), (test, max(len(boot) - 1, 1))])
        half = float(stats.t.ppf(0.5 + confidence / 2, df=df)) * math.sqrt(between + test) if df else 0.0
        return Interval(mean, mean - half, mean + half, df)
    if len(boot) < 2:
        return Interval(mean)
    alpha = (1 - confidence) / 2
    return Interval(mean, float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha)))


def satterthwaite_df(parts: list[tuple[float, int]]) -> float | None:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates [(variance, its df), ...]."""
    total = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts if df > 0)
    if total <= 0 or denominator <= 0:
        return None
    return float(total * total / denominator)


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
    from statsmodels.stats.multitest import multipletests

    if method not in ("holm", "bh"):
        raise ValueError(f"unknown correction '{method}' (holm or bh)")
    if not p_values:
        return []
    adjusted = multipletests(p_values, method="holm" if method == "holm" else "fdr_bh")[1]
    return [float(v) for v in adjusted]


# -- the level: a model on per-replicate deltas ----------------------------------
def level_analysis(
    cells: list[CellStats], level_var: str, fraction_var: str = "synthetic_fraction", confidence: float = 0.95
) -> list[LevelAnalysis]:
    """Per group of the other matrix values: OLS delta ~ C(level) + C(fraction) + C(replicate), F test, contrasts.

    Groups where the deltas do not change with the level (e.g. an arm that takes no synthetic rows) are skipped.
    """
    groups: dict[tuple, list[CellStats]] = {}
    for cell in cells:
        if level_var in cell.values and cell.replicate_deltas:  # a duplicate of another arm's cell is still this arm's data
            rest = tuple((k, _hashable(v)) for k, v in cell.values.items() if k not in (level_var, fraction_var))
            groups.setdefault(rest, []).append(cell)
    found = []
    for rest, members in groups.items():
        analysis = _fit_levels(members, level_var, fraction_var, confidence)
        if analysis is not None:
            analysis.group = dict(rest)
            found.append(analysis)
    return found


def _fit_levels(cells: list[CellStats], level_var: str, fraction_var: str, confidence: float) -> LevelAnalysis | None:
    import numpy as np
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rows = [
        {"delta": delta, "level": cell.values[level_var], "fraction": str(cell.values.get(fraction_var)), "replicate": str(r)}
        for cell in cells for r, delta in cell.replicate_deltas.items()
    ]
    frame = pd.DataFrame(rows)
    levels = sorted({cell.values[level_var] for cell in cells}, key=_sort_key)
    if len(levels) < 3 or frame.groupby("level")["delta"].apply(tuple).nunique() < 2:
        return None
    frame["level"] = pd.Categorical(frame["level"], categories=levels)
    terms = ["C(level)"] + [f"C({name})" for name in ("fraction", "replicate") if frame[name].nunique() > 1]
    formula = "delta ~ " + " + ".join(terms)
    model = smf.ols(formula, data=frame).fit()
    if model.df_resid < 1:
        return None
    table = anova_lm(model, typ=2)
    row = table.loc["C(level)"]
    contrasts = []
    for name, weights in level_contrasts(levels).items():
        vector = np.zeros(len(model.params))
        for level, weight in weights.items():
            column = f"C(level)[T.{level}]"
            if column in model.params.index:
                vector[model.params.index.get_loc(column)] = weight
        test = model.t_test(vector)
        lo, hi = (float(v) for v in np.asarray(test.conf_int(alpha=1 - confidence)).ravel())
        contrasts.append(Contrast(name, float(np.asarray(test.effect).ravel()[0]), lo, hi, float(np.asarray(test.pvalue).ravel()[0]), weights))
    return LevelAnalysis({}, len(frame), float(row["F"]), (float(row["df"]), float(model.df_resid)), float(row["PR(>F)"]),
                         contrasts, formula.replace("level", level_var).replace("fraction", fraction_var))


def level_contrasts(levels: list[Any]) -> dict[str, dict[Any, float]]:
    """The paper's hypothesis as two contrasts over the level means; positive = moderate levels do better.

    `moderate - extremes`: mean of the inner levels minus the mean of the lowest and highest;
    `inverted quadratic`: minus the orthogonal quadratic polynomial in the level (its ranks when not numeric),
    scaled so that its positive weights sum to 1.
    """
    import numpy as np

    x = np.array([float(v) if _numeric(v) else float(i) for i, v in enumerate(levels)])
    inner = 1.0 / (len(levels) - 2)
    moderate = {level: (-0.5 if i in (0, len(levels) - 1) else inner) for i, level in enumerate(levels)}
    design = np.column_stack([np.ones_like(x), x])
    squared = x**2
    residual = squared - design @ np.linalg.lstsq(design, squared, rcond=None)[0]
    weights = -residual / -residual[residual < 0].sum()  # the inner levels' weights sum to 1
    return {"moderate - extremes": moderate, "inverted quadratic": dict(zip(levels, (float(w) for w in weights)))}


def _numeric(value: Any) -> bool:
    try:
        float(value)
        return not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def _sort_key(value: Any) -> tuple:
    return (0, float(value), "") if _numeric(value) else (1, 0.0, str(value))


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
