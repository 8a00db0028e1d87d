"""Torch devices named by the user (``--device``), checked before any model is moved there."""

from __future__ import annotations

import torch

from glimpse.streaming.errors import InputError

__all__ = ["torch_device"]


def torch_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; an InputError for a bad name or an absent GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError("a torch device (cpu, cuda, cuda:1, mps)", repr(device),
                         "pass --device cpu (device='cpu' from Python)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("an available CUDA device", f"device {device!r} with no CUDA available",
                         "pass --device cpu (device='cpu' from Python)")
    return dev
