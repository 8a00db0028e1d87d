"""The handcrafted embedder: classic image features, no weights, deterministic, CPU."""

from __future__ import annotations

import functools
import re

import numpy as np
from PIL import Image

from glimpse.streaming.errors import InputError

from .base import ImageEmbedder

__all__ = ["HandcraftedEmbedder", "handcrafted_blocks"]

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
