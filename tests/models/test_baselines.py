"""Baselines (ridge, braindecode models) and the model registry."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

import glimpse.models.baselines as baselines
import glimpse.models.brain_encoder as brain_encoder
from glimpse.models.baselines import (
    BRAINDECODE_ARCHS,
    MODELS,
    BraindecodeEncoder,
    RidgeBaseline,
    build_model,
)
from glimpse.streaming.errors import InputError


# Tiny models: one torch thread (see tests/models/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_ridge_recovers_a_planted_linear_map(tmp_path):
    rng = np.random.default_rng(0)
    n_chans, n_times, dim = 4, 6, 5
    W = rng.normal(size=(dim, n_chans * n_times))
    X = rng.normal(size=(300, n_chans, n_times)).astype(np.float32)
    Y = X.reshape(300, -1) @ W.T + 0.5 + 0.3 * rng.normal(size=(300, dim))
    ridge = RidgeBaseline().fit(X[:200], Y[:200])
    prediction = ridge.predict(X[200:])
    assert prediction.shape == (100, dim) and prediction.dtype == np.float32
    residual = ((prediction - Y[200:]) ** 2).sum() / ((Y[200:] - Y[200:].mean(0)) ** 2).sum()
    assert residual < 0.01  # R^2 > 0.99 (the noise floor is ~0.4 %)
    assert ridge.alpha < 100  # little noise: GCV picks a small alpha
    # Arrays only: safetensors round trip, same predictions.
    save_file(ridge.to_arrays(), str(tmp_path / "ridge.safetensors"))
    loaded = RidgeBaseline.from_arrays(load_file(str(tmp_path / "ridge.safetensors")))
    np.testing.assert_allclose(loaded.predict(X[200:]), prediction, rtol=1e-4, atol=1e-4)
    assert loaded.alpha == ridge.alpha
    # The checkpoint path: config (JSON) -> sized template -> arrays of the same shapes.
    config = json.loads(json.dumps(ridge.get_config()))
    template = RidgeBaseline.from_config(config)
    assert {k: v.shape for k, v in template.arrays().items()} == {k: v.shape for k, v in ridge.arrays().items()}
    restored = template.load_arrays(load_file(str(tmp_path / "ridge.safetensors")))
    np.testing.assert_allclose(restored.predict(X[200:], np.zeros(100)), prediction, rtol=1e-4, atol=1e-4)


def test_ridge_with_a_fixed_alpha_and_the_training_signature():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(50, 3, 4)), rng.normal(size=(50, 2))
    ridge = RidgeBaseline(alpha=10.0).fit(X, Y, np.zeros(50))  # subject accepted, ignored
    assert ridge.alpha == 10.0 and ridge.name == "ridge"
    assert ridge.predict(X, np.zeros(50)).shape == (50, 2)
    with pytest.raises(InputError, match="n_chans=4 as declared"):
        RidgeBaseline(n_chans=4).fit(X, Y)


def test_ridge_errors():
    ridge = RidgeBaseline()
    with pytest.raises(InputError, match="fit first"):
        ridge.predict(np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="same N"):
        ridge.fit(np.zeros((5, 3, 4)), np.zeros((4, 2)))
    with pytest.raises(InputError, match="finite"):
        ridge.fit(np.full((5, 3, 4), np.nan), np.zeros((5, 2)))
    ridge.fit(np.random.default_rng(0).normal(size=(10, 3, 4)), np.random.default_rng(1).normal(size=(10, 2)))
    with pytest.raises(InputError, match=r"shape \(N, 3, 4\)"):
        ridge.predict(np.zeros((2, 3, 5)))
    with pytest.raises(InputError, match="missing"):
        RidgeBaseline.from_arrays({"coef": np.zeros((2, 12))}, window_shape=(3, 4))
    with pytest.raises(InputError, match="unknown"):
        RidgeBaseline.from_config({"n_chans": 3, "lambda": 1.0})


def braindecode_config(arch: str, **overrides) -> dict:
    return {"arch": arch, "n_chans": 4, "n_times": 128, "sfreq": 128.0, "embed_dim": 6, **overrides}


@pytest.mark.parametrize("arch", sorted(BRAINDECODE_ARCHS))
def test_braindecode_encoder_has_the_brain_encoder_signature(arch):
    model = BraindecodeEncoder.from_config(braindecode_config(arch)).eval()
    x, subject = torch.randn(3, 4, 128), torch.zeros(3, dtype=torch.long)
    clip, mse = model(x, subject)
    assert clip.shape == mse.shape == (3, 6)
    # A masked channel is zeroed: its content no longer matters.
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, 2] = False
    noisy = x.clone()
    noisy[:, 2] = 100 * torch.randn(3, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x, subject, mask)[0], model(noisy, subject, mask)[0])
    with pytest.raises(InputError, match=r"shape \(batch, 4, 128\)"):
        model(x[:, :, :100], subject)
    with pytest.raises(InputError, match="indices in"):
        model(x, subject + 1)


def test_short_window_names_the_minimum_that_works():
    # ShallowFBCSPNet's published kernels, in samples (glimpse rescales them by default).
    published = {"filter_time_length": 25, "pool_time_length": 75, "pool_time_stride": 15}
    with pytest.raises(InputError) as error:
        BraindecodeEncoder.from_config(braindecode_config("shallow_fbcsp", n_times=30, sfreq=120.0,
                                                          model_kwargs=published))
    message = str(error.value)
    assert "the window is too short for this model: n_times=30 < 99 samples (825 ms at 120 Hz)" in message
    # ...and that minimum does build.
    BraindecodeEncoder.from_config(braindecode_config("shallow_fbcsp", n_times=99, sfreq=120.0,
                                                      model_kwargs=published))


def test_shallow_fbcsp_time_constants_fit_the_live_window_by_default():
    """Its 100 ms filters, 60 ms stride and (capped) pooling, at the window's rate."""
    model = BraindecodeEncoder.from_config(braindecode_config("shallow_fbcsp", n_times=30,
                                                              sfreq=120.0))
    assert model.config.model_kwargs == {"filter_time_length": 12, "pool_time_length": 12,
                                         "pool_time_stride": 7}
    clip, _ = model.eval()(torch.randn(2, 4, 30), torch.zeros(2, dtype=torch.long))
    assert clip.shape == (2, 6)


