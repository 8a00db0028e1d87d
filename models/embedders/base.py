"""The embedder interface: images in (paths, arrays, PIL), float32 vectors out, cached by content.

Subclasses implement ``_embed_pil`` on RGB PIL images; :class:`ImageEmbedder` decodes
and checks every accepted input, batches, and (``embed_files``) reuses embeddings of
files seen before through :class:`~glimpse.models.embedders.cache.EmbeddingCache`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from glimpse.streaming.errors import InputError

from .cache import EmbeddingCache

logger = logging.getLogger("glimpse.models.embedders")

__all__ = ["IMAGE_SUFFIXES", "ImageEmbedder", "ImageInput", "file_sha256"]

ImageInput = str | Path | np.ndarray | Image.Image

#: File endings of images that galleries and ``embed_files`` accept.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_CACHE_SHARD = 1024  # embeddings per cache shard: an interrupted long run keeps its progress


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (streamed by ``hashlib.file_digest``)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise InputError("an existing image file", f"{path}, which does not exist",
                         "check the path (and the images folder it came from)") from None
    except IsADirectoryError:
        raise InputError("an image file", f"{path}, which is a folder",
                         "pass the image files, or the folder to build_gallery") from None


def _open_image(source: str | Path, label: str) -> Image.Image:
    """Decode fully (``load()``), so a truncated file fails here with its name."""
    try:
        with Image.open(source) as opened:  # closes the file handle: 22k files stay within ulimit
            opened.load()
            image = opened.copy()
    except FileNotFoundError:
        raise InputError("an existing image file", f"{label}, which does not exist",
                         "check the path") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"an image file ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})",
                         f"{label}, which cannot be decoded ({first})",
                         "remove the file or replace it with a valid image") from None
    return image


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, alpha dropped (as OpenCLIP does). Palette images go through RGBA: PIL warns
    when a palette with transparency is converted to RGB directly."""
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def _as_pil(image: ImageInput, index: int) -> Image.Image:
    """Any accepted input -> an RGB PIL image."""
    if isinstance(image, Image.Image):
        return _rgb(image)
    if isinstance(image, (str, Path)):
        return _rgb(_open_image(Path(image), str(image)))
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or min(a.shape[:2]) < 1:
            raise InputError("an image array (H, W), (H, W, 3) or (H, W, 4)",
                             f"shape {a.shape} at index {index}", "pass HxW or HxWxC pixels")
        if a.dtype == np.uint8:
            pass
        elif np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise InputError("float pixels in [0, 1]",
                                 f"values in [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}] at index {index}",
                                 "scale to [0, 1] or pass uint8 pixels")
            a = np.round(a * 255).astype(np.uint8)
        else:
            raise InputError("uint8 or float pixels", f"dtype {a.dtype} at index {index}",
                             "convert with .astype(np.uint8) (0-255) or to float in [0, 1]")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        return _rgb(Image.fromarray(np.ascontiguousarray(a)))
    raise InputError("an image path, a numpy array or a PIL image",
                     f"{type(image).__name__} at index {index}", "pass one of those")


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False)


class ImageEmbedder:
    """Base class: subclasses set ``name`` and ``dim`` and implement ``_embed_pil``.

    ``name`` is the canonical spec string (what :func:`load_embedder` accepts);
    ``identity`` adds what the name does not pin down (feature version, the weights
    file's size and mtime) and keys the embedding cache.
    """

    name: str
    dim: int
    spec_help: ClassVar[str] = ""

    @property
    def identity(self) -> str:
        return self.name

    @classmethod
    def from_spec(cls, args: str | None, *, device: str, allow_random_init: bool) -> "ImageEmbedder":
        raise NotImplementedError

    def _embed_pil(self, images: list[Image.Image]) -> np.ndarray:
        """A batch of RGB PIL images -> float32 ``(len(images), dim)``."""
        raise NotImplementedError

    def embed(self, images: Sequence[ImageInput], *, batch_size: int = 32,
              progress: bool = True) -> np.ndarray:
        """Embed paths, arrays or PIL images; float32 ``(N, dim)``."""
        if isinstance(images, (str, Path, np.ndarray, Image.Image)):
            images = [images]  # one image, not a sequence of rows or characters
        if batch_size < 1:
            raise InputError("batch_size >= 1", f"batch_size={batch_size}", "pass a positive batch size")
        out = np.empty((len(images), self.dim), np.float32)
        with _progress(len(images), progress, self.name) as bar:
            for start in range(0, len(images), batch_size):
                batch = [_as_pil(im, start + i) for i, im in enumerate(images[start:start + batch_size])]
                out[start:start + len(batch)] = self._embed_pil(batch)
                bar.update(len(batch))
        return out

    def embed_files(self, paths: Sequence[str | Path], *, cache_dir: Path | None = None,
                    progress: bool = True, batch_size: int = 32) -> np.ndarray:
        """Embed image files; with ``cache_dir``, reuse embeddings of files seen before."""
        return self.embed_files_and_hashes(paths, cache_dir=cache_dir, progress=progress,
                                           batch_size=batch_size)[0]

    def embed_files_and_hashes(self, paths: Sequence[str | Path], *, cache_dir: Path | None = None,
                               progress: bool = True, batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
        """Like :meth:`embed_files`, also returning each file's sha256 (galleries store them)."""
        paths = [Path(p) for p in paths]
        # Hash first (streamed), decode only the misses: holding the bytes of a whole
        # dataset (THINGS: 22k images) in memory to read each file once would cost GBs.
        hashes = [file_sha256(p) for p in paths]
        cache = EmbeddingCache(Path(cache_dir), self) if cache_dir is not None else None
        found = cache.get(set(hashes)) if cache is not None else {}
        out = np.empty((len(paths), self.dim), np.float32)
        todo, queued = [], set()
        for i, h in enumerate(hashes):
            if h in found:
                out[i] = found[h]
            elif h not in queued:  # duplicate content is embedded once, copied below
                todo.append(i)
                queued.add(h)
        if cache is not None:
            logger.info("embedding cache %s: %d of %d files hit", cache.folder, len(paths) - len(todo), len(paths))
        with _progress(len(todo), progress, self.name) as bar:
            for s in range(0, len(todo), _CACHE_SHARD):
                part = todo[s:s + _CACHE_SHARD]
                new: dict[str, np.ndarray] = {}
                for b in range(0, len(part), batch_size):
                    idx = part[b:b + batch_size]
                    pils = [_rgb(_open_image(paths[i], str(paths[i]))) for i in idx]
                    vecs = self._embed_pil(pils)
                    for i, v in zip(idx, vecs):
                        out[i] = v
                        new[hashes[i]] = v
                    bar.update(len(idx))
                if cache is not None:
                    cache.put(new)
        first = {}
        for i, h in enumerate(hashes):  # fill duplicates of content embedded in this call
            first.setdefault(h, i)
            if first[h] != i:
                out[i] = out[first[h]]
        return out, hashes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
