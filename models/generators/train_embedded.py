"""Training the embedded generator on freshly drawn stimuli of the simulator's world.

Training data is unlimited: every step draws new images with the simulator's
stimulus code (:mod:`glimpse.streaming.simulate.stimuli`) from a seeded generator,
embeds them, and adds them to a rolling pool the batches are sampled from (drawing
and embedding cost ~3 ms an image, so a pool keeps the CPU on the model). The
session's own test images are never used; held-out evaluation images come from
another seed.

The loss is on what the handcrafted embedder measures: the figure's mask in its
bounding square (binary cross-entropy: the embedder computes silhouette, HOG and
spectrum from exactly that crop), the square itself (L1: position and size, which
the thumbnail sees), the figure's and background's colours (squared error: colour
histogram and thumbnail), plus the composited image's pixels (squared error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glimpse.streaming.errors import InputError
from glimpse.streaming.simulate import stimuli as stimulus_code

from .embedded import ARCHITECTURE, EmbeddedGenerator, ShapeDecoder, box_grid, composite, place, save_embedded

__all__ = ["EmbeddedTrainConfig", "StimulusDraws", "bounding_square", "data_fingerprint", "draw_stimuli",
           "evaluate_embedded", "train_embedded"]

logger = logging.getLogger("glimpse.models.generators.train_embedded")

PROGRESS_FILE = "progress.json"
_EVAL_SEED_OFFSET = 1_000_003  # held-out images: a seed training never uses
_CATCH_RATE = 1 / 61  # the catch image, about as often as one concept


@dataclass
class EmbeddedTrainConfig:
    """How the embedded generator is trained; stored in ``generator.json``."""

    embedder: str = "handcrafted"
    size: int = 64  # output pixels
    draw_size: int = 128  # the simulator's default image size: embeddings as the gallery's
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    pool: int = 4096  # rolling pool of drawn images
    fresh_per_step: int = 16  # new images drawn into the pool each step
    seed: int = 0
    eval_images: int = 500
    max_minutes: float | None = None  # stop early (and save) past this budget
    save_every: int = 500  # steps between snapshots in the output folder (no metrics)
    # One thread: on a 2-core machine shared with other work, two OpenMP threads spin-wait
    # (measured: 6 s a step with 2 threads, 1.5 s with 1, batch 64, load average 7).
    threads: int | None = 1
    architecture: dict[str, Any] = field(default_factory=lambda: dict(ARCHITECTURE))

    def check(self) -> EmbeddedTrainConfig:
        for name, low in (("size", 16), ("draw_size", 32), ("steps", 1), ("batch_size", 2), ("save_every", 1),
                          ("pool", 2), ("fresh_per_step", 1), ("eval_images", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} an integer >= {low}", repr(value), f"pass --{name.replace('_', '-')} {low} or more")
        if not (math.isfinite(self.lr) and 0 < self.lr < 1):
            raise InputError("lr in (0, 1)", repr(self.lr), "pass e.g. --lr 0.002")
        if self.batch_size > self.pool:
            raise InputError(f"batch_size <= pool ({self.pool})", str(self.batch_size), "raise --pool or lower --batch-size")
        return self


@dataclass
class StimulusDraws:
    """Drawn stimuli: images at ``size``, figure masks and bounding squares, colours
    (figure, background), embeddings."""

    images: np.ndarray  # uint8 (N, size, size, 3)
    masks: np.ndarray  # float32 (N, size, size) in [0, 1]
    boxes: np.ndarray  # float32 (N, 3): centre x, y, half-size (see ShapeDecoder)
    colours: np.ndarray  # float32 (N, 2, 3) in [0, 1]
    embeddings: np.ndarray  # float32 (N, dim)


def bounding_square(mask: np.ndarray) -> np.ndarray:
    """The figure's bounding square (+15 %), as the handcrafted embedder crops it, in
    normalised image coordinates: centre x, y in [-1, 1] and half-size."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0:
        return np.array([0.0, 0.0, 0.5], np.float32)
    centre = (np.array([xs.min() + xs.max(), ys.min() + ys.max()]) / 2 + 0.5) / size * 2 - 1
    half = (max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 * 1.15 + 1) / size * 2
    return np.array([centre[0], centre[1], half], np.float32)


