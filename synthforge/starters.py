"""Starter recipes for `synthforge new NAME --from demo|generate|study`: commented, and they build as they are."""

from __future__ import annotations

from pathlib import Path

from synthforge.errors import UserError

_DEMO = """\
# A synthforge recipe: steps that each build one cached table (see docs/recipes.md).
# Build it:  synthforge build NAME.yaml     Look at it:  synthforge show NAME.yaml split --table train
name: NAME
seed: 13                      # enters every step's key: change it to draw new splits and samples
description: Rotten Tomatoes reviews (fresh vs rotten), split with scarce real labels.
vars:
  per_label: 32               # override from the command line: --set per_label=64
steps:
  reviews:
    kind: load
    dataset: rotten_tomatoes  # packaged with synthforge; or `path: my.csv` with text_column / label_column
    labels: {fresh: positive, rotten: negative}
  split:
    kind: split
    input: reviews
    test: 1000                # held-out real rows for scoring
    validation: 200
    train_per_label: ${per_label}
"""

_GENERATE = _DEMO.replace("split with scarce real labels.", "split, plus reviews written by SmolLM2 and embedded.") + """\
  generated:
    kind: generate            # docs/steps/generate.md
    n: 32                     # rows to write; each response is cached, so raising n reuses these
    labels:
      positive: positive (the critic liked the film)
      negative: negative (the critic disliked the film)
    variables:                # one topic x genre per row, cycled
      topic: [the acting, the plot, the soundtrack, the ending]
      genre: [comedy, drama, thriller]
    few_shot_from: split.train
    few_shot_k: 2
    system: You are a film critic who writes short review snippets.
    template: |
      {% for e in examples %}Example of a {{ e.label }} review: {{ e.text }}
      {% endfor %}Write one new {{ label_description }} review snippet of a {{ genre }}, about {{ topic }}. Reply with the review only.
    temperature: 0.9
    top_p: 0.95
    max_new_tokens: 48
    backend: {type: transformers, model: smollm2, batch_size: 16}   # packaged SmolLM2-135M; or an OpenAI-compatible endpoint
  generated_emb:
    kind: embed               # packaged all-MiniLM-L6-v2
    input: generated
"""

_STUDY = _GENERATE.replace("split, plus reviews written by SmolLM2 and embedded.",
                           "does more diverse synthetic data help? 2 diversity levels x 2 synthetic fractions.").replace(
    "vars:\n  per_label: 32               # override from the command line: --set per_label=64\n",
    "vars:\n  per_label: 32               # override from the command line: --set per_label=64\n"
    "  diversity: 0.5\n  synthetic_fraction: 0.5\n"
    "matrix:                       # one variant per combination; shared steps are built once\n"
    "  diversity: [0.0, 1.0]\n  synthetic_fraction: [0.0, 0.5]\n",
).replace("n: 32                     # rows to write", "n: 128                    # rows to write") + """\
  real_emb: {kind: embed, input: split.train}
  test_emb: {kind: embed, input: split.test}
  selected:
    kind: select              # docs/selection.md: 0 = typical rows, 1 = most spread out
    input: generated_emb
    n: 64                     # enough for synthetic_fraction 0.5 beside 64 real rows
    diversity: ${diversity}
    per_label: true
    reference: real_emb
  mixed:
    kind: mix                 # docs/steps/mix.md
    real: real_emb
    synthetic: selected
    synthetic_fraction: ${synthetic_fraction}
    balance: true
  scores:
    kind: train               # docs/steps/train.md; then: synthforge report NAME.yaml --html
    method: linear-probe
    train: mixed
    test: test_emb
    num_seeds: 3
"""

STARTERS = {"demo": _DEMO, "generate": _GENERATE, "study": _STUDY}


def write_starter(name: str, starter: str = "demo", folder: str | Path = ".") -> Path:
    """Write `<folder>/<name>.yaml` from a starter; never overwrites a file."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if not stem or any(c in stem for c in "/\\: ") or stem.startswith("."):
        raise UserError(f"'{name}' is not a usable recipe name", field="NAME", hint="e.g. synthforge new my-study")
    path = Path(folder) / f"{stem}.yaml"
    if path.exists():
        raise UserError(f"{path} already exists", field="NAME", hint="pick another name or remove the file")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as fh:
        fh.write(STARTERS[starter].replace("NAME", stem))
    return path
