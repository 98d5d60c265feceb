"""Constrained decoding (xgrammar) against unconstrained generation on the packaged SmolLM2-135M; prints tables.

    PYTHONPATH=. python benchmarks/bench_constrained.py [--prompts 100] [--repeats 3] [--max-new-tokens 64]

The same prompts (a JSON review of a topic with a sentiment, half positive, half negative) go through the
transformers backend's `generate` twice: reference = free text (no schema), candidate = decoded under the
schema. Both use the same seeded sampler, batch size and prompts; runs are interleaved (ABBA...) the same number
of times, after one warm-up call each (the candidate's warm-up builds xgrammar's tokenizer tables and compiles
the schema: timed apart, once per process and model). Replies are seeded per row, so every repeat gives the same
texts (checked); the share of schema-valid replies is counted once per side with the step's own check
(`generation.fields.parse_structured`, which also accepts a reply fenced in ```json). Times: median ± half the
range of wall and CPU seconds (CPU counts every torch thread) and seconds per generated token (the two sides
write replies of different lengths), with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthforge.backends.llm import GenerationRequest  # noqa: E402
from synthforge.generation.fields import compact_schema, parse_structured, schema_text  # noqa: E402
from synthforge.text_tables import render_markdown  # noqa: E402

TOPICS = ["a pizza place", "a sci-fi movie", "a seaside hotel", "a mystery novel", "running shoes", "a jazz album",
          "a city bus line", "a cooking class", "a board game", "a phone case"]
SCHEMA = compact_schema({"sentiment": ["positive", "negative"], "review": "str"})
PROMPT = ('Write a {sentiment} review of {topic} as a JSON object with two keys: "sentiment" (either "positive" '
          'or "negative") and "review" (one sentence). Reply with the JSON object only.')


def requests_for(count: int, max_new_tokens: int, schema: str | None) -> list[GenerationRequest]:
    return [GenerationRequest((("user", PROMPT.format(sentiment="positive" if i % 2 else "negative",
                                                      topic=TOPICS[i % len(TOPICS)])),),
                              0.7, 0.95, max_new_tokens, 1000 + i, schema) for i in range(count)]


def timed(backend, requests) -> tuple[float, float, list]:
    cpu, wall = time.process_time(), time.perf_counter()
    replies = backend.generate(requests)
    return time.perf_counter() - wall, time.process_time() - cpu, replies


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def validity(requests, replies) -> tuple[int, int, int, int]:
    """(schema-valid replies, valid ones with the sentiment asked for, replies that reached max_new_tokens,
    invalid replies that ended before it)."""
    valid = agree = cut = invalid_ended = 0
    for request, reply in zip(requests, replies):
        value, error = parse_structured(reply.text, SCHEMA)
        reached = reply.completion_tokens >= request.max_new_tokens
        valid += error is None
        agree += error is None and f"a {value['sentiment']} review" in request.messages[0][1]
        cut += reached
        invalid_ended += error is not None and not reached
    return valid, agree, cut, invalid_ended


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models-dir", default=None, help="where the converted SmolLM2 lives (default: ./cache's)")
    args = parser.parse_args()

    from importlib.metadata import version

    from synthforge.backends.transformers_llm import TransformersLLM
    from synthforge.cache import Cache

    load_before = os.getloadavg()
    models = Path(args.models_dir) if args.models_dir else Cache().shared_dir("models")
    backend = TransformersLLM("smollm2", models_dir=models, batch_size=args.batch_size, device="cpu",
                              log=lambda m: print(m, file=sys.stderr))
    backend.load()
    sides = {"free (reference)": None, "constrained (xgrammar)": schema_text(SCHEMA)}
    requests = {name: requests_for(args.prompts, args.max_new_tokens, schema) for name, schema in sides.items()}
    warm = {name: timed(backend, requests[name][: args.batch_size])[:2] for name in sides}
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
    texts: dict[str, list[str]] = {}
    replies_of: dict[str, list] = {}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(reversed(sides))  # interleaved: load hits both alike
        for name in order:
            wall, cpu, replies = timed(backend, requests[name])
            tokens = sum(r.completion_tokens for r in replies)
            samples[name].append((wall, cpu, tokens))
            print(f"repeat {repeat + 1} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {tokens} tokens, load "
                  f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
            run_texts = [r.text for r in replies]
            assert texts.setdefault(name, run_texts) == run_texts, f"{name}: a repeat gave other replies"
            replies_of.setdefault(name, replies)

    load_after = os.getloadavg()
    print(f"SmolLM2-135M-Instruct (packaged GGUF, float32 on CPU), torch {version('torch')}, xgrammar "
          f"{version('xgrammar')}; {args.prompts} prompts, batch {args.batch_size}, max_new_tokens "
          f"{args.max_new_tokens}, temperature 0.7, top_p 0.95, {args.repeats} interleaved repeats; load average "
          f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} after\n")
    timing_rows, valid_rows = [], []
    reference_per_token = None
    for name in sides:
        walls = [w for w, _, _ in samples[name]]
        cpus = [c for _, c, _ in samples[name]]
        tokens = samples[name][0][2]
        per_token = [w / t * 1000 for w, _, t in samples[name]]
        reference_per_token = reference_per_token or statistics.median(per_token)
        timing_rows.append((name, spread(walls), spread(cpus), f"{tokens:,}", spread(per_token, 2),
                            f"{statistics.median(per_token) / reference_per_token:.2f}x",
                            f"{warm[name][0]:.1f} / {warm[name][1]:.1f}"))
        valid, agree, cut, invalid_ended = validity(requests[name], replies_of[name])
        share = f"{valid}/{args.prompts} ({100 * valid / args.prompts:.0f}%)"
        valid_rows.append((name, share, f"{agree}/{args.prompts}", f"{cut}/{args.prompts}",
                           f"{invalid_ended}/{args.prompts}", f"{tokens / args.prompts:.1f}"))
    print(render_markdown(("side", "wall s", "CPU s", "new tokens", "wall ms/token", "per-token ratio",
                           f"warm-up {args.batch_size} prompts wall / CPU s"), timing_rows), end="")
    print()
    print(render_markdown(("side", "schema-valid replies", "valid with the sentiment asked", "reached max_new_tokens",
                           "invalid, ended before it", "tokens per reply"), valid_rows), end="")
    print("\nexamples:")
    for name in sides:
        for reply in replies_of[name][:3]:
            print(f"  {name}: {reply.text[:160]!r}")


if __name__ == "__main__":
    main()