def draw_stimuli(n: int, rng: np.random.Generator, embedder: Any, *, size: int,
                 draw_size: int = 128) -> StimulusDraws:
    """``n`` fresh stimuli of random concepts (and now and then the catch image)."""
    from PIL import Image

    pictures, images, masks, colours = [], [], [], []
    for _ in range(n):
        if rng.random() < _CATCH_RATE:
            stim = stimulus_code.catch_stimulus(0)
        else:
            family = stimulus_code.FAMILIES[rng.integers(len(stimulus_code.FAMILIES))]
            variant = stimulus_code.VARIANTS[rng.integers(len(stimulus_code.VARIANTS))]
            stim = stimulus_code.sample_stimulus(0, "train", family, variant, 1, rng)
        picture = stimulus_code.draw_stimulus(stim, draw_size)
        pictures.append(picture)
        images.append(np.asarray(picture.resize((size, size), Image.Resampling.BILINEAR)))
        masks.append(np.asarray(stimulus_code.figure_mask(stim, size).reduce(2), np.float32) / 255.0)
        colours.append(np.array([stim.fg_rgb, stim.bg_rgb], np.float32) / 255.0)
    return StimulusDraws(np.stack(images), np.stack(masks), np.stack([bounding_square(m) for m in masks]),
                         np.stack(colours), embedder.embed(pictures, batch_size=256, progress=False))


def data_fingerprint(config: EmbeddedTrainConfig, embedder: Any) -> str:
    """sha256 of what decides the training images: the stimulus code, seed, sizes, embedder."""
    digest = hashlib.sha256(Path(stimulus_code.__file__).read_bytes())
    digest.update(json.dumps({"seed": config.seed, "draw_size": config.draw_size, "size": config.size,
                              "embedder": embedder.identity}, sort_keys=True).encode())
    return digest.hexdigest()


