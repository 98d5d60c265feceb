"""Full fine-tuning of a transformers encoder for sequence classification.

AdamW with linear warm-up then linear decay, gradient clipping, bf16 autocast
on CUDA, and early stopping on validation macro-F1, ties broken by validation loss (the
best epoch's weights are restored).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthforge.progress import progress, quiet_libraries
from synthforge.training.scoring import confusion_matrix, scores_from_cm


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 3
    learning_rate: float = 5e-5
    train_batch_size: int = 16
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    patience: int | None = 2
    max_grad_norm: float = 1.0


@dataclass
class FinetuneResult:
    model: Any
    tokenizer: Any
    best_epoch: int | None
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def load_classifier(model_path: str, labels: list[str], device: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    quiet_libraries()  # no "Loading weights" bar of transformers' own
    # "Some weights were newly initialized" is expected: the head is new.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    finally:
        logging.set_verbosity(verbosity)
    return model.to(device), AutoTokenizer.from_pretrained(model_path)


def finetune(
    train_texts: Sequence[str],
    train_targets: np.ndarray,
    labels: list[str],
    model_path: str,
    config: FinetuneConfig,
    *,
    seed: int,
    device: str,
    val_texts: Sequence[str] | None = None,
    val_targets: np.ndarray | None = None,
    eval_batch_size: int = 64,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    import torch

    torch.manual_seed(seed)  # the new classifier head's init and dropout follow the seed
    model, tokenizer = load_classifier(model_path, labels, device)
    optimizer, scheduler = optimizer_and_schedule(model, config, steps=config.epochs * math.ceil(len(train_texts) / config.train_batch_size))
    order_rng = np.random.default_rng(seed)
    best_score, best_state, best_epoch, stale = None, None, None, 0
    history: list[dict[str, float]] = []
    epochs_run = 0
    for epoch in range(1, config.epochs + 1):
        epochs_run = epoch
        loss = _train_epoch(model, tokenizer, train_texts, train_targets, optimizer, scheduler, config, order_rng, device, seed, epoch, show_progress)
        record = {"epoch": epoch, "train_loss": loss}
        if val_texts is not None and len(val_texts):
            record.update(_validate(model, tokenizer, val_texts, val_targets, len(labels), device, eval_batch_size, config.max_length))
            score = (record["val_macro_f1"], -record["val_loss"])
            if _improves(score, best_score):
                best_score, best_epoch, stale = score, epoch, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(record)
        log(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        if config.patience is not None and best_state is not None and stale >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FinetuneResult(model, tokenizer, best_epoch, epochs_run, history)


def _validate(model, tokenizer, texts, targets, n_classes, device, batch_size, max_length) -> dict[str, float]:
    probs = predict_proba(model, tokenizer, texts, device, batch_size, max_length)
    loss = float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)).mean())
    return {"val_loss": loss, "val_macro_f1": scores_from_cm(confusion_matrix(targets, probs.argmax(axis=1), n_classes))["macro_f1"]}


def _improves(score: tuple[float, float], best: tuple[float, float] | None) -> bool:
    """Higher validation macro-F1 wins; at equal F1 a clearly lower validation loss does."""
    if best is None:
        return True
    if score[0] != best[0]:
        return score[0] > best[0]
    return score[1] > best[1] + 1e-4


def optimizer_and_schedule(model, config: Any, steps: int):
    """AdamW over the trainable parameters (no decay on biases and norms), linear warm-up then linear decay."""
    import torch

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in trainable if not n.endswith(no_decay)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    warmup = int(round(config.warmup_ratio * steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _train_epoch(model, tokenizer, texts, targets, optimizer, scheduler, config, rng, device, seed, epoch, show_progress) -> float:
    import torch

    model.train()
    order = rng.permutation(len(texts))
    total_loss, batches = 0.0, 0
    with progress(len(texts), f"finetune seed {seed} epoch {epoch}", enabled=show_progress) as bar:
        for begin in range(0, len(order), config.train_batch_size):
            batch = order[begin : begin + config.train_batch_size]
            encoded = _encode(tokenizer, [texts[i] for i in batch], config.max_length, device)
            target = torch.as_tensor(targets[batch], dtype=torch.long, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda")):
                logits = model(**encoded).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach())
            batches += 1
            bar.update(len(batch))
    return total_loss / max(batches, 1)


def predict_proba(model, tokenizer, texts: Sequence[str], device: str, batch_size: int, max_length: int) -> np.ndarray:
    import torch

    model.eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            encoded = _encode(tokenizer, [texts[i] for i in batch], max_length, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda")):
                logits = model(**encoded).logits
            out[batch] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return out


def _encode(tokenizer, texts: list[str], max_length: int, device: str):
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    # Some tokenizers emit token_type_ids the model does not accept; keep what BERT-likes take.
    return {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
