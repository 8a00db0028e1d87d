"""The OpenCLIP embedder: an image tower from local weights; never downloads anything."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from glimpse.streaming.errors import InputError

from ..device import torch_device
from .base import ImageEmbedder

logger = logging.getLogger("glimpse.models.embedders")

__all__ = ["OPEN_CLIP_WEIGHT_NAMES", "OpenClipEmbedder"]

#: Weights files looked for, in this order, when the spec names a folder (the names
#: OpenCLIP and Hugging Face use for OpenCLIP checkpoints).
OPEN_CLIP_WEIGHT_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
    "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth", "model.pt",
)
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid Hugging Face Hub downloads for the duration (environment + live constant).

    huggingface_hub reads HF_HUB_OFFLINE once, at import, so the module constant is
    patched too. Process-global state: call from one thread, at model-load time.
    """
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    hub_constants = sys.modules.get("huggingface_hub.constants")
    saved_constant = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_constant


def _resolve_weights(arch: str, location: str) -> Path:
    path = Path(location).expanduser()
    if not path.exists():
        raise InputError(f"OpenCLIP weights for {arch} (a local file or folder)",
                         f"{path}, which does not exist",
                         "download the weights yourself and pass their path: open_clip:ARCH:PATH")
    if path.is_dir():
        for name in OPEN_CLIP_WEIGHT_NAMES:
            if (path / name).is_file():
                return (path / name).resolve()
        candidates = sorted(p for p in path.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES)
        if len(candidates) == 1:
            return candidates[0].resolve()
        raise InputError(f"one OpenCLIP weights file in {path} (looked for {', '.join(OPEN_CLIP_WEIGHT_NAMES)}, "
                         f"else a single *{'/*'.join(_CHECKPOINT_SUFFIXES)})",
                         f"{[p.name for p in candidates] or 'no checkpoint file'}",
                         "pass the weights file itself: open_clip:ARCH:/path/to/file")
    return path.resolve()


def _check_checkpoint(path: Path) -> None:
    """Fail on a damaged or foreign file before OpenCLIP does, with the file's name.

    safetensors: the header must parse and its offsets must fit the file. Anything else
    goes to ``torch.load(weights_only=True)`` inside OpenCLIP, which never runs pickled
    code; its errors are translated by the caller.
    """
    if path.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - every failure here means "not a checkpoint"
        raise InputError("a valid safetensors checkpoint", f"{path}, which cannot be read ({exc})",
                         "download the weights again (the file may be truncated)") from None
    if not keys:
        raise InputError("a checkpoint with weights", f"{path}, which holds no tensors",
                         "download the weights again")


