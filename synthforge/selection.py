"""Diversity selection over L2-normalised embeddings (faiss; GPU when faiss sees one).

Methods (each returns row indices in selection order):
  kcenter   greedy farthest-point: every pick is the row least similar to all
            rows picked so far (maximal coverage);
  clusters  k-means into K clusters; draw n rows evenly from the c clusters
            nearest to an anchor cluster, the most compact of the larger ones
            (c=1: one topic, c=K: all topics);
  semdedup  drop rows whose cosine similarity to an earlier row exceeds a
            threshold (k-means buckets + within-bucket similarity, SemDeDup);
  random    the baseline.

`by_level(level)` maps one `diversity` level in [0, 1] onto k-center inside a
ball: an anchor row (of a seeded sample of 64, the one with the tightest
n-nearest-row ball) and its M nearest rows, M = n * (N / n) ** level, so
level 0 is the anchor's n nearest rows (one tight topic), level 1 is k-center
over the whole pool, and between them the ball grows geometrically and k-center
spreads the n rows over it. Each level therefore picks a different subset
whenever the M differ, and the achieved diversity rises with the level (tests
check Vendi strictly increases on topic data and on real reviews). Cost: one
k-NN search for the 64 candidates, one similarity pass for the ball and
k-center over M <= N rows, so never much above k-center alone.
`within_shift_band` holds shift fixed across levels: the pool is first cut to
rows whose nearest-reference similarity lies in a quantile band.

Similarities are inner products: embeddings are unit vectors, so the highest
similarity is the smallest cosine (and L2) distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synthforge.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

METHODS = ("kcenter", "clusters", "semdedup", "random")


# -- device ------------------------------------------------------------------
def use_gpu() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: Any = None


def gpu_resources() -> Any:
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        import faiss

        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def as_unit_float32(x: Any) -> "np.ndarray":
    """A C-contiguous float32 copy with unit rows (zero rows stay zero)."""
    import numpy as np

    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise UserError(f"embeddings must be a 2-d matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def as_unit_rows(x: Any) -> "np.ndarray":
    """`x` itself when it already is C-contiguous float32 with unit (or zero) rows, else `as_unit_float32(x)`:
    a big embedding matrix is not copied again."""
    import numpy as np

    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous:
        norms = np.einsum("ij,ij->i", x, x)  # no full-size temporary
        if np.all((np.abs(norms - 1.0) < 1e-4) | (norms == 0)):
            return x
    return as_unit_float32(x)


def max_similarity(x: "np.ndarray", centers: "np.ndarray", gpu: bool | None = None, chunk: int = 65536) -> "np.ndarray":
    """For each row of x, its largest inner product with any row of `centers`."""
    import numpy as np

    if gpu if gpu is not None else use_gpu():
        import faiss

        sims, _ = faiss.knn_gpu(gpu_resources(), x, centers, 1, metric=faiss.METRIC_INNER_PRODUCT)
        return sims[:, 0]
    out = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), chunk):  # bounded memory: chunk x |centers| at a time
        # |centers| x chunk: the max runs down contiguous rows (an element-wise maximum), ~6x cheaper than
        # a max along each short row of the transposed block
        block = centers @ x[start : start + chunk].T
        np.max(block, axis=0, out=out[start : start + chunk])
    return out


# -- k-center ----------------------------------------------------------------
def kcenter(
    x: "np.ndarray",
    n: int,
    seed: int = 0,
    initial: "list[int] | np.ndarray | None" = None,
    batch: int = 64,
    candidates: int = 4096,
    gpu: bool | None = None,
) -> "np.ndarray":
    """Greedy farthest-point selection of n rows (exact; `initial` rows come first).

    A plain loop does one matrix-vector product over all rows per pick, which is
    memory-bound. Here picks are made among a candidate set (the rows farthest
    from the selection at the last full update) whose similarities are kept
    exact with a small product per pick; all rows are updated once per `batch`
    picks with one matrix-matrix product (compute-bound). A pick is taken from
    the candidates only while it provably beats every other row: a non-candidate's
    similarity can only have grown since the full update, so its exact value is
    at least the threshold `floor`.
    """
    import numpy as np

    total = len(x)
    n = min(n, total)
    chosen: list[int] = [int(i) for i in (initial if initial is not None else [])]
    if n <= len(chosen):
        return np.asarray(chosen[:n], dtype=np.int64)
    if not chosen:
        chosen.append(int(np.random.default_rng(seed).integers(total)))
    sim = np.full(total, -np.inf, dtype=np.float32)  # each row's max similarity to the selection
    pending = list(chosen)
    while len(chosen) < n:
        sim = np.maximum(sim, max_similarity(x, x[pending], gpu=gpu))
        sim[chosen] = np.inf  # picked rows are never candidates, duplicates or not
        pending = []
        cand, floor = _candidates(sim, candidates)
        with _one_blas_thread():
            _pick_candidates(x, cand, sim[cand], floor, chosen, pending, n, batch)
        if len(chosen) < n and not pending:
            _pick_global(sim, chosen, pending)
    return np.asarray(chosen, dtype=np.int64)


def _pick_candidates(
    x: "np.ndarray", cand: "np.ndarray", cand_sim: "np.ndarray", floor: float, chosen: list[int], pending: list[int],
    n: int, batch: int,
) -> None:
    """Greedy picks among the candidates while one provably beats every row outside them."""
    import numpy as np

    cand_x = x[cand]
    while len(chosen) < n and len(pending) < batch:
        best = int(np.argmin(cand_sim))
        if cand_sim[best] > floor:
            break  # a row outside the candidates may be farther: full update first
        row = int(cand[best])
        chosen.append(row)
        pending.append(row)
        np.maximum(cand_sim, cand_x @ x[row], out=cand_sim)
        cand_sim[best] = np.inf  # never pick a row twice (exact duplicates tie at 1.0)


_BLAS_CONTROLLER: Any = None


def _one_blas_thread() -> Any:
    """BLAS limited to one thread: a matrix-vector product per pick is too small to share, and on a
    busy machine the threads' hand-offs cost more than the product (2.6x the CPU time measured)."""
    global _BLAS_CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _candidates(sim: "np.ndarray", size: int) -> tuple["np.ndarray", float]:
    """The `size` rows least similar to the selection, and the best similarity outside them."""
    import numpy as np

    if size >= len(sim):
        return np.arange(len(sim)), np.inf
    cand = np.argpartition(sim, size)[:size]
    cand.sort()  # ties break towards the lower row index, as in the plain loop
    rest = np.ones(len(sim), dtype=bool)
    rest[cand] = False
    return cand, float(sim[rest].min())


