"""A pretrained multi-subject brain encoder adapted to a new person (the calibration step).

The base model's subjects share everything but their subject layer (one
``channels x channels`` matrix each, :class:`~glimpse.models.blocks.SubjectLayer`). A
new person gets a new matrix, initialised as the mean of the base subjects' (the
subject-agnostic path: what the base model does for anyone). ``layers`` says what
then learns from a few minutes of their data: ``"all"`` (default) the whole model,
from the base's weights, at a tenth of the learning rate (:data:`LR`); ``"subject"``
the new matrix alone, everything else frozen; ``"subject+head"`` the matrix and the
last layers (projection, pooling and the two heads). The base subjects' matrices get
no gradient from the person's data, and Adam without weight decay leaves them as
they were. On bench/calibration.py's simulated people, the whole model learned more
than the matrix alone from 5 minutes of data and about as much from 1-2
(docs/guide/calibration.rst).
The person's data are fed in the base's scaler, and the epoch kept is the one that
scores best on calibration concepts held out for that, not moving at all included
(best epoch 0: the base with the mean matrix).

:func:`adapt_to_subject` writes two checkpoints: ``OUT`` (adapted) and
``OUT/unadapted`` (the base model with the mean subject matrix and the base's own
scaler: what glimpse decodes with before calibration), and evaluates both on the
new person's held-out images (trials whose split is "test") when there are any. The
adapted checkpoint is a normal checkpoint folder; its config.json adds ``lineage``
(the base checkpoint, its fingerprint, the calibration data, the subject, the
layers that learned) and ``calibration`` (top-5 before and after, both at the window
the base chose on its own validation concepts).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from glimpse.streaming.errors import InputError

from .data import SessionData

__all__ = ["LR", "MIN_TRIALS", "AdaptConfig", "AdaptResult", "adapt_to_subject"]

logger = logging.getLogger("glimpse.models.new_subject")

#: Training trials needed to adapt. One minute of THINGS-MEG timing (1.5 s a trial)
#: gives 40; with fewer than 30, the 15 % of concepts held out for early stopping hold
#: a handful of trials, and the epoch it picks is chosen by noise.
MIN_TRIALS = 30
_HEAD = ("projection.", "aggregation.", "projection_out.", "clip_head.", "mse_head.")
#: Learning rate by what learns: a new subject layer starts at the mean matrix and may
#: move far; the whole model's pretrained weights need ten times smaller steps.
LR = {"subject": 3e-3, "subject+head": 3e-3, "all": 3e-4}


@dataclass
class AdaptConfig:
    """How the new person's weights learn (the rest of training as :class:`TrainConfig`)."""

    layers: Literal["subject", "subject+head", "all"] = "all"
    epochs: int = 40
    lr: float | None = None  # None: LR[layers]
    batch_size: int = 64
    patience: int = 8
    windows_per_trial: int = 6
    val_concept_fraction: float = 0.15
    seed: int = 0
    num_threads: int | None = None
    cache_dir: str | None = None
    min_trials: int = MIN_TRIALS


@dataclass
class AdaptResult:
    """The adapted checkpoint, the unadapted one, and top-5 on held-out images before/after."""

    checkpoint_dir: Path
    unadapted_dir: Path
    subject: str
    n_train_trials: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    train_metrics: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint_dir), "unadapted": str(self.unadapted_dir),
                "subject": self.subject, "n_train_trials": self.n_train_trials,
                "held_out_before": self.before, "held_out_after": self.after,
                "val_top5": self.train_metrics.get("val_top5"),
                "best_epoch": self.train_metrics.get("best_epoch")}