def _loss(model: ShapeDecoder, batch: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(batch["embeddings"])
    crop = out["logits"].shape[-1]
    # The true mask seen in its own bounding square: what the decoder must draw.
    target = F.grid_sample(batch["masks"][:, None], box_grid(batch["boxes"], crop, inverse=True),
                           align_corners=False)
    shape = F.binary_cross_entropy_with_logits(out["logits"][:, :1], target)
    box = F.l1_loss(out["box"], batch["boxes"])
    colour = F.mse_loss(out["colours"][:, :2], batch["colours"])
    pixels = F.mse_loss(composite(out["colours"], *place(out, size)), batch["images"])
    total = shape + 10.0 * box + 4.0 * colour + 4.0 * pixels
    return total, {"shape": shape.item(), "box": box.item(), "colour": colour.item(), "pixels": pixels.item()}


def _tensors(draws: StimulusDraws, index: np.ndarray) -> dict[str, torch.Tensor]:
    return {"embeddings": torch.from_numpy(draws.embeddings[index]),
            "masks": torch.from_numpy(draws.masks[index]),
            "boxes": torch.from_numpy(draws.boxes[index]),
            "colours": torch.from_numpy(draws.colours[index]),
            "images": torch.from_numpy(draws.images[index]).permute(0, 3, 1, 2).float() / 255.0}


def _write_progress(out: Path, state: dict[str, Any]) -> None:
    """``progress.json`` in the output folder, replaced atomically (the viewer polls it)."""
    tmp = out / (PROGRESS_FILE + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, out / PROGRESS_FILE)


def train_embedded(config: EmbeddedTrainConfig, out: str | Path, *,
                   progress: Callable[[int, int, dict[str, float]], None] | None = None,
                   command: str | None = None) -> EmbeddedGenerator:
    """Train, evaluate on held-out drawn images, save to ``out``; return the generator."""
    from ..embedders import load_embedder

    config.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    embedder = load_embedder(config.embedder)
    rng = np.random.default_rng(config.seed)
    model = ShapeDecoder(embedder.dim, **config.architecture)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5
                                                 * (1 + math.cos(math.pi * min(i, config.steps) / config.steps)))
    started = time.monotonic()
    pool = draw_stimuli(config.pool, rng, embedder, size=config.size, draw_size=config.draw_size)
    logger.info("pool of %d drawn images in %.1f s", config.pool, time.monotonic() - started)
    step, losses, oldest = 0, {}, 0
    for step in range(1, config.steps + 1):
        fresh = draw_stimuli(config.fresh_per_step, rng, embedder, size=config.size, draw_size=config.draw_size)
        slots = (oldest + np.arange(config.fresh_per_step)) % config.pool
        oldest = int(slots[-1] + 1) % config.pool
        for name in ("images", "masks", "boxes", "colours", "embeddings"):
            getattr(pool, name)[slots] = getattr(fresh, name)
        batch = _tensors(pool, rng.choice(config.pool, config.batch_size, replace=False))
        loss, losses = _loss(model, batch, config.size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        elapsed = time.monotonic() - started
        if step % 25 == 0 or step == config.steps:
            _write_progress(out, {"state": "training", "step": step, "steps": config.steps,
                                  "elapsed_s": round(elapsed, 1), "loss": losses})
            if progress is not None:
                progress(step, config.steps, losses)
        if step % config.save_every == 0 and step < config.steps:
            save_embedded(out, model, embedder=embedder.name, dim=embedder.dim, size=config.size,
                          architecture=config.architecture, extra={"snapshot_step": step})
        if config.max_minutes is not None and elapsed > 60 * config.max_minutes:
            logger.warning("stopped at step %d of %d: past --max-minutes %g", step, config.steps, config.max_minutes)
            break
    seconds = time.monotonic() - started
    generator = EmbeddedGenerator(model.eval(), embedder=embedder.name, dim=embedder.dim, size=config.size,
                                  config={"architecture": config.architecture})
    metrics = evaluate_embedded(generator, embedder, n=config.eval_images, seed=config.seed + _EVAL_SEED_OFFSET,
                                draw_size=config.draw_size)
    extra = {"training": {**dataclasses.asdict(config), "steps_done": step, "seconds": round(seconds, 1),
                          "threads": torch.get_num_threads(), "command": command,
                          "data": "fresh draws of glimpse.streaming.simulate.stimuli, seed "
                                  f"{config.seed}; held-out evaluation seed {config.seed + _EVAL_SEED_OFFSET}"},
             "data_fingerprint": data_fingerprint(config, embedder), "mean_norm": 1.0,
             "metrics": {"held_out_true_embeddings": metrics}}
    save_embedded(out, model, embedder=embedder.name, dim=embedder.dim, size=config.size,
                  architecture=config.architecture, extra=extra)
    _write_progress(out, {"state": "done", "step": step, "steps": config.steps, "elapsed_s": round(seconds, 1),
                          "loss": losses, "metrics": metrics})
    generator.config = json.loads((out / "generator.json").read_text(encoding="utf-8"))
    return generator


def evaluate_embedded(generator: EmbeddedGenerator, embedder: Any, *, n: int, seed: int,
                      draw_size: int = 128) -> dict[str, Any]:
    """Reconstruction metrics on ``n`` held-out drawn images from their true embeddings."""
    from .metrics import reconstruction_metrics

    held_out = draw_stimuli(n, np.random.default_rng(seed), embedder, size=generator.size, draw_size=draw_size)
    generated = generator.generate(held_out.embeddings)
    metrics = reconstruction_metrics(generated, held_out.images, embedder, size=generator.size)
    logger.info("held out (%d images, true embeddings): 2-way %.3f, PixCorr %.3f, SSIM %.3f",
                n, metrics["two_way"], metrics["pixcorr"], metrics["ssim"])
    return metrics
