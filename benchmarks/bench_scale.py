"""Scale-out: the diversity study built sequentially, with --jobs 2 and on a local Ray instance (generate cached),
and sharded vs unsharded generate and embed. Prints tables.

    # study: needs a cache that holds the study's `generated` entry and shared/ (responses, converted SmolLM2)
    .venv/bin/python benchmarks/bench_scale.py study --source-cache cache --runs 1
    # shards: packaged MiniLM on Rotten Tomatoes texts, packaged SmolLM2 (fresh response caches)
    .venv/bin/python benchmarks/bench_scale.py shards --repeats 3
    # projection of the GPU-sized study from the per-step times of a built study cache
    .venv/bin/python benchmarks/bench_scale.py project --cache cache

The machine may be shared: every row carries the load average before it ran and the CPU time it used
(user+sys of the build's process tree as reaped by its parents; Ray's daemons are partly missed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthforge.tables import render_table  # noqa: E402

STUDY = ROOT / "recipes" / "diversity_study.yaml"
MODES = {
    "sequential (--jobs 1)": ["--jobs", "1"],
    "local --jobs 2": ["--jobs", "2"],
    "ray local, 2 CPUs": ["--executor", "ray", "--jobs", "2"],
}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def table_digests(cache: Path) -> dict[str, str]:
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((cache / "entries").rglob("*.parquet"))}


# -- the study ---------------------------------------------------------------------
def seeded_cache(source: Path, target: Path, sets: tuple[str, ...]) -> None:
    """A cache with only the study's `generate` entry and the shared caches (models linked, responses copied)."""
    from synthforge.app import open_graph
    from synthforge.cache import Cache

    graph = open_graph(str(STUDY), sets)
    generated = {node.key for node in graph.nodes_of_step("generated")}
    (target / "shared").mkdir(parents=True)
    os.symlink((source / "shared" / "models").resolve(), target / "shared" / "models")
    shutil.copytree(source / "shared" / "responses", target / "shared" / "responses")
    for key in generated:
        entry = Cache(source).entry_path(key)
        if not entry.is_dir():
            raise SystemExit(f"{source} lacks the study's generate entry {key[:12]}: build the study there first")
        shutil.copytree(entry, Cache(target).entry_path(key))


def study(source: Path, runs: int, sets: tuple[str, ...], keep: Path | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    recipe = work / STUDY.name
    shutil.copy(STUDY, recipe)  # build writes its lockfile beside the recipe
    rows, digests = [], {}
    for run in range(runs):
        for mode, flags in MODES.items():  # interleaved: each mode sees the same drift in machine load
            cache = work / f"cache-{run}-{len(digests)}"
            seeded_cache(source, cache, sets)
            before, cpu = loadavg(), children_cpu()
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "synthforge", "build", str(recipe), "--no-progress",
                                   "--cache-dir", str(cache), *flags, *(f"--set={v}" for v in sets)],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            built = proc.stdout.count(" built ")
            digests[(run, mode)] = table_digests(cache)
            rows.append([run + 1, mode, built, f"{wall:.1f}", f"{children_cpu() - cpu:.1f}", before, loadavg()])
            if keep is not None and run == 0 and flags == MODES["sequential (--jobs 1)"]:
                shutil.move(cache, keep)  # its manifests' per-step times feed `project`
            else:
                shutil.rmtree(cache)
    reference = next(iter(digests.values()))
    same = all(d == reference for d in digests.values())
    print(render_table(["run", "executor", "steps built", "wall s", "CPU s", "load before", "load after"], rows,
                       align_right=(0, 2, 3, 4)))
    print(f"\n{len(reference)} table files per build; byte-identical across all builds: {'yes' if same else 'NO'}")


# -- shards ------------------------------------------------------------------------
def parquet_bytes(frame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, statistics=False)
    return buffer.getvalue()


