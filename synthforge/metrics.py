"""Diversity of a set of embeddings/texts and its distance to a reference (real) set.

All embedding metrics use the cosine kernel, i.e. inner products of unit rows.

Diversity (higher = more diverse unless noted):
  vendi                 exp(entropy of the eigenvalues of K/n), in [1, n]: the
                        "effective number" of distinct items (Friedman & Dieng 2023);
  dcscore               trace of the row-wise softmax of K / tau, in [1, n]
                        (Zhu et al. 2025); tau = DCSCORE_TAU = 0.1 by default: at
                        tau = 1 every row's softmax is nearly flat over n rows of
                        cosine similarity in [-1, 1], so the score sits near 1-3
                        whatever the set; at 0.1 it spreads over the range;
  mean_cosine_distance  mean over pairs i != j of 1 - cos(x_i, x_j);
  distinct_1/2          distinct unigrams/bigrams over all n-grams of the texts;
  cluster_entropy       entropy of the shares over k-means clusters / log k, in [0, 1];
                        clusters are fit on the pool the rows were drawn from, else on
                        the reference, else on the rows themselves.
Shift to the reference (lower = closer):
  mmd_rbf               unbiased squared MMD, RBF kernel, median-heuristic bandwidth;
  frechet               Frechet distance between Gaussians fitted to both sets;
  nn_real_similarity    mean cosine similarity to the nearest reference row (higher = closer).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

METRICS_VERSION = "2"  # 2: DCScore at tau 0.1
DCSCORE_TAU = 0.1
MMD_MAX_ROWS = 2000  # per side; the kernel matrices are (2 * MMD_MAX_ROWS)^2
CLUSTER_ENTROPY_MAX_K = 50


def _unit(x: Any) -> "np.ndarray":
    from synthforge.selection import as_unit_float32

    return as_unit_float32(x)


def vendi(x: Any) -> float:
    """Vendi score; from the d x d Gram X^T X / n when n > d (same non-zero eigenvalues as XX^T / n)."""
    import numpy as np

    x = _unit(x).astype(np.float64)
    n, d = x.shape
    if n == 0:
        return 0.0
    gram = (x.T @ x) / n if n > d else (x @ x.T) / n
    eig = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    eig = eig[eig > 1e-12]
    eig /= eig.sum()  # zero rows make the trace < 1
    return float(np.exp(-(eig * np.log(eig)).sum()))


def dcscore(x: Any, tau: float = DCSCORE_TAU, chunk: int | None = None) -> float:
    """sum_i softmax(K_i / tau)_i, computed a block of rows at a time (never the n x n kernel)."""
    import numpy as np

    x = _unit(x)
    chunk = chunk or max(1, 2**22 // max(len(x), 1))  # ~32 MiB of float64 logits per block
    total = 0.0
    for start in range(0, len(x), chunk):
        logits = (x[start : start + chunk] @ x.T).astype(np.float64)
        logits /= tau
        logits -= logits.max(axis=1, keepdims=True)
        diag = logits[np.arange(len(logits)), np.arange(start, start + len(logits))].copy()
        np.exp(logits, out=logits)
        total += float(np.exp(diag - np.log(logits.sum(axis=1))).sum())
    return total


def mean_cosine_distance(x: Any) -> float:
    """Closed form: sum_{i != j} x_i.x_j = |sum x|^2 - sum |x_i|^2."""
    import numpy as np

    x = _unit(x).astype(np.float64)
    n = len(x)
    if n < 2:
        return 0.0
    total = x.sum(axis=0)
    off_diagonal = float(total @ total) - float((x * x).sum())
    return 1.0 - off_diagonal / (n * (n - 1))


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over lower-cased whitespace tokens."""
    seen: set[tuple[str, ...]] = set()
    count = 0
    for text in texts:
        tokens = str(text).lower().split()
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        seen.update(grams)
        count += len(grams)
    return len(seen) / count if count else 0.0


