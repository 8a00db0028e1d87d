"""``glimpse export``: a checkpoint's network as ONNX, checked against torch.

The live worker can run the encoder with onnxruntime instead of torch; an export is
only written when onnxruntime reproduces torch's outputs (max abs difference
<= ``atol``) at batch sizes 1 and 8.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glimpse.streaming.errors import InputError

from .brain_encoder import export_onnx
from .checkpoint import load_checkpoint

logger = logging.getLogger("glimpse.models.export")

BATCH_SIZES = (1, 8)
#: Where `glimpse export` writes by default, and where `glimpse decode` looks.
ONNX_NAME = "model.onnx"


def export_checkpoint_onnx(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, *,
                           atol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Export the checkpoint's model to ``onnx_path`` and verify it; returns a report.

    The file takes a ``chan_mask`` input (B, C) bool besides ``x`` and ``subject``, so
    the live worker can decode a stream that lacks some of the checkpoint's channels;
    it is checked with every channel present and with a quarter of them masked.
    """
    import onnxruntime as ort

    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model
    if not isinstance(model, nn.Module):
        raise InputError("a neural checkpoint (brain_encoder, shallow_fbcsp or eegnet)",
                         f"a {ckpt.model_name} checkpoint", "serve ridge checkpoints directly; "
                         "they are a single matrix product")
    path = Path(onnx_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = export_onnx(model, path, with_mask=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    diffs = {}
    for batch in BATCH_SIZES:
        x = rng.standard_normal((batch, ckpt.n_chans, ckpt.n_times)).astype(np.float32)
        subject = rng.integers(0, len(ckpt.subjects), size=batch).astype(np.int64)
        for masked in (False, True):
            mask = np.ones((batch, ckpt.n_chans), bool)
            if masked:
                mask[:, rng.permutation(ckpt.n_chans)[: ckpt.n_chans // 4]] = False
            with torch.inference_mode():
                expected = [t.numpy() for t in model(torch.from_numpy(x), torch.from_numpy(subject),
                                                     torch.from_numpy(mask))]
            got = session.run(None, {"x": x, "subject": subject, "chan_mask": mask})
            diff = float(max(np.abs(e - g).max() for e, g in zip(expected, got)))
            diffs[batch] = max(diffs.get(batch, 0.0), diff)
    if max(diffs.values()) > atol:
        path.unlink(missing_ok=True)  # never leave an export that disagrees with torch
        raise RuntimeError(f"onnxruntime differs from torch by {max(diffs.values()):.2e} > {atol:g} "
                           f"(per batch size: {diffs}); the export was removed")
    logger.info("exported %s to %s (%s); max abs diff vs torch %s", ckpt.model_name, path, exporter, diffs)
    return {"onnx": str(path), "model": ckpt.model_name, "exporter": exporter,
            "inputs": {"x": [None, ckpt.n_chans, ckpt.n_times], "subject": [None],
                       "chan_mask": [None, ckpt.n_chans]},
            "max_abs_diff": {str(b): d for b, d in diffs.items()}, "atol": atol}