def run_step(step, params, inputs, root: Path, shard_rows: int | None, models: Path | None = None):
    from synthforge.cache import Cache
    from synthforge.steps.base import Runtime, StepContext

    cache = Cache(root)
    if models is not None:
        cache.shared_dir("models").rmdir()
        os.symlink(models, root / "shared" / "models")
    ctx = StepContext(step="bench", recipe="bench", params=params, seed=7, key="bench-key", inputs=inputs,
                      workdir=root / "work", cache=cache, runtime=Runtime(device="cpu", progress=False, shard_rows=shard_rows))
    start = time.perf_counter()
    result = step.run(ctx)
    return time.perf_counter() - start, parquet_bytes(result.data)


def compare(name: str, settings: dict[str, int | None], repeats: int, run) -> list[list]:
    times: dict[str, list[float]] = {label: [] for label in settings}
    outputs: dict[str, bytes] = {}
    loads = []
    for _ in range(repeats):
        for label, shard_rows in settings.items():  # interleaved
            loads.append(float(loadavg()))
            seconds, output = run(shard_rows)
            times[label].append(seconds)
            outputs.setdefault(label, output)
    base = statistics.median(next(iter(times.values())))
    identical = len(set(outputs.values())) == 1
    return [[name, label, f"{statistics.median(t):.2f}", f"{min(t):.2f}-{max(t):.2f}",
             f"{(statistics.median(t) / base - 1) * 100:+.1f}%", "yes" if identical else "NO",
             f"{min(loads):.1f}-{max(loads):.1f}"] for label, t in times.items()]


def shards(repeats: int, embed_rows: int, generate_rows: int, models: Path | None) -> None:
    import polars as pl

    from synthforge.datasets import PACKAGED
    from synthforge.steps.embed import EmbedParams, EmbedStep
    from synthforge.steps.generate import GenerateStep
    from tests.helpers import write_entry

    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    reviews = PACKAGED["rotten_tomatoes"].loader().filter(pl.col("label") != "plot")  # review snippets, not plot summaries
    texts = reviews["text"].head(embed_rows)
    table = write_entry(work, "input", pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}))
    counter = iter(range(10**6))

    def embed(shard_rows):
        return run_step(EmbedStep(), EmbedParams(input="input"), {"input": table}, work / f"e{next(counter)}", shard_rows)

    study_step = __import__("yaml").safe_load(STUDY.read_text())["steps"]["generated"]
    params = GenerateStep.Params.model_validate({
        **{k: v for k, v in study_step.items() if k not in ("kind", "few_shot_from", "few_shot_k")}, "n": generate_rows})

    def generate(shard_rows):
        return run_step(GenerateStep(), params, {}, work / f"g{next(counter)}", shard_rows, models)

    rows = compare(f"embed MiniLM, {embed_rows} rows", {"unsharded": None, "shards of 1024": 1024}, repeats, embed)
    rows += compare(f"generate SmolLM2, {generate_rows} rows, batch 32", {"unsharded": None, "shards of 32": 32},
                    repeats, generate)
    print(render_table(["step", "setting", "median s", "range s", "vs unsharded", "identical output", "load"], rows,
                       align_right=(2, 3, 4)))
    shutil.rmtree(work, ignore_errors=True)


# -- projection ------------------------------------------------------------------
GPU_SIZED = {"pool": 20000, "select_n": 2000, "per_label": 64}
SHARDED = ("generate", "embed")


def measured_steps(cache: Path, sets: tuple[str, ...]) -> dict[str, dict]:
    """Per node of the study: step, kind, seconds, rows, upstream keys, from the manifests of a built cache."""
    from synthforge.app import open_graph
    from synthforge.cache import Cache

    graph = open_graph(str(STUDY), sets)
    nodes = {}
    for key, node in graph.nodes.items():
        entry = Cache(cache).get(key)
        if entry is None:
            raise SystemExit(f"{cache} lacks {node.step} ({key[:12]}): build the study there first")
        manifest = entry.manifest
        nodes[key] = {"step": node.step, "kind": node.kind, "seconds": manifest["timings"]["seconds"],
                      "rows": manifest["rows"], "upstream": node.upstream}
    return nodes


