"""Benchmark the generate backends; prints a table.

  PYTHONPATH=. python benchmarks/bench_generate.py [--max-new-tokens 16] [--reps 2]

transformers: the packaged SmolLM2-135M-Instruct, tokens/s at batch sizes 1, 8, 32,
next to a plain hand-written batched `model.generate` loop (sampling, left padding)
in the same process. Both are forced to full-length rows (min_new_tokens) so they
do the same work; runs alternate (ABBA...) and the best of `reps` is kept, which
matters on a shared machine.
openai: requests/s against the local fake server (tests/fake_openai_server.py, in a subprocess),
with a fixed per-request latency standing in for a real server, at concurrency 1 and 64.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthforge.backends.llm import GenerationRequest  # noqa: E402
from synthforge.cache import Cache  # noqa: E402

TOPICS = ["a pizza place", "a sci-fi movie", "a seaside hotel", "a mystery novel", "running shoes", "a jazz album"]


def requests_for(count: int, max_new_tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest((("user", f"Write a short {'positive' if i % 2 else 'negative'} review of {TOPICS[i % len(TOPICS)]}."),),
                          0.8, 0.95, max_new_tokens, 1000 + i)
        for i in range(count)
    ]


def plain_generate(tokenizer, model, requests: list[GenerationRequest], batch_size: int) -> int:
    """The baseline: what one would write by hand. Returns completion tokens produced."""
    import torch

    tokens = 0
    prompts = [tokenizer.apply_chat_template(r.chat(), tokenize=False, add_generation_prompt=True) for r in requests]
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        max_new = requests[0].max_new_tokens
        with torch.inference_mode():
            out = model.generate(**encoded, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=max_new,
                                 min_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id)
        tokens += (out.shape[1] - encoded["input_ids"].shape[1]) * out.shape[0]
    return tokens


def ours_generate(backend, requests: list[GenerationRequest]) -> int:
    return sum(r.completion_tokens for r in backend.generate(requests))


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def bench_transformers(max_new_tokens: int, reps: int) -> list[tuple[str, str, str, str]]:
    from synthforge.backends.transformers_llm import TransformersLLM

    models = Cache().shared_dir("models")
    rows = []
    for batch_size, count in [(1, 4), (8, 16), (32, 32)]:
        backend = TransformersLLM("smollm2", models_dir=models, batch_size=batch_size, min_new_tokens=max_new_tokens,
                                  log=lambda m: print(m, file=sys.stderr))
        tokenizer, model = backend.load()
        requests = requests_for(count, max_new_tokens)
        best = {"ours": float("inf"), "plain": float("inf")}
        produced = {}
        for rep in range(reps):
            order = ["ours", "plain"] if rep % 2 == 0 else ["plain", "ours"]
            for name in order:
                run = (lambda: ours_generate(backend, requests)) if name == "ours" else (
                    lambda: plain_generate(tokenizer, model, requests, batch_size))
                seconds, tokens = timed(run)
                best[name] = min(best[name], seconds)
                produced[name] = tokens
        ours_tps = produced["ours"] / best["ours"]
        plain_tps = produced["plain"] / best["plain"]
        rows.append(("transformers smollm2", f"batch {batch_size}", f"{ours_tps:.1f} tok/s",
                     f"{plain_tps:.1f} tok/s (plain generate); ratio {ours_tps / plain_tps:.2f}x"))
        print(f"  batch {batch_size}: ours {ours_tps:.1f} tok/s, plain {plain_tps:.1f} tok/s", file=sys.stderr)
    return rows


def bench_openai(latency_s: float) -> list[tuple[str, str, str, str]]:
    """The server runs in its own process, so its threads do not share our GIL."""
    import subprocess

    from synthforge.backends.openai_llm import OpenAILLM

    server_script = Path(__file__).resolve().parents[1] / "tests" / "fake_openai_server.py"
    server = subprocess.Popen([sys.executable, str(server_script), str(latency_s * 1000)], stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        rows = []
        for concurrency, count in [(1, 100), (64, 1280)]:
            backend = OpenAILLM(base_url, "fake-model", concurrency=concurrency)
            seconds, _ = timed(lambda: backend.generate(requests_for(count, 32)))
            rows.append(("openai (fake server)", f"concurrency {concurrency}", f"{count / seconds:.1f} req/s",
                         f"{count} requests, {latency_s * 1000:.0f} ms server latency"))
        return rows
    finally:
        server.terminate()
        server.wait()


def print_table(rows: list[tuple[str, ...]]) -> None:
    from synthforge.text_tables import render_markdown

    print(render_markdown(("backend", "setting", "ours", "reference"), rows), end="")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"torch threads: {torch.get_num_threads()}", file=sys.stderr)
    rows = bench_openai(args.latency_ms / 1000)
    if not args.skip_transformers:
        rows = bench_transformers(args.max_new_tokens, args.reps) + rows
    print_table(rows)


if __name__ == "__main__":
    main()
