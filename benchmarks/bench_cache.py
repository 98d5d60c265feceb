"""Cache and builder speed: fully cached builds against the code before (`--before REV`), `dvc repro` and the
import floor, and hashing throughput.

Every case is a fresh process timed for wall and CPU (user + sys), interleaved with rotating order, same repeats:
  - N variants (`--variants 20 500`): a load/split matrix of N variants (N + 1 outputs), fully cached, built by
    the code before (REV, its own cache) and by this code; beside it `dvc repro` of the same DAG (one load stage,
    N split stages over a `foreach`, every stage cached; dvc from `--dvc`, e.g. /tmp/bench-ref/bin/dvc).
    The growth per variant is (CPU at the largest N - CPU at the smallest) / (difference in N).
  - "now" three ways: as a repeated no-op build runs (replayed from its remembered build), with --recheck (the
    full resolution, keying and plan that any change brings back), and as the first no-op after a change (the
    full check, recording; a new environment value each run keeps any record from applying).
  - the study: the diversity study (450 variants, 992 outputs) fully cached, before and now, beside the import floor
    (`python -c "import synthforge.app"`): built here with SmolLM2 swapped for a local fake endpoint (same DAG and
    table sizes), or as built in `--study-cache` (`--study-set` passes the --set values it was built with).
`--artifact-mb N` also times the artifact check of one entry holding an N MB model file: the first check
(a full hash, no stamp remembered yet), the remembered-stamp check every later plan/build does, and the
full hash a step's `InputTable.artifact` does when it reads the model.

    .venv/bin/python benchmarks/bench_cache.py [--repeats 9] [--variants 20 500] [--dvc /tmp/bench-ref/bin/dvc]
        [--study-cache cache [--study-set NAME=VALUE ...]] [--keep DIR]
"""

from __future__ import annotations

import argparse
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
name: bench-{n}
seed: 1
vars: {{k: 5, test: 100}}
matrix:
  k: {ks}
  test: {tests}
steps:
  rows:
    kind: load
    path: rows.csv
  split:
    kind: split
    input: rows
    test: ${{test}}
    train_per_label: ${{k}}
"""

DVC_PIPELINE = """
stages:
  rows:
    cmd: cp rows.csv loaded.csv
    deps: [rows.csv]
    outs: [loaded.csv]
  split:
    foreach: {items}
    do:
      cmd: cp loaded.csv split/${{item}}.csv
      deps: [loaded.csv]
      outs: ["split/${{item}}.csv"]
