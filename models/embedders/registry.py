"""Embedder specs: ``KIND[:ARGS]`` strings to embedders, and which embeddings are comparable."""

from __future__ import annotations

import re
from pathlib import Path

from glimpse.streaming.errors import InputError

from .base import ImageEmbedder
from .handcrafted import HandcraftedEmbedder
from .openclip import OpenClipEmbedder

__all__ = ["DEFAULT_EMBEDDER", "EMBEDDERS", "embedding_space", "load_embedder"]

#: Embedder kinds: the spec's first field -> class. A test checks every subclass is here.
EMBEDDERS: dict[str, type[ImageEmbedder]] = {
    "handcrafted": HandcraftedEmbedder,
    "open_clip": OpenClipEmbedder,
}

#: The embedded default: needs no weights and no download.
DEFAULT_EMBEDDER = "handcrafted"


def load_embedder(spec: str, *, device: str = "cpu", allow_random_init: bool = False) -> ImageEmbedder:
    """``handcrafted``, ``handcrafted:dim=N``, ``open_clip:ARCH:PATH`` or ``open_clip:ARCH:random``."""
    kind, _, args = str(spec).strip().partition(":")
    if kind not in EMBEDDERS:
        forms = ", ".join(cls.spec_help for cls in EMBEDDERS.values())
        raise InputError(f"an image embedder ({forms})", repr(spec),
                         f"pass one of those, e.g. --embedder {DEFAULT_EMBEDDER} or "
                         "--embedder open_clip:ViT-H-14:/path/to/open_clip_pytorch_model.bin")
    return EMBEDDERS[kind].from_spec(args or None, device=device, allow_random_init=allow_random_init)


def embedding_space(name: str) -> str:
    """What must agree for two embedders' vectors to be comparable.

    The kind, the architecture, the dimension and the weights file's NAME; not its folder,
    which differs between the machine that trained a brain encoder and the one serving it.
    """
    kind, _, args = name.partition(":")
    if kind == "handcrafted":
        match = re.fullmatch(r"dim=(\d+)", args)
        dim = int(match.group(1)) if match else HandcraftedEmbedder.DEFAULT_DIM
        return f"handcrafted:dim={dim}"
    if kind == "open_clip":
        arch, _, weights = args.partition(":")
        return f"open_clip:{arch}:{Path(weights).name if weights else 'random'}"
    return name
