"""``glimpse train``'s engine: one decoder across subjects, early-stopped, calibrated, saved.

:func:`train` takes a loaded :class:`~glimpse.models.data.SessionData` and a
:class:`TrainConfig`, and writes a checkpoint directory (``glimpse.models.checkpoint``)
with ``figures/training.png`` and ``figures/reliability.png``.

- **Data.** Streaming-ready stimulus windows (``window_s``, 0.25 s; ends 0.15-0.8 s
  after onset) redrawn every epoch by :class:`~glimpse.models.data.WindowSampler` from the
  training concepts' trials; "nothing new" windows train the confidence head.
  Validation: deterministic windows of WHOLE held-out training concepts
  (``val_concept_fraction``); test trials are never touched.
- **Models.** ``brain_encoder`` (subject layers: one model across subjects),
  braindecode peers (``shallow_fbcsp``, ``eegnet``) through
  ``glimpse.models.baselines.build_model``, and ``ridge`` (closed form, same entry point).
- **Objective.** :class:`glimpse.models.losses.DecodingLoss` (``clip``,
  ``clip_symmetric``, ``mse``, ``mix``); Adam or AdamW; early stopping on the
  validation top-5 retrieval among the validation images (or the validation loss),
  keeping the best state.
- **Confidence.** A small confidence head, separate from the decoder: a logistic
  regression on per-channel statistics of the window
  (:func:`glimpse.models.checkpoint.window_stats`: log variance, mean, rise), trained on
  training-trial windows with a fresh image against "nothing new" windows (the
  fixation before an image). It is then Platt-scaled on validation windows
  (stimulus windows every 50 ms from 0.15 to 0.8 s after onset, nothing-new ones
  every 50 ms from -0.25 to 0.04 s) and folded into one ``weight`` vector and
  ``bias``, plain numbers in ``config.json``, with the expected calibration error
  and AUC: ``confidence = 1 / (1 + exp(-(window_stats(x) . weight + bias)))``. The
  same head serves every model, costs microseconds live, and does not compete with
  the decoder for its capacity (a probe on the decoder's LayerNorm-ed heads, which
  discard a window's power, did not learn presence within the CPU budget).
- **DDP.** Under ``torchrun --nproc_per_node N`` (env ``WORLD_SIZE``), each rank
  builds the same model (same seed), draws the same windows and takes its shard of
  them; DistributedDataParallel (``gloo`` on CPU, ``nccl`` on CUDA) averages the
  gradients. The contrastive term sees each rank's local batch (``batch_size //
  N`` windows). Only rank 0 writes the checkpoint and figures.

Speed: :func:`train` flushes denormal floats to zero (``torch.set_flush_denormal``)
while it runs: on x86 CPUs, arithmetic on them (tiny gradients and Adam moments)
runs 5-10x slower, and the model's results do not depend on values below 1e-38.

Sizes (the default run must finish in 5 minutes on 2 CPU cores): the brain encoder
keeps the paper's architecture (spatial attention, subject layers, 5 dilated
residual blocks, GLU, two heads) at ``hidden=96``, ``spatial_channels=64`` instead
of 320 and 270: ~0.7 M parameters instead of ~5 M, and ~10x less compute per
window, which a few hundred training trials do not repay anyway (measured on the
default simulated session: 48 s for the whole run, loading included, on the 2-core
development machine; the paper's widths took 375 s for 16 epochs of 4 windows per
trial, and validated no better). Pass ``hidden=320, spatial_channels=270`` for the
paper's sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from glimpse.streaming.errors import InputError

from .data import (EVAL_OFFSETS, NOTHING_OFFSETS, STIM_OFFSETS, SessionData, Splits, WindowSampler,
                   WindowSet, fixed_windows, image_targets, split_trials)
from .evaluate import cosine_scores, per_query_topk
from .losses import LOSSES, DecodingLoss

logger = logging.getLogger("glimpse.models.train")

__all__ = ["MODEL_NAMES", "TrainConfig", "TrainResult", "calibration_offsets", "platt_fit",
           "expected_calibration_error", "train"]

#: Models :func:`train` builds; "ridge" is closed-form, the others are trained by SGD.
MODEL_NAMES = ("brain_encoder", "shallow_fbcsp", "eegnet", "ridge")
#: Window ends (s after onset) of the windows the confidence is calibrated on.
CALIB_STIM_OFFSETS = tuple(np.round(np.arange(0.15, 0.8001, 0.05), 3).tolist())
CALIB_NOTHING_OFFSETS = tuple(np.round(np.arange(-0.25, 0.0401, 0.05), 3).tolist())
# Brain-encoder sizes for the default run (see the module docstring).
_DEFAULT_SIZES = {"hidden": 96, "spatial_channels": 64}
_EVAL_BATCH = 512


@dataclass
class TrainConfig:
    """Everything :func:`train` needs besides the data; round-trips through JSON.

    ``model`` in :data:`MODEL_NAMES`; ``embedder`` a ``glimpse.models.embedders`` spec;
    ``window_s`` the live window (s). ``loss`` in ``glimpse.models.losses.LOSSES`` with
    ``mix_lambda`` for "mix". ``val_metric``: "top5" (retrieval among validation
    images; ties go to the lower loss) or "loss". ``patience``: epochs without
    improvement before stopping.
    ``windows_per_trial``: stimulus windows drawn per training trial and epoch (random
    offsets: augmentation, and more optimiser steps per epoch on small datasets);
    ``nothing_fraction``: nothing-new windows per stimulus window for the confidence
    head (``presence_draws`` draws of the training trials).
    ``init``: a checkpoint or pretraining directory whose trunk weights start the
    brain encoder. ``hidden``, ``spatial_channels``, ``n_blocks``, ``dropout``
    override the brain encoder's sizes; ``model_options`` passes any other field of
    the model's config (e.g. ``{"alphas": [1e2, 1e3]}`` for ridge). ``num_threads``: torch
    CPU threads (None: torch's default). ``cache_dir``: image-embedding cache.
    """

    model: str = "brain_encoder"
    embedder: str = "handcrafted"
    window_s: float = 0.25
    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    loss: str = "mix"
    mix_lambda: float = 0.75
    patience: int = 6
    val_concept_fraction: float = 0.15
    val_metric: str = "top5"
    nothing_fraction: float = 0.5
    windows_per_trial: int = 6
    stim_offsets: tuple[float, float] = STIM_OFFSETS
    nothing_offsets: tuple[float, float] = NOTHING_OFFSETS
    eval_offsets: tuple[float, ...] = EVAL_OFFSETS
    seed: int = 0
    device: str = "cpu"
    init: str | None = None
    hidden: int | None = None
    spatial_channels: int | None = None
    n_blocks: int | None = None
    dropout: float | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    ridge_draws: int = 4
    presence_draws: int = 3
    num_threads: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("stim_offsets", "nothing_offsets", "eval_offsets"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self.model_options = dict(self.model_options)
        self.validate()

    def validate(self) -> TrainConfig:
        def need(ok: bool, name: str, expected: str, fix: str) -> None:
            if not ok:
                raise InputError(f"{name} {expected}", repr(getattr(self, name)), fix)

        need(self.model in MODEL_NAMES, "model", f"in {MODEL_NAMES}", "pick one of those")
        need(self.loss in LOSSES, "loss", f"in {LOSSES}", "pick one of those")
        need(self.optimizer in ("adam", "adamw"), "optimizer", "'adam' or 'adamw'", "use adamw")
        need(self.val_metric in ("top5", "loss"), "val_metric", "'top5' or 'loss'", "use top5")
        for name in ("epochs", "batch_size", "patience", "ridge_draws", "windows_per_trial",
                     "presence_draws"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name,
                 "an integer >= 1", f"pass e.g. --{name.replace('_', '-')} 10")
        need(self.batch_size >= 2, "batch_size", ">= 2 (a contrastive batch)", "use e.g. 128")
        for name in ("window_s", "lr"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, name,
                 "a positive number", "use the default")
        need(0 <= self.weight_decay < 1, "weight_decay", "in [0, 1)", "use e.g. 0.01")
        need(0 <= self.mix_lambda <= 1, "mix_lambda", "in [0, 1]", "use e.g. 0.75")
        need(0 <= self.val_concept_fraction < 1, "val_concept_fraction", "in [0, 1)",
             "use e.g. 0.15")
        need(len(self.stim_offsets) == 2 and self.stim_offsets[0] <= self.stim_offsets[1],
             "stim_offsets", "(low, high) seconds", "use (0.05, 0.8)")
        need(len(self.eval_offsets) >= 1, "eval_offsets", "at least one offset", "use (0.3,)")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"TrainConfig fields among {sorted(known)}", f"unknown {unknown}",
                             "remove or rename them")
        return cls(**data)


@dataclass
class TrainResult:
    """What :func:`train` produced; ``checkpoint_dir`` is None on DDP ranks other than 0."""

    checkpoint_dir: Path | None
    model: Any
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    config: TrainConfig
    confidence: dict[str, Any]


# --------------------------------------------------------------------------- small pieces


def platt_fit(score: np.ndarray, label: np.ndarray, *, iters: int = 100) -> tuple[float, float]:
    """Logistic calibration ``p = sigmoid(a * score + b)`` by Newton's method (Platt 1999).

    Platt's smoothed targets ((n+ + 1) / (n+ + 2), 1 / (n- + 2)) keep ``a`` finite
    when the classes separate perfectly.
    """
    s, y = np.asarray(score, float), np.asarray(label, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("calibration windows of both kinds (stimulus and nothing new)",
                         f"{n_pos} stimulus and {n_neg} nothing-new windows",
                         "use more validation trials")
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    mu, sd = s.mean(), s.std() or 1.0
    z = (s - mu) / sd  # standardised for conditioning; mapped back below
    a, b = 0.0, math.log((n_pos + 1) / (n_neg + 1))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * z + b)))
        w = np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a / sd), float(b - a * mu / sd)


def apply_platt(score: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(a * np.asarray(score, float) + b)))


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, n_bins: int = 10
                               ) -> tuple[float, list[dict[str, float]]]:
    """ECE over ``n_bins`` equal-width bins, and the bins (for the reliability plot)."""
    prob, label = np.asarray(prob, float), np.asarray(label, float)
    idx = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    ece, bins = 0.0, []
    for i in range(n_bins):
        m = idx == i
        if m.any():
            conf, acc = float(prob[m].mean()), float(label[m].mean())
            ece += m.mean() * abs(conf - acc)
            bins.append({"low": i / n_bins, "high": (i + 1) / n_bins, "count": int(m.sum()),
                         "confidence": conf, "frequency": acc})
    return float(ece), bins


def calibration_offsets() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(stimulus, nothing-new) window ends used for calibration, s after onset."""
    return CALIB_STIM_OFFSETS, CALIB_NOTHING_OFFSETS


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend)
            owns = True
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), owns_group=owns)

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank (so that every rank stops at the same epoch)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank.

        DDP broadcasts them before each forward, but each rank's last forward then
        updates its own copy; this makes validation and the saved state agree.
        """
        if self.world == 1:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Objective(nn.Module):
    """Model and loss in one module, so DDP also averages the temperature's gradient."""

    def __init__(self, model: nn.Module, loss: DecodingLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x, subject, image, labels, is_stimulus):
        clip_out, mse_out = self.model(x, subject)
        return self.loss(clip_out, mse_out, image, labels, is_stimulus)


