"""Masked signal pretraining of the brain encoder's trunk on unlabeled windows.

The idea of MinD-Vis (Chen et al. 2023), DreamDiffusion (Bai et al. 2023) and CAD:
hide most of a signal and learn to fill it in, so that the encoder learns the
structure of brain signals before it ever sees an image. Here, the time axis of a
window is cut into patches of ``patch`` samples; a random ``mask_ratio`` of them is
set to zero in the input (zero is the median of robust-scaled data, so a masked
patch carries no level); :meth:`BrainEncoder.trunk` encodes the masked window; a
1x1 convolution (``hidden -> C``) reconstructs it; the loss is the mean squared
error over the masked samples only (all channels).

Only the trunk (``BrainEncoder.trunk_state_dict()``) and the throw-away decoder
learn; the heads are untouched. Save the result with ``model.trunk_state_dict()``
and start supervised training from it with ``model.load_trunk_state_dict(sd)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .brain_encoder import TRUNK_MODULES, BrainEncoder, BrainEncoderConfig
from glimpse.streaming.errors import InputError

logger = logging.getLogger("glimpse.models.pretrain")


@dataclass
class PretrainConfig:
    """Masked pretraining hyper-parameters."""

    mask_ratio: float = 0.75
    patch: int = 4  # samples per patch (33 ms at 120 Hz)
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise InputError("mask_ratio in (0, 1)", f"{self.mask_ratio}", "use 0.75 (MAE's default)")
        for name in ("patch", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} >= 1", f"{getattr(self, name)}", f"set {name} to a positive integer")
        if not self.lr > 0:
            raise InputError("lr > 0", f"{self.lr}", "use e.g. 1e-3")


class ReconstructionHead(nn.Module):
    """The light decoder: a 1x1 convolution ``(B, hidden, T) -> (B, C, T)``."""

    def __init__(self, hidden: int, n_chans: int):
        super().__init__()
        self.conv = nn.Conv1d(hidden, n_chans, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv(features)


def random_patch_mask(batch: int, n_times: int, mask_ratio: float, patch: int,
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """``(batch, n_times)`` bool, True = masked: ``round(mask_ratio * n_patches)`` whole patches per row.

    The last patch is shorter when ``patch`` does not divide ``n_times``, so the
    masked fraction of samples is ``mask_ratio`` within one patch.
    """
    n_patches = math.ceil(n_times / patch)
    n_masked = min(max(round(mask_ratio * n_patches), 1), n_patches - 1) if n_patches > 1 else 1
    order = torch.rand(batch, n_patches, generator=generator).argsort(dim=1)
    masked_patches = torch.zeros(batch, n_patches, dtype=torch.bool)
    masked_patches.scatter_(1, order[:, :n_masked], True)
    return masked_patches.repeat_interleave(patch, dim=1)[:, :n_times].to(device)


def masked_reconstruction_loss(model: BrainEncoder, decoder: nn.Module, x: Tensor, subject: Tensor,
                               mask_ratio: float, patch: int, generator: torch.Generator | None = None) -> Tensor:
    """Mean squared reconstruction error over the masked samples of ``x`` (B, C, T)."""
    mask = random_patch_mask(x.shape[0], x.shape[-1], mask_ratio, patch, generator, x.device)  # (B, T)
    masked_input = x.masked_fill(mask.unsqueeze(1), 0.0)
    reconstruction = decoder(model.trunk(masked_input, subject))
    weight = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T), broadcast over channels
    return ((reconstruction - x) ** 2 * weight).sum() / (weight.sum() * x.shape[1])


def _batches(windows, batch_size: int, generator: torch.Generator):
    """Yield ``(x, subject)`` batches for one epoch from any accepted ``windows``."""
    if isinstance(windows, Tensor) or (isinstance(windows, tuple) and len(windows) == 2
                                       and all(isinstance(w, Tensor) for w in windows)):
        x, subject = (windows, None) if isinstance(windows, Tensor) else windows
        if subject is None:
            subject = torch.zeros(len(x), dtype=torch.long)
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            yield x[index], subject[index]
        return
    for item in windows:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InputError("batches of (x (B, C, T), subject (B,))", f"{type(item).__name__}",
                             "yield (x, subject) pairs, e.g. from a DataLoader over a TensorDataset")
        yield item[0], item[1]


def pretrain_trunk(model: BrainEncoder, windows: Tensor | tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]],
                   config: PretrainConfig | None = None, *, progress: bool = True) -> dict:
    """Train ``model``'s trunk in place by masked reconstruction; returns the loss history.

    ``windows`` is a tensor ``(N, C, T)`` (all subject 0), a pair ``(X, subjects)``
    of tensors, or a re-iterable of ``(x, subject)`` batches (a list, a DataLoader).
    Windows may be longer than the model's ``n_times`` (the trunk is convolutional).
    The model's device is used; its train/eval mode is restored at the end. Random
    draws (order, masks, spatial dropout, decoder init) are seeded by ``config.seed``
    without touching the caller's global RNG state.

    Returns ``{"epoch_loss": [...], "batch_loss": [...], "n_windows": int}``.
    """
    config = config or PretrainConfig()
    if not isinstance(model, BrainEncoder):
        raise InputError("a BrainEncoder", type(model).__name__, "pretraining needs the brain encoder's trunk")
    if not isinstance(windows, (Tensor, tuple)) and iter(windows) is windows:
        raise InputError("windows that can be iterated once per epoch", "a one-shot iterator",
                         "pass a list of batches or a DataLoader")
    device = next(model.parameters()).device
    was_training = model.training
    history: dict = {"epoch_loss": [], "batch_loss": [], "n_windows": 0}
    # Fork the RNG of the device in use too, so the caller's CUDA state is untouched.
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        decoder = ReconstructionHead(model.config.hidden, model.config.n_chans).to(device)
        trunk_params = [p for name in TRUNK_MODULES for p in getattr(model, name).parameters()]
        optimizer = torch.optim.AdamW(trunk_params + list(decoder.parameters()), lr=config.lr,
                                      weight_decay=config.weight_decay)
        model.train()
        try:
            for epoch in range(config.epochs):
                total, count = 0.0, 0
                bar = tqdm(_batches(windows, config.batch_size, generator), desc=f"pretrain {epoch + 1}/"
                           f"{config.epochs}", disable=not progress, leave=False, unit="batch")
                for x, subject in bar:
                    x = x.to(device=device, dtype=torch.float32)
                    subject = subject.to(device=device, dtype=torch.long)
                    if not bool(torch.isfinite(x).all()):  # before BatchNorm's statistics see it
                        raise InputError("finite windows", f"NaN or inf in a batch of epoch {epoch + 1}",
                                         "drop windows marked invalid before pretraining")
                    loss = masked_reconstruction_loss(model, decoder, x, subject, config.mask_ratio,
                                                      config.patch, generator)
                    value = float(loss.detach())
                    if not math.isfinite(value):  # before the step: keep the weights intact
                        raise InputError("a finite loss", f"a non-finite loss at epoch {epoch + 1}",
                                         "lower lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    history["batch_loss"].append(value)
                    total, count = total + value * len(x), count + len(x)
                    bar.set_postfix(loss=f"{value:.4f}")
                if count == 0:
                    raise InputError("at least one window", "none", "pass unlabeled windows to pretrain on")
                history["epoch_loss"].append(total / count)
                history["n_windows"] = count
                logger.info("pretrain epoch %s/%s: masked MSE %.4f over %s windows", epoch + 1, config.epochs,
                            total / count, count)
        finally:
            model.train(was_training)
    return history


def pretrain_session(session: Any, config: PretrainConfig, out_dir: str | os.PathLike, *,
                     window_s: float = 0.25, model_options: dict | None = None,
                     progress: bool = True) -> Path:
    """``glimpse pretrain``: pretrain a brain encoder's trunk on a loaded session, unlabeled.

    Windows of ``window_s`` are cut at seeded random positions from every run of
    ``session`` (a :class:`glimpse.models.data.SessionData`), as many as fit end to end in
    the run; labels and splits are not used (self-supervision, as in MinD-Vis). The
    trunk has the sizes ``glimpse train`` uses by default unless ``model_options``
    says otherwise. Writes ``trunk.safetensors`` and ``config.json`` (the model's
    config, under ``model.config``, which ``glimpse train --init`` reads so that the
    new model's trunk matches) to ``out_dir``; returns the folder.
    """
    from safetensors.torch import save_file

    from .train import DEFAULT_SIZES

    n_times = session.n_times(window_s)
    rng = np.random.default_rng(config.seed)
    xs, subjects = [], []
    for run in session.runs:
        n = run.n_samples // n_times
        if n == 0:
            continue
        starts = rng.integers(0, run.n_samples - n_times + 1, size=n)
        xs.append(np.stack([run.data[:, s:s + n_times] for s in starts]))
        subjects.append(np.full(n, session.subjects.index(run.subject)))
    if not xs:
        raise InputError(f"recordings longer than one {window_s:g} s window", "none",
                         "pass longer recordings or a shorter --window")
    options = {**DEFAULT_SIZES, **(model_options or {})}
    model_config = BrainEncoderConfig(
        n_chans=session.n_chans, sfreq=session.sfreq, n_times=n_times,
        embed_dim=options.pop("embed_dim", 256),  # heads are not trained here; trunk only
        n_subjects=len(session.subjects), ch_names=list(session.ch_names),
        positions=session.positions.tolist(), **options)
    model = BrainEncoder(model_config)
    windows = (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(subjects)))
    history = pretrain_trunk(model, windows, config, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.trunk_state_dict().items()}, str(out / "trunk.safetensors"))
    meta = {"format": "glimpse-pretrain", "format_version": 1,
            "model": {"name": "brain_encoder", "config": model_config.to_dict()},
            "pretrain": dataclasses.asdict(config), "window_s": window_s,
            "subjects": list(session.subjects), "data_fingerprint": session.fingerprint,
            "n_windows": history["n_windows"], "epoch_loss": history["epoch_loss"]}
    (out / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    logger.info("pretrained the trunk on %d windows: loss %.4f -> %.4f; wrote %s",
                history["n_windows"], history["epoch_loss"][0], history["epoch_loss"][-1], out)
    return out
