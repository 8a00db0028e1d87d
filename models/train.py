"""``glimpse train``'s engine: one decoder across subjects, early-stopped, calibrated, saved.

:func:`train` takes a loaded :class:`~glimpse.models.data.SessionData` and a
:class:`~glimpse.models.train_config.TrainConfig`, and writes a checkpoint directory
(``glimpse.models.checkpoint``) with ``figures/training.png`` and ``figures/reliability.png``.

- **Data.** Streaming-ready stimulus windows (``window_s``, 0.25 s; ends 0.15-0.8 s
  after onset) redrawn every epoch by :class:`~glimpse.models.windows.WindowSampler` from the
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
- **Confidence.** A small confidence head, separate from the decoder, calibrated on
  validation windows (:mod:`glimpse.models.confidence`).
- **DDP.** Under ``torchrun --nproc_per_node N``, ranks share the windows and average
  the gradients (:mod:`glimpse.models.distributed`).

Speed: :func:`train` flushes denormal floats to zero (``torch.set_flush_denormal``)
while it runs: on x86 CPUs, arithmetic on them (tiny gradients and Adam moments)
runs 5-10x slower, and the model's results do not depend on values below 1e-38.

Sizes (the default run must take minutes, not hours, on 2 CPU cores): the brain encoder
keeps the paper's architecture (spatial attention, subject layers, 5 dilated
residual blocks, GLU, two heads) at ``hidden=96``, ``spatial_channels=64`` instead
of 320 and 270: ~0.7 M parameters instead of ~5 M, and ~10x less compute per
window, which a few hundred training trials do not repay anyway (the paper's widths
took 375 s for 16 epochs of 4 windows per trial on the default simulated session, and
validated no better). With early stopping ending training (25-75 epochs), the default
run took 3.5-8 minutes on one shared thread of the 2-core development machine
(``bench/accuracy.py``). Pass ``hidden=320, spatial_channels=270`` for the paper's sizes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from glimpse.streaming.errors import InputError

from .confidence import calibrate, fit_presence, plot_reliability
from .data import SessionData, image_targets
from .distributed import Dist
from .losses import DecodingLoss
from .train_config import MODEL_NAMES, TrainConfig
from .validation import validate
from .windows import Splits, WindowSampler, WindowSet, fixed_windows, split_trials

logger = logging.getLogger("glimpse.models.train")

__all__ = ["DEFAULT_SIZES", "MODEL_NAMES", "TrainConfig", "TrainResult", "train"]

#: Brain-encoder architecture of the default run (see the module docstring).
DEFAULT_SIZES = {"hidden": 96, "spatial_channels": 64, "demean": True}


@dataclass
class TrainResult:
    """What :func:`train` produced; ``checkpoint_dir`` is None on DDP ranks other than 0."""

    checkpoint_dir: Path | None
    model: Any
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    config: TrainConfig
    confidence: dict[str, Any]


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
        options.update(positions=data.positions.tolist(), **DEFAULT_SIZES)
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


_TRUNK_KEYS = ("spatial_channels", "fourier_k", "hidden", "n_blocks", "kernel_size", "glu_kernel", "demean")


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



# --------------------------------------------------------------------------- train


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)


def train(data: SessionData, config: TrainConfig, out_dir: str | os.PathLike, *,
          progress: bool = True, model: nn.Module | None = None,
          extra_meta: dict[str, Any] | None = None) -> TrainResult:
    """Train ``config.model`` on ``data``, write a checkpoint to ``out_dir``; see the module doc.

    ``model``: a model the caller built and initialised instead of a fresh one
    (:mod:`.new_subject`); ``extra_meta``: added to config.json (its lineage)."""
    from .checkpoint import save_checkpoint

    start = time.perf_counter()
    config.validate()
    out_dir = Path(out_dir)
    dist = Dist.from_env(config.device)
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
        given = model is not None
        if not given:
            model = _build_model(config, data, targets.shape[1], n_times)
        elif config.init:  # the caller initialised it
            raise InputError("either a model or config.init", "both", "drop config.init")
        model, history, best_epoch, retrieval_head, loss_fn = _fit(
            model, data, splits, targets, val, val_images, config, dist, progress, given)
        final = validate(model, val, targets, val_images, retrieval_head, loss_fn,
                         config.device, config.eval_offsets)
        probe = fit_presence(data, splits.train, config)
        confidence, plot = calibrate(probe, data, splits.val, config.window_s)
        metrics = _metrics(final, history, best_epoch, splits, val_images, confidence,
                           time.perf_counter() - start, dist.world)
        checkpoint_dir = None
        if dist.main:
            meta = {**_checkpoint_meta(data, config, embedder.name, targets, splits, metrics,
                                       confidence, retrieval_head), **(extra_meta or {})}
            checkpoint_dir = save_checkpoint(out_dir, model, meta)
            _figure_training(history, final.get("chance_top5"),
                             out_dir / "figures" / "training.png", best_epoch)
            if plot:
                plot_reliability(plot, confidence, out_dir / "figures" / "reliability.png")
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


def _fit(model, data: SessionData, splits: Splits, targets: np.ndarray, val: WindowSet | None,
         val_images: np.ndarray, config: TrainConfig, dist: Dist, progress: bool, given: bool):
    """Fit the decoder: (model, history, best epoch, retrieval head, loss for validation)."""
    retrieval_head = "mse" if config.loss == "mse" else "clip"
    loss_fn = DecodingLoss(config.loss, lam=config.mix_lambda)
    # The decoder learns from stimulus windows only; nothing-new windows train the
    # confidence head.
    # Ridge takes ridge_draws windows per trial in all: its closed form costs
    # O(windows x features^2), and more draws of the same trials add little.
    sampler = WindowSampler(data, splits.train, window_s=config.window_s,
                            stim_offsets=config.stim_offsets, nothing_offsets=None,
                            windows_per_trial=(1 if config.model == "ridge"
                                               else config.windows_per_trial),
                            seed=config.seed)
    if config.model == "ridge":
        model, history, best_epoch = _fit_ridge(model, sampler, targets, config)
        return model, history, best_epoch, "mse", None
    if config.init:
        if config.model != "brain_encoder":
            raise InputError("--init with model brain_encoder", config.model,
                             "drop --init, or train the brain encoder")
        _load_init(model, config.init)
    history, best_epoch = _fit_sgd(model, loss_fn, sampler, targets, val, val_images,
                                   retrieval_head, config, dist, progress, given)
    return model, history, best_epoch, retrieval_head, loss_fn


def _checkpoint_meta(data: SessionData, config: TrainConfig, embedder_name: str,
                     targets: np.ndarray, splits: Splits, metrics: dict[str, Any],
                     confidence: dict[str, Any], retrieval_head: str) -> dict[str, Any]:
    """What :func:`~glimpse.models.checkpoint.save_checkpoint` writes besides the weights."""
    return {
        "subjects": data.subjects, "ch_names": list(data.ch_names),
        "positions": data.positions.tolist(), "sfreq": data.sfreq,
        "window": {"n_times": data.n_times(config.window_s), "seconds": config.window_s},
        "preprocess": data.preprocess.to_dict(),
        "embedder": {"name": embedder_name, "dim": int(targets.shape[1]),
                     "mean_norm": float(np.linalg.norm(targets, axis=1).mean())},
        "data_fingerprint": data.fingerprint, "training": config.to_dict(),
        "metrics": metrics, "confidence": confidence, "retrieval_head": retrieval_head,
        "data": {"source": str(data.source), "kind": data.kind,
                 "group_delay_s": data.group_delay,
                 "train_concepts": list(splits.train_concepts),
                 "val_concepts": list(splits.val_concepts)},
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _targets(data: SessionData, embedder, cache, dist: Dist, progress: bool) -> np.ndarray:
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
             retrieval_head: str, config: TrainConfig, dist: Dist, progress: bool,
             keep_start: bool = False) -> tuple[list[dict[str, float]], int | None]:
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

    def score(res: dict[str, Any]) -> tuple[float, float]:  # ties on top-5 go to the lower loss
        return dist.broadcast(res["top5"]) if higher else 0.0, -dist.broadcast(res["loss"])

    if keep_start and val is not None and len(val):  # a model given trained: not moving is a candidate
        start = validate(model, val, targets, val_images, retrieval_head, loss_fn, device, config.eval_offsets)
        best, best_epoch, best_state = score(start), 0, copy.deepcopy(objective.state_dict())
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
            res = validate(model, val, targets, val_images, retrieval_head, loss_fn, device,
                            config.eval_offsets)
            row.update({"val_loss": res["loss"], "val_top1": res["top1"], "val_top5": res["top5"]})
            value = score(res)
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
