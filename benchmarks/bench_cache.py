"""Cache and builder speed: fully cached builds with and without verify-on-read, and hashing throughput.

Four ways to run the same fully cached `synthforge build`, interleaved (same repeats, same order rotation):
  - before:    the code before verify-on-read (`--before REV`, default: the merge base with main), on its own cache;
  - unchecked: this code with the checks patched out (no manifest checksum, no table hashes): the read cost alone;
  - no artifact checks: this code with only the artifact check patched out (`Cache.artifact_problems`), i.e.
               before issue 20's artifact verification (response rows are not read by a fully cached build);
  - checked:   this code as shipped (every manifest checksummed, every table hashed, every artifact's remembered
               stamp compared, before it counts as cached).
`--artifact-mb N` also times the artifact check of one entry holding an N MB model file: the first check
(a full hash, no stamp remembered yet), the remembered-stamp check every later plan/build does, and the
full hash a step's `InputTable.artifact` does when it reads the model.
Recipes: a 20-variant load/split matrix, and the 25-variant diversity study: built here with its SmolLM2 swapped
for a local fake endpoint (same DAG and table sizes), or as built in `--study-cache` (`--study-set` passes the
--set values it was built with). Prints a table with the median
and the min-max spread of each, the load average, and xxh3 throughput.

    .venv/bin/python benchmarks/bench_cache.py [--repeats 9] [--study-cache cache [--study-set NAME=VALUE ...]]
"""

from __future__ import annotations

import argparse
import os
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

UNCHECKED = (
    "import sys; import synthforge.cache as c; "
    "c.table_problems = lambda *a, **k: []; c.Manifest.problems = lambda self, key=None, full=False: []; "
    "from synthforge.cli import main; sys.argv[0] = 'synthforge'; main()"
)
NO_ARTIFACT_CHECKS = (
    "import sys; import synthforge.cache as c; c.Cache.artifact_problems = lambda self, key: []; "
    "from synthforge.cli import main; sys.argv[0] = 'synthforge'; main()"
)


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def before_tree(rev: str, into: Path) -> Path:
    """The synthforge package as of `rev`, extracted (imported ahead of the installed one via PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "synthforge"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def commands(before: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    env = dict(os.environ)
    return {
        "before": ([sys.executable, "-m", "synthforge"], {**env, "PYTHONPATH": str(before)}),
        "unchecked": ([sys.executable, "-c", UNCHECKED], env),
        "no artifact checks": ([sys.executable, "-c", NO_ARTIFACT_CHECKS], env),
        "checked": ([sys.executable, "-m", "synthforge"], env),
    }


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command: CPU time stays honest on a loaded machine."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    if " built " in f" {proc.stdout} " and "built 0," not in proc.stdout:
        raise SystemExit(f"not fully cached: {proc.stdout[-500:]}")
    return seconds, cpu


def interleaved(cases: dict[str, tuple[list[str], dict[str, str], Path]], args: list[str], repeats: int) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    names = list(cases)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate who goes first
            cmd, env, cwd = cases[name]
            times[name].append(run(cmd + args, env, cwd))
    return times


def twenty_variants(work: Path, before: Path, repeats: int) -> dict[str, list[float]]:
    import polars as pl

    labels = ["a", "b", "c"]
    pl.DataFrame({"text": [f"row {i}" for i in range(3000)], "label": [labels[i % 3] for i in range(3000)]}).write_csv(work / "rows.csv")
    (work / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    cases = {}
    for name, (cmd, env) in commands(before).items():
        cache = work / ("cache-before" if name == "before" else "cache")  # each format on its own cache
        env = {**env, "SYNTHFORGE_CACHE": str(cache)}
        subprocess.run(cmd + ["build", "recipe.yaml", "--no-progress"], cwd=work, env=env, check=True, capture_output=True)
        cases[name] = (cmd, env, work)
    return interleaved(cases, ["build", "recipe.yaml", "--no-progress"], repeats)


def study(cache: Path | None, sets: list[str], before: Path, repeats: int, work: Path) -> tuple[dict[str, list[float]] | None, str]:
    """The study's fully cached build, timed: on `cache` as built, or built here with a local fake endpoint."""
    recipe = work / "diversity_study.yaml"  # a copy: its lockfile lands beside it, not over the committed one
    text = (ROOT / "recipes" / "diversity_study.yaml").read_text()
    if cache is not None:
        recipe.write_text(text)
    overrides = [a for s in sets for a in ("--set", s)]
    how = "as built in " + str(cache)
    if cache is None and recipe.exists():  # kept from an earlier run (--keep): time it as it is
        cache, how = work / "study-cache", "generate via a local fake endpoint"
    elif cache is None:  # same DAG and table sizes; SmolLM2 swapped for a local fake endpoint (instant answers)
        cache, how = work / "study-cache", "generate via a local fake endpoint"
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), "0"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            base_url = server.stdout.readline().strip()
            backend = "backend: {type: transformers, model: smollm2, batch_size: 32}"
            assert backend in text, "the study recipe's backend line changed: update this benchmark"
            recipe.write_text(text.replace(backend, f"backend: {{type: openai, base_url: '{base_url}', model: fake}}"))
            subprocess.run([sys.executable, "-m", "synthforge", "build", str(recipe), "--no-progress", *overrides], cwd=work,
                           env={**os.environ, "SYNTHFORGE_CACHE": str(cache)}, check=True, capture_output=True)
        finally:
            server.terminate()
    env_cache = {"SYNTHFORGE_CACHE": str(cache.resolve())}
    plan = subprocess.run([sys.executable, "-m", "synthforge", "plan", str(recipe), *overrides], cwd=work,
                          env={**os.environ, **env_cache}, capture_output=True, text=True)
    if plan.returncode != 0 or " 0 to run" not in plan.stdout:
        return None, how
    cases = {name: (cmd, {**env, **env_cache}, work) for name, (cmd, env) in commands(before).items() if name != "before"}
    return interleaved(cases, ["build", str(recipe), "--no-progress", *overrides], repeats), how


