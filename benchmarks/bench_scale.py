"""Scale-out: the diversity study built sequentially, with --jobs 2 and on a local Ray instance (generate cached),
and sharded vs unsharded generate and embed. Prints tables.

    # study: needs a cache that holds the study's `generated` entry and shared/ (responses, converted SmolLM2)
    .venv/bin/python benchmarks/bench_scale.py study --source-cache cache --runs 1
    # shards: packaged MiniLM on Rotten Tomatoes texts, packaged SmolLM2 (fresh response caches)
    .venv/bin/python benchmarks/bench_scale.py shards --repeats 3
    # projection of the GPU-sized study's wall time on 1, 4 and 16 devices from measured per-step rates
    .venv/bin/python benchmarks/bench_scale.py project

The machine may be shared: every row carries the load average before it ran and the CPU time it used
(user+sys of the build's process tree as reaped by its parents; Ray's daemons are partly missed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
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

from synthforge.text_tables import render_table  # noqa: E402

STUDY = ROOT / "recipes" / "diversity_study.yaml"
MODES = {
    "sequential (--jobs 1)": ["--jobs", "1"],
    "local --jobs 2": ["--jobs", "2"],
    "local, --jobs left out": [],
    "local --jobs 2 --models-per-device 1": ["--jobs", "2", "--models-per-device", "1"],
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
def study_graph(sets: tuple[str, ...], recipe: Path = STUDY):
    from synthforge import api
    from synthforge.recipe.resolve import parse_overrides

    return api.open(recipe, set=parse_overrides(sets)).graph


def seeded_cache(source: Path, target: Path, sets: tuple[str, ...], recipe: Path = STUDY) -> None:
    """A cache with only the study's `generate` entry and the shared caches (models linked, responses copied)."""
    from synthforge.cache import Cache

    graph = study_graph(sets, recipe)
    generated = {node.key for node in graph.nodes_of_step("generated")}
    (target / "shared").mkdir(parents=True)
    if (source / "shared" / "models").exists():
        os.symlink((source / "shared" / "models").resolve(), target / "shared" / "models")
    shutil.copytree(source / "shared" / "responses", target / "shared" / "responses")
    for key in generated:
        entry = Cache(source).entry_path(key)
        if not entry.is_dir():
            raise SystemExit(f"{source} lacks the study's generate entry {key[:12]}: build the study there first")
        shutil.copytree(entry, Cache(target).entry_path(key))


