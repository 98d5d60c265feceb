"""Records at scale: `diff` by record id with per-field changes, and typed Hugging Face export of structured fields.

    .venv/bin/python benchmarks/bench_records.py [--rows 1000000] [--changed 0.01] [--only diff,hf]

Two entries of --rows records (id, text, label, an integer, a structured JSON field), B with a share
--changed of its records edited (half in `text`, half in the JSON field) and 0.1% added and removed.
Every task runs in its own child process (CPU seconds from os.wait4, peak RSS), beside a reference on
the same data:
  diff  record_diff.compare_records (every column hashed, joined by id, 5 changed records with excerpts)
        vs plain polars: read both tables whole, join on id, compare each column (no excerpts);
  hf    export's typed Hugging Face dataset (JSON parsed into a dict with a ClassLabel, streamed through
        parquet into datasets' Arrow files) vs the same rows with the JSON field left as text.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_tables(folder: Path, rows: int, changed: float) -> None:
    import numpy as np
    import polars as pl

    sys.path.insert(0, str(ROOT))
    from synthforge.cache import write_entry_files

    rng = np.random.default_rng(0)
    ids = pl.Series([f"gen-{i}" for i in range(rows)])
    verdict = np.where(rng.random(rows) < 0.5, "keep", "drop")
    score = rng.integers(1, 6, rows)
    review = pl.concat_str(pl.lit('{"score":'), pl.lit(score).cast(pl.String), pl.lit(',"tags":["a","'),
                           pl.lit(score % 3).cast(pl.String), pl.lit('"],"verdict":"'), pl.lit(verdict), pl.lit('"}'))
    a = pl.DataFrame({"id": ids, "label": np.where(rng.random(rows) < 0.5, "pos", "neg"), "points": score})
    a = a.with_columns(text=pl.format("a review of film {} that was quite {}", pl.int_range(rows), pl.col("label")),
                       review=review)
    edit = rng.random(rows) < changed
    b = a.with_columns(
        text=pl.when(pl.lit(edit) & (pl.int_range(rows) % 2 == 0)).then(pl.col("text") + " indeed").otherwise("text"),
        review=pl.when(pl.lit(edit) & (pl.int_range(rows) % 2 == 1)).then(pl.col("review").str.replace("keep", "drop"))
        .otherwise("review"))
    gone = max(1, rows // 1000)
    b = pl.concat([b.slice(gone), b.head(gone).with_columns(id=pl.col("id") + "-new")])
    for name, frame in (("a", a), ("b", b)):
        (folder / name).mkdir()
        write_entry_files(folder / name, {"data": frame}, key=name * 32, step=name, kind="fixture",
                          components={"fixture": name}, timings={"started": 0.0, "seconds": 0.0})


TASKS = {
    "diff": """
from synthforge.cache import Entry
from synthforge.record_diff import compare_records
found = compare_records(Entry("a" * 32, folder / "a"), Entry("b" * 32, folder / "b"))
print(json.dumps({"changed": found["changed_count"], "fields": found["fields_changed"]}))
""",
    "diff_ref": """
import polars as pl
a, b = pl.read_parquet(folder / "a" / "data.parquet"), pl.read_parquet(folder / "b" / "data.parquet")
joined = a.join(b, on="id", suffix="_b")
columns = [c for c in a.columns if c != "id"]
flags = joined.select([(pl.col(c) != pl.col(c + "_b")).alias(c) for c in columns])
print(json.dumps({"changed": int(flags.select(pl.any_horizontal(columns)).to_series().sum()),
                  "fields": {c: int(flags[c].sum()) for c in columns if flags[c].any()}}))
""",
    "hf": """
import polars as pl
from synthforge.cache import Entry
from synthforge.export import write_hf_folder
from synthforge.record_features import Column, schema_shape
from synthforge.generation.fields import compact_schema
shape = schema_shape(compact_schema({"score": "int", "tags": "list[str]", "verdict": ["keep", "drop"]}))
facts = {"label_counts": {"neg": 1, "pos": 1}, "rows": 0, "generators": [], "sources": [], "metrics": {}, "recipe": "bench",
         "recipe_path": "x", "step": "gen", "kind": "generate", "table": "data", "variant": "v", "key": "k", "recipe_text": ""}
write_hf_folder({None: Entry("b" * 32, folder / "b").scan()}, folder / "hf", facts,
                {"review": Column(shape, "structured", structured=True)} if TYPED else {})
print(json.dumps({"typed": TYPED}))
""",
}


def run_task(name: str, folder: Path) -> dict:
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, %r); folder = Path(%r); TYPED = %r\n"
            % (str(ROOT), str(folder), name == "hf")) + TASKS["hf" if name.startswith("hf") else name]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out = proc.stdout.read().strip()
    if status:
        raise SystemExit(f"{name} failed")
    return {"task": name, "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "max_rss_mib": round(usage.ru_maxrss / 1024), "result": out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--only", default="diff,hf")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_tables(folder, args.rows, args.changed)
        print(f"rows={args.rows} changed={args.changed} load={os.getloadavg()[0]:.2f}")
        for task in args.only.split(","):
            for name in ((task, f"{task}_ref") if task == "diff" else ("hf", "hf_untyped")):
                print(json.dumps(run_task(name, folder)))
                (folder / "hf").exists() and __import__("shutil").rmtree(folder / "hf")


if __name__ == "__main__":
    main()
