"""Diversity levels vs k-center alone: seconds to pick n rows from N (random unit rows, d = 384).

Reference: `kcenter(x, n)`. Candidates: `by_level(x, n, level)` at levels 0, 0.5 and 1
(anchor search + ball + k-center inside the ball). Interleaved repeats, median and spread.
Usage: python benchmarks/bench_levels.py [N ...]   (default 100000)
"""

from __future__ import annotations

import sys
import time

import numpy as np

from synthforge import selection
from synthforge.text_tables import render_table

PICKS = 1000
REPEATS = int(__import__("os").environ.get("REPEATS", 3))


def main(sizes: list[int]) -> None:
    rows = []
    for total in sizes:
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(50, 384)).astype(np.float32)
        x = selection.as_unit_float32(centers[rng.integers(0, 50, total)] + rng.normal(scale=0.8, size=(total, 384)).astype(np.float32))
        runs = {"kcenter": lambda: selection.kcenter(x, PICKS)}
        runs.update({f"level {lv}": (lambda lv=lv: selection.by_level(x, PICKS, lv)) for lv in (0.0, 0.5, 1.0)})
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(REPEATS):  # interleaved: each repeat runs every candidate once
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        reference = float(np.median(times["kcenter"]))
        for name, values in times.items():
            median = float(np.median(values))
            rows.append([f"{total:,}", name, f"{median:.2f}", f"{min(values):.2f}-{max(values):.2f}", f"{median / reference:.2f}x"])
    print(render_table(["rows", "method", "median s", "range s", "vs kcenter"], rows, align_right=(2, 3, 4)))
    print(f"n = {PICKS} picks, d = 384, {REPEATS} interleaved repeats; load average {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000])