def imports_torch(work: Path) -> bool:
    env = {**os.environ, "SYNTHFORGE_CACHE": str(work / "cache")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "synthforge", "build", "recipe.yaml", "--no-progress"],
                          cwd=work, env=env, capture_output=True, text=True)
    return any(f"| {m}" in proc.stderr for m in ("torch", "transformers"))


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
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            hash_file(path)
            best = min(best, time.perf_counter() - start)
        return size / best / (1 << 30)
    finally:
        path.unlink()


def artifact_cost(megabytes: int, work: Path) -> list[list[str]]:
    """Seconds to check one entry's N MB artifact: first (full hash), remembered stamp, full hash on read (best of 3)."""
    import polars as pl

    from synthforge.cache import Cache, artifact_path, write_entry_files
    from synthforge.keys import key_of

    cache = Cache(work / "artifact-cache")
    components = {"bench": "artifact", "megabytes": megabytes}
    key = key_of(components)
    with cache.writing(key) as staging:
        model = staging / "artifacts" / "model"
        model.mkdir(parents=True)
        chunk = os.urandom(16 << 20)
        with open(model / "model.safetensors", "wb") as fh:
            for _ in range(max(1, (megabytes << 20) // len(chunk))):
                fh.write(chunk)
        write_entry_files(staging, {"data": pl.DataFrame({"id": ["0"], "text": ["x"]})}, key=key, step="train",
                          kind="bench", components=components, timings={"started": 0.0, "seconds": 0.0})

    def timed(fn) -> float:
        start = time.perf_counter()
        assert fn() in ([], cache.entry_path(key) / "artifacts/model")
        return time.perf_counter() - start

    first = timed(lambda: cache.problems(key))  # no stamp remembered yet: a full hash (page cache warm from install)
    remembered = min(timed(lambda: cache.problems(key)) for _ in range(3))
    on_read = min(timed(lambda: artifact_path(cache.entry_path(key), "artifacts/model")) for _ in range(3))
    return [[f"artifact check, {megabytes} MB model: first plan after build (full hash)", f"{first:.4f} s", "", "", ""],
            [f"artifact check, {megabytes} MB model: later plans (remembered stamp)", f"{remembered:.6f} s", "", "", ""],
            [f"artifact check, {megabytes} MB model: a step reads it (full hash)", f"{on_read:.4f} s", "", "", ""]]


def summary(times: list[tuple[float, float]], which: int) -> str:
    values = [t[which] for t in times]
    return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def ratio(times: dict[str, list[tuple[float, float]]], name: str, which: int) -> str:
    return f"{statistics.median(t[which] for t in times[name]) / statistics.median(t[which] for t in times['unchecked']):.2f}x"


def main() -> None:
    from synthforge.tables import render_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--before", default=None, help="git revision of the code before verify-on-read")
    parser.add_argument("--study-cache", default=None,
                        help="a cache holding the diversity study, built (default: build it here with a fake endpoint)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="build the fake-endpoint study in DIR and keep it (a rerun only times the cached builds)")
    parser.add_argument("--study-set", nargs="*", default=[], metavar="NAME=VALUE", help="--set values it was built with")
    parser.add_argument("--artifact-mb", type=int, default=500, help="size of the model file the artifact check is timed on (0: skip)")
    args = parser.parse_args()
    rev = args.before or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                        capture_output=True, text=True).stdout.strip()
    (ROOT / "cache").mkdir(exist_ok=True)
    load_start = load()
    rows = []
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as old:
        before = before_tree(rev, Path(old))
        twenty = twenty_variants(Path(work), before, args.repeats)
        heavy = imports_torch(Path(work))
        study_work = Path(args.keep) if args.keep else Path(work)
        study_work.mkdir(parents=True, exist_ok=True)
        studied, how = study(Path(args.study_cache) if args.study_cache else None, args.study_set, before, args.repeats,
                             study_work)
        artifacts = artifact_cost(args.artifact_mb, Path(work)) if args.artifact_mb else []
    checks = (("unchecked", "unchecked reads"), ("no artifact checks", "verify-on-read, no artifact checks"),
              ("checked", "verify-on-read + artifact checks"))
    for name, label in (("before", f"before ({rev[:10]})"), *checks):
        rows.append([f"20 variants (21 outputs), fully cached: {label}", summary(twenty[name], 0), ratio(twenty, name, 0),
                     summary(twenty[name], 1), ratio(twenty, name, 1)])
    if studied:
        for name, label in checks:
            rows.append([f"diversity study, 60 variants (151 outputs), fully cached: {label}", summary(studied[name], 0),
                         ratio(studied, name, 0), summary(studied[name], 1), ratio(studied, name, 1)])
    else:
        rows.append(["diversity study, 60 variants", f"not fully built ({how}): skipped", "", "", ""])
    rows += artifacts
    rows.append(["fully cached build imports torch/transformers", "yes" if heavy else "no", "", "", ""])
    rows.append(["xxh3-128 of a 1 GiB file (page cache, best of 3)", f"{hashing_throughput():.1f} GiB/s", "", "", ""])
    print(render_table(["benchmark", "wall: median (min-max)", "vs unchecked", "CPU: median (min-max)", "vs unchecked"], rows))
    print(f"study: {how}")
    print(f"{args.repeats} interleaved repeats each; load average {load_start} at start, {load()} at end "
          f"(shared machine); goal: checked < 0.3 s and within 1.15x of unchecked")


if __name__ == "__main__":
    main()
