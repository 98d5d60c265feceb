"""Is a synthetic row what it claims to be? Label agreement with real data, and copies of real texts.

`label_agreement` fits a linear probe on the real (reference) rows' embeddings and
labels, predicts every synthetic row and reports how often the prediction agrees
with the label the row was generated for, overall and per label. A row the probe
disagrees with is either mislabelled (the LLM wrote a positive review when asked
for a negative one) or hard; at low agreement rates the former dominates.

That probe is weak when the reference is the few real training rows (64 rows: about 0.65
accurate on Rotten Tomatoes, so even perfectly labelled rows "agree" about 0.65 of the time):
it is for production recipes, where no other labelled data exists. Studies use an
**oracle judge** (`judge`, `judged_fidelity`): a probe trained on a large real pool disjoint
from the training and test rows, with its JUDGE_FOLDS-fold cross-validated sensitivity and
specificity per label, and the observed agreement corrected for them (Rogan & Gladen 1978,
one label against the rest: (observed + specificity - 1) / (sensitivity + specificity - 1),
clipped to [0, 1]).

`copied_ngram_share` is the share of a text's word n-grams that occur in any of
the source texts (few-shot examples, the real training rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

COPY_NGRAM = 4
JUDGE_FOLDS = 5
IN_SAMPLE_PROBE = "in-sample probe on the reference rows (weak; for production recipes)"
_JUDGES: dict[bytes, "Judge"] = {}  # fitted judges by content: every select of a study shares one pool


@dataclass
class Agreement:
    predicted: list[str]  # the probe's label for each synthetic row
    agrees: "np.ndarray"  # bool per row

    def summary(self, labels: list[str]) -> dict[str, Any]:
        """{'overall': rate, 'per_label': {label: rate}, 'rows': n} (rates in [0, 1])."""
        import numpy as np

        labels_arr = np.asarray([str(v) for v in labels])
        per_label = {
            name: float(self.agrees[labels_arr == name].mean()) for name in sorted(set(labels_arr.tolist()))
        }
        overall = float(self.agrees.mean()) if len(self.agrees) else None
        return {"overall": overall, "per_label": per_label, "rows": int(len(self.agrees)), "probe": IN_SAMPLE_PROBE}


def label_agreement(
    emb: "np.ndarray", labels: list[Any], reference_emb: "np.ndarray", reference_labels: list[Any], seed: int = 0
) -> Agreement | None:
    """The reference-trained probe's verdict on each row; None when the reference has fewer than 2 labels."""
    import numpy as np

    from synthforge.training.linear_probe import fit_linear_probe

    names = sorted({str(v) for v in reference_labels})
    if len(names) < 2 or len(emb) == 0:
        return None
    index = {name: i for i, name in enumerate(names)}
    targets = np.array([index[str(v)] for v in reference_labels], dtype=np.int64)
    probe = fit_linear_probe(np.asarray(reference_emb, dtype=np.float32), targets, len(names), seed=seed)
    predicted = [names[i] for i in probe.predict_proba(np.asarray(emb, dtype=np.float32)).argmax(axis=1)]
    agrees = np.array([p == str(t) for p, t in zip(predicted, labels)], dtype=bool)
    return Agreement(predicted, agrees)


@dataclass
class Judge:
    names: list[str]
    probe: Any  # training.linear_probe.LinearProbe fitted on every pool row
    cv_counts: "np.ndarray"  # cross-validated confusion counts, rows = true label, columns = judged label

    def sensitivity(self, i: int) -> float:
        return float(self.cv_counts[i, i] / self.cv_counts[i].sum())

    def specificity(self, i: int) -> float:
        others = np.delete(np.delete(self.cv_counts, i, axis=0), i, axis=1) if len(self.names) > 1 else None
        rest = np.delete(self.cv_counts, i, axis=0).sum()
        return float(others.sum() / rest) if others is not None and rest else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "rows": int(self.cv_counts.sum()),
            "cv_accuracy": float(np.trace(self.cv_counts) / self.cv_counts.sum()),
            "sensitivity": {name: self.sensitivity(i) for i, name in enumerate(self.names)},
            "specificity": {name: self.specificity(i) for i, name in enumerate(self.names)},
        }

    def predict(self, emb: "np.ndarray") -> list[str]:
        return [self.names[i] for i in self.probe.predict_proba(np.asarray(emb, dtype=np.float32)).argmax(axis=1)]


