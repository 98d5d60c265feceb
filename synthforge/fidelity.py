"""Is a synthetic row what it claims to be? Label agreement with real data, and copies of real texts.

`label_agreement` fits a linear probe on the real (reference) rows' embeddings and
labels, predicts every synthetic row and reports how often the prediction agrees
with the label the row was generated for, overall and per label. A row the probe
disagrees with is either mislabelled (the LLM wrote a positive review when asked
for a negative one) or hard; at low agreement rates the former dominates.

`copied_ngram_share` is the share of a text's word n-grams that occur in any of
the source texts (few-shot examples, the real training rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

COPY_NGRAM = 4


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
        return {"overall": overall, "per_label": per_label, "rows": int(len(self.agrees))}


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
