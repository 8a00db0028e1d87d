"""``glimpse train``'s options: :class:`TrainConfig`, checked on construction, JSON round trip.

A checkpoint stores it (``config.json`` ``training``), so a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from glimpse.streaming.config_dict import config_from_dict
from glimpse.streaming.errors import InputError

from .losses import LOSSES
from .windows import EVAL_OFFSETS, NOTHING_OFFSETS, STIM_OFFSETS

__all__ = ["MODEL_NAMES", "TrainConfig"]

#: Models :func:`glimpse.models.train.train` builds; "ridge" is closed-form, the others
#: are trained by SGD.
MODEL_NAMES = ("brain_encoder", "shallow_fbcsp", "eegnet", "ridge")


@dataclass
class TrainConfig:
    """Everything :func:`~glimpse.models.train.train` needs besides the data; JSON round trip.

    ``model`` in :data:`MODEL_NAMES`; ``embedder`` a ``glimpse.models.embedders`` spec;
    ``window_s`` the live window (s). ``loss`` in ``glimpse.models.losses.LOSSES`` with
    ``mix_lambda`` for "mix". ``val_metric``: "top5" (retrieval among validation
    images; ties go to the lower loss) or "loss". ``patience``: epochs without
    improvement before stopping: early stopping ends training, ``epochs`` is a safety cap
    (at 25 epochs, training on 10 exemplars per concept and more still improved at the
    cap; validation top-5 among a few dozen images is noisy, and 6 epochs of patience
    stopped runs that went on to improve).
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
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    loss: str = "mix"
    mix_lambda: float = 0.75
    patience: int = 10
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
        return config_from_dict(cls, data, fix="remove or rename them")
