"""Training objectives: the CLIP loss in its two published forms, MSE, and their mix.

- :func:`clip_loss` with ``symmetric=True`` is CLIP's (Radford et al. 2021):
  both sides L2-normalised, logits scaled by a learned temperature
  (``exp(logit_scale)``, clamped at 100), cross-entropy in both directions.
- :func:`clip_loss` with ``symmetric=False`` is the brain-to-image form of
  Défossez et al. (2023) and Benchetrit et al. (2023): only the image embeddings
  are normalised, the brain embedding's norm plays the temperature, and the
  softmax runs over the images of the batch, brain -> image only.
- :func:`mse_loss`: squared error per window (summed over dimensions).
- :class:`DecodingLoss`: ``lam * clip + (1 - lam) * mse`` (Benchetrit's combined
  loss: the CLIP head gives the contrastive term, the MSE head the regression).

Batches often hold one image twice (two subjects, repeats, two windows of one
trial). ``labels`` (the image's row) make such pairs positives, never negatives:
the softmax runs over the DISTINCT images of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.streaming.errors import InputError

__all__ = ["CLIP_MAX_SCALE", "ClipLoss", "DecodingLoss", "LOSSES", "clip_loss", "mse_loss"]

#: Largest logit scale (CLIP clamps ``exp(logit_scale)`` at 100 for stability).
CLIP_MAX_SCALE = 100.0
#: Names accepted by :class:`DecodingLoss`.
LOSSES = ("clip", "clip_symmetric", "mse", "mix")


def _check_pair(brain: Tensor, image: Tensor) -> None:
    if brain.ndim != 2 or image.shape != brain.shape:
        raise InputError("brain and image embeddings of one shape (B, D)",
                         f"{tuple(brain.shape)} and {tuple(image.shape)}",
                         "pass one image embedding per brain window")


def clip_loss(brain: Tensor, image: Tensor, *, labels: Tensor | None = None,
              logit_scale: Tensor | float | None = None, symmetric: bool = True) -> Tensor:
    """Contrastive loss of ``brain (B, D)`` against ``image (B, D)`` (row i is window i's image).

    ``labels (B,)``: image identity per row; rows with equal labels share one
    column. ``logit_scale``: log of the logits' scale (``exp`` clamped at
    :data:`CLIP_MAX_SCALE`); None means scale 1 (the brain-to-image form's default).
    Random embeddings give ~log(n distinct images); perfectly aligned ones -> 0.
    """
    _check_pair(brain, image)
    if labels is None:
        labels = torch.arange(len(brain), device=brain.device)
    # Columns: the distinct images; target of row i: its image's column.
    uniq, target = torch.unique(labels, return_inverse=True)
    # Any row of an image will do: rows with one label hold one image's embedding.
    row = torch.zeros(len(uniq), dtype=torch.long, device=brain.device)
    row.scatter_(0, target, torch.arange(len(brain), device=brain.device))
    columns = F.normalize(image[row], dim=-1)
    queries = F.normalize(brain, dim=-1) if symmetric else brain
    logits = queries @ columns.T
    if logit_scale is not None:
        scale = torch.as_tensor(logit_scale, dtype=logits.dtype, device=logits.device).exp()
        logits = logits * scale.clamp(max=CLIP_MAX_SCALE)
    loss = F.cross_entropy(logits, target)
    if not symmetric:
        return loss
    # image -> brain: an image's positives are every window that showed it; their
    # probabilities add up (MIL-NCE), so a repeated image can still reach 0.
    positives = F.one_hot(target, len(uniq)).T.bool()  # (n_images, B)
    back_logits = logits.T
    back = (torch.logsumexp(back_logits, dim=-1)
            - torch.logsumexp(back_logits.masked_fill(~positives, float("-inf")), dim=-1))
    return 0.5 * (loss + back.mean())


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over windows of the squared error summed over dimensions.

    ``D`` times ``torch.nn.functional.mse_loss``: for unit-norm targets it is O(1),
    the scale of the CLIP loss, so that :class:`DecodingLoss`'s ``lam`` means what it
    says whatever the embedding's dimension.
    """
    _check_pair(pred, target)
    return (pred - target).pow(2).sum(-1).mean()


class ClipLoss(nn.Module):
    """:func:`clip_loss` with its learned temperature (symmetric form) as a parameter.

    ``logit_scale`` starts at ``log(1 / init_temperature)`` (CLIP: 0.07). The
    brain-to-image form has no temperature parameter unless ``learn_temperature``.
    """

    def __init__(self, symmetric: bool = True, *, learn_temperature: bool | None = None,
                 init_temperature: float = 0.07):
        super().__init__()
        self.symmetric = symmetric
        learn = symmetric if learn_temperature is None else learn_temperature
        self.logit_scale = (nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
                            if learn else None)

    def forward(self, brain: Tensor, image: Tensor, labels: Tensor | None = None) -> Tensor:
        return clip_loss(brain, image, labels=labels, logit_scale=self.logit_scale,
                         symmetric=self.symmetric)


class DecodingLoss(nn.Module):
    """The training objective on a batch of windows, by name (:data:`LOSSES`).

    ``forward(clip_out, mse_out, image, labels, is_stimulus)`` adds, over the
    stimulus windows (rows where ``is_stimulus``; "nothing new" windows carry no
    image and are ignored), with weights ``(clip, mse)`` = (1, 0) for ``clip`` and
    ``clip_symmetric``, (0, 1) for ``mse`` and (``lam``, ``1 - lam``) for ``mix``:
    the contrastive term on the CLIP head and the regression term on the MSE head
    (targets L2-normalised).
    """

    def __init__(self, name: str = "mix", *, lam: float = 0.75):
        super().__init__()
        if name not in LOSSES:
            raise InputError(f"a loss among {LOSSES}", repr(name), "pick one of those")
        if not 0.0 <= lam <= 1.0:
            raise InputError("mix_lambda in [0, 1]", repr(lam), "use e.g. 0.75")
        self.name = name
        self.clip = ClipLoss(symmetric=name == "clip_symmetric")
        self.w_clip, self.w_mse = {"clip": (1.0, 0.0), "clip_symmetric": (1.0, 0.0),
                                   "mse": (0.0, 1.0), "mix": (lam, 1.0 - lam)}[name]

    def forward(self, clip_out: Tensor, mse_out: Tensor, image: Tensor, labels: Tensor,
                is_stimulus: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(loss, its parts as floats)."""
        parts = {}
        total = clip_out.new_zeros(())
        stim = is_stimulus.bool()
        if self.w_clip > 0 and int(stim.sum()) >= 2:
            c = self.clip(clip_out[stim], image[stim], labels[stim])
            total = total + self.w_clip * c
            parts["clip"] = float(c.detach())
        if self.w_mse > 0 and bool(stim.any()):
            m = mse_loss(mse_out[stim], F.normalize(image[stim], dim=-1))
            total = total + self.w_mse * m
            parts["mse"] = float(m.detach())
        return total, parts
