"""Conditioning fine-tuned on brain embeddings (the MinD-Vis / DreamDiffusion step).

The embedded generator was trained on clean image embeddings; a brain encoder's
decoded embeddings are noisier and biased towards the mean. Fine-tuning teaches
the generator's conditioning projection (``ShapeDecoder.condition``; the decoder
and its output heads stay frozen) what decoded embeddings look like: for each
training trial, the decoded embedding must produce what the frozen generator
makes of the trial image's clean embedding (its mask logits, box and colours), and a
composited image close to the true one. Only training trials are used; the test
trials stay for :mod:`.reconstruct`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glimpse.streaming.errors import InputError

from .base import Generator, load_generator
from .embedded import EmbeddedGenerator, composite, place, save_embedded

__all__ = ["DecodedTrials", "FinetuneConfig", "decoded_trials", "finetune_conditioning", "load_images"]

logger = logging.getLogger("glimpse.models.generators.finetune")



@dataclass
class DecodedTrials:
    """Decoded single-trial embeddings (rescaled to the targets' mean norm) and their images."""

    embeddings: np.ndarray  # float32 (N, D)
    image_rows: np.ndarray  # (N,) rows of ``images``
    images: tuple[Path, ...]  # the dataset's stimulus files
    subjects: np.ndarray  # (N,) data subject index
    offset_s: float


def _offset(ckpt, offset: float | None) -> float:
    """The caller's offset, else the window evaluation scores the checkpoint at."""
    from ..evaluate import headline_offset

    return float(offset) if offset is not None else headline_offset(ckpt)


def decoded_trials(checkpoint: Any, data: Any, *, split: str, offset: float | None = None,
                   head: str = "retrieval") -> DecodedTrials:
    """One decoded embedding per trial of ``split`` (the window ending ``offset`` s after onset).

    ``head``: "retrieval" (what the live worker searches and generates from), "clip" or
    "mse" (the regression head Benchetrit et al. condition their generator on).
    """
    from ..adapter import Adapter
    from ..checkpoint import Checkpoint, load_checkpoint
    from ..data import SessionData, load_session
    from ..windows import fixed_windows

    if head not in ("retrieval", "clip", "mse"):
        raise InputError('head "retrieval", "clip" or "mse"', repr(head), "pick one of those")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if not isinstance(data, SessionData):
        data = load_session(data, preprocess=dataclasses.replace(ckpt.preprocess, center=None, scale=None))
    trials = data.trials.select(split=split)
    if not len(trials):
        raise InputError(f"{split} trials with a stimulus image", f"none in {data.source}",
                         "pass the dataset the checkpoint was trained on (or one with that split)")
    adapter = Adapter(ckpt, data)
    at = _offset(ckpt, offset)
    ws = fixed_windows(data, trials, window_s=ckpt.window_s, offsets=[at])
    x, subjects = adapter.windows(ws.x), adapter.subject_map[ws.subject]
    out = np.empty((len(x), ckpt.embed_dim), np.float32)
    for s in np.unique(subjects):
        rows = np.flatnonzero(subjects == s)
        for start in range(0, len(rows), 256):
            part = rows[start:start + 256]
            clip, mse = ckpt.forward(x[part], max(int(s), 0))
            use = {"clip": clip, "mse": mse}.get(head, clip if ckpt.retrieval_head == "clip" else mse)
            out[part] = use
    mean_norm = (ckpt.config.get("embedder") or {}).get("mean_norm")
    return DecodedTrials(Generator.rescale(out, mean_norm), ws.target, data.images, ws.subject, at)


def load_images(paths: list[Path] | tuple[Path, ...], size: int) -> np.ndarray:
    """uint8 RGB images ``(N, size, size, 3)`` from files."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            out[i] = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return out


@dataclass
class FinetuneConfig:
    """How the conditioning projection is tuned; stored in the new ``generator.json``."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    seed: int = 0
    offset: float | None = None
    head: str = "retrieval"
    threads: int | None = 2


def finetune_conditioning(generator: str | Path | EmbeddedGenerator, checkpoint: Any, data: Any,
                          out: str | Path, config: FinetuneConfig | None = None,
                          *, command: str | None = None) -> EmbeddedGenerator:
    """Tune ``generator``'s conditioning on the training trials of ``data`` decoded by ``checkpoint``."""
    from ..checkpoint import Checkpoint, load_checkpoint
    from ..embedders import load_embedder

    config = config or FinetuneConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    base = generator if isinstance(generator, Generator) else load_generator(generator)
    if not isinstance(base, EmbeddedGenerator):
        raise InputError("an embedded generator (kind 'embedded')", f"kind {base.kind!r}",
                         "fine-tune the generator made by `glimpse generator train`")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    base.check_embedder(ckpt.embedder_name, ckpt.embed_dim)
    decoded = decoded_trials(ckpt, data, split="train", offset=config.offset, head=config.head)
    rows = np.unique(decoded.image_rows)
    paths = [decoded.images[r] for r in rows]
    clean = load_embedder(ckpt.embedder_name).embed(paths, progress=False)
    pixels = load_images(paths, base.size)
    position = np.full(len(decoded.images), -1, np.int64)
    position[rows] = np.arange(len(rows))
    pair = position[decoded.image_rows]
    model = copy.deepcopy(base.model).train()
    with torch.no_grad():
        teacher = base.model(torch.from_numpy(clean))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.condition.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.condition.parameters(), lr=config.lr, weight_decay=1e-4)
    generator_rng = torch.Generator().manual_seed(config.seed)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    embeddings = torch.from_numpy(decoded.embeddings)
    target = torch.from_numpy(pair)
    losses = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(embeddings), generator=generator_rng)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            image_index = target[index]
            pred = model(embeddings[index])
            loss = (F.binary_cross_entropy_with_logits(pred["logits"][:, :1],
                                                       torch.sigmoid(teacher["logits"][image_index, :1]))
                    + 10.0 * F.l1_loss(pred["box"], teacher["box"][image_index])
                    + 4.0 * F.mse_loss(pred["colours"], teacher["colours"][image_index])
                    + 4.0 * F.mse_loss(composite(pred["colours"], *place(pred, base.size)), images[image_index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(order))
        logger.info("fine-tuning epoch %d/%d: loss %.4f", epoch + 1, config.epochs, losses[-1])
    model.eval()
    extra = {key: base.config[key] for key in ("training", "data_fingerprint", "mean_norm", "metrics")
             if key in base.config}
    extra["finetune"] = {**dataclasses.asdict(config), "offset_s": decoded.offset_s,
                         "checkpoint": str(ckpt.path), "checkpoint_fingerprint": ckpt.fingerprint,
                         "n_pairs": int(len(embeddings)), "n_images": int(len(rows)),
                         "losses": [round(v, 5) for v in losses], "command": command,
                         "tuned": "the conditioning projection (condition.*); decoder frozen"}
    save_embedded(out, model, embedder=base.embedder, dim=base.dim, size=base.size,
                  architecture=base.config.get("architecture", {}), extra=extra)
    config_file = Path(out) / "generator.json"
    return EmbeddedGenerator(model, embedder=base.embedder, dim=base.dim, size=base.size,
                             config=json.loads(config_file.read_text(encoding="utf-8")))
