"""The tuned-generation arm next to the diversity study's selection levels, replicate by replicate.

    python scripts/tuned_arm.py --cache-dir CACHE

Reads (never builds) the `scores` of recipes/tuned_study.yaml (fraction 0.5: 32 tuned generations added to
the 64 real rows; fraction 0: the real-only baseline) and of recipes/diversity_study.yaml's `augment` arm at
fraction 0.5 (32 selected rows added) for the replicates both recipes built. The two recipes share their
real training, test and judge rows replicate by replicate (the same `split` keys), so each comparison is
paired: per replicate, macro-F1 of the tuned arm minus that of a selection level, on the same 1000 test rows;
the mean difference gets a t interval over replicates (R - 1 df). The measured diversity, shift and judged
fidelity of the added rows come from the same definitions: `stats` of the tuned `synth_emb` against
`split.train` (as `select.reference`), the oracle judge on `split.validation` (as `select.judge`).
"""

from __future__ import annotations

import argparse
import math

import synthforge as sf
from synthforge.stats import entry_fidelity, entry_stats
from synthforge.stepapi import InputTable
from synthforge.text_tables import render_markdown as markdown_table
from synthforge.training.scoring import t_interval

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
SHOWN = ("vendi", "mmd_rbf", "prdc_coverage")


def variant_of(recipe, **values):
    return next(v for v in recipe.graph.recipe.variants if v.matrix_values == values)


def macro_f1(recipe, variant) -> float | None:
    entry = recipe.cache.get(recipe.graph.keys[variant.name]["scores"])
    return None if entry is None else float(entry.manifest.meta["scores"]["macro_f1"]["mean"])


def tuned_rows(tuned, replicate: int) -> dict[str, float]:
    variant = variant_of(tuned, synthetic_fraction=0.5, replicate=replicate)
    keys = tuned.graph.keys[variant.name]
    rows = InputTable(tuned.cache.entry_path(keys["synth_emb"]))
    real = InputTable(tuned.cache.entry_path(keys["split"]), "train")
    judge = InputTable(tuned.cache.entry_path(keys["split"]), "validation")
    metrics = entry_stats(rows, real, cache=tuned.cache)["metrics"]
    metrics["fidelity_corrected"] = entry_fidelity(rows, judge, cache=tuned.cache)["fidelity_corrected"]
    return metrics


def selected_rows(study, replicate: int, level: float) -> dict[str, float]:
    variant = variant_of(study, arm="augment", diversity=level, synthetic_fraction=0.5, replicate=replicate)
    meta = study.cache.get(study.graph.keys[variant.name]["selected"]).manifest.meta
    return {**meta["metrics"], "fidelity_corrected": meta["fidelity"]["fidelity_corrected"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True)
    args = parser.parse_args()
    tuned = sf.open("recipes/tuned_study.yaml", cache_dir=args.cache_dir)
    study = sf.open("recipes/diversity_study.yaml", cache_dir=args.cache_dir)
    replicates = sorted({v.matrix_values["replicate"] for v in tuned.graph.recipe.variants})
    built = [r for r in replicates if macro_f1(tuned, variant_of(tuned, synthetic_fraction=0.5, replicate=r)) is not None]
    tuned_f1 = [macro_f1(tuned, variant_of(tuned, synthetic_fraction=0.5, replicate=r)) for r in built]
    base_f1 = [macro_f1(tuned, variant_of(tuned, synthetic_fraction=0.0, replicate=r)) for r in built]
    arms = {"tuned generation": (tuned_f1, [tuned_rows(tuned, r) for r in built])}
    for level in LEVELS:
        f1 = [macro_f1(study, variant_of(study, arm="augment", diversity=level, synthetic_fraction=0.5, replicate=r))
              for r in built]
        arms[f"selected, level {level}"] = (f1, [selected_rows(study, r, level) for r in built])
    rows = []
    for name, (f1, measured) in arms.items():
        delta = [a - b for a, b in zip(f1, base_f1)]
        versus = [a - b for a, b in zip(tuned_f1, f1)]
        rows.append([name, _mean(f1), _interval(delta),
                     "-" if name == "tuned generation" else _interval(versus),
                     *[_mean([m[k] for m in measured]) for k in (*SHOWN, "fidelity_corrected")]])
    print(f"replicates {built}; baseline macro-F1 {_mean(base_f1)} (64 real rows)")
    print(markdown_table(["added 32 rows", "macro-F1", "Δ to baseline [95% CI]", "tuned − this [95% CI]",
                          "Vendi", "MMD²", "coverage", "judged fidelity (corrected)"], rows))


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def _interval(values: list[float]) -> str:
    found = t_interval(values) if len(values) >= 2 else None
    mean = sum(values) / len(values) if values else math.nan
    return f"{mean:+.3f}" + (f" [{found[0]:+.3f}, {found[1]:+.3f}]" if found else "")


if __name__ == "__main__":
    main()
