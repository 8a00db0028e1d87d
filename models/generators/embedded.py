"""The embedded generator: images of the simulator's world from handcrafted embeddings.

The simulator draws a figure (a mask) in one colour, optionally textured with a
shade of it, on a plain background. The generator mirrors that: a conditioning
projection (an MLP, the part ``glimpse generator finetune`` tunes) maps the embedding
to the figure's colours, its bounding square and a small latent grid; a diffusers
VAE ``Decoder`` (its up-blocks, mid-block attention and group norms) turns the grid
into the figure's mask logits and a texture weight in the square's frame (shape free
of position and size, as the embedder's shape blocks see it); the mask is placed in
the square by a sampling grid and the image composited at any size. This is MindDiffuser's first stage (structure) in miniature, and it
trains in minutes on a CPU: the mask carries exactly what the handcrafted
embedder weighs most (the figure's silhouette, HOG and spectrum), the colours what
its colour histogram and thumbnail measure.

A folder holds ``generator.json`` (kind "embedded", embedder, dim, size, the
architecture, and how it was trained) and ``model.safetensors``. The package ships
one for the default embedder (:func:`default_folder`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glimpse.streaming.errors import InputError

from .base import GENERATOR_FILE, Generator, register_generator

__all__ = ["ARCHITECTURE", "WEIGHTS_FILE", "EmbeddedGenerator", "ShapeDecoder", "box_grid", "composite",
           "default_folder", "figure_mask_of", "place", "save_embedded"]

logger = logging.getLogger("glimpse.models.generators.embedded")

WEIGHTS_FILE = "model.safetensors"
#: The default architecture: 0.83 M parameters (3.3 MB in float32), 32 px mask logits.
ARCHITECTURE: dict[str, Any] = {"hidden": 256, "latent_channels": 16, "latent_size": 8,
                                "block_out_channels": [16, 32, 64], "layers_per_block": 1,
                                "norm_num_groups": 8}
_WEIGHTS_DIR = Path(__file__).with_name("weights")


def default_folder(embedder: str) -> Path | None:
    """The shipped generator folder for ``embedder``, or None when the package has none."""
    folder = _WEIGHTS_DIR / embedder.replace(":", "-").replace("=", "")
    return folder if (folder / GENERATOR_FILE).is_file() else None


class ShapeDecoder(nn.Module):
    """Embedding ``(N, dim)`` -> what the figure is, where, and in which colours.

    ``forward`` returns a dict: ``colours`` ``(N, 3, 3)`` in [0, 1] (figure, background,
    texture shade); ``box`` ``(N, 3)`` (centre x, y in [-1, 1] and half-size as a
    fraction of the half-width: the figure's bounding square, as the handcrafted
    embedder crops it); ``logits`` ``(N, 2, s, s)`` (mask, texture weight) in that
    square's frame, at ``latent_size * 2**(blocks - 1)`` pixels. Shape is decoded
    free of position and size, as the embedder's shape blocks measure it.
    """

    def __init__(self, dim: int, *, hidden: int, latent_channels: int, latent_size: int,
                 block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int):
        from diffusers.models.autoencoders.vae import Decoder

        super().__init__()
        self.latent_shape = (int(latent_channels), int(latent_size), int(latent_size))
        # The conditioning projection: what maps the embedder's space into the generator's.
        self.condition = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.to_latent = nn.Linear(hidden, latent_channels * latent_size * latent_size)
        self.to_colours = nn.Linear(hidden, 9)
        self.to_box = nn.Linear(hidden, 3)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=2,
                               up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
                               block_out_channels=tuple(block_out_channels),
                               layers_per_block=layers_per_block, norm_num_groups=norm_num_groups)

    def forward(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.condition(embeddings))

    def heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The figure from the conditioning code ``h`` ``(N, hidden)``: the generator's latent."""
        raw = self.to_box(h)
        box = torch.cat([torch.tanh(raw[:, :2]), torch.sigmoid(raw[:, 2:]) * 1.2 + 0.02], dim=1)
        return {"colours": torch.sigmoid(self.to_colours(h)).view(-1, 3, 3), "box": box,
                "logits": self.decoder(self.to_latent(h).view(-1, *self.latent_shape))}


