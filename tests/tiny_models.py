"""Tiny local models for tests: a 2-layer GPT-2 with its own BPE tokenizer and chat template.

`tiny_chat_model_dir()` builds it once per test session (per process) and
returns the folder, loadable with `AutoModelForCausalLM/AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

CORPUS = [
    "the movie was great and the acting was wonderful",
    "the film was terrible and boring, a waste of time",
    "i loved the soundtrack and the story",
    "the plot made no sense and the ending was bad",
    "a delightful comedy with a warm heart",
    "paraphrase the following text and keep the label",
    "write a short review about sports, food, travel or music",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|end|>", "<|pad|>", "<|user|>", "<|system|>", "<|assistant|>"]


def build_tiny_chat_model(folder: Path, seed: int = 0, initializer_range: float = 0.02) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>", pad_token="<|pad|>",
                                        bos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, initializer_range=initializer_range)
    model = GPT2LMHeadModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=None)
def tiny_chat_model_dir() -> Path:
    """The tiny model, built once per process in a temp folder."""
    root = Path(tempfile.mkdtemp(prefix="synthforge-tiny-model-"))
    return build_tiny_chat_model(root / "tiny-gpt2")
