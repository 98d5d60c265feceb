import json

import polars as pl
import pytest
from helpers import make_ctx, write_entry

from synthforge.errors import UserError
from synthforge.steps.train import TrainStep

POSITIVE = ["good", "great", "nice", "happy", "lovely"]
NEGATIVE = ["bad", "awful", "sad", "poor", "nasty"]
FILLER = ["the", "movie", "was", "a", "day", "food", "really", "very", "quite"]


def sentences(prefix: str, n: int, offset: int) -> pl.DataFrame:
    records = []
    for i in range(n):
        filler = " ".join(FILLER[(i + offset + j) % len(FILLER)] for j in range(3))
        for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
            records.append({"id": f"{prefix}-{label}-{i}", "text": f"{filler} {words[(i + offset) % 5]}", "label": label,
                            "source": "real"})
    return pl.DataFrame(records)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT with a WordPiece vocabulary trained on the test words."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator([" ".join(POSITIVE + NEGATIVE + FILLER)] * 3, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)  # a fixed starting model keeps the test reproducible
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32,
                        initializer_range=0.1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def finetune(tmp_path, model, validation=True, **params):
    inputs = {
        "train": write_entry(tmp_path, "train", sentences("tr", 24, 0)),
        "test": write_entry(tmp_path, "test", sentences("te", 10, 3)),
        "validation": write_entry(tmp_path, "val", sentences("va", 6, 7)) if validation else None,
    }
    defaults = {"method": "finetune", "model": model, "learning_rate": 1e-2, "train_batch_size": 8, "epochs": 10, "patience": 4,
                "seeds": [0, 1], "bootstrap": 100}
    step, ctx = make_ctx(TrainStep, tmp_path, inputs, **{**defaults, **params})
    return step.run(ctx), ctx


def test_finetune_learns_and_reports_seed_intervals(tmp_path, tiny_bert):
    result, ctx = finetune(tmp_path, tiny_bert)
    accuracy = result.meta["scores"]["accuracy"]
    assert accuracy["mean"] >= 0.8
    # both seeds ran; seeds with identical predictions (likely on this easy task) are scored once
    assert len(result.meta["per_seed"]) == 2 and len(accuracy["values"]) == result.meta["n_distinct_seeds"] in (1, 2)
    if accuracy["seed_ci"] is not None:
        assert accuracy["seed_ci"][0] <= accuracy["mean"] <= accuracy["seed_ci"][1]
    assert accuracy["bootstrap_ci"][0] <= accuracy["mean"] <= accuracy["bootstrap_ci"][1]
    assert result.tables["predictions"].height == 2 * 20
    json.dumps(result.meta)


def test_finetune_saves_a_reloadable_model(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    result, ctx = finetune(tmp_path, tiny_bert, seeds=[5], epochs=2)
    saved = ctx.workdir / result.meta["per_seed"][0]["model_dir"]
    model = AutoModelForSequenceClassification.from_pretrained(saved)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert (saved / "tokenizer.json").exists()


def test_early_stopping_stops_before_the_last_epoch(tmp_path, tiny_bert):
    # A learning rate of ~0 never improves validation (F1 or loss) after epoch 1, so patience 1 stops at epoch 2.
    result, _ = finetune(tmp_path, tiny_bert, seeds=[0], epochs=6, patience=1, learning_rate=1e-12, save_models="none")
    seed_info = result.meta["per_seed"][0]
    assert seed_info["epochs_run"] == 2 and seed_info["best_epoch"] == 1
    assert [h["epoch"] for h in seed_info["history"]] == [1, 2]


def test_finetune_is_deterministic_per_seed(tmp_path, tiny_bert):
    first, _ = finetune(tmp_path / "a", tiny_bert, seeds=[3], epochs=2, validation=False, save_models="none")
    second, _ = finetune(tmp_path / "b", tiny_bert, seeds=[3], epochs=2, validation=False, save_models="none")
    assert first.tables["predictions"]["confidence"].to_list() == pytest.approx(second.tables["predictions"]["confidence"].to_list(), abs=1e-6)
    assert first.meta["per_seed"][0]["epochs_run"] == 2


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no model at"):
        finetune(tmp_path, str(tmp_path / "nope"))


def test_model_files_enter_the_key(tiny_bert):
    from synthforge.steps.train import TrainParams

    files = {path.name for path in TrainStep().files_read(TrainParams(train="a", test="b", model=tiny_bert))}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
