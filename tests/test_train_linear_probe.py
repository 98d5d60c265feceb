import json

import numpy as np
import polars as pl
import pytest
from helpers import make_ctx, write_entry

from synthforge.errors import UserError
from synthforge.steps.train import TrainParams, TrainStep
from synthforge.training.scoring import bootstrap_intervals, scores_from_cm, confusion_matrix, t_interval

LABELS = ["alpha", "beta", "gamma"]


def embedded_rows(prefix: str, n_per_label: int, seed: int, noise: float = 0.0, dim: int = 16) -> pl.DataFrame:
    """Gaussian clusters around one centre per label, L2-normalised; `noise` = share of labels flipped."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(len(LABELS), dim)) * 3
    records = []
    for k, label in enumerate(LABELS):
        for i in range(n_per_label):
            vector = centres[k] + rng.normal(size=dim)
            shown = LABELS[rng.integers(len(LABELS))] if rng.random() < noise else label
            records.append({"id": f"{prefix}-{label}-{i}", "text": f"text {i}", "label": shown, "source": "real",
                            "embedding": (vector / np.linalg.norm(vector)).astype(np.float32)})
    return pl.DataFrame(records).with_columns(pl.col("embedding").cast(pl.Array(pl.Float32, dim)))


def train(tmp_path, train_frame, test_frame, **params):
    inputs = {"train": write_entry(tmp_path, "train", train_frame), "test": write_entry(tmp_path, "test", test_frame)}
    step, ctx = make_ctx(TrainStep, tmp_path, inputs, seed=0, method="linear-probe", **params)
    return step.run(ctx)


def test_separable_embeddings_score_high_with_intervals(tmp_path):
    result = train(tmp_path, embedded_rows("tr", 40, 1), embedded_rows("te", 30, 2), bootstrap=200)
    scores = result.meta["scores"]
    for metric in ("accuracy", "macro_f1"):
        summary = scores[metric]
        assert summary["mean"] > 0.95
        low, high = summary["bootstrap_ci"]
        assert low <= summary["mean"] <= high
        assert summary["ci"] == summary["bootstrap_ci"] and summary["ci_method"] == "bootstrap"
    assert result.meta["labels"] == LABELS
    assert set(result.meta["per_class"]) == set(LABELS)
    assert np.array(result.meta["confusion_matrix"]["matrix"]).sum() == 90
    json.dumps(result.meta)  # the manifest must be able to hold it


def test_label_noise_lowers_accuracy(tmp_path):
    clean = train(tmp_path / "a", embedded_rows("tr", 40, 1), embedded_rows("te", 30, 2), bootstrap=0)
    noisy = train(tmp_path / "b", embedded_rows("tr", 40, 1, noise=0.7), embedded_rows("te", 30, 2, noise=0.7), bootstrap=0)
    assert noisy.meta["scores"]["accuracy"]["mean"] < clean.meta["scores"]["accuracy"]["mean"] - 0.2


def test_predictions_side_table_and_seed_rows(tmp_path):
    result = train(tmp_path, embedded_rows("tr", 20, 1), embedded_rows("te", 10, 2), seeds=[3, 4], bootstrap=50)
    predictions = result.tables["predictions"]
    assert predictions.columns == ["seed", "id", "label", "prediction", "confidence", "correct"]
    assert predictions.height == 2 * 30 and sorted(set(predictions["seed"])) == [3, 4]
    accuracy = predictions.filter(pl.col("seed") == 3)["correct"].mean()
    assert accuracy == pytest.approx(result.data.filter(pl.col("seed") == 3)["accuracy"][0])
    assert result.data["seed"].to_list() == [3, 4]
    assert TrainStep.tables == ("predictions",)


def test_tables_hold_no_wall_times_so_reruns_give_the_same_bytes(tmp_path):
    """A key names one result: two runs (on any executor, at any speed) write the same table bytes."""
    first = train(tmp_path / "a", embedded_rows("tr", 20, 1), embedded_rows("te", 10, 2), seeds=[3, 4], bootstrap=0)
    second = train(tmp_path / "b", embedded_rows("tr", 20, 1), embedded_rows("te", 10, 2), seeds=[3, 4], bootstrap=0)
    assert first.data.columns == ["seed", "accuracy", "macro_f1", "iterations"]
    assert first.data.equals(second.data) and first.tables["predictions"].equals(second.tables["predictions"])
    assert all("train_seconds" in row for row in first.meta["per_seed"])


def test_runtime_fields_exclude_training_hyperparameters():
    from synthforge.keys import runtime_fields

    assert runtime_fields(TrainParams) == ["batch_size", "device"]
    assert "train_batch_size" in TrainParams.model_fields


def test_single_label_train_set_is_a_user_error(tmp_path):
    frame = embedded_rows("tr", 10, 1).filter(pl.col("label") == "alpha")
    with pytest.raises(UserError, match="at least 2"):
        train(tmp_path, frame, embedded_rows("te", 5, 2))


def test_seed_interval_uses_student_t():
    low, high = t_interval([0.8, 0.82, 0.84], confidence=0.95)
    # mean 0.82, sd 0.02, t(2, .975) = 4.303
    assert low == pytest.approx(0.82 - 4.303 * 0.02 / 3**0.5, abs=1e-3)
    assert high == pytest.approx(0.82 + 4.303 * 0.02 / 3**0.5, abs=1e-3)
    assert t_interval([0.5]) is None


def test_macro_f1_and_bootstrap_are_seeded():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    scores = scores_from_cm(confusion_matrix(y_true, y_pred, 3))
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: 0.5, 0.8, 0.667
    assert scores["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    first = bootstrap_intervals(y_true, [y_pred], 3, resamples=100, seed=7)
    assert first == bootstrap_intervals(y_true, [y_pred], 3, resamples=100, seed=7)
    assert first["accuracy"][0] < 4 / 6 < first["accuracy"][1]


def test_text_is_embedded_with_the_packaged_model_when_no_embedding_column(tmp_path):
    positive = ["I loved this film", "what a wonderful day", "great food and kind staff", "this is excellent work",
                "a delightful, happy story", "superb, I am very pleased"]
    negative = ["I hated this film", "what an awful day", "terrible food and rude staff", "this is dreadful work",
                "a miserable, sad story", "horrible, I am very upset"]

    def frame(prefix, pos, neg):
        return pl.DataFrame({"id": [f"{prefix}{i}" for i in range(len(pos) + len(neg))], "text": pos + neg,
                             "label": ["pos"] * len(pos) + ["neg"] * len(neg), "source": "real"})

    result = train(tmp_path, frame("tr", positive[:4], negative[:4]), frame("te", positive[4:], negative[4:]), bootstrap=20)
    assert result.meta["scores"]["accuracy"]["mean"] >= 0.75


def test_embedding_dimension_mismatch_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="16 dims but test embeddings 8"):
        train(tmp_path, embedded_rows("tr", 10, 1), embedded_rows("te", 5, 2, dim=8))