def scaled_seconds(node: dict, study_vars: dict) -> float:
    """Seconds at the GPU-sized settings, scaled linearly in the rows each step processes."""
    pool, select_n, per_label = (GPU_SIZED[v] / study_vars[v] for v in ("pool", "select_n", "per_label"))
    factor = {"generated": pool, "synth_emb": pool, "real_emb": per_label, "selected": pool * select_n,
              "mixed": select_n, "scores": select_n}.get(node["step"], 1.0)
    return node["seconds"] * factor


def simulate(nodes: dict[str, dict], seconds: dict[str, float], devices: int, shard_count: int) -> float:
    """Wall time of list scheduling on `devices` workers: a node starts when its upstream is done,
    row-parallel nodes split into `shard_count` equal shards; every unit takes one device."""
    import heapq

    done_at: dict[str, float] = {}
    free = [0.0] * devices
    for key, node in nodes.items():  # dependency order
        ready = max((done_at[u] for u in node["upstream"]), default=0.0)
        units = shard_count if node["kind"] in SHARDED else 1
        finish = ready
        for _ in range(units):
            start = max(ready, heapq.heappop(free))
            end = start + seconds[key] / units
            heapq.heappush(free, end)
            finish = max(finish, end)
        done_at[key] = finish
    return max(done_at.values())


def project(cache: Path, sets: tuple[str, ...]) -> None:
    import yaml

    study_vars = {**yaml.safe_load(STUDY.read_text())["vars"], **{k: int(v) for k, v in (s.split("=") for s in sets)}}
    nodes = measured_steps(cache, sets)
    seconds = {key: scaled_seconds(node, study_vars) for key, node in nodes.items()}
    by_step: dict[str, list[float]] = {}
    for key, node in nodes.items():
        by_step.setdefault(node["step"], []).append(node["seconds"])
    rows = [[step, len(t), f"{sum(t):.1f}", f"{sum(seconds[k] for k, n in nodes.items() if n['step'] == step):.0f}"]
            for step, t in by_step.items()]
    print(render_table(["step", "nodes", "measured s (this machine)", "scaled to GPU-sized s"], rows, align_right=(1, 2, 3)))
    total = sum(seconds.values())
    one = simulate(nodes, seconds, 1, 1)
    table = []
    for devices in (1, 4, 16):
        wall = simulate(nodes, seconds, devices, shard_count=max(1, GPU_SIZED["pool"] // 4096 + 1) if devices > 1 else 1)
        table.append([devices, f"{wall:.0f}", f"{one / wall:.1f}x", f"{total / devices:.0f}"])
    print()
    print(render_table(["devices", "projected wall (scaled s)", "speed-up", "perfect split"], table, align_right=(0, 1, 2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    study_parser = sub.add_parser("study")
    study_parser.add_argument("--source-cache", type=Path, default=ROOT / "cache")
    study_parser.add_argument("--runs", type=int, default=1)
    study_parser.add_argument("--set", dest="sets", action="append", default=[], help="a recipe variable, NAME=VALUE")
    study_parser.add_argument("--keep", type=Path, default=None, help="keep the first sequential build's cache here")
    shard_parser = sub.add_parser("shards")
    shard_parser.add_argument("--repeats", type=int, default=3)
    shard_parser.add_argument("--embed-rows", type=int, default=3072)
    shard_parser.add_argument("--generate-rows", type=int, default=96)
    shard_parser.add_argument("--models", type=Path, default=None,
                              help="a cache's shared/models holding the converted SmolLM2 (saves converting it per run)")
    project_parser = sub.add_parser("project")
    project_parser.add_argument("--cache", type=Path, default=ROOT / "cache")
    project_parser.add_argument("--set", dest="sets", action="append", default=[], help="the variables the cache was built with")
    args = parser.parse_args()
    if args.part == "project":
        project(args.cache, tuple(args.sets))
    elif args.part == "study":
        study(args.source_cache, args.runs, tuple(args.sets), args.keep)
    else:
        shards(args.repeats, args.embed_rows, args.generate_rows, args.models)


if __name__ == "__main__":
    main()