def _pick_global(sim: "np.ndarray", chosen: list[int], pending: list[int]) -> None:
    """Fallback when no candidate is provably best: take the global argmin."""
    import numpy as np

    masked = sim.copy()
    masked[chosen] = np.inf
    row = int(np.argmin(masked))
    chosen.append(row)
    pending.append(row)


# -- k-means -----------------------------------------------------------------
@dataclass
class Clustering:
    centroids: "np.ndarray"  # (k, d), unit rows
    labels: "np.ndarray"  # (n,) cluster of each row
    similarity: "np.ndarray"  # (n,) inner product of each row with its centroid


def default_k(n_rows: int) -> int:
    """About sqrt(n) clusters, at most 1024 (faiss wants >= 39 rows per cluster to train well)."""
    import math

    return max(1, min(1024, round(math.sqrt(n_rows)), n_rows))


def kmeans(
    x: "np.ndarray", k: int, seed: int = 0, niter: int = 20, gpu: bool | None = None, sample_per_centroid: int = 256,
) -> Clustering:
    """Spherical faiss k-means (GPU when available); every row gets its nearest centroid.

    faiss trains on at most `sample_per_centroid` rows per centroid (a seeded
    sample), which is plenty for centroids; all rows are then assigned.
    """
    import faiss
    import numpy as np

    k = max(1, min(k, len(x)))
    on_gpu = gpu if gpu is not None else use_gpu()
    # faiss takes a C int seed; recipe seeds are below 2^31 but per-label seeds add offsets to them
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed & 0x7FFFFFFF, spherical=True, gpu=bool(on_gpu),
        min_points_per_centroid=1, max_points_per_centroid=sample_per_centroid, verbose=False,
    )
    km.train(x)
    centroids = as_unit_float32(km.centroids)
    index = _flat_ip_index(centroids, on_gpu)
    sims, labels = index.search(x, 1)
    return Clustering(centroids, labels[:, 0].astype(np.int64), sims[:, 0])


def _flat_ip_index(base: "np.ndarray", gpu: bool) -> Any:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    if gpu:
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
    index.add(base)
    return index


# -- clusters ----------------------------------------------------------------
def clusters(
    x: "np.ndarray", n: int, n_clusters_used: int, k: int | None = None, seed: int = 0,
    clustering: Clustering | None = None,
) -> "np.ndarray":
    """n rows drawn evenly (round-robin, random within a cluster) from the c clusters nearest the anchor.

    Clusters join in order of centroid similarity to an anchor cluster (see
    `_clusters_by_anchor`). More clusters join when the chosen ones hold fewer than n rows.
    """
    import numpy as np

    n = min(n, len(x))
    clustering = clustering or kmeans(x, k or default_k(len(x)), seed=seed)
    order = _clusters_by_anchor(clustering)
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(clustering.labels == c)) for c in order]
    used = max(1, min(n_clusters_used, len(order)))
    while sum(len(m) for m in members[:used]) < n:
        used += 1
    return _round_robin(members[:used], n)