def box_grid(box: torch.Tensor, size: int, *, inverse: bool = False) -> torch.Tensor:
    """Sampling grid ``(N, size, size, 2)``: image pixels -> the box's frame (``inverse``:
    the box's pixels -> image coordinates), for ``grid_sample`` with ``align_corners=False``."""
    axis = (torch.arange(size, dtype=box.dtype, device=box.device) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    centre_x, centre_y, half = (box[:, i, None, None] for i in range(3))
    if inverse:
        return torch.stack([centre_x + half * x, centre_y + half * y], dim=-1)
    return torch.stack([(x - centre_x) / half, (y - centre_y) / half], dim=-1)


_OUTSIDE = 30.0  # mask logit outside the box: grid_sample pads with 0, so shift by this


def place(out: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The figure's mask and texture weight ``(N, 1, size, size)`` in image coordinates.

    The logits are sampled (bilinear, before the sigmoid) so edges stay sharp at any size.
    """
    grid = box_grid(out["box"], size)
    logits = out["logits"]
    mask = F.grid_sample(logits[:, :1] + _OUTSIDE, grid, align_corners=False) - _OUTSIDE
    texture = F.grid_sample(logits[:, 1:2], grid, align_corners=False, padding_mode="border")
    return torch.sigmoid(mask), torch.sigmoid(texture)


def composite(colours: torch.Tensor, mask: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1]: background + mask * (figure, textured by its shade)."""
    figure, background, shade = (colours[:, i, :, None, None] for i in range(3))
    fill = figure + texture * (shade - figure)
    return background + mask * (fill - background)


def figure_mask_of(images: np.ndarray) -> np.ndarray:
    """Soft figure masks ``(N, H, W)`` of uint8 images: distance from the border's median colour.

    The same idea as the handcrafted embedder's mask (the border stands for the
    background), kept soft so that blending it stays smooth.
    """
    rgb = np.asarray(images, np.float32) / 255.0
    border = np.concatenate([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], axis=1)
    distance = np.linalg.norm(rgb - np.median(border, axis=1)[:, None, None], axis=-1)
    peak = distance.reshape(len(rgb), -1).max(axis=1)[:, None, None]
    return np.clip(distance / np.maximum(peak, 1e-6) * 2.0, 0.0, 1.0)


@register_generator("embedded")
class EmbeddedGenerator(Generator):
    """A :class:`ShapeDecoder` behind the generator interface.

    One pass per image (``steps`` is accepted and does not change the result: the
    decoder is not iterative); deterministic (``seed`` changes nothing either).
    ``init_images`` give the structure: their figure masks, blended with the
    decoded ones by ``strength``; colours always come from the embedding.
    """

    def __init__(self, model: ShapeDecoder, *, embedder: str, dim: int, size: int,
                 device: str = "cpu", config: dict[str, Any] | None = None):
        super().__init__(embedder=embedder, dim=dim, size=size, device=device)
        self.model = model.to(device).eval()
        self.config = dict(config or {})

    @classmethod
    def load(cls, folder: Path, *, device: str = "cpu", config: dict[str, Any]) -> EmbeddedGenerator:
        from ..checkpoint import read_safetensors

        folder = Path(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise InputError(f"an embedded generator folder with {WEIGHTS_FILE}",
                             f"{folder} without {WEIGHTS_FILE} (the missing component: its weights)",
                             "train it again with `glimpse generator train --out FOLDER`")
        try:
            embedder, dim, size = str(config["embedder"]), int(config["dim"]), int(config["size"])
            model = ShapeDecoder(dim, **config.get("architecture", ARCHITECTURE))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f'{GENERATOR_FILE} with "embedder", "dim", "size" and "architecture"',
                             f"{folder / GENERATOR_FILE}: {err!r}",
                             "write it again with `glimpse generator train`") from None
        tensors = read_safetensors(weights)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape)
        if missing or wrong:
            raise InputError(f"{WEIGHTS_FILE} matching the architecture in {GENERATOR_FILE}",
                             f"missing {missing[:5]}, wrong shapes {wrong[:5]}",
                             "the folder mixes two trainings: train it again") from None
        model.load_state_dict({k: tensors[k].float() for k in expected})
        return cls(model, embedder=embedder, dim=dim, size=size, device=device, config=config)

    @torch.inference_mode()
    def _generate(self, embeddings: np.ndarray, *, init_images, steps: int, strength: float,
                  guidance: float, seed: int | None) -> np.ndarray:
        out = self.model(torch.from_numpy(embeddings).to(self.device))
        mask, texture = place(out, self.size)
        if init_images is not None:
            given = np.stack([_resized(im, self.size) for im in init_images])
            init = torch.from_numpy(figure_mask_of(given))[:, None].to(self.device)
            mask = (1.0 - strength) * init + strength * mask
        images = composite(out["colours"], mask, texture)
        return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


    @torch.inference_mode()
    def latents(self, embeddings: np.ndarray, *, steps: int = 1, seed: int | None = None) -> torch.Tensor:
        """The conditioning code ``h``: everything the image is drawn from (256 numbers by default)."""
        return self.model.condition(torch.from_numpy(np.asarray(embeddings, np.float32)).to(self.device)).clone()

    def render(self, latents: torch.Tensor) -> torch.Tensor:
        out = self.model.heads(latents)
        return composite(out["colours"], *place(out, self.size)).clamp(0, 1)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError("init images as uint8 arrays (H, W, 3)",
                         f"{image.dtype} of shape {image.shape}", "pass RGB uint8 images")
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def save_embedded(folder: str | Path, model: ShapeDecoder, *, embedder: str, dim: int, size: int,
                  architecture: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write ``generator.json`` and ``model.safetensors`` into ``folder``; return it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    config = {"kind": "embedded", "embedder": embedder, "dim": int(dim), "size": int(size),
              "architecture": architecture, **(extra or {})}
    (folder / GENERATOR_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("embedded generator written to %s", folder)
    return folder
