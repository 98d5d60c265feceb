"""A tiny BERT encoder for tests: 2 layers, WordPiece vocab trained on a few lines.

Built once per test session (about a second) and saved with `save_pretrained`,
so it loads like any local model folder:

    # the fixture is registered for every test in tests/conftest.py

    def test_something(tiny_encoder):            # a Path to the model folder
        ...
"""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "the movie was great and the actors were wonderful",
    "a dull film with a boring plot and weak acting",
    "the soundtrack is lovely but the story drags",
    "an instant classic that everyone should see",
    "the worst movie of the year, avoid it",
    "funny, warm and surprisingly moving",
    "cats and dogs play in the garden all day",
    "stock prices fell sharply on monday morning",
    "the recipe needs two eggs, flour and sugar",
    "rain is expected over the weekend in the north",
]


def build_tiny_encoder(path: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """Write a deterministic tiny BertModel + fast tokenizer to `path`."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden_size, max_position_embeddings=128, pad_token_id=tok.token_to_id("[PAD]"),
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder") / "model")
