"""The plain greedy k-center loop: the reference `selection.kcenter` must match, and its benchmark baseline."""

from __future__ import annotations

import numpy as np


def kcenter_naive(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The plain loop (one matrix-vector product per pick): the same picks as `selection.kcenter`."""
    first = int(np.random.default_rng(seed).integers(len(x)))
    chosen = [first]
    sim = x @ x[first]
    sim[first] = np.inf
    while len(chosen) < min(n, len(x)):
        row = int(np.argmin(sim))
        chosen.append(row)
        np.maximum(sim, x @ x[row], out=sim)
        sim[chosen] = np.inf
    return np.asarray(chosen, dtype=np.int64)
