"""Classification scores with intervals: over seeds (Student t) and over the test set (bootstrap).

Everything here is numpy/scipy on integer label indices, and JSON-able on the way out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("accuracy", "macro_f1")
LOSS_METRICS = ("response_loss", "perplexity")  # sft: per-token loss of the reference responses, and exp of it


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    flat = np.bincount(y_true * n_classes + y_pred, weights=weights, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (no predictions / no support)."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def scores_from_cm(cm: np.ndarray) -> dict[str, float]:
    total = cm.sum()
    accuracy = float(np.trace(cm) / total) if total else 0.0
    classes = per_class(cm)
    # Macro-F1 over classes present in the test set (as sklearn does for labels=y_true classes).
    present = classes["support"] > 0
    macro_f1 = float(classes["f1"][present].mean()) if present.any() else 0.0
    return {"accuracy": accuracy, "macro_f1": macro_f1}


def scores_from_cms(cms: np.ndarray) -> dict[str, np.ndarray]:
    """`scores_from_cm` for a stack of confusion matrices (shape: matrices x classes x classes), vectorised."""
    total = cms.sum(axis=(1, 2))
    tp = np.diagonal(cms, axis1=1, axis2=2)
    predicted, support = cms.sum(axis=1), cms.sum(axis=2)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp, dtype=float), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp, dtype=float), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
    present = support > 0
    n_present = present.sum(axis=1)
    macro_f1 = np.divide((f1 * present).sum(axis=1), n_present, out=np.zeros(len(cms)), where=n_present > 0)
    accuracy = np.divide(tp.sum(axis=1), total, out=np.zeros(len(cms)), where=total > 0)
    return {"accuracy": accuracy, "macro_f1": macro_f1}


def t_interval(values: list[float], confidence: float = 0.95) -> list[float] | None:
    """Student-t interval of the mean over seeds; None with fewer than two values."""
    from scipy import stats

    if len(values) < 2:
        return None
    data = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.5 + confidence / 2, df=len(data) - 1) * data.std(ddof=1) / np.sqrt(len(data))
    return [float(data.mean() - half), float(data.mean() + half)]


def bootstrap_intervals(
    y_true: np.ndarray,
    predictions: list[np.ndarray],
    n_classes: int,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile intervals of the seed-averaged scores over test-set resamples.

    Each resample reweights the test rows (multinomial counts); all seeds are
    scored on the same resample, so the interval is about the test set, not the seeds.
    """
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws = {metric: np.empty(resamples) for metric in METRICS}
    for b in range(resamples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        per_seed = [scores_from_cm(confusion_matrix(y_true, pred, n_classes, weights)) for pred in predictions]
        for metric in METRICS:
            draws[metric][b] = np.mean([s[metric] for s in per_seed])
    alpha = (1 - confidence) / 2
    return {m: [float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))] for m, d in draws.items()}


def summarize(
    y_true: np.ndarray,
    predictions: list[np.ndarray],
    labels: list[str],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Scores over seeds with both intervals, per-class scores and the confusion matrix (summed over seeds)."""
    k = len(labels)
    matrices = [confusion_matrix(y_true, pred, k).astype(np.int64) for pred in predictions]
    per_seed = [scores_from_cm(cm) for cm in matrices]
    boot = bootstrap_intervals(y_true, predictions, k, resamples, confidence, seed) if resamples else {}
    scores = {metric: _metric_summary([s[metric] for s in per_seed], boot.get(metric), confidence) for metric in METRICS}
    classes = [per_class(cm) for cm in matrices]
    return {
        "scores": scores,
        "per_seed_scores": per_seed,
        "per_class": {
            label: {
                name: float(np.mean([c[name][i] for c in classes])) for name in ("precision", "recall", "f1", "support")
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": {"labels": labels, "matrix": np.sum(matrices, axis=0).tolist(), "summed_over_seeds": len(matrices)},
        "confidence": confidence,
        "bootstrap_resamples": resamples,
    }


def _metric_summary(values: list[float], boot: list[float] | None, confidence: float) -> dict[str, Any]:
    seed_ci = t_interval(values, confidence)
    # The seed interval is the headline when seeds actually vary; a deterministic
    # method (linear probe) or a single seed falls back to the test-set bootstrap.
    use_seed = seed_ci is not None and seed_ci[1] - seed_ci[0] > 0
    ci = seed_ci if use_seed else boot
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "values": [float(v) for v in values],
        "seed_ci": seed_ci,
        "bootstrap_ci": boot,
        "ci": ci,
        "ci_method": "seeds-t" if use_seed else ("bootstrap" if boot else None),
    }


def loss_scores(nll: np.ndarray, tokens: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-token loss (summed NLL over summed tokens: a ratio, so rows weigh by their length) and perplexity;
    one value per row of `weights` (test-row counts), or one value unweighted."""
    weights = np.ones((1, len(nll))) if weights is None else np.atleast_2d(weights)
    loss = (weights @ nll) / np.maximum(weights @ tokens, 1)
    return {"response_loss": loss, "perplexity": np.exp(loss)}


def summarize_losses(
    nlls: list[np.ndarray], tokens: np.ndarray, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """`summarize` for response losses: per seed, with the seed-t and test-row bootstrap intervals."""
    per_seed = [{m: float(v[0]) for m, v in loss_scores(nll, tokens).items()} for nll in nlls]
    boot = {}
    if resamples:
        rng = np.random.default_rng(seed)
        n = len(tokens)
        weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(float)
        draws = [loss_scores(nll, tokens, weights) for nll in nlls]
        alpha = (1 - confidence) / 2
        for metric in LOSS_METRICS:
            averaged = np.mean([d[metric] for d in draws], axis=0)
            boot[metric] = [float(np.quantile(averaged, alpha)), float(np.quantile(averaged, 1 - alpha))]
    scores = {m: _metric_summary([s[m] for s in per_seed], boot.get(m), confidence) for m in LOSS_METRICS}
    return {"scores": scores, "per_seed_scores": per_seed}
