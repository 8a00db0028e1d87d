"""The generator interface: decoded image embeddings in, images out.

Every back-end (the embedded generator for the simulator's image world, and the
diffusers pipelines for real weights) is a :class:`Generator`. A generator records
the embedder whose space it is conditioned on (``embedder``, ``dim``): a
checkpoint of another embedder is refused with both names. Decoded embeddings are
rescaled to the training targets' mean norm (the checkpoint's
``embedder.mean_norm``) before conditioning, as the decoder's outputs are not on
the targets' scale.

A generator folder holds ``generator.json`` (``{"kind", "embedder", "dim",
"size", ...}``) beside the back-end's files; :func:`load_generator` reads the kind
and hands the folder to that back-end's loader. Weights come only from local
folders: nothing is fetched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError

__all__ = ["GENERATOR_FILE", "Generator", "check_generate_options", "load_generator",
           "register_generator"]

GENERATOR_FILE = "generator.json"
STEPS_RANGE, STRENGTH_RANGE, GUIDANCE_RANGE = (1, 50), (0.0, 1.0), (0.0, 20.0)

_LOADERS: dict[str, Callable[..., Generator]] = {}


def register_generator(kind: str):
    """Class decorator: ``load_generator`` builds folders of this ``kind`` with ``cls.load``."""
    def register(cls):
        _LOADERS[kind] = cls.load
        cls.kind = kind
        return cls
    return register


def check_generate_options(steps: int, strength: float, guidance: float) -> None:
    """Refuse out-of-range options with the range and the value."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise InputError(f"steps an integer in [{STEPS_RANGE[0]}, {STEPS_RANGE[1]}]", repr(steps),
                         "use 1-4 steps live, more offline")
    for name, value, (lo, hi) in (("strength", strength, STRENGTH_RANGE),
                                  ("guidance", guidance, GUIDANCE_RANGE)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
            raise InputError(f"{name} in [{lo:g}, {hi:g}]", repr(value),
                             f"pass a {name} between {lo:g} and {hi:g}")


class Generator:
    """Images from image embeddings. Subclasses implement :meth:`_generate` and ``load``.

    Attributes: ``kind`` (the back-end), ``embedder`` and ``dim`` (the conditioning
    space), ``size`` (output pixels, square), ``device``.
    """

    kind = "base"

    def __init__(self, *, embedder: str, dim: int, size: int, device: str = "cpu"):
        self.embedder, self.dim, self.size, self.device = str(embedder), int(dim), int(size), device

    @classmethod
    def load(cls, folder: Path, *, device: str = "cpu", config: dict[str, Any]) -> Generator:
        raise NotImplementedError

    def check_embedder(self, name: str, dim: int) -> None:
        """Refuse a checkpoint whose embedder is not the one this generator is conditioned on."""
        if (str(name), int(dim)) != (self.embedder, self.dim):
            raise InputError(f"a checkpoint of the generator's embedder ({self.embedder}, {self.dim} dims)",
                             f"a checkpoint of {name} ({dim} dims)",
                             "pick a generator trained for that embedder, or a checkpoint of this one")

    @staticmethod
    def rescale(embeddings: np.ndarray, mean_norm: float | None) -> np.ndarray:
        """Each embedding scaled to ``mean_norm`` (the training targets' mean norm); as is when None."""
        x = np.asarray(embeddings, np.float32)
        if mean_norm is None:
            return x
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x * (float(mean_norm) / np.maximum(norms, 1e-12))

    def generate(self, embeddings: np.ndarray, *, init_images: Sequence[np.ndarray] | None = None,
                 steps: int = 1, strength: float = 0.6, guidance: float = 0.0,
                 seed: int | None = None) -> np.ndarray:
        """uint8 images ``(N, size, size, 3)`` from embeddings ``(N, dim)``.

        ``init_images`` (uint8 HxWx3, one per embedding): image-to-image from them
        (the structure, e.g. the retrieved top-1), ``strength`` of change (0 keeps
        them, 1 ignores them). ``steps``: denoising steps. ``guidance``: classifier-
        free guidance scale where the back-end has one (0: none). ``seed``: the
        same seed and inputs give the same images.
        """
        check_generate_options(steps, strength, guidance)
        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"embeddings of shape (N, {self.dim}) ({self.embedder})",
                             f"shape {tuple(x.shape)}", "decode with a checkpoint of this embedder")
        if init_images is not None and len(init_images) != len(x):
            raise InputError("one init image per embedding", f"{len(init_images)} for {len(x)}",
                             "pass as many init images as embeddings, or none")
        if len(x) == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return self._generate(x, init_images=init_images, steps=steps, strength=strength,
                              guidance=guidance, seed=seed)

    def _generate(self, embeddings: np.ndarray, *, init_images, steps: int, strength: float,
                  guidance: float, seed: int | None) -> np.ndarray:
        raise NotImplementedError

    # Refinement (:mod:`.refine`): a back-end that exposes its latent and a differentiable
    # way from latent to pixels can have its images nudged towards a target embedding.
    def latents(self, embeddings: np.ndarray, *, steps: int = 1, seed: int | None = None):
        """The latent ``torch.Tensor`` ``(N, ...)`` of the images :meth:`generate` draws."""
        raise InputError("a generator whose latent can be refined (embedded, or a diffusers pipeline)",
                         f"a {self.kind} generator", "generate without refinement")

    def render(self, latents):
        """Images ``(N, 3, size, size)`` in [0, 1] from :meth:`latents`, differentiably."""
        raise NotImplementedError

    def warmup(self, steps: int = 1) -> Generator:
        """One generation, so the first live one pays for no lazy initialisation."""
        self.generate(np.zeros((1, self.dim), np.float32) + 1e-3, steps=steps, seed=0)
        return self


def load_generator(path: str | Path, *, device: str = "cpu") -> Generator:
    """The generator in folder ``path`` (``generator.json`` says which back-end)."""
    folder = Path(path).expanduser()
    config_file = folder / GENERATOR_FILE
    if not config_file.is_file():
        what = "does not exist" if not folder.exists() else f"has no {GENERATOR_FILE}"
        raise InputError(f"a generator folder with {GENERATOR_FILE}", f"{folder}, which {what}",
                         "pass the --out folder of `glimpse generator train`, or a folder "
                         "prepared as the documentation's generation page says")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        kind = config["kind"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f'{GENERATOR_FILE} with a "kind"', f"{config_file}: {err}",
                         "write it again with the tool that made the folder") from None
    _import_backends()
    if kind not in _LOADERS:
        raise InputError(f"a generator kind among {sorted(_LOADERS)}", repr(kind),
                         f"fix \"kind\" in {config_file}")
    return _LOADERS[kind](folder, device=device, config=config)


def _import_backends() -> None:
    """Import the back-end modules (each registers its kinds) when first needed."""
    from . import embedded, pipelines

    del embedded, pipelines  # imported for their registrations
