"""Which torch device a model runs on."""

from __future__ import annotations

from synthforge.errors import UserError


def pick_device(device: str = "auto") -> str:
    """`auto` is CUDA when present, else CPU; an explicit CUDA device must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available", field="device")
    return device