"""


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def before_tree(rev: str, into: Path) -> Path:
    """The synthforge package as of `rev`, extracted (imported ahead of the installed one via PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "synthforge"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compile_bytecode(tree: Path) -> None:
    """Write the .pyc files of `tree`'s synthforge, as installing a package does: otherwise every timed run
    compiles every module from source (PYTHONDONTWRITEBYTECODE keeps them from being written), which a
    user never pays and dvc, installed by pip, does not either."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "synthforge")], check=True, capture_output=True)


FRESH = "BENCH_RUN_ID"  # a new value each run: a new environment, so no remembered build applies and the run records one


def commands(before: Path) -> dict[str, tuple[list[str], dict[str, str], list[str]]]:
    """name -> (command, environment, arguments after the build's own): the code before, and now three ways:
    as a user's repeated no-op build runs (replayed: docs/cli.md, 'Remembered builds'), the full check that
    replaces it after any change (--recheck), and the first no-op after a change (the full check, recording)."""
    env = dict(os.environ)
    now = {**env, "PYTHONPATH": str(ROOT)}
    return {
        "before": ([sys.executable, "-m", "synthforge"], {**env, "PYTHONPATH": str(before)}, []),
        "now": ([sys.executable, "-m", "synthforge"], now, []),
        "now, full check (--recheck)": ([sys.executable, "-m", "synthforge"], now, ["--recheck"]),
        "now, first no-op (records)": ([sys.executable, "-m", "synthforge"], {**now, FRESH: "0"}, []),
    }


def tree_of(name: str) -> str:
    return "before" if name == "before" else "now"


_runs = iter(range(1, 1 << 30))


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command: CPU time stays honest on a loaded machine."""
    import resource

    if FRESH in env:
        env = {**env, FRESH: str(next(_runs))}
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
    if "Running stage" in proc.stdout + proc.stderr:
        raise SystemExit(f"dvc repro ran a stage: {proc.stdout[-500:]}")
    return seconds, cpu


def interleaved(cases: dict[str, tuple[list[str], dict[str, str], Path]], repeats: int) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    names = list(cases)
    for cmd, env, cwd in cases.values():  # once untimed: page cache, .pyc files, remembered stamps
        run(cmd, env, cwd)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate who goes first
            cmd, env, cwd = cases[name]
            times[name].append(run(cmd, env, cwd))
    return times


def matrix_of(n: int) -> tuple[list[int], list[int]]:
    """Matrix values giving exactly n variants: k values x test values."""
    tests = next(t for t in (20, 10, 5, 4, 2, 1) if n % t == 0 and n // t >= 1)
    return [2 + 2 * i for i in range(n // tests)], [50 + 5 * i for i in range(tests)]


def n_variants(n: int, work: Path, before: Path, repeats: int, dvc: Path | None) -> dict[str, list[tuple[float, float]]]:
    """Fully cached builds of an n-variant load/split matrix: before, now, and `dvc repro` of the same DAG."""
    import polars as pl

    folder = work / f"variants-{n}"
    folder.mkdir()
    labels = ["a", "b", "c"]
    pl.DataFrame({"text": [f"row {i}" for i in range(3000)], "label": [labels[i % 3] for i in range(3000)]}).write_csv(folder / "rows.csv")
    ks, tests = matrix_of(n)
    (folder / "recipe.yaml").write_text(textwrap.dedent(RECIPE).format(n=n, ks=ks, tests=tests))
    build = ["build", "recipe.yaml", "--no-progress"]
    cases = {}
    for name, (cmd, env, extra) in commands(before).items():
        env = {**env, "SYNTHFORGE_CACHE": str(folder / f"cache-{tree_of(name)}")}  # each version on its own cache
        subprocess.run(cmd + build, cwd=folder, env=env, check=True, capture_output=True)
        cases[name] = (cmd + build + extra, env, folder)
    if dvc is not None:
        repo = work / f"dvc-{n}"
        repo.mkdir()
        shutil.copy(folder / "rows.csv", repo / "rows.csv")
        (repo / "split").mkdir()
        (repo / "dvc.yaml").write_text(DVC_PIPELINE.format(items=list(range(n))))
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=repo, env=env, check=True, capture_output=True)
        subprocess.run([str(dvc), "repro", "-q"], cwd=repo, env=env, check=True, capture_output=True)
        cases["dvc repro"] = ([str(dvc), "repro"], env, repo)
    return interleaved(cases, repeats)


def study(cache: Path | None, sets: list[str], before: Path, repeats: int, work: Path) -> tuple[dict[str, list[tuple[float, float]]] | None, str, str]:
    """The study's fully cached build, timed before and now beside the import floor: on `cache` as built, or
    built here with a local fake endpoint."""
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
        return None, how, ""
    build = ["build", str(recipe), "--no-progress", *overrides]
    cases = {name: (cmd + build + extra, {**env, **env_cache}, work) for name, (cmd, env, extra) in commands(before).items()}
    cases["import floor"] = ([sys.executable, "-c", "import synthforge.app"], {**os.environ, "PYTHONPATH": str(ROOT)}, work)
    return interleaved(cases, repeats), how, study_size(recipe, sets)


def study_size(recipe: Path, sets: list[str]) -> str:
    """'N variants (M outputs)' of the study as built."""
    from synthforge.graph import build_graph
    from synthforge.recipe.resolve import load_recipe, parse_overrides

    resolved = load_recipe(recipe, parse_overrides(tuple(sets)))
    return f"{len(resolved.variants)} variants ({len(build_graph(resolved).nodes)} outputs)"


def heavy_imports(folder: Path) -> list[str]:
    """Which of torch, transformers, faiss and numpy a fully cached build of `folder`'s recipe imports."""
    env = {**os.environ, "SYNTHFORGE_CACHE": str(folder / "cache-now"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "synthforge", "build", "recipe.yaml", "--no-progress"],
                          cwd=folder, env=env, capture_output=True, text=True)
    return [m for m in ("torch", "transformers", "faiss", "numpy") if f"| {m}\n" in proc.stderr]


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


def median(times: list[tuple[float, float]], which: int) -> float:
    return statistics.median(t[which] for t in times)


def main() -> None:
    from synthforge.text_tables import render_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--before", default=None, help="git revision of the reference code (default: merge base with main)")
    parser.add_argument("--variants", type=int, nargs="*", default=[20, 500], help="matrix sizes of the load/split recipe")
    parser.add_argument("--dvc", type=Path, default=Path("/tmp/bench-ref/bin/dvc"), help="dvc executable (skipped if absent)")
    parser.add_argument("--study-cache", default=None,
                        help="a cache holding the diversity study, built (default: build it here with a fake endpoint)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="build the fake-endpoint study in DIR and keep it (a rerun only times the cached builds)")
    parser.add_argument("--study-set", nargs="*", default=[], metavar="NAME=VALUE", help="--set values it was built with")
    parser.add_argument("--no-study", action="store_true", help="skip the study")
    parser.add_argument("--artifact-mb", type=int, default=0, help="size of the model file the artifact check is timed on (0: skip)")
    parser.add_argument("--hashing", action="store_true", help="also time xxh3 over a 1 GiB file")
    args = parser.parse_args()
    rev = args.before or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                        capture_output=True, text=True).stdout.strip()
    dvc = args.dvc if args.dvc.exists() else None
    (ROOT / "cache").mkdir(exist_ok=True)
    loads = [load()]
    rows, cpu_of = [], {}
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as old:
        before = before_tree(rev, Path(old))
        for tree in (before, ROOT):
            compile_bytecode(tree)
        for n in args.variants:
            times = n_variants(n, Path(work), before, args.repeats, dvc)
            loads.append(load())
            for name in times:
                label = f"before ({rev[:10]})" if name == "before" else name
                vs = (f"{median(times[name], 0) / median(times['dvc repro'], 0):.3f}x" if "dvc repro" in times else "")
                rows.append([f"{n} variants ({n + 1} outputs), fully cached: {label}", summary(times[name], 0),
                             summary(times[name], 1), vs])
                cpu_of[(name, n)] = median(times[name], 1)
        heavy = heavy_imports(Path(work) / f"variants-{args.variants[0]}") if args.variants else []
        studied, how, size = None, "skipped", ""
        if not args.no_study:
            study_work = Path(args.keep) if args.keep else Path(work)
            study_work.mkdir(parents=True, exist_ok=True)
            studied, how, size = study(Path(args.study_cache) if args.study_cache else None, args.study_set, before,
                                 args.repeats, study_work)
            loads.append(load())
        artifacts = artifact_cost(args.artifact_mb, Path(work)) if args.artifact_mb else []
    names = list(commands(ROOT))
    if len(args.variants) > 1:
        small, large = min(args.variants), max(args.variants)
        for name in names:
            growth = (cpu_of[(name, large)] - cpu_of[(name, small)]) / (large - small) * 1000
            rows.append([f"CPU per extra variant ({small} -> {large}): {name}", f"{growth:.2f} ms", "", ""])
    if studied:
        floor = median(studied["import floor"], 0)
        for name in names + ["import floor"]:
            label = f"before ({rev[:10]})" if name == "before" else name
            rows.append([f"diversity study, {size}, fully cached: {label}", summary(studied[name], 0),
                         summary(studied[name], 1), f"{median(studied[name], 0) / floor:.2f}x floor"])
    elif not args.no_study:
        rows.append(["diversity study", f"not fully built ({how}): skipped", "", ""])
    rows += [row[:2] + ["", ""] for row in artifacts]
    rows.append(["fully cached build imports", ", ".join(heavy) or "none of torch, transformers, faiss, numpy", "", ""])
    if args.hashing:
        rows.append(["xxh3-128 of a 1 GiB file (page cache, best of 3)", f"{hashing_throughput():.1f} GiB/s", "", ""])
    print(render_table(["benchmark", "wall: median (min-max)", "CPU: median (min-max)", "wall vs dvc repro / floor"], rows))
    print(f"study: {how}; dvc: {dvc or 'not found'}")
    print(f"{args.repeats} interleaved repeats each; load average (1 min) {', '.join(loads)} at start, after each part "
          f"(shared machine); goals: study <= 1.5x the import floor, N=20 <= 0.25x and N=500 <= 0.05x dvc repro, "
          f"<= 0.3 ms CPU per extra variant")


if __name__ == "__main__":
    main()
