"""Benchmark the cost of within-batch progress (the token streamer) in transformers generation; prints a table.

  PYTHONPATH=. python benchmarks/bench_progress.py [--model smollm2|tiny] [--rows 32] [--reps 5]

Reference: `TransformersLLM.generate` without `on_tokens` (no streamer); candidate: the same call
with `on_tokens` (a streamer that counts each decoding step's tokens and finished rows). Same requests,
same model loaded once, runs interleaved (ABAB...), median and spread of `reps` runs each. The tiny model
(tests/tiny_models.py) makes decoding steps nearly free, so any per-step overhead of the streamer shows
at its largest there; with SmolLM2 it is a fraction of a step's matmuls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthforge.backends.llm import GenerationRequest  # noqa: E402
from synthforge.text_tables import render_table  # noqa: E402


def requests_for(rows: int, max_new_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest((("user", f"Write a short review number {i}."),), 0.8, 0.95, max_new_tokens, 7000 + i)
            for i in range(rows)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    from synthforge.backends.transformers_llm import TransformersLLM

    if args.model == "tiny":
        from tests.tiny_models import tiny_chat_model_dir

        model = str(tiny_chat_model_dir())
    else:
        model = "smollm2"
    backend = TransformersLLM(model, batch_size=args.batch_size, min_new_tokens=args.max_new_tokens, log=lambda m: None)
    requests = requests_for(args.rows, args.max_new_tokens)
    backend.generate(requests[:2])  # load and warm up
    times: dict[str, list[float]] = {"reference (no streamer)": [], "candidate (on_tokens streamer)": []}
    calls = [0]
    for _ in range(args.reps):
        for name, on_tokens in (("reference (no streamer)", None), ("candidate (on_tokens streamer)", lambda n, d: calls.__setitem__(0, calls[0] + 1))):
            start = time.perf_counter()
            backend.generate(requests, on_tokens=on_tokens)
            times[name].append(time.perf_counter() - start)
    tokens = args.rows * args.max_new_tokens
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append([name, f"{median:.3f}", f"{min(values):.3f}-{max(values):.3f}", f"{tokens / median:.0f}"])
    print(f"model {args.model}, {args.rows} rows x {args.max_new_tokens} new tokens, batch {args.batch_size}, "
          f"{args.reps} interleaved reps; on_tokens calls per run: {calls[0] // args.reps}")
    print(render_table(["variant", "median s", "min-max s", "new tokens/s"], rows, align_right=(1, 2, 3)))
    print("load average:", open("/proc/loadavg").read().split()[:3], "(shared machine)")


if __name__ == "__main__":
    main()
