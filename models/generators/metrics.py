"""Reconstruction metrics as the literature computes them (Ozcelik & VanRullen 2023,
MindEye 2023): pure functions on uint8 image arrays ``(N, H, W, 3)`` and feature arrays.

- PixCorr: Pearson correlation between the flattened RGB pixels of each generated
  image and its true image (at one common size), averaged over images. Chance: 0.
- SSIM: structural similarity of the grey-level images (Gaussian weights, sigma
  1.5, population covariance, data range 1), averaged. Reported with the SSIM of
  mismatched pairs as its chance level.
- 2-way identification in an embedder's space: for each generated image, the
  fraction of other true images whose features correlate less with it than its own
  true image's do, averaged. Chance: 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError

__all__ = ["common_size", "pixcorr", "reconstruction_metrics", "ssim", "two_way"]


def _check_pair(generated: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    generated, true = np.asarray(generated), np.asarray(true)
    if generated.ndim != 4 or generated.shape[-1] != 3 or generated.shape != true.shape:
        raise InputError("generated and true images of one shape (N, H, W, 3)",
                         f"{generated.shape} and {true.shape}", "resize both with common_size first")
    if len(generated) == 0:
        raise InputError("at least one image pair", "none", "pass some images")
    return generated.astype(np.float64) / 255.0, true.astype(np.float64) / 255.0


def common_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images resized (bilinear) to ``size`` x ``size``."""
    from PIL import Image

    images = np.asarray(images)
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                     for im in images])


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), denominator, out=np.zeros(len(a)), where=denominator > 1e-12)


def pixcorr(generated: np.ndarray, true: np.ndarray) -> float:
    """Mean per-image Pearson correlation of the flattened RGB pixels."""
    g, t = _check_pair(generated, true)
    return float(_rowwise_corr(g.reshape(len(g), -1), t.reshape(len(t), -1)).mean())


def ssim(generated: np.ndarray, true: np.ndarray) -> float:
    """Mean grey-level SSIM (Gaussian window, sigma 1.5), as MindEye computes it."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    g, t = _check_pair(generated, true)
    scores = [structural_similarity(rgb2gray(a), rgb2gray(b), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
              for a, b in zip(g, t)]
    return float(np.mean(scores))


def two_way(generated_features: np.ndarray, true_features: np.ndarray) -> float:
    """2-way identification: how often a generated image's features correlate more with
    its own true image's than with another true image's, over all other images."""
    g, t = np.asarray(generated_features, np.float64), np.asarray(true_features, np.float64)
    if g.ndim != 2 or g.shape != t.shape or len(g) < 2:
        raise InputError("two feature arrays of one shape (N >= 2, D)", f"{g.shape} and {t.shape}",
                         "embed the generated and the true images with the same embedder")
    g = g - g.mean(axis=1, keepdims=True)
    t = t - t.mean(axis=1, keepdims=True)
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    corr = g @ t.T
    own = np.diag(corr)[:, None]
    # Ties count half, so identical features score chance, never better.
    wins = (corr < own).sum(axis=1) + 0.5 * ((corr == own).sum(axis=1) - 1)
    return float((wins / (len(g) - 1)).mean())


def reconstruction_metrics(generated: np.ndarray, true: np.ndarray, embedder: Any, *,
                           size: int = 64, shuffle_seed: int = 0) -> dict[str, float]:
    """PixCorr, SSIM and 2-way (in ``embedder``'s space) with their chance levels.

    Chance levels come from the same generated images paired with shuffled true
    ones (a derangement), so they reflect the images' own statistics.
    """
    g, t = common_size(generated, size), common_size(true, size)
    if len(g) < 2:
        raise InputError("at least two image pairs", f"{len(g)}", "pass more images")
    shift = 1 + int(np.random.default_rng(shuffle_seed).integers(len(g) - 1))
    mismatched = np.roll(t, shift, axis=0)
    features_g = embedder.embed(list(g), progress=False)
    features_t = embedder.embed(list(t), progress=False)
    return {"n": int(len(g)), "size": int(size),
            "pixcorr": pixcorr(g, t), "pixcorr_chance": pixcorr(g, mismatched),
            "ssim": ssim(g, t), "ssim_chance": ssim(g, mismatched),
            "two_way": two_way(features_g, features_t), "two_way_chance": 0.5,
            "embedder": getattr(embedder, "name", str(embedder))}
