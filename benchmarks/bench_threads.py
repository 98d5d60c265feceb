"""Sequential builds under load: one process alternating faiss selection and torch (MiniLM) embedding, as a
`--jobs 1` build of the study does, with the threads capped as the code before did it and as it does now.

Each case is a fresh process (wall and CPU seconds), interleaved, while `--busy N` busy-looping processes take
cores (the second load). Cases:
  - before: no cap (torch, faiss and BLAS each start their own threads; idle OpenMP threads spin);
  - now:    `limit_threads(thread_budget())`, as the sequential build calls it (idle OpenMP threads sleep).

    .venv/bin/python benchmarks/bench_threads.py [--busy 1] [--repeats 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK = """
import sys
if sys.argv[1] == "now":
    from synthforge.backends.devices import limit_threads, thread_budget
    limit_threads(thread_budget())
import numpy as np
from synthforge.backends.embedder import Embedder
from synthforge.selection import by_level
embedder = Embedder(device="cpu")
texts = [f"review {{i}}: the plot was {{('good', 'bad', 'fine')[i % 3]}} in scene {{i // 3}} with more words" for i in range(400)]
pool = np.random.default_rng(0).standard_normal((20000, 384)).astype("float32")
for round in range({rounds}):
    embedder.embed(texts, batch_size=64)
    by_level(pool, 500, 0.7, seed=round)
    embedder.embed(texts, batch_size=64)
"""


def timed(case: str, rounds: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "SYNTHFORGE_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", WORK.format(rounds=rounds), case], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    from synthforge.text_tables import render_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=1, help="busy-looping processes running throughout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="embed + select + embed rounds per process")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    times: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
    try:
        for rep in range(args.repeats):
            for case in (("before", "now") if rep % 2 == 0 else ("now", "before")):
                times[case].append(timed(case, args.rounds))
                loads.append(os.getloadavg()[0])
    finally:
        for proc in busy:
            proc.kill()
    rows = []
    for case, runs in times.items():
        wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
        ratio = statistics.median(wall) / statistics.median(r[0] for r in times["now"])
        rows.append([case, f"{statistics.median(wall):.1f} s ({min(wall):.1f}-{max(wall):.1f})",
                     f"{statistics.median(cpu):.1f} s ({min(cpu):.1f}-{max(cpu):.1f})", f"{ratio:.2f}x"])
    print(render_table(["threads", "wall: median (range)", "CPU: median (range)", "wall vs now"], rows))
    print(f"{args.repeats} interleaved repeats, {args.rounds} rounds each, {args.busy} busy process(es) throughout, "
          f"{os.cpu_count()} CPUs; load average (1 min) {min(loads):.2f}-{max(loads):.2f}")


if __name__ == "__main__":
    main()
