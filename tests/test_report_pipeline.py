"""mix -> train -> report on fixture entries: the pieces fit together without the builder."""

import json

import polars as pl
from helpers import make_ctx, write_entry
from test_train_linear_probe import embedded_rows

from synthforge.report import build_table, write_report
from synthforge.steps.mix import MixStep
from synthforge.steps.train import TrainStep


def test_sweep_over_fractions(tmp_path):
    real = write_entry(tmp_path, "real", embedded_rows("r", 20, 1))
    synthetic = write_entry(tmp_path, "syn", embedded_rows("s", 40, 2, noise=0.5).with_columns(pl.lit("synthetic").alias("source")))
    test = write_entry(tmp_path, "test", embedded_rows("t", 20, 3))
    records = []
    for fraction in (0.0, 0.5, 0.9):
        folder = tmp_path / f"f{fraction}"
        step, ctx = make_ctx(MixStep, folder / "mix", {"real": real, "synthetic": synthetic}, synthetic_fraction=fraction, total=60)
        mixed = step.run(ctx)
        mixed_entry = write_entry(folder, "mixed", mixed.data)
        step, ctx = make_ctx(TrainStep, folder / "train", {"train": mixed_entry, "test": test}, bootstrap=100)
        trained = step.run(ctx)
        records.append({
            "variant": f"frac={fraction}",
            "vars": {"synthetic_fraction": fraction},
            "steps": {"mix": json.loads(json.dumps({"meta": mixed.meta})), "train": json.loads(json.dumps({"meta": trained.meta}))},
        })
    table = build_table(records)
    assert table["mix.n_synthetic"].to_list() == [0, 30, 54]
    # Noisy synthetic labels hurt: the real-only variant scores best.
    scores = table["train.accuracy"].to_list()
    assert scores[0] > scores[2]
    names = {p.name for p in write_report(records, tmp_path / "report")}
    assert "macro_f1_vs_synthetic_fraction.png" in names and "macro_f1_vs_diversity.png" not in names
