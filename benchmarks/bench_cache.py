"""Cache and builder speed: a fully cached 20-variant build (vs `dvc repro` on an equivalent
no-op pipeline) and content hashing throughput. Prints a table.

    .venv/bin/pip install dvc   # optional: the dvc row is skipped without it
    PATH=.venv/bin:$PATH .venv/bin/python benchmarks/bench_cache.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = """
name: bench-20
seed: 1
vars: {k: 5, test: 100}
matrix:
  k: [2, 4, 6, 8, 10]
  test: [50, 100, 150, 200]
steps:
  rows:
    kind: load
    path: rows.csv
  split:
    kind: split
    input: rows
    test: ${test}
    train_per_label: ${k}
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str], repeat: int = 7) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        out = proc.stdout + proc.stderr
    return statistics.median(times), out


def synthforge_cached(work: Path) -> tuple[float, bool]:
    import polars as pl

    labels = ["a", "b", "c"]
    pl.DataFrame({"text": [f"row {i}" for i in range(3000)], "label": [labels[i % 3] for i in range(3000)]}).write_csv(work / "rows.csv")
    (work / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    env = {**os.environ, "SYNTHFORGE_CACHE": str(work / "cache")}
    cmd = [sys.executable, "-m", "synthforge", "build", "recipe.yaml", "--no-progress"]
    subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
    seconds, _ = timed(cmd, work, env)
    _, imports = timed([sys.executable, "-X", "importtime", *cmd[1:]], work, env, repeat=1)
    heavy = any(f"| {m}" in imports for m in ("torch", "transformers"))
    return seconds, heavy


def dvc_noop(work: Path) -> float | None:
    if shutil.which("dvc") is None and not (Path(sys.executable).parent / "dvc").exists():
        return None
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=work, check=True)
    (work / "in.txt").write_text("x\n")
    stages = "\n".join(
        f"  s{i}:\n    cmd: cp {'in.txt' if i == 0 else f'out{i - 1}.txt'} out{i}.txt\n"
        f"    deps: [{'in.txt' if i == 0 else f'out{i - 1}.txt'}]\n    outs: [out{i}.txt]"
        for i in range(20)
    )
    (work / "dvc.yaml").write_text("stages:\n" + stages + "\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([dvc, "repro", "-q"], cwd=work, env=env, check=True, capture_output=True)
    seconds, _ = timed([dvc, "repro", "-q"], work, env, repeat=3)
    return seconds


def hashing_throughput(size: int = 1 << 30) -> float:
    import numpy as np

    from synthforge.keys import hash_file

    with tempfile.NamedTemporaryFile(dir=ROOT / "cache", delete=False) as fh:
        path = Path(fh.name)
        chunk = np.random.default_rng(0).integers(0, 255, size=64 << 20, dtype=np.uint8).tobytes()
        for _ in range(size // len(chunk)):
            fh.write(chunk)
    try:
        hash_file(path)  # warm the page cache: we measure hashing, not the disk
        start = time.perf_counter()
        hash_file(path)
        return size / (time.perf_counter() - start) / (1 << 30)
    finally:
        path.unlink()


def main() -> None:
    from synthforge.tables import render_table

    (ROOT / "cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        cached, heavy = synthforge_cached(Path(a))
        dvc = dvc_noop(Path(b))
    gib_s = hashing_throughput()
    rows = [
        ["synthforge build, 20 variants, fully cached", f"{cached:.3f} s", "< 0.3 s", "yes" if cached < 0.3 else "NO"],
        ["  imports torch/transformers", "yes" if heavy else "no", "no", "yes" if not heavy else "NO"],
        ["dvc repro, 20-stage no-op pipeline", f"{dvc:.3f} s" if dvc else "dvc not installed", "(reference)", ""],
        ["xxh3-128 of a 1 GiB file (page cache)", f"{gib_s:.1f} GiB/s", ">= 5 GiB/s", "yes" if gib_s >= 5 else "NO"],
    ]
    print(render_table(["benchmark", "measured", "target", "met"], rows))


if __name__ == "__main__":
    main()
