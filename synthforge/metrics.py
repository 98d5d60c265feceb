"""Diversity of a set of embeddings/texts and its distance to a reference (real) set.

All embedding metrics use the cosine kernel, i.e. inner products of unit rows.

Diversity (higher = more diverse unless noted):
  vendi                 exp(entropy of the eigenvalues of K/n), in [1, n]: the
                        "effective number" of distinct items (Friedman & Dieng 2023);
  dcscore               trace of the row-wise softmax of K / tau, in [1, n]
                        (Zhu et al. 2025); tau = DCSCORE_TAU = 0.1 by default (at tau = 1
                        every row's softmax is nearly flat over cosine similarities in
                        [-1, 1], so the score sits near 1-3 whatever the set); exact up to DCSCORE_EXACT_MAX_ROWS
                        rows, above that n times the mean of the exact terms of a seeded
                        sample of DCSCORE_SAMPLE_ROWS rows (each against all n rows), with
                        its standard error as `dcscore_se`;
  mean_cosine_distance  mean over pairs i != j of 1 - cos(x_i, x_j);
  distinct_1/2          distinct unigrams/bigrams over all n-grams of the texts;
  cluster_entropy       entropy of the shares over k-means clusters / log k, in [0, 1];
                        clusters are fit on the pool the rows were drawn from, else on
                        the reference, else on the rows themselves.
Shift to the reference (lower = closer):
  mmd_rbf               unbiased squared MMD, RBF kernel, median-heuristic bandwidth;
  frechet               Frechet distance between Gaussians fitted to both sets;
  nn_real_similarity    mean cosine similarity to the nearest reference row (higher = closer);
                        over a seeded sample of NN_MAX_ROWS rows when there are more.
Precision, recall, density and coverage (Naeem et al. 2020; `prdc` is the reference implementation):
Euclidean distances between unit rows, a reference row's ball reaches its PRDC_K-th nearest reference row.
  prdc_precision        share of rows inside some reference ball (on the real manifold);
  prdc_density          mean number of reference balls a row lies in / k (about 1 when rows look like
                        the reference, above 1 where they crowd its dense parts);
  prdc_recall           share of reference rows inside some row's ball (k-th nearest row);
  prdc_coverage         share of reference rows whose ball holds a row (the real modes the rows reach).
  Precision and density separate "on the real distribution" from diversity; recall and coverage say how
  much of the real distribution the rows span. Over seeded samples of PRDC_MAX_ROWS rows per side.

Every metric costs at most linear time in the rows (the quadratic ones are
sampled above a fixed size, see `metric_methods`) and streams the rows in
blocks, so the only full-size array is the unit-row matrix itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import polars as pl

METRICS_VERSION = "4"  # 2: DCScore and nearest-real similarity sampled above a size; 3: DCScore at tau 0.1; 4: PRDC
DCSCORE_TAU = 0.1
MMD_MAX_ROWS = 2000  # per side; the kernel matrices are (2 * MMD_MAX_ROWS)^2
CLUSTER_ENTROPY_MAX_K = 50
DCSCORE_EXACT_MAX_ROWS = 10_000  # exact (n^2 d work) up to here
DCSCORE_SAMPLE_ROWS = 1_000  # above: this many sampled rows, each against all n (linear in n)
NN_MAX_ROWS = 2_000  # rows whose nearest reference row is searched (all reference rows are searched)
BLOCK_ROWS = 16_384  # rows per block when streaming over a matrix
PRDC_K = 5  # nearest neighbours that set a ball's radius (the paper's default)
PRDC_MAX_ROWS = 5_000  # per side; distances are computed in blocks of about BLOCK_CELLS
BLOCK_CELLS = 4_000_000  # matrix cells per block of a distance computation


def _unit(x: Any) -> "np.ndarray":
    from synthforge.selection import as_unit_rows

    return as_unit_rows(x)


def _blocks(total: int, size: int = BLOCK_ROWS) -> "range":
    return range(0, total, size)


def _moments(x: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """Column sums and the d x d Gram X^T X, accumulated in float64 a block of rows at a time."""
    import numpy as np

    d = x.shape[1]
    total, gram = np.zeros(d), np.zeros((d, d))
    for start in _blocks(len(x)):
        block = x[start : start + BLOCK_ROWS].astype(np.float64)
        total += block.sum(axis=0)
        gram += block.T @ block
    return total, gram


def vendi(x: Any) -> float:
    """Vendi score; from the d x d Gram X^T X / n when n > d (same non-zero eigenvalues as XX^T / n)."""
    import numpy as np

    x = _unit(x)
    n, d = x.shape
    if n == 0:
        return 0.0
    if n > d:
        gram = _moments(x)[1] / n
    else:
        x64 = x.astype(np.float64)
        gram = (x64 @ x64.T) / n
    return _vendi_of_gram(gram)


def _vendi_of_gram(gram: "np.ndarray") -> float:
    import numpy as np

    eig = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    eig = eig[eig > 1e-12]
    eig /= eig.sum()  # zero rows make the trace < 1
    return float(np.exp(-(eig * np.log(eig)).sum()))


@dataclass(frozen=True)
class Estimate:
    value: float
    standard_error: float  # 0 when exact
    method: str


def dcscore(x: Any, tau: float = DCSCORE_TAU, chunk: int | None = None, seed: int = 0) -> float:
    """sum_i softmax(K_i / tau)_i (see `dcscore_estimate`)."""
    return dcscore_estimate(x, tau=tau, chunk=chunk, seed=seed).value


def dcscore_estimate(
    x: Any, tau: float = DCSCORE_TAU, chunk: int | None = None, seed: int = 0,
    exact_max_rows: int = DCSCORE_EXACT_MAX_ROWS, sample_rows: int = DCSCORE_SAMPLE_ROWS,
) -> Estimate:
    """DCScore: exact up to `exact_max_rows` rows; above, from the exact terms of a seeded row sample.

    Each term softmax(K_i / tau)_i is computed against every row, so the sample
    mean is unbiased; the standard error is that of a sample mean without
    replacement (finite-population corrected).
    """
    import numpy as np

    x = _unit(x)
    n = len(x)
    if n <= exact_max_rows:
        return Estimate(float(_dcscore_terms(x, np.arange(n), tau, chunk).sum()), 0.0, "exact")
    rows = np.sort(np.random.default_rng([seed, 0xDC5]).choice(n, sample_rows, replace=False))
    terms = _dcscore_terms(x, rows, tau, chunk)
    error = n * terms.std(ddof=1) / math.sqrt(sample_rows) * math.sqrt(1 - sample_rows / n)
    return Estimate(n * float(terms.mean()), float(error), f"sample of {sample_rows} rows (seed {seed}), each against all {n}")


def _dcscore_terms(x: "np.ndarray", rows: "np.ndarray", tau: float, chunk: int | None = None) -> "np.ndarray":
    """softmax(K_i / tau)_i for each i in `rows`: a block of rows against a block of columns at a time,
    with a streaming log-sum-exp (never a |rows| x n matrix)."""
    import numpy as np

    row_block = chunk or 256
    col_block = max(row_block, 2**22 // row_block)  # ~16 MiB of float32 logits per block pair
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), row_block):
        xr = x[rows[start : start + row_block]]
        own = np.einsum("ij,ij->i", xr, xr).astype(np.float64) / tau
        peak = np.full(len(xr), -np.inf)
        total = np.zeros(len(xr))
        for col in range(0, len(x), col_block):
            logits = (xr @ x[col : col + col_block].T).astype(np.float64) / tau
            block_peak = logits.max(axis=1)
            new_peak = np.maximum(peak, block_peak)
            total = total * np.exp(peak - new_peak) + np.exp(logits - new_peak[:, None]).sum(axis=1)
            peak = new_peak
        out[start : start + len(xr)] = np.exp(own - peak - np.log(total))
    return out


def mean_cosine_distance(x: Any) -> float:
    """Closed form: sum_{i != j} x_i.x_j = |sum x|^2 - sum |x_i|^2."""
    import numpy as np

    x = _unit(x)
    return _mean_cosine_distance_of_moments(len(x), *_moments(x))


def _mean_cosine_distance_of_moments(n: int, total: "np.ndarray", gram: "np.ndarray") -> float:
    import numpy as np

    if n < 2:
        return 0.0
    off_diagonal = float(total @ total) - float(np.trace(gram))  # trace(X^T X) = sum |x_i|^2
    return 1.0 - off_diagonal / (n * (n - 1))


def distinct_n(texts: "list[str] | pl.Series", n: int) -> float:
    """Distinct n-grams / all n-grams over lower-cased whitespace tokens (polars, no loop per text)."""
    import polars as pl

    tokens = pl.Series("t", texts, dtype=pl.String).fill_null("").str.to_lowercase().str.extract_all(r"\S+")
    flat = tokens.to_frame().with_row_index("row").explode("t").drop_nulls("t")
    # tokens hold no whitespace, so joining n of them with " " names the n-gram uniquely
    gram = pl.concat_str([pl.col("t").shift(-k) for k in range(n)], separator=" ")
    whole = pl.col("row").shift(-(n - 1)) == pl.col("row")  # all n tokens from one text
    grams = flat.select(gram.filter(whole).alias("gram"))["gram"]
    return grams.n_unique() / len(grams) if len(grams) else 0.0


def cluster_entropy(x: Any, k: int | None = None, seed: int = 0, basis: Any = None) -> float:
    """Normalised entropy of the rows' shares over k-means clusters (1 = spread evenly over all k).

    Clusters are fit on `basis` (default: the rows themselves). Fit on the rows
    alone, k-means splits even a one-topic set evenly, so to compare sets (a
    selection and its pool, synthetic and real) fit on the pool or the reference.
    """
    import numpy as np

    from synthforge.selection import _flat_ip_index, use_gpu

    x = _unit(x)
    basis = x if basis is None else _unit(basis)
    k = k or min(CLUSTER_ENTROPY_MAX_K, max(2, round(math.sqrt(len(basis) / 2))))
    if len(x) < 2 or len(basis) < 2 or k < 2:
        return 0.0
    centroids = _centroids(basis, k, seed)
    _, labels = _flat_ip_index(centroids, use_gpu()).search(x, 1)
    shares = np.bincount(labels[:, 0], minlength=k) / len(x)
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum() / math.log(k))


_CENTROIDS: dict[bytes, "np.ndarray"] = {}  # k-means of a basis by content: a jackknife measures many subsets against one


def _centroids(basis: "np.ndarray", k: int, seed: int) -> "np.ndarray":
    import numpy as np
    import xxhash

    from synthforge.selection import kmeans

    digest = xxhash.xxh3_128(np.ascontiguousarray(basis).tobytes() + repr((basis.shape, k, seed)).encode()).digest()
    if digest not in _CENTROIDS:
        if len(_CENTROIDS) >= 8:
            _CENTROIDS.pop(next(iter(_CENTROIDS)))
        _CENTROIDS[digest] = kmeans(basis, k, seed=seed).centroids
    return _CENTROIDS[digest]


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

    x, y = _unit(x), _unit(y)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    return _frechet_of_moments(_mean_cov(len(x), *_moments(x)), _mean_cov(len(y), *_moments(y)))


def _frechet_of_moments(moments_x: tuple["np.ndarray", "np.ndarray"], moments_y: tuple["np.ndarray", "np.ndarray"]) -> float:
    import numpy as np

    (mu_x, s_x), (mu_y, s_y) = moments_x, moments_y
    root_y = _reference_sqrt(s_y)
    # tr((S_x S_y)^(1/2)) = sum sqrt(eig(S_y^(1/2) S_x S_y^(1/2))), which is symmetric PSD
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_y @ s_x @ root_y), 0.0, None)).sum()
    value = float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2 * cross)
    return max(value, 0.0)


def _mean_cov(n: int, total: "np.ndarray", gram: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """Mean and sample covariance from streamed moments (no float64 copy of the rows)."""
    import numpy as np

    mean = total / n
    return mean, (gram - n * np.outer(mean, mean)) / (n - 1)


_ROOTS: dict[bytes, "np.ndarray"] = {}  # the reference's covariance root by content: one eigh for many measured sets


def _reference_sqrt(matrix: "np.ndarray") -> "np.ndarray":
    import numpy as np
    import xxhash

    digest = xxhash.xxh3_128(np.ascontiguousarray(matrix).tobytes()).digest()
    if digest not in _ROOTS:
        if len(_ROOTS) >= 8:
            _ROOTS.pop(next(iter(_ROOTS)))
        _ROOTS[digest] = _psd_sqrt(matrix)
    return _ROOTS[digest]


def _psd_sqrt(matrix: "np.ndarray") -> "np.ndarray":
    import numpy as np

    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def nn_real_similarity(x: Any, reference: Any, seed: int = 0, max_rows: int = NN_MAX_ROWS) -> float:
    """Mean over rows of x (a seeded sample of `max_rows` when more) of the cosine similarity
    to their nearest reference row (faiss, exact over all reference rows)."""
    import numpy as np

    from synthforge.selection import _flat_ip_index, use_gpu

    x, reference = _unit(x), _unit(reference)
    if len(x) == 0 or len(reference) == 0:
        return float("nan")
    x = _subsample(x, max_rows, np.random.default_rng([seed, 0x4E4E]))
    sims, _ = _flat_ip_index(reference, use_gpu()).search(x, 1)
    return float(sims[:, 0].mean())


def prdc(x: Any, reference: Any, k: int = PRDC_K, seed: int = 0, max_rows: int = PRDC_MAX_ROWS) -> dict[str, float]:
    """Precision, recall, density and coverage of rows x against reference rows (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng([seed, 0x5D0C])
    x = _subsample(_unit(x), max_rows, rng).astype(np.float64)
    ref = _subsample(_unit(reference), max_rows, rng).astype(np.float64)
    if len(x) <= k or len(ref) <= k:
        return dict.fromkeys(("prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage"), float("nan"))
    real_radii, fake_radii = _kth_neighbour_distance(ref, k), _kth_neighbour_distance(x, k)
    in_real_ball = np.zeros(len(x), dtype=np.int64)
    recalled, covered = np.zeros(len(ref), dtype=bool), np.zeros(len(ref), dtype=bool)
    for start in _blocks(len(ref), max(1, BLOCK_CELLS // len(x))):
        block = slice(start, start + max(1, BLOCK_CELLS // len(x)))
        dist = np.sqrt(_sq_dists(ref[block], x))  # reference rows x rows
        inside = dist < real_radii[block, None]
        in_real_ball += inside.sum(axis=0)
        recalled[block] = (dist < fake_radii[None, :]).any(axis=1)
        covered[block] = inside.any(axis=1)
    return {
        "prdc_precision": float((in_real_ball > 0).mean()),
        "prdc_recall": float(recalled.mean()),
        "prdc_density": float(in_real_ball.mean() / k),
        "prdc_coverage": float(covered.mean()),
    }


def _kth_neighbour_distance(x: "np.ndarray", k: int) -> "np.ndarray":
    """Each row's Euclidean distance to its k-th nearest other row (the row itself is the 0th), in blocks."""
    import numpy as np

    step = max(1, BLOCK_CELLS // len(x))
    return np.concatenate([
        np.partition(np.sqrt(_sq_dists(x[start : start + step], x)), k, axis=1)[:, k] for start in _blocks(len(x), step)
    ])


def metric_methods(rows: int, reference_rows: int | None = None) -> dict[str, str]:
    """How each size-dependent metric was computed for `rows` rows (recorded in step metas)."""
    methods = {
        "dcscore": "exact" if rows <= DCSCORE_EXACT_MAX_ROWS
        else f"mean of the exact terms of {DCSCORE_SAMPLE_ROWS} sampled rows x {rows}; standard error in dcscore_se",
        "vendi": "exact (d x d Gram)",
        "cluster_entropy": f"k-means, k <= {CLUSTER_ENTROPY_MAX_K}, trained on <= 256 rows per centroid",
    }
    if reference_rows is not None:
        sampled = rows > MMD_MAX_ROWS or reference_rows > MMD_MAX_ROWS
        methods["mmd_rbf"] = f"{MMD_MAX_ROWS} sampled rows per side" if sampled else "exact"
        methods["nn_real_similarity"] = f"{NN_MAX_ROWS} sampled rows" if rows > NN_MAX_ROWS else "exact"
        prdc_sampled = rows > PRDC_MAX_ROWS or reference_rows > PRDC_MAX_ROWS
        methods["prdc"] = f"k = {PRDC_K}" + (f", {PRDC_MAX_ROWS} sampled rows per side" if prdc_sampled else ", exact")
    return methods


# -- all together --------------------------------------------------------------
def diversity_metrics(
    emb: Any, texts: "list[str] | pl.Series | None" = None, reference_emb: Any = None, seed: int = 0,
    pool_emb: Any = None, tau: float = DCSCORE_TAU,
) -> dict[str, float]:
    """Every diversity metric (text ones when texts are given), plus shift when a reference is given.

    `pool_emb`: the rows a selection was drawn from (the basis for cluster entropy);
    `tau`: DCScore's temperature. `metric_methods` says which values are sampled estimates.
    """
    x = _unit(emb)
    basis = pool_emb if pool_emb is not None else reference_emb
    out: dict[str, float] = {"rows": float(len(x))}
    n = len(x)
    moments = _moments(x) if n else None
    if n:
        dc = dcscore_estimate(x, tau=tau, seed=seed)
        out.update(
            vendi=vendi(x) if n <= x.shape[1] else _vendi_of_gram(moments[1] / n),
            dcscore=dc.value,
            mean_cosine_distance=_mean_cosine_distance_of_moments(n, *moments),
            cluster_entropy=cluster_entropy(x, seed=seed, basis=basis),
        )
        if dc.method != "exact":
            out["dcscore_se"] = dc.standard_error
    if texts is not None:
        out.update(distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2))
    if reference_emb is not None and len(x):
        ref = _unit(reference_emb)
        out.update(
            mmd_rbf=mmd_rbf(x, ref, seed=seed),
            frechet=_frechet_of_moments(_mean_cov(n, *moments), _mean_cov(len(ref), *_moments(ref)))
            if n >= 2 and len(ref) >= 2 else float("nan"),
            nn_real_similarity=nn_real_similarity(x, ref, seed=seed),
            **prdc(x, ref, seed=seed),
        )
    return out


# -- intervals -----------------------------------------------------------------
JACKKNIFE_GROUPS = 50  # delete-one up to this many rows; above, delete-a-group with this many seeded groups


def jackknife_intervals(
    emb: Any, texts: "list[str] | pl.Series | None" = None, reference_emb: Any = None, seed: int = 0,
    pool_emb: Any = None, tau: float = DCSCORE_TAU, confidence: float = 0.95,
) -> dict[str, list[float]]:
    """95% intervals of `diversity_metrics` over the draw of the rows: the delete-one jackknife (delete-a-group
    above JACKKNIFE_GROUPS rows), estimate ± t(G-1) · SE with SE² = (G-1)/G · Σ (θ₋g - mean θ₋)².

    Why the jackknife and not the bootstrap: a bootstrap resample repeats rows, and a repeated row is a
    duplicate to every set metric here (Vendi, DCScore, distinct-n fall, MMD² and coverage move), so the
    resampled values are biased; a jackknife subset never repeats a row. The reference (and the pool) stay
    fixed: the interval is over new rows from the same generator, not over new real rows. For cluster
    entropy and PRDC, which are not smooth in the rows, the jackknife's SE is a rough guide."""
    import numpy as np

    x = np.asarray(emb)
    n = len(x)
    if n < 3:
        return {}
    full = diversity_metrics(x, texts, reference_emb=reference_emb, seed=seed, pool_emb=pool_emb, tau=tau)
    text_list = list(texts) if texts is not None else None
    left_out = []
    for keep in jackknife_subsets(n, seed):
        left_out.append(diversity_metrics(x[keep], [text_list[i] for i in keep] if text_list is not None else None,
                                          reference_emb=reference_emb, seed=seed, pool_emb=pool_emb, tau=tau))
    out = {}
    for name, value in full.items():
        if name in ("rows", "dcscore_se"):
            continue
        found = jackknife_interval(value, [values.get(name, math.nan) for values in left_out], confidence)
        if found is not None:
            out[name] = found
    return out


def jackknife_subsets(n: int, seed: int = 0) -> list["np.ndarray"]:
    """The rows each jackknife replicate keeps: all but one (n <= JACKKNIFE_GROUPS), else all but one of
    JACKKNIFE_GROUPS seeded groups."""
    import numpy as np

    groups = min(n, JACKKNIFE_GROUPS)
    group_of = np.random.default_rng([seed, 0x7AC7]).permutation(np.arange(n) % groups)
    return [np.flatnonzero(group_of != g) for g in range(groups)]


def jackknife_interval(value: float, left_out: list[float], confidence: float = 0.95) -> list[float] | None:
    """estimate ± t(G-1) · SE, SE² = (G-1)/G · Σ (θ₋g - mean θ₋)² over G replicates; None when any is not finite."""
    import numpy as np
    from scipy.stats import t as student_t

    values = np.array([math.nan if v is None else v for v in left_out], dtype=np.float64)
    groups = len(values)
    if groups < 3 or value is None or not math.isfinite(value) or not np.isfinite(values).all():
        return None
    half = float(student_t.ppf(0.5 + confidence / 2, groups - 1)) * math.sqrt(
        (groups - 1) / groups * float(((values - values.mean()) ** 2).sum()))
    return [value - half, value + half]


def wilson_interval(share: float, n: int, confidence: float = 0.95) -> list[float] | None:
    """The Wilson score interval of a share of n rows (sound near 0 and 1 and at small n, unlike mean ± z·SE)."""
    from scipy.stats import norm

    if n <= 0:
        return None
    z = float(norm.ppf(0.5 + confidence / 2))
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at a share of 0 or 1 one end equals the share exactly; rounding must not leave the share outside
    return [max(0.0, min(share, centre - half)), min(1.0, max(share, centre + half))]