def cluster_entropy(x: Any, k: int | None = None, seed: int = 0, basis: Any = None) -> float:
    """Normalised entropy of the rows' shares over k-means clusters (1 = spread evenly over all k).

    Clusters are fit on `basis` (default: the rows themselves). Fit on the rows
    alone, k-means splits even a one-topic set evenly, so to compare sets (a
    selection and its pool, synthetic and real) fit on the pool or the reference.
    """
    import numpy as np

    from synthforge.selection import _flat_ip_index, kmeans, use_gpu

    x = _unit(x)
    basis = x if basis is None else _unit(basis)
    k = k or min(CLUSTER_ENTROPY_MAX_K, max(2, round(math.sqrt(len(basis) / 2))))
    if len(x) < 2 or len(basis) < 2 or k < 2:
        return 0.0
    centroids = kmeans(basis, k, seed=seed).centroids
    _, labels = _flat_ip_index(centroids, use_gpu()).search(x, 1)
    shares = np.bincount(labels[:, 0], minlength=k) / len(x)
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum() / math.log(k))


# -- shift to a reference -----------------------------------------------------
def _subsample(x: "np.ndarray", size: int, rng: "np.random.Generator") -> "np.ndarray":
    return x if len(x) <= size else x[rng.choice(len(x), size, replace=False)]


def _sq_dists(a: "np.ndarray", b: "np.ndarray") -> "np.ndarray":
    import numpy as np

    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def mmd_rbf(x: Any, y: Any, seed: int = 0, max_rows: int = MMD_MAX_ROWS, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a - b|^2 / (2 s^2)), s = median pairwise distance of the pool."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = _subsample(_unit(x), max_rows, rng).astype(np.float64)
    y = _subsample(_unit(y), max_rows, rng).astype(np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        return float("nan")
    dxx, dyy, dxy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)
    if bandwidth is None:
        pooled = np.concatenate([dxx[np.triu_indices(m, 1)], dyy[np.triu_indices(n, 1)], dxy.ravel()])
        bandwidth = math.sqrt(float(np.median(pooled))) or 1.0
    gamma = 1.0 / (2 * bandwidth**2)
    kxx, kyy, kxy = np.exp(-gamma * dxx), np.exp(-gamma * dyy), np.exp(-gamma * dxy)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def frechet_distance(x: Any, y: Any) -> float:
    """|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2)); the trace term via a symmetric eigenproblem."""
    import numpy as np

    x, y = _unit(x).astype(np.float64), _unit(y).astype(np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root_x = _psd_sqrt(s_x)
    # tr((S_x S_y)^(1/2)) = sum sqrt(eig(S_x^(1/2) S_y S_x^(1/2))), which is symmetric PSD
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_x @ s_y @ root_x), 0.0, None)).sum()
    value = float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2 * cross)
    return max(value, 0.0)


def _psd_sqrt(matrix: "np.ndarray") -> "np.ndarray":
    import numpy as np

    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def nn_real_similarity(x: Any, reference: Any) -> float:
    """Mean over rows of x of the cosine similarity to their nearest reference row (faiss, exact)."""
    from synthforge.selection import _flat_ip_index, use_gpu

    x, reference = _unit(x), _unit(reference)
    if len(x) == 0 or len(reference) == 0:
        return float("nan")
    sims, _ = _flat_ip_index(reference, use_gpu()).search(x, 1)
    return float(sims[:, 0].mean())


# -- all together --------------------------------------------------------------
def diversity_metrics(
    emb: Any, texts: list[str] | None = None, reference_emb: Any = None, seed: int = 0, pool_emb: Any = None,
    tau: float = DCSCORE_TAU,
) -> dict[str, float]:
    """Every diversity metric (text ones when texts are given), plus shift when a reference is given.

    `pool_emb`: the rows a selection was drawn from (the basis for cluster entropy); `tau`: DCScore's temperature.
    """
    x = _unit(emb)
    basis = pool_emb if pool_emb is not None else reference_emb
    out: dict[str, float] = {"rows": float(len(x))}
    if len(x):
        out.update(
            vendi=vendi(x),
            dcscore=dcscore(x, tau=tau),
            mean_cosine_distance=mean_cosine_distance(x),
            cluster_entropy=cluster_entropy(x, seed=seed, basis=basis),
        )
    if texts is not None:
        out.update(distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2))
    if reference_emb is not None and len(x):
        ref = _unit(reference_emb)
        out.update(
            mmd_rbf=mmd_rbf(x, ref, seed=seed),
            frechet=frechet_distance(x, ref),
            nn_real_similarity=nn_real_similarity(x, ref),
        )
    return out
