"""Supervised fine-tuning of a causal LM with LoRA (peft), and its evaluation on held-out responses.

A record is a prompt and a response. The prompt goes through the tokenizer's chat template as one user
turn (plain `prompt + newline` when the model has none); the response follows, ended by the EOS token.
Only response tokens carry loss. Training is AdamW over the LoRA weights with finetune's warm-up and
decay schedule; bf16 autocast on CUDA, the same code on CPU.

Evaluation per test row: the summed negative log-likelihood of its response tokens and their count
(per-token loss and perplexity are ratios of sums, so they pool correctly over rows and resamples), and,
when `answers` are given (instruction-formatted classification), the greedy continuation of the prompt
compared with the answer after `normalize_answer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthforge.progress import progress, quiet_libraries

IGNORE = -100  # label id torch's cross entropy skips


@dataclass(frozen=True)
class SftConfig:
    epochs: int = 3
    learning_rate: float = 5e-4
    train_batch_size: int = 8
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_length: int = 128
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None  # None: peft's default modules for the architecture
    max_grad_norm: float = 1.0


@dataclass
class SftResult:
    model: Any  # a peft model: save_pretrained writes the adapter only
    tokenizer: Any
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ResponseScores:
    nll: np.ndarray  # per test row: summed negative log-likelihood of the response tokens (nats)
    tokens: np.ndarray  # per test row: response tokens scored
    generated: list[str] | None  # per test row: the greedy answer (normalized), when answers were asked for


class LoraSettingsError(ValueError):
    """LoRA settings the model cannot take (e.g. target modules it lacks)."""


def load_causal_lm(folder: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    return model.to(device), tokenizer


def add_lora(model, config: SftConfig, seed: int):
    """The model wrapped with fresh LoRA adapters (their initialisation follows `seed`)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets) if config.lora_targets else None, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
                        or type(module).__name__ == "Conv1D"})
        first = (str(exc).splitlines() or [""])[0][:160]
        raise LoraSettingsError(f"{first} (this model's linear modules: {', '.join(names)})") from None


def prompt_text(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: one user turn of its chat template, ready for the reply."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt + "\n"


def encode_records(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per record: prompt then response then EOS; a long prompt loses its start,
    so the response (what is learnt and scored) is kept whole when it fits."""
    eos = tokenizer.eos_token_id
    encoded = []
    for prompt, response in zip(prompts, responses):
        prompt_ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        response_ids = response_ids[: max_length - 1]
        prompt_ids = prompt_ids[-(max_length - len(response_ids)):]
        encoded.append((prompt_ids + response_ids, len(prompt_ids)))
    return encoded


def _batch(encoded: Sequence[tuple[list[int], int]], pad_id: int, device: str):
    """Left-padded input ids, attention mask, positions and labels (IGNORE outside responses).

    Left padding puts every response at the end, so only the last `keep` positions need logits: the
    vocabulary projection (a large share of a small model's work) skips the prompts."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (tokens, prompt_length) in enumerate(encoded):
        start = width - len(tokens)
        ids[row, start:] = torch.as_tensor(tokens)
        labels[row, start + prompt_length :] = torch.as_tensor(tokens[prompt_length:])
        mask[row, start:] = 1
    keep = 1 + max(len(tokens) - prompt_length for tokens, prompt_length in encoded)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device), labels[:, -keep:].to(device)


def _row_nll(model, ids, mask, positions, labels, device: str):
    """Per row: summed NLL of its labelled tokens, and their count (logits only for the labels' window)."""
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda")):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=labels.shape[1]).logits
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )
    return losses.sum(dim=1), (targets != IGNORE).sum(dim=1)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def sft(
    prompts: Sequence[str],
    responses: Sequence[str],
    model_path: str,
    config: SftConfig,
    *,
    seed: int,
    device: str,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> SftResult:
    """LoRA fine-tuning on (prompt, response) records: `epochs` shuffled passes (seeded order)."""
    import torch

    from synthforge.training.finetune import optimizer_and_schedule

    base, tokenizer = load_causal_lm(model_path, device)
    model = add_lora(base, config, seed)
    encoded = encode_records(tokenizer, prompts, responses, config.max_length)
    steps = config.epochs * math.ceil(len(encoded) / config.train_batch_size)
    optimizer, scheduler = optimizer_and_schedule(model, config, steps)
    order_rng = np.random.default_rng(seed)
    pad = _pad_id(tokenizer)
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = order_rng.permutation(len(encoded))
        total, counted = 0.0, 0
        with progress(len(encoded), f"sft seed {seed} epoch {epoch}", enabled=show_progress) as bar:
            for begin in range(0, len(order), config.train_batch_size):
                chosen = order[begin : begin + config.train_batch_size]
                nll, tokens = _row_nll(model, *_batch([encoded[i] for i in chosen], pad, device), device)
                loss = nll.sum() / tokens.sum().clamp(min=1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                total += float(nll.detach().sum())
                counted += int(tokens.sum())
                bar.update(len(chosen))
        history.append({"epoch": epoch, "train_loss": total / max(counted, 1)})
        log(f"epoch {epoch}: train_loss={history[-1]['train_loss']:.4f}")
    return SftResult(model, tokenizer, config.epochs, history)


def score_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    device: str,
    batch_size: int,
    max_length: int,
    answers: Sequence[str] | None = None,
) -> ResponseScores:
    """Response NLL per row (teacher-forced), and the greedy answers when `answers` are given."""
    import torch

    model.eval()
    encoded = encode_records(tokenizer, prompts, responses, max_length)
    order = np.argsort([-len(ids) for ids, _ in encoded], kind="stable")
    nll, tokens = np.zeros(len(encoded)), np.zeros(len(encoded), dtype=np.int64)
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            chosen = order[begin : begin + batch_size]
            row_nll, row_tokens = _row_nll(model, *_batch([encoded[i] for i in chosen], _pad_id(tokenizer), device), device)
            nll[chosen], tokens[chosen] = row_nll.float().cpu().numpy(), row_tokens.cpu().numpy()
    generated = None
    if answers is not None:
        longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in set(answers))
        generated = greedy_answers(model, tokenizer, prompts, device=device, batch_size=batch_size,
                                   max_length=max_length, max_new_tokens=longest + 1)
    return ResponseScores(nll, tokens, generated)


def greedy_answers(model, tokenizer, prompts: Sequence[str], *, device: str, batch_size: int, max_length: int,
                   max_new_tokens: int) -> list[str]:
    """Each prompt's greedy continuation (left-padded batches), normalized for exact-match."""
    import torch

    pad = _pad_id(tokenizer)
    encoded = [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"][-(max_length - max_new_tokens):]
               for p in prompts]
    out: list[str] = [""] * len(encoded)
    order = np.argsort([-len(ids) for ids in encoded], kind="stable")
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            chosen = order[begin : begin + batch_size]
            width = max(len(encoded[i]) for i in chosen)
            ids = torch.full((len(chosen), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for row, i in enumerate(chosen):
                ids[row, width - len(encoded[i]):] = torch.as_tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda")):
                generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                           max_new_tokens=max_new_tokens, pad_token_id=pad)
            for row, i in enumerate(chosen):
                out[i] = normalize_answer(tokenizer.decode(generated[row, width:], skip_special_tokens=True))
    return out


def normalize_answer(text: str) -> str:
    """The first line, trimmed of spaces and end punctuation, case-folded: `" Positive.\\n..."` -> `positive`."""
    first = (text.strip().splitlines() or [""])[0]
    return first.strip().rstrip(".!").strip().casefold()