def study(source: Path, runs: int, sets: tuple[str, ...], keep: Path | None, recipe_source: Path = STUDY,
          before: Path | None = None, busy: int = 0, modes: list[str] | None = None) -> None:
    """The study rebuilt (generate cached) by each executor mode; with `before`, also by that synthforge tree
    (interleaved); with `busy`, under that many busy-looping processes (a second load on the machine)."""
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    recipe = work / recipe_source.name
    shutil.copy(recipe_source, recipe)  # build writes its lockfile beside the recipe
    chosen = {mode: flags for mode, flags in MODES.items() if modes is None or mode in modes}
    trees = {"now": ROOT} if before is None else {"before": before, "now": ROOT}
    load_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    rows, digests = [], {}
    try:
        for run in range(runs):
            for mode, flags in chosen.items():  # interleaved: each mode sees the same drift in machine load
                for tree_name, tree in trees.items():
                    cache = work / f"cache-{run}-{len(digests)}"
                    seeded_cache(source, cache, sets, recipe_source)
                    before_load, cpu = loadavg(), children_cpu()
                    start = time.perf_counter()
                    proc = subprocess.run([sys.executable, "-m", "synthforge", "build", str(recipe), "--no-progress",
                                           "--cache-dir", str(cache), *flags, *(f"--set={v}" for v in sets)],
                                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
                    wall = time.perf_counter() - start
                    if proc.returncode != 0:
                        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
                    built = int(re.search(r"\bbuilt (\d+),", proc.stdout).group(1))  # the summary line: "built N, cached M in ..."
                    digests[(run, mode, tree_name)] = table_digests(cache)
                    label = mode if before is None else f"{mode}, {tree_name}"
                    rows.append([run + 1, label, built, f"{wall:.1f}", f"{children_cpu() - cpu:.1f}", before_load, loadavg()])
                    if keep is not None and run == 0 and flags == MODES["sequential (--jobs 1)"] and tree_name == "now":
                        shutil.move(cache, keep)  # its manifests' per-step times feed `project`
                    else:
                        shutil.rmtree(cache)
    finally:
        for proc in load_procs:
            proc.kill()
    reference = next(iter(digests.values()))
    same = all(d == reference for d in digests.values())
    print(render_table(["run", "executor", "steps built", "wall s", "CPU s", "load before", "load after"], rows,
                       align_right=(0, 2, 3, 4)))
    print(f"\n{len(reference)} table files per build; byte-identical across all builds: {'yes' if same else 'NO'}"
          + (f"; {busy} busy-looping process(es) ran throughout (the second load)" if busy else ""))


# -- shards ------------------------------------------------------------------------
def parquet_bytes(frame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, statistics=False)
    return buffer.getvalue()


def run_step(step, params, inputs, root: Path, shard_rows: int | None, models: Path | None = None,
             batch_size: int | None = None):
    from synthforge.cache import Cache
    from synthforge.stepapi import Runtime, StepContext

    cache = Cache(root)
    if models is not None:
        cache.shared_dir("models").rmdir()
        os.symlink(models, root / "shared" / "models")
    ctx = StepContext(step="bench", recipe="bench", params=params, seed=7, key="bench-key", inputs=inputs,
                      workdir=root / "work", cache=cache, runtime=Runtime(device="cpu", progress=False, shard_rows=shard_rows,
                                                                batch_size=batch_size))
    start = time.perf_counter()
    result = step.run(ctx)
    return time.perf_counter() - start, result.data


def rows_equal(a, b) -> int:
    """Rows of `b` equal to the row of `a` at the same position (the tables share their row order)."""
    if a.height != b.height:
        return 0
    return sum(x == y for x, y in zip(a.iter_rows(), b.iter_rows()))


def compare(name: str, settings: dict[str, int | None], repeats: int, run) -> list[list]:
    times: dict[str, list[float]] = {label: [] for label in settings}
    outputs: dict[str, list] = {label: [] for label in settings}
    loads = []
    for _ in range(repeats):
        for label, shard_rows in settings.items():  # interleaved
            loads.append(float(loadavg()))
            seconds, output = run(shard_rows)
            times[label].append(seconds)
            outputs[label].append(output)
    base = statistics.median(next(iter(times.values())))
    reference = next(iter(outputs.values()))[0]
    reference_bytes = parquet_bytes(reference)
    rows = []
    for label, t in times.items():
        written = [parquet_bytes(o) for o in outputs[label]]
        same_bytes = all(b == reference_bytes for b in written)
        repeatable = len(set(written)) == 1
        equal = min(rows_equal(reference, o) for o in outputs[label])
        rows.append([name, label, f"{statistics.median(t):.2f}", f"{min(t):.2f}-{max(t):.2f}",
                     f"{(statistics.median(t) / base - 1) * 100:+.1f}%", "yes" if same_bytes else "NO",
                     f"{equal}/{reference.height}", "yes" if repeatable else "NO", f"{min(loads):.1f}-{max(loads):.1f}"])
    return rows


def shards(repeats: int, embed_rows: int, generate_rows: int, generate_batch: int, models: Path | None,
           steps: list[str]) -> None:
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
        return run_step(GenerateStep(), params, {}, work / f"g{next(counter)}", shard_rows, models, generate_batch)

    headers = ["step", "setting", "median s", "range s", "vs unsharded", "same bytes as unsharded",
               "rows equal", "repeats identical", "load"]
    if "embed" in steps:  # each table as soon as it is measured: a loaded machine may not reach the next
        print(render_table(headers, compare(f"embed MiniLM, {embed_rows} rows", {"unsharded": None, "shards of 1024": 1024},
                                            repeats, embed), align_right=(2, 3, 4)), flush=True)
    if "generate" in steps:
        print(render_table(headers, compare(f"generate SmolLM2, {generate_rows} rows, batch {generate_batch}",
                                            {"unsharded": None, f"shards of {generate_batch}": generate_batch},
                                            repeats, generate), align_right=(2, 3, 4)), flush=True)
    shutil.rmtree(work, ignore_errors=True)


# -- projection ------------------------------------------------------------------
GPU_SIZED = ("pool=20000", "select_n=2000", "per_label=1024", "total=2048", "method=finetune")  # the README's command
SHARDED = ("generate", "embed")
# Rates measured on this machine (benchmarks/RESULTS.md): SmolLM2 at batch 32 writes 117.8 tokens/s,
# MiniLM embeds 565 rows/s, a diversity-level selection of 1k rows from 100k takes 5.7 s.
GENERATE_TOKENS_PER_S = 117.8
EMBED_ROWS_PER_S = 565.0
SELECT_S_PER_100K = 5.7
LIGHT_STEP_S = {"load": 2.0, "split": 1.1, "mix": 0.2}  # measured single steps of the study's seed build


def node_seconds(node, graph, finetune_s: float) -> float:
    """One device's seconds for a node of the GPU-sized study, from the measured rates above."""
    params = node.resolved.run_params
    if node.kind == "generate":
        return params.n * params.max_new_tokens / GENERATE_TOKENS_PER_S
    if node.kind == "embed":
        upstream = graph.nodes[node.upstream[0]]
        rows = upstream.resolved.run_params.n if upstream.kind == "generate" else 2 * 1024 + 1000
        return rows / EMBED_ROWS_PER_S
    if node.kind == "select":
        return SELECT_S_PER_100K * 20000 / 100_000
    if node.kind == "train":
        return finetune_s
    return LIGHT_STEP_S[node.kind]


def simulate(graph, seconds: dict[str, float], devices: int, shards: int) -> float:
    """Wall time of list scheduling on `devices` workers, as the executors run a build: a node starts when
    its upstream is done; a row-parallel node splits into `shards` equal shards; every unit takes one device."""
    import heapq

    done_at: dict[str, float] = {}
    free = [0.0] * devices
    for key, node in graph.nodes.items():  # dependency order
        ready = max((done_at[u] for u in node.upstream), default=0.0)
        units = shards if node.kind in SHARDED else 1
        finish = ready
        for _ in range(units):
            start = max(ready, heapq.heappop(free))
            heapq.heappush(free, start + seconds[key] / units)
            finish = max(finish, start + seconds[key] / units)
        done_at[key] = finish
    return max(done_at.values())


def project(finetune_s: list[float]) -> None:
    graph = study_graph(GPU_SIZED)
    rows = []
    for fine in finetune_s:
        seconds = {key: node_seconds(node, graph, fine) for key, node in graph.nodes.items()}
        by_kind: dict[str, float] = {}
        for key, node in graph.nodes.items():
            by_kind[node.kind] = by_kind.get(node.kind, 0.0) + seconds[key]
        shares = ", ".join(f"{kind} {s / sum(seconds.values()):.0%}" for kind, s in sorted(by_kind.items(), key=lambda kv: -kv[1]))
        print(f"fine-tuning {fine:.0f} s/variant: share of device time by step kind: {shares}")
        one = simulate(graph, seconds, 1, 1)
        for devices in (1, 4, 16):
            wall = simulate(graph, seconds, devices, shards=devices)  # --shard-rows = pool / devices
            rows.append([f"{fine:.0f}", devices, f"{wall / 60:.1f}", f"{one / wall:.1f}x", f"{sum(seconds.values()) / devices / 60:.1f}"])
    print(f"GPU-sized study ({' '.join(GPU_SIZED)}): {len(graph.nodes)} nodes; times in minutes of this machine's "
          "device-seconds (a GPU divides every model step by its own speed-up)")
    print(render_table(["finetune s/variant", "devices", "projected wall min", "speed-up", "perfect split min"], rows,
                       align_right=(0, 1, 2, 3, 4)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    study_parser = sub.add_parser("study")
    study_parser.add_argument("--source-cache", type=Path, default=ROOT / "cache")
    study_parser.add_argument("--runs", type=int, default=1)
    study_parser.add_argument("--set", dest="sets", action="append", default=[], help="a recipe variable, NAME=VALUE")
    study_parser.add_argument("--keep", type=Path, default=None, help="keep the first sequential build's cache here")
    study_parser.add_argument("--recipe", type=Path, default=STUDY, help="the study recipe (e.g. a copy with a fake endpoint)")
    study_parser.add_argument("--before", type=Path, default=None, help="a synthforge source tree to time beside this one")
    study_parser.add_argument("--busy", type=int, default=0, help="busy-looping processes running throughout (a second load)")
    study_parser.add_argument("--modes", nargs="+", default=None, choices=list(MODES), help="executor modes (default: all)")
    shard_parser = sub.add_parser("shards")
    shard_parser.add_argument("--repeats", type=int, default=3)
    shard_parser.add_argument("--embed-rows", type=int, default=3072)
    shard_parser.add_argument("--generate-rows", type=int, default=96)
    shard_parser.add_argument("--generate-batch", type=int, default=32, help="batch size, and the rows of a generate shard")
    shard_parser.add_argument("--steps", nargs="+", choices=["embed", "generate"], default=["embed", "generate"])
    shard_parser.add_argument("--models", type=Path, default=None,
                              help="a cache's shared/models holding the converted SmolLM2 (saves converting it per run)")
    project_parser = sub.add_parser("project")
    project_parser.add_argument("--finetune-s", type=float, nargs="+", default=[60.0, 600.0],
                                help="one device's seconds to fine-tune one variant (3 seeds): not measured here")
    args = parser.parse_args()
    if args.part == "project":
        project(args.finetune_s)
    elif args.part == "study":
        study(args.source_cache, args.runs, tuple(args.sets), args.keep, args.recipe, args.before, args.busy, args.modes)
    else:
        shards(args.repeats, args.embed_rows, args.generate_rows, args.generate_batch, args.models, args.steps)


if __name__ == "__main__":
    main()
