"""Validation while training: retrieval among the held-out concepts' images, per window offset.

:func:`validate` scores a model's windows of validation trials against the embeddings
of the validation images; training keeps the epoch it scores best, and evaluation
picks its headline window from the per-offset curve it records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .losses import DecodingLoss
from .metrics import cosine_scores, per_query_topk
from .windows import EVAL_OFFSETS, WindowSet

__all__ = ["forward", "validate"]

_EVAL_BATCH = 512


def forward(model: Any, x: np.ndarray, subject: np.ndarray, device: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """(clip, mse) outputs of any trained model for windows ``x``, batched, no grad."""
    if not isinstance(model, nn.Module):  # ridge: one prediction serves both heads
        pred = np.asarray(model.predict(x), np.float32)
        return pred, pred
    was = model.training
    model.eval()
    clips, mses = [], []
    with torch.no_grad():
        for s in range(0, len(x), _EVAL_BATCH):
            xb = torch.from_numpy(x[s:s + _EVAL_BATCH]).to(device)
            sb = torch.from_numpy(subject[s:s + _EVAL_BATCH]).to(device)
            c, m = model(xb, sb)
            clips.append(c.cpu().numpy())
            mses.append(m.cpu().numpy())
    model.train(was)
    if not clips:
        return np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)
    return np.concatenate(clips), np.concatenate(mses)


def _by_offset(hit: np.ndarray, offset_s: np.ndarray, offsets: Sequence[float]
               ) -> dict[str, float]:
    """Mean of ``hit`` per nominal offset (actual offsets sit on the sample grid, below it)."""
    offs = np.asarray(offsets, float)
    nearest = np.abs(offset_s[:, None] - offs[None, :]).argmin(axis=1)
    return {f"{o:g}": float(hit[nearest == i].mean()) for i, o in enumerate(offs)
            if (nearest == i).any()}


def validate(model, windows: WindowSet | None, targets: np.ndarray, val_images: np.ndarray,
              retrieval_head: str, loss_fn: DecodingLoss | None, device: str,
              offsets: Sequence[float] = EVAL_OFFSETS) -> dict[str, Any]:
    """Top-1/top-5 among the validation images (per offset and overall) and the loss."""
    if windows is None or not len(windows):
        return {}
    clip_out, mse_out = forward(model, windows.x, windows.subject, device)
    pred = clip_out if retrieval_head == "clip" else mse_out
    row = {int(r): i for i, r in enumerate(val_images)}
    truth = np.array([row[int(t)] for t in windows.target])
    scores = cosine_scores(pred, targets[val_images])
    # Expected top-k under random tie-breaking: a collapsed (constant) model scores
    # chance, so early stopping never prefers it to one that learned anything.
    top5 = per_query_topk(scores, truth, 5)
    out = {"top1": float(per_query_topk(scores, truth, 1).mean()), "top5": float(top5.mean()),
           "chance_top5": min(5, len(val_images)) / len(val_images),
           "top5_by_offset": _by_offset(top5, windows.offset_s, offsets)}
    if loss_fn is not None:
        with torch.no_grad():
            loss, _ = loss_fn(torch.from_numpy(clip_out), torch.from_numpy(mse_out),
                              torch.from_numpy(targets[windows.target]),
                              torch.from_numpy(windows.target),
                              torch.from_numpy(windows.is_stimulus))
        out["loss"] = float(loss)
    return out
