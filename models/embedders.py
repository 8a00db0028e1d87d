"""Image embedders: one interface, a handcrafted default and OpenCLIP from local weights.

An embedder maps images to float32 vectors ``(N, dim)``; brain encoders are trained to
predict them and galleries are searched with them. Every embedder is named by a spec
string (:func:`load_embedder`), and that canonical name travels with galleries and
checkpoints so that a mismatch is caught (:meth:`glimpse.models.gallery.Gallery.check_embedder`).

- ``handcrafted`` (``handcrafted:dim=128``): no weights, CPU, deterministic. Blocks of
  classic features, each centred, L2-normalised and weighted by a fixed constant (never by
  dataset statistics, so one image's embedding does not depend on the others), then a
  seeded orthogonal projection and L2 normalisation.
- ``open_clip:ARCH:PATH``: any OpenCLIP architecture with weights from a local file or
  folder; ``open_clip:ARCH:random`` for a randomly initialised model (tests only).

:meth:`ImageEmbedder.embed_files` caches embeddings by file content (sha256) and embedder
identity, in safetensors shards with a JSON index: a renamed or copied file hits the
cache, an edited one misses.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from glimpse.streaming.errors import InputError

logger = logging.getLogger("glimpse.models.embedders")

ImageInput = str | Path | np.ndarray | Image.Image

#: File endings of images that galleries and ``embed_files`` accept.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_HASH_CHUNK = 1 << 20
_CACHE_SHARD = 1024  # embeddings per cache shard: an interrupted long run keeps its progress


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise InputError("an existing image file", f"{path}, which does not exist",
                         "check the path (and the images folder it came from)") from None
    except IsADirectoryError:
        raise InputError("an image file", f"{path}, which is a folder",
                         "pass the image files, or the folder to build_gallery") from None
    return digest.hexdigest()


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


class EmbeddingCache:
    """Embeddings keyed by file sha256, one folder per embedder identity.

    ``index.json`` maps each sha256 to the safetensors shard that holds it (tensor name =
    the sha256). Shards are written whole and the index is replaced atomically; a damaged
    cache only costs misses, never a failed run.
    """

    def __init__(self, root: Path, embedder: ImageEmbedder):
        self.identity = embedder.identity
        self.dim = embedder.dim
        # Readable prefix (kind and architecture) + a hash of the full identity.
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(embedder.name.split(":")[:2]))[:48]
        self.folder = Path(root) / f"{slug}-{hashlib.sha256(self.identity.encode()).hexdigest()[:16]}"

    def _read_index(self) -> dict[str, str]:
        path = self.folder / "index.json"
        if not path.is_file():
            return {}
        try:
            index = json.loads(path.read_text())
            if index.get("identity") != self.identity or index.get("dim") != self.dim:
                logger.warning("embedding cache %s belongs to another embedder; ignoring it", self.folder)
                return {}
            return dict(index["entries"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("embedding cache index %s is unreadable (%s); ignoring it", path, exc)
            return {}

    def get(self, hashes: set[str]) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        entries = self._read_index()
        by_shard: dict[str, list[str]] = {}
        for h in hashes:
            if h in entries:
                by_shard.setdefault(entries[h], []).append(h)
        found = {}
        for shard, keys in by_shard.items():
            try:
                with safe_open(str(self.folder / shard), framework="numpy") as f:
                    for h in keys:
                        vec = f.get_tensor(h)
                        if vec.shape == (self.dim,):
                            found[h] = vec.astype(np.float32, copy=False)
            except Exception as exc:  # noqa: BLE001 - any damage to the cache is a miss
                logger.warning("embedding cache shard %s is unreadable (%s); recomputing", shard, exc)
        return found

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        shard = f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
        tmp = self.folder / (shard + ".tmp")
        save_file({h: np.ascontiguousarray(v, np.float32) for h, v in vectors.items()}, str(tmp))
        os.replace(tmp, self.folder / shard)
        entries = self._read_index()  # re-read just before writing: another process may have added
        entries.update({h: shard for h in vectors})
        index = {"format": "glimpse-embedding-cache", "version": 1, "identity": self.identity,
                 "dim": self.dim, "entries": entries}
        tmp = self.folder / f"index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.folder / "index.json")


# --------------------------------------------------------------------------- handcrafted

_WORK = 64  # every image is resized to 64x64 first: features do not depend on input size
_CROP = 32  # the figure is cropped and rescaled to 32x32: position- and size-free shape
_BANDS, _SECTORS = 8, 4  # spectrum: log-spaced radial bands x orientation sectors
_SEED = 20240611  # the projection's seed; changing it changes every handcrafted embedding
_FEATURES_VERSION = 1  # bump when a feature changes: it keys the embedding cache
#: Fixed block weights. Shape blocks (HOG, silhouette, spectrum of the figure crop) carry
#: shape family and variant, which drive the late brain responses; colour and the scene
#: thumbnail carry position, size, colour and contrast, which drive the early ones. At
#: half weight they stop exemplar colour from swamping concept identity (measured on the
#: simulator: nearest-neighbour concept accuracy 0.03 with all four full-image blocks at
#: weight 1, 0.5 with this mix; chance 0.04).
_WEIGHTS = {"colour": 0.5, "thumbnail": 0.5, "hog": 1.0, "silhouette": 1.0, "spectrum": 1.0}


def _band_index(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size] - size // 2
    radius = np.hypot(yy, xx)
    angle = np.mod(np.arctan2(yy, xx), np.pi)
    band = np.digitize(radius, np.geomspace(1.5, size / 2, _BANDS + 1)) - 1
    sector = np.minimum((angle / np.pi * _SECTORS).astype(int), _SECTORS - 1)
    valid = (band >= 0) & (band < _BANDS)
    return (band * _SECTORS + sector)[valid], valid


_SPECTRUM_BINS, _SPECTRUM_VALID = _band_index(_CROP)


def _log_band_power(image: np.ndarray) -> np.ndarray:
    power = np.abs(np.fft.fftshift(np.fft.fft2(image - image.mean()))) ** 2
    total = np.bincount(_SPECTRUM_BINS, power[_SPECTRUM_VALID], _BANDS * _SECTORS)
    count = np.bincount(_SPECTRUM_BINS, minlength=_BANDS * _SECTORS)
    return np.log(total / np.maximum(count, 1) + 1e-6)


def _reference_spectrum() -> np.ndarray:
    # The spectrum of a disc filling the crop, subtracted as a fixed centre: every
    # cropped figure shares its steep low-pass profile, which otherwise makes all
    # spectra ~0.96 cosine-similar (measured); what remains is the shape's own.
    yy, xx = np.mgrid[:_CROP, :_CROP] - (_CROP - 1) / 2
    return _log_band_power((np.hypot(yy, xx) < _CROP / 2 / 1.15).astype(np.float64))


_REFERENCE_SPECTRUM = _reference_spectrum()


def _figure_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels unlike the border's median colour (Otsu threshold); empty for a flat image.

    Stimuli (the simulator's, THINGS' object photos) show a figure on a background, so
    the border colour stands for the background. On a cluttered photo the mask is rough
    but still deterministic, and the full-image blocks carry the rest.
    """
    from skimage.filters import threshold_otsu

    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    distance = np.linalg.norm(rgb - np.median(border, axis=0), axis=-1)
    if distance.max() < 0.05:
        return np.zeros(distance.shape, np.float32)
    # Otsu on a 256-level histogram made with bincount: same threshold as skimage's own
    # float histogram, at a third of the cost.
    levels = np.minimum((distance * (255.0 / distance.max())).astype(np.int64), 255)
    threshold = threshold_otsu(hist=(np.bincount(levels.ravel(), minlength=256), np.arange(256)))
    return (levels > threshold).astype(np.float32)