def _clusters_by_anchor(clustering: Clustering) -> "np.ndarray":
    """Non-empty clusters, the anchor first, then by centroid similarity to the anchor.

    The anchor is the most compact (highest mean similarity to its centroid) of
    the clusters at least median-sized: the largest cluster is often two topics
    k-means merged, and a tiny compact one is often a clump of near-copies.
    """
    import numpy as np

    k = len(clustering.centroids)
    sizes = np.bincount(clustering.labels, minlength=k)
    compactness = np.bincount(clustering.labels, weights=clustering.similarity, minlength=k) / np.maximum(sizes, 1)
    eligible = sizes >= np.median(sizes[sizes > 0])
    anchor = int(np.argmax(np.where(eligible, compactness, -np.inf)))
    closeness = clustering.centroids @ clustering.centroids[anchor]
    closeness[anchor] = np.inf
    order = np.argsort(-closeness, kind="stable")
    return order[sizes[order] > 0]


def _round_robin(groups: "list[np.ndarray]", n: int) -> "np.ndarray":
    """One row from each group in turn until n rows (a group that runs out drops out)."""
    import numpy as np

    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for group in groups:
            if depth < len(group):
                picked.append(int(group[depth]))
                if len(picked) == n:
                    break
        depth += 1
    return np.asarray(picked, dtype=np.int64)


# -- semdedup ----------------------------------------------------------------
def semdedup(
    x: "np.ndarray", threshold: float = 0.95, k: int | None = None, seed: int = 0,
    clustering: Clustering | None = None, buckets_per_row: int = 2,
) -> "np.ndarray":
    """Indices (ascending) of the rows kept after dropping near-duplicates (SemDeDup).

    Rows are ranked by similarity to their centroid, least prototypical first
    (SemDeDup keeps that copy). Each row joins the buckets of its
    `buckets_per_row` nearest centroids; in every bucket a row is dropped when
    its similarity to a higher-ranked row of the bucket exceeds `threshold`.
    With one bucket per row a duplicate pair split by a k-means boundary would
    survive; with the two nearest buckets such a pair shares a bucket unless
    both rows sit near different boundaries, which for pairs this close is rare.
    """
    import numpy as np

    # Buckets only bound the work, so a cheaper k-means than `clusters` needs will do.
    clustering = clustering or kmeans(x, k or default_k(len(x)), seed=seed, niter=10, sample_per_centroid=64)
    per_row = max(1, min(buckets_per_row, len(clustering.centroids)))
    _, buckets = _flat_ip_index(clustering.centroids, use_gpu()).search(x, per_row)
    rank = np.empty(len(x), dtype=np.int64)
    rank[np.lexsort((np.arange(len(x)), clustering.similarity))] = np.arange(len(x))
    rows = np.repeat(np.arange(len(x)), per_row)
    labels = buckets.ravel()
    valid = labels >= 0
    rows, labels = rows[valid], labels[valid]
    order = np.lexsort((rank[rows], labels))  # by bucket, then by rank within it
    rows, labels = rows[order], labels[order]
    bounds = np.flatnonzero(np.diff(labels)) + 1
    dropped = np.zeros(len(x), dtype=bool)
    for members in np.split(rows, bounds):
        dropped[members[~_keep_in_bucket(x[members], threshold)]] = True
    return np.flatnonzero(~dropped)


def _keep_in_bucket(xb: "np.ndarray", threshold: float, chunk: int = 2048) -> "np.ndarray":
    """Mask of rows with no earlier row above `threshold` (chunked: no s x s matrix for big buckets)."""
    import numpy as np

    keep = np.ones(len(xb), dtype=bool)
    for start in range(0, len(xb), chunk):
        stop = min(start + chunk, len(xb))
        block = xb[start:stop] @ xb[:stop].T
        # only earlier rows count: mask the diagonal and everything after it
        later = np.arange(stop)[None, :] >= np.arange(start, stop)[:, None]
        block[later] = -np.inf
        keep[start:stop] = block.max(axis=1, initial=-np.inf) <= threshold
    return keep


# -- random and the diversity level ----------------------------------------------
def random_rows(total: int, n: int, seed: int = 0) -> "np.ndarray":
    import numpy as np

    return np.random.default_rng(seed).permutation(total)[: min(n, total)].astype(np.int64)


def ball_size(n: int, total: int, level: float) -> int:
    """Rows in the anchor's neighbourhood at `level`: n at 0, every row at 1, geometric in between."""
    if not 0.0 <= level <= 1.0:
        raise UserError(f"diversity level must be within [0, 1], got {level}", field="diversity")
    if total <= n:
        return total
    return max(n, min(total, round(n * (total / n) ** level)))


