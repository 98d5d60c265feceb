"""Judge agreement: an LLM judge's pass/fail label verdicts against the oracle label judge, row by row.

    python scripts/judge_agreement.py recipes/judge_agreement.yaml [--cache-dir DIR] [--judge STEP] [--criterion NAME]

For every variant (replicate) of the recipe: the `judge` step's rows that got a verdict (their embeddings
travel with them), and the oracle judge of docs/study.md (a linear probe fitted on the replicate's
`split.validation` rows, `fidelity.fit_judge`): the oracle "passes" a row when it predicts the row's own
label. Prints the rows judged, the LLM judge's valid-reply share, the 2x2 table, the agreement rate and
Cohen's kappa with 95% percentile bootstrap intervals over the pooled rows (`fidelity.verdict_agreement`).
Builds nothing: build the recipe first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import numpy as np

    import synthforge as sf
    from synthforge.fidelity import fit_judge, verdict_agreement
    from synthforge.stepapi import InputTable
    from synthforge.steps.rows import embeddings_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--judge", default="judged", help="the judge step")
    parser.add_argument("--criterion", default="fits_label", help="the pass/fail criterion compared")
    parser.add_argument("--oracle-rows", default="split.validation", help="the oracle judge's real rows (step.table)")
    args = parser.parse_args()

    recipe = sf.open(args.recipe, cache_dir=args.cache_dir)
    graph, cache = recipe.graph, recipe.cache
    oracle_step, _, oracle_table = args.oracle_rows.partition(".")
    llm, oracle, judged, rejected = [], [], 0, 0
    for variant, keys in graph.keys.items():
        entry, oracle_entry = cache.get(keys[args.judge]), cache.get(keys[oracle_step])
        if entry is None or oracle_entry is None:
            print(f"{variant}: not built; run synthforge build {args.recipe} first", file=sys.stderr)
            return 2
        rows = InputTable(entry.path).frame()
        meta = json.loads((entry.path / "manifest.json").read_text())["meta"]
        judged, rejected = judged + meta["rows_in"], rejected + meta["rejected"]
        real = InputTable(oracle_entry.path, oracle_table or "data").frame()
        probe = fit_judge(embeddings_of(real), real["label"].to_list())
        if rows.height:
            predicted = probe.predict(embeddings_of(rows))
            oracle += [p == str(t) for p, t in zip(predicted, rows["label"].to_list())]
            llm += rows[f"score_{args.criterion}"].to_list()
    print(f"rows judged: {judged} over {len(graph.keys)} pools; valid verdicts: {len(llm)} ({len(llm) / judged:.1%}); "
          f"rejected: {rejected}")
    if not llm:
        return 0
    found = verdict_agreement(np.array(llm), np.array(oracle))
    (both, llm_only), (oracle_only, neither) = found["table"]
    print(f"pass rate: LLM judge {found['pass_rate'][0]:.3f}, oracle judge {found['pass_rate'][1]:.3f}")
    print(f"both pass {both}, LLM only {llm_only}, oracle only {oracle_only}, both fail {neither}")
    lo, hi = found["agreement_ci"]
    print(f"agreement {found['agreement']:.3f} [{lo:.3f}, {hi:.3f}]")
    kappa = "undefined (a judge gave one verdict to every row)" if found["kappa"] is None else (
        f"{found['kappa']:.3f} [{found['kappa_ci'][0]:.3f}, {found['kappa_ci'][1]:.3f}]")
    print(f"Cohen's kappa {kappa}; intervals: {found['interval']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