def _check(ckpt, data: SessionData, config: AdaptConfig) -> None:
    if ckpt.model_name != "brain_encoder":
        raise InputError("a brain_encoder base checkpoint (adaptation learns its subject layer)",
                         f"a {ckpt.model_name} checkpoint ({ckpt.path})",
                         "train a multi-subject base with `glimpse train --model brain_encoder`")
    if config.layers not in LR:
        raise InputError('layers "subject", "subject+head" or "all"', repr(config.layers), "use the default")
    if set(data.ch_names) != set(ckpt.ch_names) or not np.isclose(data.sfreq, ckpt.sfreq):
        missing = sorted(set(ckpt.ch_names) - set(data.ch_names))
        extra = sorted(set(data.ch_names) - set(ckpt.ch_names))
        raise InputError(f"calibration data with the base checkpoint's {ckpt.n_chans} channels at "
                         f"{ckpt.sfreq:g} Hz ({ckpt.ch_names[0]}, ...)",
                         f"{data.n_chans} channels at {data.sfreq:g} Hz (missing {missing[:4]}, "
                         f"not in the base {extra[:4]})",
                         "pick a base checkpoint of this modality and montage (GET /api/checkpoints "
                         "lists each one's), or record with the montage the base was trained on")
    if len(data.subjects) != 1:
        raise InputError("calibration data of one person", f"subjects {data.subjects}",
                         "adapt to one person at a time (subjects=[...] when loading)")
    n_train = int(np.sum(data.trials.split == "train"))
    if n_train < config.min_trials:
        raise InputError(f"at least {config.min_trials} calibration trials (about a minute of "
                         "images; fewer leave early stopping a handful of held-out trials to "
                         "choose by)", f"{n_train} training trials in {data.source}",
                         "present more calibration images (or lower min_trials knowingly)")


def _joined(ckpt, data: SessionData, subject: str) -> SessionData:
    """The data relabelled as subject ``len(base subjects)`` after the base subjects."""
    if subject in ckpt.subjects:
        raise InputError(f"a new subject id (the base has {list(ckpt.subjects)})", repr(subject),
                         "name the new person differently")
    n_base = len(ckpt.subjects)
    trials = dataclasses.replace(data.trials, subject=data.trials.subject + n_base)
    return dataclasses.replace(data, subjects=[*ckpt.subjects, subject], trials=trials)


def _in_base_scale(ckpt, data: SessionData) -> SessionData:
    """The data in the base's channel order and scaler (the person's own scaler undone).

    Identical weights scored 0.255 top-5 with the person's scaler against 0.328 with
    the base's (5 minutes of a simulated person): the trunk learned the base's
    per-sensor scaling, which the subject layer, acting after the spatial attention,
    cannot undo. So adaptation, the adapted checkpoint and live decoding with it all
    keep the base's scaler, and the subject layer learns what differs.
    """
    from .adapter import Adapter

    adapter = Adapter(ckpt, data)
    if adapter.rescale is None and adapter.identity_channels:
        return data
    runs = [dataclasses.replace(r, data=adapter.windows(r.data[None])[0]) for r in data.runs]
    return dataclasses.replace(data, runs=runs, ch_names=tuple(ckpt.ch_names),
                               positions=np.asarray(data.positions)[adapter.index], preprocess=ckpt.preprocess)


def _extended_model(ckpt, n_new: int) -> torch.nn.Module:
    """The base model with ``n_new`` more subject matrices, each the base subjects' mean."""
    from .brain_encoder import BrainEncoder

    base = ckpt.model
    config = {**base.get_config(), "n_subjects": len(ckpt.subjects) + n_new}
    model = BrainEncoder.from_config(config)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    weight = state["subject_layer.weight"]
    state["subject_layer.weight"] = torch.cat([weight, weight.mean(0, keepdim=True).repeat(n_new, 1, 1)])
    model.load_state_dict(state)
    return model


def _meta(ckpt) -> dict[str, Any]:
    """The base checkpoint's config.json as :func:`save_checkpoint`'s ``meta``."""
    config = ckpt.config
    return {"ch_names": list(ckpt.ch_names), "positions": ckpt.positions, "sfreq": ckpt.sfreq,
            **{k: config[k] for k in ("window", "preprocess", "subjects", "embedder", "data_fingerprint")},
            **{k: config[k] for k in ("retrieval_head", "confidence", "data", "training", "metrics") if k in config}}


def _freeze(model: torch.nn.Module, layers: str) -> list[str]:
    """Only the subject layer (with "subject+head" the last layers too; with "all",
    everything) keep gradients."""
    trainable = []
    for name, param in model.named_parameters():
        learn = (layers == "all" or name.startswith("subject_layer.")
                 or (layers == "subject+head" and name.startswith(_HEAD)))
        param.requires_grad_(learn)
        if learn:
            trainable.append(name)
    return trainable