def densest_anchor(x: "np.ndarray", n: int, seed: int = 0, candidates: int = 64, gpu: bool | None = None) -> int:
    """Among a seeded sample of rows, the one whose n nearest rows are most similar to it (the tightest ball)."""
    import numpy as np

    import faiss

    sample = np.sort(np.random.default_rng(seed).permutation(len(x))[: min(candidates, len(x))])
    k = min(n, len(x))
    if gpu if gpu is not None else use_gpu():
        sims, _ = faiss.knn_gpu(gpu_resources(), x[sample], x, k, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        sims, _ = faiss.knn(x[sample], x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return int(sample[int(np.argmax(sims[:, k - 1]))])


def nearest_rows(x: "np.ndarray", anchor: int, size: int) -> "np.ndarray":
    """The `size` rows most similar to the anchor, most similar first (ties by row index)."""
    import numpy as np

    sims = x @ x[anchor]
    sims[anchor] = np.inf  # the anchor leads even among exact duplicates
    if size < len(x):
        part = np.argpartition(-sims, size - 1)[:size]
    else:
        part = np.arange(len(x))
    return part[np.lexsort((part, -sims[part]))]


def by_level(x: "np.ndarray", n: int, level: float, seed: int = 0) -> "np.ndarray":
    """n rows whose diversity rises with `level` (see the module docstring): k-center inside a growing ball."""
    import numpy as np

    n = min(n, len(x))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    size = ball_size(n, len(x), level)
    anchor = densest_anchor(x, n, seed=seed)
    ball = nearest_rows(x, anchor, size)
    if size == n:
        return ball
    return ball[kcenter(x[ball], n, seed=seed, initial=[0])]


def within_shift_band(similarity: "np.ndarray", band: tuple[float, float]) -> tuple["np.ndarray", list[float]]:
    """Rows whose nearest-reference similarity lies between the pool's `band` quantiles, and those bounds."""
    import numpy as np

    low, high = (float(np.quantile(similarity, q)) for q in band)
    return np.flatnonzero((similarity >= low) & (similarity <= high)), [low, high]


def select(
    x: "np.ndarray", n: int | None, method: str = "random", *, level: float | None = None, seed: int = 0,
    k: int | None = None, n_clusters_used: int | None = None, threshold: float = 0.95,
) -> "np.ndarray":
    """Row indices in selection order for one method (or a diversity `level`)."""
    total = len(x)
    if level is not None:
        return by_level(x, _need_n(n, "diversity"), level, seed=seed)
    if method == "kcenter":
        return kcenter(x, _need_n(n, method), seed=seed)
    if method == "clusters":
        k = k or default_k(total)
        return clusters(x, _need_n(n, method), n_clusters_used or k, k=k, seed=seed)
    if method == "semdedup":
        kept = semdedup(x, threshold=threshold, k=k, seed=seed)
        return kept if n is None or n >= len(kept) else kept[random_rows(len(kept), n, seed)]
    if method == "random":
        return random_rows(total, _need_n(n, method), seed)
    raise UserError(f"unknown selection method '{method}'", field="method", hint=f"one of {', '.join(METHODS)}")


def _need_n(n: int | None, method: str) -> int:
    if n is None:
        raise UserError(f"method '{method}' needs `n`", field="n")
    return n


def select_per_label(
    x: "np.ndarray", labels: list[Any], n: int | None, **options: Any
) -> "np.ndarray":
    """Select within each label, keeping the label shares; interleaved so any prefix stays balanced."""
    import numpy as np

    labels_arr = np.asarray([str(v) for v in labels])
    names, counts = np.unique(labels_arr, return_counts=True)
    quotas = _quotas(counts, n) if n is not None else [None] * len(names)
    seed = options.pop("seed", 0)
    picked, positions = [], []
    for i, (name, quota) in enumerate(zip(names, quotas)):
        if quota == 0:
            continue
        rows = np.flatnonzero(labels_arr == name)
        local = select(x[rows], quota, seed=seed + 7919 * i, **options)
        picked.append(rows[local])
        positions.append((np.arange(len(local)) + 0.5) / max(len(local), 1))
    if not picked:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate(picked)
    return rows[np.argsort(np.concatenate(positions), kind="stable")]


def _quotas(counts: "np.ndarray", n: int) -> list[int]:
    """n split in proportion to counts (largest remainder), never above a label's count."""
    import numpy as np

    n = min(n, int(counts.sum()))
    exact = counts * n / counts.sum()
    quotas = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quotas), kind="stable")[: n - quotas.sum()]:
        quotas[i] += 1
    return [int(q) for q in np.minimum(quotas, counts)]
