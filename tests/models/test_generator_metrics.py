"""Reconstruction metrics: PixCorr, SSIM, 2-way identification, on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.models.generators.metrics import common_size, pixcorr, reconstruction_metrics, ssim, two_way
from glimpse.streaming.errors import InputError

# Pure numpy and a dozen handcrafted embeddings: seconds; 60 s on a loaded 2-core runner.
pytestmark = pytest.mark.timeout(60)


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_pixcorr_of_identical_inverted_and_constant_images():
    images = _images(5)
    assert pixcorr(images, images) == pytest.approx(1.0)
    assert pixcorr(255 - images, images) == pytest.approx(-1.0)
    flat = np.full_like(images, 128)
    assert pixcorr(flat, images) == 0.0  # no variance: no correlation, never NaN


def test_ssim_is_one_for_identical_images_and_lower_for_others():
    images = _images(4)
    assert ssim(images, images) == pytest.approx(1.0)
    assert ssim(images, _images(4, seed=1)) < 0.2


def test_two_way_perfect_chance_and_random():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((50, 16))
    assert two_way(features, features) == 1.0
    # Identical generated features for every image: every comparison ties, chance exactly.
    assert two_way(np.tile(features[:1], (50, 1)), features) == pytest.approx(0.5)
    random = two_way(rng.standard_normal((400, 16)), rng.standard_normal((400, 16)))
    assert 0.45 < random < 0.55


def test_two_way_counts_the_fraction_of_distractors_beaten():
    true = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    generated = true[[0, 2, 1]]  # the first right, the other two swapped
    # Centred one-hots correlate -0.5 with each other. Image 0 beats both distractors (1);
    # image 1's features are image 2's truth: they lose to that distractor and tie with
    # image 0's (0.25); image 2 likewise (0.25).
    assert two_way(generated, true) == pytest.approx((1 + 0.25 + 0.25) / 3)


@pytest.mark.parametrize("call", [
    lambda: pixcorr(_images(2, 16), _images(2, 32)),
    lambda: ssim(_images(0), _images(0)),
    lambda: two_way(np.zeros((1, 4)), np.zeros((1, 4))),
    lambda: two_way(np.zeros((3, 4)), np.zeros((3, 5))),
])
def test_mismatched_or_empty_inputs_are_refused(call):
    with pytest.raises(InputError):
        call()


def test_reconstruction_metrics_of_the_true_images_with_the_handcrafted_embedder():
    from glimpse.models.embedders import load_embedder
    from glimpse.models.generators.train_embedded import draw_stimuli

    embedder = load_embedder("handcrafted")
    drawn = draw_stimuli(12, np.random.default_rng(3), embedder, size=48, draw_size=64)
    same = reconstruction_metrics(drawn.images, drawn.images, embedder, size=32)
    assert same["two_way"] == 1.0 and same["pixcorr"] == pytest.approx(1.0)
    assert same["ssim"] == pytest.approx(1.0) and same["two_way_chance"] == 0.5
    assert same["pixcorr_chance"] < 0.9 and same["ssim_chance"] < 0.99
    shuffled = reconstruction_metrics(drawn.images[::-1], drawn.images, embedder, size=32)
    assert shuffled["two_way"] < same["two_way"] and shuffled["pixcorr"] < same["pixcorr"]
    assert common_size(drawn.images, 32).shape == (12, 32, 32, 3)
