"""Latent refinement: gradient steps on a generated image's latent, so that the image's
embedding approaches the decoded one (the offline step of ``glimpse reconstruct``).

The objective is the cosine between the configured embedder's embedding of the
rendered image and the target (the decoded embedding). The generator gives the
latent of each image it draws and a differentiable way back to pixels
(:meth:`Generator.latents`, :meth:`Generator.render`). The gradient of the
objective with respect to the latent is:

- exact, by autograd, when the embedder is differentiable (OpenCLIP's
  ``embed_tensor``);
- estimated by simultaneous perturbation (SPSA: the objective at ``z + c d`` and
  ``z - c d`` for random sign vectors ``d``, averaged over a few directions) when it
  is not: the handcrafted embedder's histograms, Otsu threshold and crop have no
  gradient, but its embedding of a 64 px image costs about 1 ms.

Either way Adam takes the steps, and each image keeps the latent of its best
objective seen (the starting one included), so a refined image never scores worse
on the objective than the one it started from. Whether that brings it closer to
the *true* image is what the report measures: the objective pulls towards the
decoded embedding, noise included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glimpse.streaming.errors import InputError

from .base import Generator

__all__ = ["RefineResult", "refine"]

logger = logging.getLogger("glimpse.models.generators.refine")


@dataclass
class RefineResult:
    """Refined images (uint8 ``(N, size, size, 3)``) and the objective before and after."""

    images: np.ndarray
    cosine_before: np.ndarray
    cosine_after: np.ndarray
    gradient: str  # "autograd" or "spsa"

    def summary(self) -> dict[str, Any]:
        return {"gradient": self.gradient, "cosine_before": float(self.cosine_before.mean()),
                "cosine_after": float(self.cosine_after.mean()),
                "improved": float(np.mean(self.cosine_after > self.cosine_before + 1e-6))}


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class _Objective:
    """Cosine of ``embedder(render(z))`` with the targets, per image (higher is better)."""

    def __init__(self, generator: Generator, embedder: Any, targets: np.ndarray):
        self.generator, self.embedder = generator, embedder
        self.differentiable = callable(getattr(embedder, "embed_tensor", None))
        self.targets = _unit(torch.from_numpy(np.asarray(targets, np.float32)))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        images = self.generator.render(z)
        if self.differentiable:
            embedded = self.embedder.embed_tensor(images).float().cpu()
        else:
            embedded = torch.from_numpy(self.embedder.embed(list(_to_uint8(images)), progress=False))
        targets = self.targets.repeat(len(z) // len(self.targets), 1)
        return (_unit(embedded) * targets).sum(dim=1)


def _spsa_gradient(objective: _Objective, z: torch.Tensor, scale: torch.Tensor, directions: int,
                   rng: torch.Generator) -> torch.Tensor:
    """Estimated gradient of the objective: antithetic sign perturbations, batched in one call."""
    signs = torch.randint(0, 2, (directions, *z.shape), generator=rng).to(z.dtype) * 2 - 1
    step = signs * scale
    probes = torch.cat([(z + step).reshape(-1, *z.shape[1:]), (z - step).reshape(-1, *z.shape[1:])])
    with torch.no_grad():
        values = objective(probes).view(2, directions, len(z))
    slope = (values[0] - values[1]) / 2  # (directions, N): change along each sign vector, per scale
    shape = (directions, len(z)) + (1,) * (z.dim() - 1)
    return (slope.view(shape) * signs / scale).mean(dim=0)


def refine(generator: Generator, embedder: Any, targets: np.ndarray, *, steps: int = 20,
           lr: float = 0.05, directions: int = 4, perturbation: float = 0.05,
           batch_size: int = 64, seed: int = 0) -> RefineResult:
    """Refine ``generator``'s images of ``targets`` towards them in ``embedder``'s space.

    ``lr`` and ``perturbation`` are relative to each latent's spread (its standard
    deviation over the latent's elements), so they mean the same for any back-end.
    ``directions``: sign vectors per SPSA step (ignored with autograd).
    """
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 2 or targets.shape[1] != getattr(embedder, "dim", targets.shape[1]):
        raise InputError(f"targets of shape (N, {getattr(embedder, 'dim', '?')}) in {embedder.name}'s space",
                         f"shape {targets.shape}", "refine with the embedder the targets were decoded for")
    if steps < 0 or directions < 1:
        raise InputError("steps >= 0 and directions >= 1", f"steps={steps}, directions={directions}",
                         "pass --refine-steps 0 to skip refinement")
    parts = [_refine_batch(generator, embedder, targets[i:i + batch_size], steps=steps, lr=lr,
                           directions=directions, perturbation=perturbation, seed=seed + i)
             for i in range(0, len(targets), batch_size)]
    gradient = "autograd" if callable(getattr(embedder, "embed_tensor", None)) else "spsa"
    if not parts:
        empty = np.zeros(0, np.float32)
        return RefineResult(np.zeros((0, generator.size, generator.size, 3), np.uint8), empty, empty, gradient)
    images, before, after = (np.concatenate(x) for x in zip(*parts))
    result = RefineResult(images, before, after, gradient)
    logger.info("refined %d images (%s, %d steps): cosine to the target %.3f -> %.3f",
                len(images), gradient, steps, result.cosine_before.mean(), result.cosine_after.mean())
    return result


def _refine_batch(generator: Generator, embedder: Any, targets: np.ndarray, *, steps: int, lr: float,
                  directions: int, perturbation: float, seed: int) -> tuple[np.ndarray, ...]:
    objective = _Objective(generator, embedder, targets)
    z0 = generator.latents(targets, seed=seed).float()
    spread = z0.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, *(1,) * (z0.dim() - 1))
    # Adam on the latent in units of its spread: one lr for every back-end and element.
    u = torch.zeros_like(z0, requires_grad=True)
    optimiser = torch.optim.Adam([u], lr=lr)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        best_value = objective(z0)
    before, best_u = best_value.clone(), u.detach().clone()
    for step in range(steps):
        optimiser.zero_grad()
        if objective.differentiable:
            value = objective(z0 + u * spread)
            (-value.sum()).backward()
        else:
            with torch.no_grad():
                value = objective(z0 + u * spread)
            u.grad = -_spsa_gradient(objective, (z0 + u * spread).detach(), perturbation * spread,
                                     directions, rng) * spread
        with torch.no_grad():  # the value is of the latent before this step's update
            better = value.detach() > best_value
            best_value = torch.where(better, value.detach(), best_value)
            best_u[better] = u.detach()[better]
        optimiser.step()
    with torch.no_grad():
        final = objective(z0 + u * spread)
        better = final > best_value
        best_value = torch.where(better, final, best_value)
        best_u[better] = u.detach()[better]
        images = _to_uint8(generator.render(z0 + best_u * spread))
    return images, before.numpy(), best_value.numpy()