def _held_out(checkpoint_dir: Path, data: SessionData, cache_dir: str | None,
              offset: float) -> dict[str, Any] | None:
    """Single-trial top-1/top-5 among the held-out images (None without test trials)."""
    from .evaluate import evaluate

    if not np.any(data.trials.split == "test"):
        return None
    metrics = evaluate(checkpoint_dir, data, offset=offset, ceiling=False, cache_dir=cache_dir,
                       curve_offsets=())
    single = metrics["single_trial"]
    return {k: single.get(k) for k in ("top1", "top5", "chance_top5", "se_top5", "n_trials", "n_candidates")
            } | {"offset_s": offset}


def adapt_to_subject(base: str | os.PathLike, data: SessionData, out_dir: str | os.PathLike,
                     config: AdaptConfig | None = None, *, subject: str = "new",
                     lineage: dict[str, Any] | None = None, progress: bool = True) -> AdaptResult:
    """Adapt the checkpoint ``base`` to the person recorded in ``data``; see the module doc.

    ``data`` must be loaded with the base's preprocessing (``load_session(path,
    preprocess=load_checkpoint(base).preprocess)``: same channels, rate and filters;
    the scaler it fits on the person is mapped back to the base's, as the module
    docstring says). ``lineage``: what else to record about where
    the calibration data came from (the session folder, the presentation).
    """
    from .checkpoint import load_checkpoint, save_checkpoint
    from .evaluate import headline_offset
    from .train import train
    from .train_config import TrainConfig

    config = config or AdaptConfig()
    ckpt = load_checkpoint(base)
    _check(ckpt, data, config)
    joined = _joined(ckpt, _in_base_scale(ckpt, data), subject)
    out_dir = Path(out_dir)
    model = _extended_model(ckpt, 1)
    # Before: the base model for this person, with its own scaler (what live decoding
    # does without a calibration), saved so that it is evaluated exactly as the adapted one.
    unadapted_dir = save_checkpoint(out_dir / "unadapted", model, {
        **_meta(ckpt), "subjects": joined.subjects, "lineage": {"base": str(ckpt.path), "unadapted": True}})
    trainable = _freeze(model, config.layers)
    train_config = TrainConfig(
        model="brain_encoder", embedder=ckpt.embedder_name, window_s=ckpt.window_s, epochs=config.epochs,
        lr=config.lr if config.lr is not None else LR[config.layers], batch_size=config.batch_size,
        patience=config.patience,
        windows_per_trial=config.windows_per_trial, val_concept_fraction=config.val_concept_fraction,
        seed=config.seed, num_threads=config.num_threads, cache_dir=config.cache_dir,
        # Adam without weight decay: decay would shrink the base subjects' matrices too.
        optimizer="adam", weight_decay=0.0)
    meta = {"lineage": {"base": str(ckpt.path), "base_fingerprint": ckpt.fingerprint,
                        "calibration_data": str(data.source), "calibration_fingerprint": data.fingerprint,
                        "subject": subject, "layers": config.layers, "trainable": trainable,
                        **(lineage or {})}}
    logger.info("adapting %s to subject %s: %d calibration trials, learning %s", ckpt.path, subject,
                int(np.sum(data.trials.split == "train")), config.layers)
    result = train(joined, train_config, out_dir, progress=progress, model=model, extra_meta=meta)
    # Both scored at the window the base chose on its own validation concepts: the
    # calibration's few held-out trials would pick the offset by noise (with one minute,
    # every offset scores top-5 1.0 among 6 images, and ties go to the earliest).
    offset = headline_offset(ckpt)
    before = _held_out(unadapted_dir, joined, config.cache_dir, offset)
    after = _held_out(out_dir, joined, config.cache_dir, offset)
    _record(out_dir, before, after)
    if before and after:
        logger.info("held-out top-5 for %s: %.3f before, %.3f after (chance %.3f)", subject,
                    before["top5"], after["top5"], after["chance_top5"])
    return AdaptResult(out_dir, unadapted_dir, subject, int(np.sum(data.trials.split == "train")),
                       before, after, result.metrics)


def _record(out_dir: Path, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    """Add the held-out figures to the adapted checkpoint's config.json (atomically)."""
    import json

    path = out_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["calibration"] = {"held_out_before": before, "held_out_after": after}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
