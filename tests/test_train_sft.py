"""`train` method sft: LoRA fine-tuning of a tiny causal LM made in the test (tests/tiny_models.py)."""

import json

import numpy as np
import polars as pl
import pytest
from helpers import make_ctx, write_entry

from synthforge.errors import UserError
from synthforge.steps.train import TrainStep, _answers
from synthforge.training.scoring import loss_scores
from synthforge.training.sft import normalize_answer
from tests.tiny_models import build_tiny_chat_model

GOOD = ["great", "wonderful", "delightful", "loved"]
BAD = ["terrible", "boring", "bad", "waste"]


def reviews(prefix: str, n: int, offset: int) -> pl.DataFrame:
    """Instruction-formatted classification rows: the label follows from one word of the text."""
    rows = []
    for i in range(n):
        for label, words in (("positive", GOOD), ("negative", BAD)):
            rows.append({"id": f"{prefix}-{label}-{i}", "text": f"the movie was {words[(i + offset) % 4]}", "label": label,
                         "source": "real"})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny GPT-2 with weights wide enough that its logits can move (at 0.02 they stay near uniform)."""
    return str(build_tiny_chat_model(tmp_path_factory.mktemp("model") / "tiny-gpt2", initializer_range=0.3))


def run_sft(tmp_path, model, train=None, test=None, **params):
    inputs = {"train": write_entry(tmp_path, "train", train if train is not None else reviews("tr", 12, 0)),
              "test": write_entry(tmp_path, "test", test if test is not None else reviews("te", 4, 1))}
    defaults = {"method": "sft", "model": model, "prompt": "Review: {{ text }}\nSentiment:",
                "response": "label", "learning_rate": 3e-2, "train_batch_size": 8, "epochs": 8, "lora_rank": 8, "lora_targets": ["c_attn", "c_fc", "c_proj"],
                "seeds": [0, 1], "bootstrap": 50}
    step, ctx = make_ctx(TrainStep, tmp_path, inputs, **{**defaults, **params})
    return step.run(ctx), ctx


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model):
    return run_sft(tmp_path_factory.mktemp("sft"), model)


def test_loss_goes_down_and_beats_the_untrained_model(trained, tmp_path, model):
    result, _ = trained
    for row in result.meta["per_seed"]:
        losses = [epoch["train_loss"] for epoch in row["history"]]
        assert losses[-1] < 0.5 * losses[0], losses
    untrained, _ = run_sft(tmp_path, model, learning_rate=1e-12, epochs=1, seeds=[0])  # the base model, adapters still ~0
    assert result.meta["scores"]["response_loss"]["mean"] < 0.5 * untrained.meta["scores"]["response_loss"]["mean"]


def test_scores_are_what_the_predictions_say(trained):
    result, _ = trained
    predictions = result.tables["predictions"]
    assert predictions.height == 2 * 8 and result.meta["labels"] == ["negative", "positive"]
    for row in result.meta["per_seed"]:
        rows = predictions.filter(pl.col("seed") == row["seed"])
        assert (rows["correct"] == (rows["prediction"] == rows["label"])).all()
        assert row["exact_match"] == pytest.approx(rows["correct"].mean())
        loss = rows["response_nll"].sum() / rows["response_tokens"].sum()
        assert row["response_loss"] == pytest.approx(loss) and row["perplexity"] == pytest.approx(np.exp(loss))
    exact = result.meta["scores"]["exact_match"]
    assert exact["mean"] == pytest.approx(np.mean([r["exact_match"] for r in result.meta["per_seed"]]))
    assert exact["bootstrap_ci"][0] <= exact["mean"] <= exact["bootstrap_ci"][1]
    assert result.data.columns == ["seed", "exact_match", "response_loss", "perplexity", "epochs_run"]
    json.dumps(result.meta)


def test_the_adapter_is_the_artifact_and_reloads(trained, model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, ctx = trained
    saved = ctx.workdir / result.meta["per_seed"][0]["model_dir"]
    assert (saved / "adapter_config.json").is_file() and not (saved / "model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), saved)
    assert any("lora_" in name for name, _ in model.named_parameters())


def test_exact_match_normalizes_answers():
    assert normalize_answer(" Positive.\nmore text") == "positive"
    assert _answers(["positive", "NEGATIVE!", "neutral", ""], ["negative", "positive"]) == ["positive", "negative", "neutral", ""]


def test_loss_scores_pool_tokens_not_rows():
    nll, tokens = np.array([2.0, 6.0]), np.array([1, 3])
    assert loss_scores(nll, tokens)["response_loss"][0] == pytest.approx(2.0)  # 8 nats / 4 tokens, not mean(2, 2)
    weighted = loss_scores(nll, tokens, np.array([[2.0, 0.0]]))
    assert weighted["response_loss"][0] == pytest.approx(2.0) and weighted["perplexity"][0] == pytest.approx(np.exp(2.0))


@pytest.mark.parametrize("params, message", [
    ({"response": "answer"}, "has no response column 'answer'"),
    ({"prompt": "Review: {{ txt }}"}, "template uses 'txt'"),
    ({"lora_targets": ["q_proj"]}, "LoRA settings refused"),
])
def test_located_errors(tmp_path, model, params, message):
    with pytest.raises(UserError) as error:
        run_sft(tmp_path, model, epochs=1, seeds=[0], **params)
    assert message in str(error.value)
    assert error.value.field in ("response", "prompt", "lora_targets")


def test_rows_without_a_response_are_refused(tmp_path, model):
    train = reviews("tr", 2, 0).with_columns(pl.when(pl.col("id") == "tr-positive-1").then(None).otherwise(pl.col("label")).alias("label"))
    with pytest.raises(UserError, match="1 row without a 'label' .first: id tr-positive-1"):
        run_sft(tmp_path, model, train=train, epochs=1, seeds=[0])


def test_lora_settings_are_checked_and_sft_fields_need_sft():
    from pydantic import ValidationError

    from synthforge.steps.train import TrainParams

    for bad in ({"lora_rank": 0}, {"lora_dropout": 1.0}, {"lora_alpha": 0}):
        with pytest.raises(ValidationError):
            TrainParams(train="a", test="b", method="sft", **bad)
    with pytest.raises(ValidationError, match="applies to method sft only"):
        TrainParams(train="a", test="b", prompt="{{ text }}")


def test_the_base_model_files_enter_the_key():
    from synthforge.backends.transformers_llm import smollm2_gguf_path
    from synthforge.steps.train import TrainParams

    assert TrainStep().files_read(TrainParams(train="a", test="b", method="sft")) == [smollm2_gguf_path()]
    with pytest.raises(UserError) as error:
        TrainStep().files_read(TrainParams(train="a", test="b", method="sft", model="/no/such/model"))
    assert error.value.field == "model"


def test_report_scores_an_sft_study_by_its_own_scores():
    from synthforge.report import reported_score

    summary = {"mean": 0.5}
    sft = [{"steps": {"sft": {"meta": {"scores": {"exact_match": summary, "response_loss": summary, "perplexity": summary}}},
                      "quality": {"meta": {"scores": {"counts": {"1": 3}, "mean": 1.0}}}}}]  # a judge's scores are no train scores
    assert reported_score(sft, "macro_f1") == "exact_match"  # the default falls to the method's first score
    assert reported_score(sft, "perplexity") == "perplexity"
    with pytest.raises(UserError, match="no train step reports 'accuracy'") as error:
        reported_score(sft, "accuracy")
    assert "exact_match, response_loss, perplexity" in error.value.hint
    classifier = [{"steps": {"train": {"meta": {"scores": {"accuracy": summary, "macro_f1": summary}}}}}]
    assert reported_score(classifier, "macro_f1") == "macro_f1"