class OpenClipEmbedder(ImageEmbedder):
    """An OpenCLIP image tower from local weights; images only (no tokenizer, no hub).

    Embeddings are the UNNORMALISED projected image features
    (``encode_image(x, normalize=False)``): generators need their scale; retrieval
    normalises. The model stays on ``device`` in fp32.
    """

    spec_help = "open_clip:ARCH:PATH (a weights file or folder) or open_clip:ARCH:random"

    def __init__(self, arch: str, weights: str | Path | None, *, device: str = "cpu",
                 allow_random_init: bool = False):
        import open_clip

        if arch.startswith(("hf-hub:", "local-dir:")) or not arch:
            raise InputError("an OpenCLIP architecture name, e.g. open_clip:ViT-H-14:/path/weights",
                             f"open_clip:{arch}", "name the architecture and a local weights path")
        known = open_clip.list_models()
        if arch not in known:
            close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
            common = [a for a in ("ViT-H-14", "ViT-L-14", "ViT-B-32", "ViT-bigG-14") if a in known]
            hint = f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(common)}"
            raise InputError("a known OpenCLIP architecture", f"{arch!r}",
                             f"use one of open_clip.list_models() ({hint})")
        self.device = torch_device(device)
        # Random weights only when asked for by name ("random") or by allow_random_init;
        # a missing or wrong path is always an error, never a silent random model.
        if weights is None and not allow_random_init:
            raise InputError(f"weights for open_clip:{arch}", "no weights path",
                             f"pass open_clip:{arch}:/path/to/weights (or open_clip:{arch}:random for a "
                             "meaningless random model)")
        random_init = weights is None or str(weights) == "random"
        self.weights = None if random_init else _resolve_weights(arch, str(weights))
        self.arch = arch
        self.name = f"open_clip:{arch}:{'random' if self.weights is None else self.weights.as_posix()}"
        if self.weights is not None:
            _check_checkpoint(self.weights)
            stat = self.weights.stat()
            self._weights_id = f"size={stat.st_size}|mtime_ns={stat.st_mtime_ns}"
        else:
            self._weights_id = "seed=0"
        self._open_clip_version = getattr(open_clip, "__version__", "?")
        self.model, self.preprocess = self._create(open_clip)
        with torch.inference_mode():  # one dummy image gives the dim, whatever the config says
            size = self.model.visual.image_size
            size = size if isinstance(size, (tuple, list)) else (size, size)
            probe = torch.zeros(1, 3, *size, device=self.device)
            self.dim = int(self.model.encode_image(probe, normalize=False).shape[-1])
        logger.info("loaded %s (%d-d) on %s", self.name, self.dim, self.device)

    def _create(self, open_clip: Any):
        common = dict(device=self.device, precision="fp32", pretrained_image=False,
                      pretrained_text=False, load_weights=True)
        with _hub_offline():
            if self.weights is None:
                logger.warning("open_clip:%s has RANDOM weights: its embeddings are meaningless "
                               "(use it for tests only)", self.arch)
                # Seeded, so a random model is at least reproducible (and cacheable).
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        self.arch, pretrained=None, **common)
            else:
                try:
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        self.arch, pretrained=str(self.weights), **common)
                except Exception as exc:  # noqa: BLE001 - translated to one clear line below
                    raise _checkpoint_error(self.arch, self.weights, exc) from None
        model.eval()
        return model, preprocess

    @property
    def identity(self) -> str:
        return f"{self.name}|{self._weights_id}|open_clip={self._open_clip_version}"

    @classmethod
    def from_spec(cls, args: str | None, *, device: str = "cpu", allow_random_init: bool = False):
        if not args:
            raise InputError("open_clip:ARCH:PATH", "open_clip with no architecture",
                             "write e.g. open_clip:ViT-H-14:/models/vit-h-14/open_clip_pytorch_model.bin")
        if args.startswith(("hf-hub:", "local-dir:")):  # schemas that would download or bypass PATH
            raise InputError("an OpenCLIP architecture name and a local weights path (open_clip:ARCH:PATH)",
                             f"open_clip:{args}", "download the weights yourself, then pass "
                             "open_clip:ARCH:/path/to/open_clip_pytorch_model.bin")
        arch, _, weights = args.partition(":")  # the path may itself contain ':'
        return cls(arch, weights or None, device=device, allow_random_init=allow_random_init)

    def embed_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable embeddings of images ``(N, 3, H, W)`` in [0, 1] (latent refinement).

        Resized (bicubic, antialiased) straight to the tower's input size and normalised
        with its mean and std: close to, not identical with, :meth:`embed`'s PIL
        resize and centre crop, which a gradient cannot pass through.
        """
        size = self.model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = self.model.visual.preprocess_cfg
        mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(images.to(self.device, torch.float32), size=size,
                                            mode="bicubic", align_corners=False, antialias=True)
        return self.model.encode_image((x - mean) / std, normalize=False)

    def _embed_pil(self, images: list[Image.Image]) -> np.ndarray:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.inference_mode():
            z = self.model.encode_image(x, normalize=False)
        return z.float().cpu().numpy()


def _checkpoint_error(arch: str, path: Path, exc: Exception) -> InputError:
    message = " ".join(str(exc).split())[:300]
    if "state_dict" in message or "size mismatch" in message or "Missing key" in message:
        return InputError(f"weights trained for the OpenCLIP architecture {arch}",
                          f"{path}, whose tensors do not fit it ({message})",
                          "pass the architecture those weights were trained for (open_clip:ARCH:PATH)")
    return InputError("a valid OpenCLIP checkpoint (.safetensors, or a torch .bin/.pt of tensors)",
                      f"{path}, which cannot be loaded ({type(exc).__name__}: {message})",
                      "download the weights again (the file may be truncated or not a checkpoint)")