def test_every_encoder_class_is_registered():
    """Fails when someone adds an encoder class without registering it."""
    encoder_classes = {cls for module in (brain_encoder, baselines)
                       for _, cls in inspect.getmembers(module, inspect.isclass)
                       if issubclass(cls, nn.Module) and hasattr(cls, "get_config")}
    assert encoder_classes and encoder_classes <= set(MODELS.values())
    assert set(BRAINDECODE_ARCHS) <= set(MODELS)
    with pytest.raises(InputError, match="pick a registered model"):
        build_model("transformer", {})
    with pytest.raises(InputError, match="agree"):
        build_model("eegnet", braindecode_config("shallow_fbcsp"))


def registry_config(name: str) -> dict:
    if name == "brain_encoder":
        rng = np.random.default_rng(0)
        return {"n_chans": 4, "sfreq": 128.0, "n_times": 128, "embed_dim": 6, "n_subjects": 2,
                "ch_names": ["a", "b", "c", "d"], "positions": rng.uniform(0, 1, (4, 2)).tolist(),
                "spatial_channels": 8, "fourier_k": 4, "hidden": 16, "n_blocks": 2}
    return braindecode_config(name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_round_trips_config_and_weights(name):
    torch.manual_seed(0)
    model = build_model(name, registry_config(name)).eval()
    config = json.loads(json.dumps(model.get_config()))  # what config.json stores
    assert model.name == name
    clone = build_model(name, config).eval()
    clone.load_state_dict(model.state_dict())
    x, subject = torch.randn(2, 4, 128), torch.tensor([0, 1]) if name == "brain_encoder" else torch.zeros(2).long()
    with torch.no_grad():
        for a, b in zip(model(x, subject), clone(x, subject)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