def _figure_crop(mask: np.ndarray) -> np.ndarray:
    """The mask's bounding square (+15%), rescaled to 32x32: position and size removed."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((_CROP, _CROP), np.float32)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 * 1.15 + 1
    crop = Image.fromarray(mask, mode="F").transform(
        (_CROP, _CROP), Image.Transform.EXTENT, (cx - half, cy - half, cx + half, cy + half),
        Image.Resampling.BILINEAR)
    return np.asarray(crop, np.float32)


def _unit(block: np.ndarray) -> np.ndarray:
    """Centre and L2-normalise one block with its own numbers only (no dataset statistics)."""
    block = block.astype(np.float64) - block.mean()
    norm = np.linalg.norm(block)
    return block / norm if norm > 1e-12 else block


def handcrafted_blocks(image: Image.Image) -> dict[str, np.ndarray]:
    """The raw feature blocks of one RGB image (before centring, weights and projection)."""
    from skimage.feature import hog

    small = image.convert("RGB").resize((_WORK, _WORK), Image.Resampling.BILINEAR)
    rgb = np.asarray(small, np.float32) / 255.0
    # Joint HSV histogram 8x4x4; sqrt (Hellinger) so that big flat areas do not dominate.
    hsv = np.asarray(small.convert("HSV"), np.int64)
    bins = (hsv[..., 0] * 8 // 256) * 16 + (hsv[..., 1] * 4 // 256) * 4 + hsv[..., 2] * 4 // 256
    colour = np.sqrt(np.bincount(bins.ravel(), minlength=128) / bins.size)
    thumbnail = rgb.reshape(8, _WORK // 8, 8, _WORK // 8, 3).mean(axis=(1, 3)).ravel()
    crop = _figure_crop(_figure_mask(rgb))
    # HOG of the figure crop rather than the whole scene: on the simulator's stimuli it
    # tells shapes apart across positions and sizes (scene HOG alone: chance level).
    hog_block = hog(crop, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                    block_norm="L2-Hys", feature_vector=True)
    silhouette = crop.reshape(16, _CROP // 16, 16, _CROP // 16).mean(axis=(1, 3)).ravel()
    spectrum = _log_band_power(crop.astype(np.float64)) - _REFERENCE_SPECTRUM
    return {"colour": colour, "thumbnail": thumbnail, "hog": hog_block,
            "silhouette": silhouette, "spectrum": spectrum}


_N_FEATURES = sum(len(v) for v in handcrafted_blocks(Image.new("RGB", (_WORK, _WORK))).values())


@functools.lru_cache(maxsize=8)
def _projection(n_in: int, dim: int) -> np.ndarray:
    """Seeded orthogonal projection (QR of a Gaussian), signs fixed so LAPACK cannot flip them.

    The Gaussian is drawn square and truncated, so ``dim=128`` spans the first 128
    directions of ``dim=256`` (QR is Gram-Schmidt: earlier columns do not see later ones).
    Only the ``dim`` columns are factorised: the full square QR took 1.8 s on 2 cores.
    """
    gaussian = np.random.default_rng(_SEED).standard_normal((n_in, n_in))[:, :dim]
    q, r = np.linalg.qr(gaussian)
    return q * np.sign(np.diag(r))


class HandcraftedEmbedder(ImageEmbedder):
    """Colour histogram, scene thumbnail, figure HOG, silhouette and spectrum; no weights.

    Spec ``handcrafted`` (256-d) or ``handcrafted:dim=N`` (N <= the raw feature count).
    Runs on the CPU whatever ``device`` says: the features are numpy and scikit-image.
    """

    spec_help = "handcrafted[:dim=N]"
    DEFAULT_DIM = 256

    def __init__(self, dim: int = DEFAULT_DIM):
        if not 1 <= dim <= _N_FEATURES:
            raise InputError(f"a handcrafted dimension in [1, {_N_FEATURES}]", f"dim={dim}",
                             f"use handcrafted:dim=N with N <= {_N_FEATURES} (default {self.DEFAULT_DIM})")
        self.dim = int(dim)
        self.name = "handcrafted" if dim == self.DEFAULT_DIM else f"handcrafted:dim={dim}"
        self._projection = _projection(_N_FEATURES, self.dim)

    @property
    def identity(self) -> str:
        return f"{self.name}|features-v{_FEATURES_VERSION}|seed={_SEED}"

    @classmethod
    def from_spec(cls, args: str | None, *, device: str = "cpu", allow_random_init: bool = False):
        if args is None or args == "":
            return cls()
        match = re.fullmatch(r"dim=(\d+)", args)
        if not match:
            raise InputError("handcrafted or handcrafted:dim=N", f"handcrafted:{args}",
                             "write e.g. handcrafted:dim=128")
        return cls(int(match.group(1)))

    def features(self, image: Image.Image) -> np.ndarray:
        """Weighted, unit-normalised blocks, concatenated (before projection)."""
        blocks = handcrafted_blocks(image)
        return np.concatenate([_WEIGHTS[k] * _unit(v) for k, v in blocks.items()])

    def _embed_pil(self, images: list[Image.Image]) -> np.ndarray:
        # One vector-matrix product per image, in float64: a batched GEMM went through
        # multi-threaded BLAS, which on a 2-core VM took 48 ms instead of 0.6 ms (measured).
        x = np.stack([self.features(im) @ self._projection for im in images])
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(norms, 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- OpenCLIP

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
        self.device = _torch_device(device)
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


def _torch_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError("a torch device (cpu, cuda, cuda:1, mps)", repr(device), "pass --device cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("an available CUDA device", f"device {device!r} with no CUDA available",
                         "pass --device cpu")
    return dev


# --------------------------------------------------------------------------- registry

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
