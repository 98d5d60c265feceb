"""Output hygiene, default options: the polars column form (`apply_hygiene`) against the per-row Python
reference (tests/naive_hygiene.py) on the same raw LLM-like texts.

    .venv/bin/python benchmarks/bench_hygiene.py [--sizes 100,1000,10000,100000,1000000] [--repeat 3]

Both run in this process, interleaved, the same number of times, untraced, after one warm-up call each
(the column form builds its patterns once per process, timed apart). Each run's outputs are compared,
row for row. CPU seconds count every polars thread; the table gives rows per CPU second and per wall
second, median ± half the range, with the load average beside them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthforge.generation.hygiene import HygieneConfig, _column_patterns, apply_hygiene  # noqa: E402
from tests.naive_hygiene import apply_hygiene_naive  # noqa: E402

WORDS = ("the a movie film great dull plot story actor scene music funny boring lovely warm dark ending script cast "
         "director slow fast brilliant weak quiet loud tender odd bright grim subtle bold").split()
PREFIXES = ["", "", "", "Sure! Here is a positive review:\n", "Certainly, here's the text: ", "Review: ",
            "**Review:** ", "Sure!\nReview: ", "Here is one: ", "Okay! "]
QUOTES = [("", ""), ("", ""), ('"', '"'), ("\u201c", "\u201d"), ("'", "'")]


def raw_texts(rows: int, seed: int = 0) -> list[str]:
    """LLM-like replies: 8-40 words, a preamble or label on 70%, quotes on 60%, about 3% repeated bodies."""
    rng = random.Random(seed)
    texts = []
    for _ in range(rows):
        if texts and rng.random() < 0.03:
            texts.append(rng.choice(texts))
            continue
        body = " ".join(rng.choices(WORDS, k=rng.randint(8, 40))).capitalize() + "."
        opening, closing = rng.choice(QUOTES)
        texts.append(f"{rng.choice(PREFIXES)}{opening}{body}{closing}{rng.choice(['', ' ', chr(10)])}")
    return texts


def timed(function, texts, config) -> tuple[float, float, list]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(texts, config)
    return time.process_time() - cpu, time.perf_counter() - wall, result


def column(texts, config):
    return apply_hygiene(texts, config)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ± {(max(values) - min(values)) / 2:,.0f}"


def measure(rows: int, repeat: int, config: HygieneConfig) -> list[str]:
    texts = raw_texts(rows)
    samples = {"naive": ([], []), "column": ([], [])}
    for _ in range(repeat):  # interleaved: a burst of load hits both sides alike
        outputs = {}
        for name, function in (("naive", apply_hygiene_naive), ("column", column)):
            cpu, wall, outputs[name] = timed(function, texts, config)
            samples[name][0].append(rows / cpu)
            samples[name][1].append(rows / wall)
        texts_reasons = [list(side) for side in zip(*outputs["naive"])] or [[], []]
        assert texts_reasons == list(outputs["column"]), "the column form differs from the reference"
    ratio = statistics.median(samples["column"][0]) / statistics.median(samples["naive"][0])
    wall_ratio = statistics.median(samples["column"][1]) / statistics.median(samples["naive"][1])
    return [f"{rows:,}", spread(samples["naive"][0]), spread(samples["column"][0]), f"{ratio:.1f}x",
            spread(samples["naive"][1]), spread(samples["column"][1]), f"{wall_ratio:.1f}x",
            " ".join(f"{x:.2f}" for x in os.getloadavg())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = HygieneConfig(min_chars=20, max_chars=600)
    start = time.process_time()
    _column_patterns()
    print(f"column patterns built once per process: {time.process_time() - start:.3f} CPU s")
    apply_hygiene_naive(raw_texts(10), config), column(raw_texts(10), config)
    header = ["rows", "naive rows/CPU s", "column rows/CPU s", "CPU ratio", "naive rows/wall s",
              "column rows/wall s", "wall ratio", "load avg"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for rows in map(int, args.sizes.split(",")):
        print("| " + " | ".join(measure(rows, args.repeat, config)) + " |", flush=True)


if __name__ == "__main__":
    main()