# --------------------------------------------------------------------------- models


def _build_model(config: TrainConfig, data: SessionData, embed_dim: int, n_times: int) -> Any:
    """The untrained model ``config.model`` for ``data``'s windows and ``embed_dim`` targets."""
    from . import baselines

    if config.model == "ridge":
        return baselines.RidgeBaseline(**config.model_options)
    options = {"n_chans": data.n_chans, "sfreq": data.sfreq, "n_times": n_times,
               "embed_dim": embed_dim, "n_subjects": len(data.subjects),
               "ch_names": list(data.ch_names)}
    if config.model == "brain_encoder":
        options.update(positions=data.positions.tolist(), **_DEFAULT_SIZES)
        options.update(_init_architecture(config.init))
        for name in ("hidden", "spatial_channels", "n_blocks", "dropout"):
            if getattr(config, name) is not None:
                options[name] = getattr(config, name)
    else:
        options["arch"] = config.model
        if config.model == "shallow_fbcsp":
            # Schirrmeister's kernels (25 and 75 samples) need ~0.8 s at 120 Hz; for a
            # live window they are scaled to it (a third and a half of the window).
            n = n_times
            options["model_kwargs"] = {"filter_time_length": max(3, n // 3),
                                       "pool_time_length": max(2, n // 2),
                                       "pool_time_stride": max(1, n // 6)}
    options.update(config.model_options)
    return baselines.build_model(config.model, options)


_TRUNK_KEYS = ("spatial_channels", "fourier_k", "hidden", "n_blocks", "kernel_size", "glu_kernel")


def _init_architecture(init: str | None) -> dict[str, Any]:
    """Trunk sizes of a pretrained model (its config.json), so the new model matches them."""
    if init is None:
        return {}
    cfg = Path(init) / "config.json"
    if not cfg.is_file():
        return {}
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError("a JSON config.json in --init", f"{cfg}: {err}", "re-run pretraining")
    model_cfg = meta.get("model", {}).get("config", meta.get("model_config", {}))
    return {k: model_cfg[k] for k in _TRUNK_KEYS if k in model_cfg}


def _load_init(model: nn.Module, init: str) -> None:
    from .brain_encoder import TRUNK_MODULES

    folder = Path(init)
    files = [folder / n for n in ("trunk.safetensors", "model.safetensors")
             if (folder / n).is_file()]
    if not files:
        raise InputError("a pretraining or checkpoint folder with trunk.safetensors or "
                         "model.safetensors (--init)", f"{folder}", "pass the folder of "
                         "`glimpse pretrain --out` or of a checkpoint")
    from .checkpoint import read_safetensors

    state = read_safetensors(files[0])
    trunk = {k: v for k, v in state.items() if k.split(".", 1)[0] in TRUNK_MODULES}
    if not trunk:
        raise InputError(f"trunk weights ({', '.join(TRUNK_MODULES)}.*) in {files[0]}",
                         f"keys {sorted(state)[:5]}", "pass a brain-encoder checkpoint")
    n_sub = model.subject_layer.weight.shape[0]
    same_subjects = trunk.get("subject_layer.weight", torch.empty(0)).shape[:1] == (n_sub,)
    model.load_trunk_state_dict(trunk, subjects=same_subjects)
    logger.info("initialised the trunk from %s (%d tensors%s)", files[0], len(trunk),
                "" if same_subjects else "; subject layers kept fresh")


def _forward(model: Any, x: np.ndarray, subject: np.ndarray, device: str
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


# --------------------------------------------------------------------------- evaluation


def _by_offset(hit: np.ndarray, offset_s: np.ndarray, offsets: Sequence[float]
               ) -> dict[str, float]:
    """Mean of ``hit`` per nominal offset (actual offsets sit on the sample grid, below it)."""
    offs = np.asarray(offsets, float)
    nearest = np.abs(offset_s[:, None] - offs[None, :]).argmin(axis=1)
    return {f"{o:g}": float(hit[nearest == i].mean()) for i, o in enumerate(offs)
            if (nearest == i).any()}


def _validate(model, windows: WindowSet | None, targets: np.ndarray, val_images: np.ndarray,
              retrieval_head: str, loss_fn: DecodingLoss | None, device: str,
              offsets: Sequence[float] = EVAL_OFFSETS) -> dict[str, Any]:
    """Top-1/top-5 among the validation images (per offset and overall) and the loss."""
    if windows is None or not len(windows):
        return {}
    clip_out, mse_out = _forward(model, windows.x, windows.subject, device)
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


def _fit_presence(data: SessionData, trials: np.ndarray, config: TrainConfig
                  ) -> tuple[np.ndarray, float]:
    """The confidence head before calibration: (weight (3 C,), bias) on ``window_stats``.

    A logistic regression (L2, C = 0.1, on standardised features, folded back) of
    stimulus against nothing-new windows of the training trials, ``presence_draws``
    random draws of each.
    """
    from sklearn.linear_model import LogisticRegression

    from .checkpoint import window_stats

    sampler = WindowSampler(data, trials, window_s=config.window_s,
                            stim_offsets=config.stim_offsets,
                            nothing_offsets=config.nothing_offsets,
                            nothing_fraction=config.nothing_fraction,
                            seed=config.seed + 1)
    ws = WindowSet.concatenate([sampler.sample(e) for e in range(config.presence_draws)])
    feats = window_stats(ws.x)
    n_chans = ws.x.shape[1]
    if ws.is_stimulus.all():
        logger.warning("no nothing-new windows in the training trials (no quiet time before "
                       "onsets): the confidence is constant")
        return np.zeros(3 * n_chans), 0.0
    mu, sd = feats.mean(0), feats.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    lr = LogisticRegression(C=0.1, max_iter=2000).fit((feats - mu) / sd, ws.is_stimulus)
    weight = lr.coef_[0] / sd
    return weight, float(lr.intercept_[0] - weight @ mu)


def _calibrate(probe: tuple[np.ndarray, float], data: SessionData, trials: np.ndarray,
               window_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The confidence for config.json: the head, Platt-calibrated on ``trials``' windows.

    Platt's ``a, b`` fold into the head, so the checkpoint stores one ``weight`` and one
    ``bias``. Without validation windows of both kinds, the head is stored as trained
    (``calibrated: false``). Returns (confidence, reliability-plot data).
    """
    from .checkpoint import WINDOW_STATS, window_stats

    weight, bias = probe
    base = {"features": WINDOW_STATS,
            "formula": "1 / (1 + exp(-(dot(window_stats(x), weight) + bias)))"}
    stim_off, nothing_off = calibration_offsets()
    windows = [fixed_windows(data, trials, window_s=window_s, offsets=stim_off),
               fixed_windows(data, trials, window_s=window_s, offsets=nothing_off,
                             is_stimulus=False)] if len(trials) else []
    if not windows or not len(windows[0]) or not len(windows[1]):
        logger.warning("no validation windows of both kinds to calibrate the confidence on; "
                       "the checkpoint stores the confidence head uncalibrated")
        return {**base, "weight": weight.tolist(), "bias": bias, "calibrated": False,
                "ece": None, "auc": None}, {}
    ws = WindowSet.concatenate(windows)
    score = window_stats(ws.x) @ weight + bias
    a, b = platt_fit(score, ws.is_stimulus)
    prob = apply_platt(score, a, b)
    ece, bins = expected_calibration_error(prob, ws.is_stimulus)
    # AUC by ranks: how well the head separates the two kinds (calibration keeps it).
    order = np.argsort(np.argsort(score))
    n_pos, n_neg = int(ws.is_stimulus.sum()), int((~ws.is_stimulus).sum())
    auc = (order[ws.is_stimulus].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg)
    confidence = {**base, "weight": (a * weight).tolist(), "bias": a * bias + b,
                  "calibrated": True, "method": "logistic head + Platt scaling",
                  "ece": ece, "auc": float(auc), "n_windows": len(ws),
                  "stim_offsets": list(stim_off), "nothing_offsets": list(nothing_off)}
    return confidence, {"bins": bins, "prob": prob, "label": ws.is_stimulus,
                        "offset": ws.offset_s}


# --------------------------------------------------------------------------- figures


def _figure_training(history: list[dict[str, float]], chance: float | None, path: Path,
                     best_epoch: int | None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        ax1.plot(ep, [h.get("val_loss", np.nan) for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    if any("val_top5" in h for h in history):
        ax2.plot(ep, [h.get("val_top5", np.nan) for h in history], label="validation top-5")
        if chance is not None:
            ax2.axhline(chance, color="grey", ls="--", label="chance")
        if best_epoch is not None:
            ax2.axvline(best_epoch, color="k", lw=0.8, ls=":", label="kept")
        ax2.legend()
    ax2.set(xlabel="epoch", ylabel="top-5 accuracy", title="held-out concepts", ylim=(0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _figure_reliability(plot: dict[str, Any], confidence: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    bins = plot["bins"]
    ax1.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax1.plot([b["confidence"] for b in bins], [b["frequency"] for b in bins], "o-")
    ax1.set(xlabel="predicted confidence", ylabel="fraction with a fresh stimulus",
            title=f"reliability (ECE {confidence['ece']:.3f})", xlim=(0, 1), ylim=(0, 1))
    offs = np.round(plot["offset"], 2)
    uniq = np.unique(offs)
    ax2.plot(uniq, [plot["prob"][offs == o].mean() for o in uniq], "o-")
    ax2.axvspan(uniq.min(), 0.04, color="grey", alpha=0.15, label="nothing new")
    ax2.set(xlabel="window end after onset (s)", ylabel="mean confidence",
            title=f"confidence vs window position (AUC {confidence['auc']:.2f})", ylim=(0, 1))
    ax2.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- train


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)


def train(data: SessionData, config: TrainConfig, out_dir: str | os.PathLike, *,
          progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``data``, write a checkpoint to ``out_dir``; see the module doc."""
    from .checkpoint import save_checkpoint

    start = time.perf_counter()
    config.validate()
    out_dir = Path(out_dir)
    dist = _Dist.from_env(config.device)
    torch.set_flush_denormal(True)  # see the module docstring; reset below
    try:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        _seed_everything(config.seed)
        splits = split_trials(data, config.val_concept_fraction, config.seed)
        from .embedders import load_embedder

        embedder = load_embedder(config.embedder, device=config.device)
        targets = _targets(data, embedder, config.cache_dir, dist, progress)
        n_times = data.n_times(config.window_s)
        val_images = np.unique(data.trials.image[splits.val])
        val = (fixed_windows(data, splits.val, window_s=config.window_s,
                             offsets=config.eval_offsets) if len(splits.val) else None)
        logger.info("training %s on %d trials (%d concepts), validating on %d trials "
                    "(%d held-out concepts, %d images), %d-sample windows, world size %d",
                    config.model, len(splits.train), len(splits.train_concepts), len(splits.val),
                    len(splits.val_concepts), len(val_images), n_times, dist.world)
        model = _build_model(config, data, targets.shape[1], n_times)
        retrieval_head = "mse" if config.loss == "mse" else "clip"
        loss_fn = DecodingLoss(config.loss, lam=config.mix_lambda)
        # The decoder learns from stimulus windows only; nothing-new windows train the
        # confidence head below.
        # Ridge takes ridge_draws windows per trial in all: its closed form costs
        # O(windows x features^2), and more draws of the same trials add little.
        sampler = WindowSampler(data, splits.train, window_s=config.window_s,
                                stim_offsets=config.stim_offsets, nothing_offsets=None,
                                windows_per_trial=(1 if config.model == "ridge"
                                                   else config.windows_per_trial),
                                seed=config.seed)
        if config.model == "ridge":
            retrieval_head = "mse"
            model, history, best_epoch = _fit_ridge(model, sampler, targets, config)
        else:
            if config.init:
                if config.model != "brain_encoder":
                    raise InputError("--init with model brain_encoder", config.model,
                                     "drop --init, or train the brain encoder")
                _load_init(model, config.init)
            history, best_epoch = _fit_sgd(model, loss_fn, sampler, targets, val, val_images,
                                           retrieval_head, config, dist, progress)
        final = _validate(model, val, targets, val_images, retrieval_head,
                          None if config.model == "ridge" else loss_fn, config.device,
                          config.eval_offsets)
        probe = _fit_presence(data, splits.train, config)
        confidence, plot = _calibrate(probe, data, splits.val, config.window_s)
        metrics = _metrics(final, history, best_epoch, splits, val_images, confidence,
                           time.perf_counter() - start, dist.world)
        checkpoint_dir = None
        if dist.main:
            meta = {
                "subjects": data.subjects, "ch_names": list(data.ch_names),
                "positions": data.positions.tolist(), "sfreq": data.sfreq,
                "window": {"n_times": n_times, "seconds": config.window_s},
                "preprocess": data.preprocess.to_dict(),
                "embedder": {"name": embedder.name, "dim": int(targets.shape[1]),
                             "mean_norm": float(np.linalg.norm(targets, axis=1).mean())},
                "data_fingerprint": data.fingerprint, "training": config.to_dict(),
                "metrics": metrics, "confidence": confidence, "retrieval_head": retrieval_head,
                "data": {"source": str(data.source), "kind": data.kind,
                         "group_delay_s": data.group_delay,
                         "train_concepts": list(splits.train_concepts),
                         "val_concepts": list(splits.val_concepts)},
            }
            checkpoint_dir = save_checkpoint(out_dir, model, meta)
            _figure_training(history, final.get("chance_top5"),
                             out_dir / "figures" / "training.png", best_epoch)
            if plot:
                _figure_reliability(plot, confidence, out_dir / "figures" / "reliability.png")
            (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n",
                                                  encoding="utf-8")
            logger.info("checkpoint written to %s: val top-5 %s (chance %s), ECE %s, %.1f s",
                        out_dir, _fmt(final.get("top5")), _fmt(final.get("chance_top5")),
                        _fmt(confidence["ece"]), time.perf_counter() - start)
        dist.barrier()
        return TrainResult(checkpoint_dir=checkpoint_dir, model=model, metrics=metrics,
                           history=history, config=config, confidence=confidence)
    finally:
        torch.set_flush_denormal(False)
        dist.close()


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _targets(data: SessionData, embedder, cache, dist: _Dist, progress: bool) -> np.ndarray:
    """Image embeddings; with a cache and DDP, rank 0 fills the cache before the others read."""
    if dist.world > 1 and cache is not None and not dist.main:
        dist.barrier()
    targets = image_targets(data, embedder, cache_dir=cache, progress=progress and dist.main)
    if dist.world > 1 and cache is not None and dist.main:
        dist.barrier()
    return targets


def _fit_ridge(model, sampler: WindowSampler, targets: np.ndarray, config: TrainConfig
               ) -> tuple[Any, list[dict[str, float]], None]:
    """Closed-form fit on ``ridge_draws`` windows per training trial (random offsets).

    Returns the model as the checkpoint stores it (float32 arrays), so that what is
    validated and calibrated here is exactly what is served.
    """
    ws = WindowSet.concatenate([sampler.sample(e) for e in range(config.ridge_draws)])
    unit = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    y = unit[ws.target].astype(np.float32)
    model = type(model).from_arrays(model.fit(ws.x, y).to_arrays())
    train_loss = float(((np.asarray(model.predict(ws.x)) - y) ** 2).sum(1).mean())
    logger.info("ridge fitted on %d windows; train squared error %.4f", len(ws), train_loss)
    return model, [{"epoch": 1, "train_loss": train_loss}], None


def _fit_sgd(model: nn.Module, loss_fn: DecodingLoss, sampler: WindowSampler,
             targets: np.ndarray, val: WindowSet | None, val_images: np.ndarray,
             retrieval_head: str, config: TrainConfig, dist: _Dist, progress: bool
             ) -> tuple[list[dict[str, float]], int | None]:
    device = config.device
    objective = _Objective(model, loss_fn).to(device)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: with loss="mse" the CLIP head gets no gradient.
        wrapped = DistributedDataParallel(objective, find_unused_parameters=True)
    else:
        wrapped = objective
    torch.manual_seed(config.seed + dist.rank)  # dropout differs per rank; weights are synced
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(objective.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    targets_t = torch.from_numpy(targets).to(device)
    local_batch = max(2, config.batch_size // dist.world)
    higher = config.val_metric == "top5"
    best, best_epoch, best_state, bad = (-math.inf, -math.inf), None, None, 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.epochs), desc=f"train {config.model}", unit="epoch",
               disable=not (progress and dist.main))
    for epoch in bar:
        ws = sampler.sample(epoch)
        order = np.random.default_rng([config.seed, epoch, 1]).permutation(len(ws))
        per_rank = len(order) // dist.world  # equal step counts on every rank
        shard = order[dist.rank::dist.world][:per_rank]
        n_batches = max(1, math.ceil(len(shard) / local_batch))
        objective.train()
        losses = []
        for idx in np.array_split(shard, n_batches):
            if len(idx) < 2:
                continue
            x = torch.from_numpy(ws.x[idx]).to(device)
            subject = torch.from_numpy(ws.subject[idx]).to(device)
            labels = torch.from_numpy(ws.target[idx]).to(device)
            image = targets_t[labels.clamp(min=0)]
            is_stim = torch.from_numpy(ws.is_stimulus[idx]).to(device)
            loss, _ = wrapped(x, subject, image, labels, is_stim)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        dist.sync_buffers(objective)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        if val is not None and len(val):
            res = _validate(model, val, targets, val_images, retrieval_head, loss_fn, device,
                            config.eval_offsets)
            row.update({"val_loss": res["loss"], "val_top1": res["top1"], "val_top5": res["top5"]})
            # Ties on top-5 (frequent on small validation sets) go to the lower loss.
            value = (dist.broadcast(res["top5"]) if higher else 0.0, -dist.broadcast(res["loss"]))
            if value > best:
                best, best_epoch, bad = value, epoch + 1, 0
                best_state = copy.deepcopy(objective.state_dict())
            else:
                bad += 1
        history.append(row)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch"})
        # Without a progress bar, the log is the only sign of life.
        logger.log(logging.DEBUG if progress else logging.INFO, "epoch %s", row)
        if best_state is not None and bad >= config.patience:
            logger.info("early stop after epoch %d: no better %s for %d epochs (best: epoch %d)",
                        epoch + 1, config.val_metric, bad, best_epoch)
            break
    if best_state is not None:
        objective.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


def _metrics(final: dict[str, Any], history: list[dict[str, float]], best_epoch: int | None,
             splits: Splits, val_images: np.ndarray, confidence: dict[str, Any] | None,
             wall_s: float, world: int) -> dict[str, Any]:
    out = {
        "val_top1": final.get("top1"), "val_top5": final.get("top5"),
        "val_chance_top5": final.get("chance_top5"), "val_loss": final.get("loss"),
        "val_top5_by_offset": final.get("top5_by_offset"),
        "best_epoch": best_epoch, "epochs_run": len(history),
        "train_loss": history[-1]["train_loss"] if history else None,
        "n_train_trials": int(len(splits.train)), "n_val_trials": int(len(splits.val)),
        "n_val_images": int(len(val_images)), "n_train_concepts": len(splits.train_concepts),
        "n_val_concepts": len(splits.val_concepts),
        "confidence_ece": confidence["ece"], "confidence_auc": confidence["auc"],
        "wall_s": round(wall_s, 2), "world_size": world,
    }
    return out