def fit_judge(emb: "np.ndarray", labels: list[Any], folds: int = JUDGE_FOLDS, seed: int = 0) -> Judge | None:
    """A probe on a large real pool, with cross-validated error rates (stratified folds); None below 2 labels.

    Fitted once per pool content in a process (every `select` of a study shares one judge pool).
    """
    import xxhash

    from synthforge.training.linear_probe import fit_linear_probe

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    names = sorted({str(v) for v in labels})
    if len(names) < 2:
        return None
    targets = np.array([names.index(str(v)) for v in labels], dtype=np.int64)
    digest = xxhash.xxh3_128(emb.tobytes() + targets.tobytes() + repr((names, folds, seed)).encode()).digest()
    if digest in _JUDGES:
        return _JUDGES[digest]
    fold = np.empty(len(targets), dtype=np.int64)
    rng = np.random.default_rng([seed, 0x1D6E])
    for code in range(len(names)):  # stratified: each label's rows dealt round the folds in a seeded order
        rows = rng.permutation(np.flatnonzero(targets == code))
        fold[rows] = np.arange(len(rows)) % folds
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    for k in range(folds):
        held = fold == k
        probe = fit_linear_probe(emb[~held], targets[~held], len(names), seed=seed)
        np.add.at(counts, (targets[held], probe.predict_proba(emb[held]).argmax(axis=1)), 1)
    judge = Judge(names, fit_linear_probe(emb, targets, len(names), seed=seed), counts)
    _JUDGES[digest] = judge
    return judge


def judged_fidelity(judge: Judge, emb: "np.ndarray", labels: list[Any]) -> dict[str, Any]:
    """Share of rows the judge gives their own label (observed) and that share corrected for its error rates.

    `fidelity_observed`/`fidelity_corrected` overall (weighted by rows per label), and per label;
    `clipped` lists labels whose correction fell outside [0, 1] (sampling noise at small n).
    """
    labels = [str(v) for v in labels]
    predicted = judge.predict(emb) if len(labels) else []
    per_label, clipped, corrected_rows = {}, [], 0.0
    for i, name in enumerate(judge.names):
        mine = [p == name for p, t in zip(predicted, labels) if t == name]
        if not mine:
            continue
        observed = float(np.mean(mine))
        sensitivity, specificity = judge.sensitivity(i), judge.specificity(i)
        raw = (observed + specificity - 1) / (sensitivity + specificity - 1) if sensitivity + specificity > 1 else float("nan")
        corrected = float(min(1.0, max(0.0, raw))) if raw == raw else float("nan")
        if raw == raw and corrected != raw:
            clipped.append(name)
        per_label[name] = {"observed": observed, "corrected": corrected, "rows": len(mine)}
        corrected_rows += corrected * len(mine)
    rows = sum(v["rows"] for v in per_label.values())
    return {
        "fidelity_observed": float(np.mean([p == t for p, t in zip(predicted, labels)])) if labels else None,
        "fidelity_corrected": corrected_rows / rows if rows else None,
        "per_label": per_label,
        "clipped": ",".join(clipped) or None,
        "judge": f"oracle probe on {int(judge.cv_counts.sum())} held-out real rows ({JUDGE_FOLDS}-fold CV error rates)",
    }


def ngrams(text: str, n: int = COPY_NGRAM) -> set[tuple[str, ...]]:
    tokens = str(text).lower().split()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def copied_ngram_share(text: str, source_grams: set[tuple[str, ...]], n: int = COPY_NGRAM) -> float:
    """Share of the text's word n-grams found in the sources (0 for texts shorter than n words)."""
    grams = ngrams(text, n)
    return len(grams & source_grams) / len(grams) if grams else 0.0


def source_ngrams(texts: list[str], n: int = COPY_NGRAM) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for text in texts:
        found |= ngrams(text, n)
    return found


def verdict_agreement(first: "np.ndarray", second: "np.ndarray", resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, Any]:
    """How often two label-fidelity instruments (e.g. an LLM judge's pass/fail and the oracle judge's agreement
    with a row's label) give the same verdict on the same rows: the raw agreement rate and Cohen's kappa (agreement
    beyond what the two instruments' pass rates give by chance), each with a percentile bootstrap interval over the
    rows (resampled as pairs: the design is paired, both verdicts are of the same row)."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    n = len(first)
    if n == 0 or len(second) != n:
        raise ValueError("verdict_agreement needs two verdicts for each of at least one row")
    rng = np.random.default_rng([seed, 0x4B41])
    draws = rng.integers(0, n, size=(resamples, n))
    boot_agreement, boot_kappa = _agreement_and_kappa(first[draws], second[draws])
    agreement, kappa = (float(v[0]) for v in _agreement_and_kappa(first[None, :], second[None, :]))
    tail = (1 - confidence) / 2 * 100

    def interval(values: "np.ndarray") -> list[float] | None:
        finite = values[np.isfinite(values)]
        return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))] if len(finite) else None

    return {
        "rows": n,
        "agreement": agreement,
        "agreement_ci": interval(boot_agreement),
        "kappa": kappa if np.isfinite(kappa) else None,
        "kappa_ci": interval(boot_kappa),
        "pass_rate": [float(first.mean()), float(second.mean())],
        "table": [[int((first & second).sum()), int((first & ~second).sum())],
                  [int((~first & second).sum()), int((~first & ~second).sum())]],
        "interval": f"{confidence:.0%} percentile bootstrap over rows ({resamples} paired resamples)",
    }


def _agreement_and_kappa(first: "np.ndarray", second: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """Row-wise over the leading axis: observed agreement p_o and Cohen's kappa (p_o - p_e) / (1 - p_e)."""
    observed = (first == second).mean(axis=1)
    p1, p2 = first.mean(axis=1), second.mean(axis=1)
    expected = p1 * p2 + (1 - p1) * (1 - p2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)
    return observed, kappa
