"""glimpse.models.checkpoint: round trips, and every bad checkpoint refused with a clear InputError."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from glimpse.models.baselines import RidgeBaseline
from glimpse.models.brain_encoder import BrainEncoder, BrainEncoderConfig
from glimpse.models.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, check_compatible, load_checkpoint,
                               save_checkpoint, window_stats)
from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import PreprocessConfig

N_CHANS, N_TIMES, DIM = 6, 30, 8
NAMES = ["MLO11", "MLO12", "MRO11", "MRO12", "MZO01", "MRT52"]


def _encoder(seed: int = 0, hidden: int = 8) -> BrainEncoder:
    torch.manual_seed(seed)
    positions = np.random.default_rng(seed).uniform(0.1, 0.9, (N_CHANS, 2)).tolist()
    config = BrainEncoderConfig(n_chans=N_CHANS, sfreq=120.0, n_times=N_TIMES, embed_dim=DIM,
                                n_subjects=2, ch_names=NAMES, positions=positions, hidden=hidden,
                                spatial_channels=8, fourier_k=4, n_blocks=2)
    return BrainEncoder(config).eval()


def _meta(model_positions) -> dict:
    pre = PreprocessConfig(ch_names=NAMES, center=[0.0] * N_CHANS, scale=[1.0] * N_CHANS)
    return {"ch_names": NAMES, "positions": model_positions, "sfreq": 120.0,
            "window": {"n_times": N_TIMES, "seconds": 0.25}, "preprocess": pre.to_dict(),
            "subjects": ["01", "02"], "embedder": {"name": "handcrafted", "dim": DIM},
            "data_fingerprint": "0" * 64, "retrieval_head": "clip",
            "confidence": {"features": "window_stats_v1", "weight": [0.5] * (3 * N_CHANS),
                           "bias": -1.0, "calibrated": True, "ece": 0.05},
            "metrics": {"val_top5": 0.5, "val_loss": float("nan")}}


@pytest.fixture
def saved(tmp_path):
    model = _encoder()
    return save_checkpoint(tmp_path / "ckpt", model, _meta(model.config.positions)), model


def test_round_trip_gives_identical_outputs(saved):
    path, model = saved
    ckpt = load_checkpoint(path)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["format"] == "glimpse-checkpoint" and config["version"] == 1
    assert config["metrics"]["val_loss"] is None  # NaN is not JSON
    assert ckpt.model_name == "brain_encoder" and ckpt.n_times == N_TIMES and ckpt.embed_dim == DIM
    assert ckpt.preprocess.ch_names == tuple(NAMES) and ckpt.subjects == ("01", "02")
    x = torch.randn(5, N_CHANS, N_TIMES)
    s = torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        want = model(x, s)
        got = ckpt.model(x, s)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    emb, conf = ckpt.encode(x[:2].numpy(), subject="02")  # subject id -> index 1
    with torch.no_grad():
        clip, mse = model(x[:2], torch.tensor([1, 1]))
    np.testing.assert_array_equal(emb, clip.numpy())
    expected = 1 / (1 + np.exp(-(window_stats(x[:2].numpy()) @ np.full(3 * N_CHANS, 0.5) - 1.0)))
    np.testing.assert_allclose(conf, expected, rtol=1e-5)
    with pytest.raises(InputError, match="training subject"):
        ckpt.encode(x[:1], subject="07")
    with pytest.raises(InputError, match=r"windows of shape \(B, 6, 30\)"):
        ckpt.encode(np.zeros((6, 29), np.float32))


def test_ridge_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, N_CHANS, N_TIMES)).astype(np.float32)
    y = rng.standard_normal((40, DIM)).astype(np.float32)
    ridge = RidgeBaseline(alphas=[1.0, 10.0]).fit(x, y)
    meta = _meta(np.full((N_CHANS, 2), 0.5).tolist())
    meta["retrieval_head"] = "mse"
    path = save_checkpoint(tmp_path / "ridge", ridge, meta)
    ckpt = load_checkpoint(path)
    assert ckpt.model_name == "ridge"
    emb, conf = ckpt.encode(x[:3])
    np.testing.assert_allclose(emb, ridge.predict(x[:3]), rtol=1e-6)
    assert conf.shape == (3,)


def test_missing_files(saved, tmp_path):
    path, _ = saved
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="without model.safetensors"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_pickle_is_refused_not_loaded(saved):
    path, model = saved
    torch.save(model.state_dict(), path / WEIGHTS_FILE)
    with pytest.raises(InputError, match="a pickle"):
        load_checkpoint(path)


def test_truncated_weights(saved):
    path, _ = saved
    blob = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(blob[: len(blob) - 100])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_checkpoint(path)
    (path / WEIGHTS_FILE).write_bytes(blob[:50])
    with pytest.raises(InputError, match="truncated"):
        load_checkpoint(path)


def test_unknown_format_version(saved):
    path, _ = saved
    config = json.loads((path / CONFIG_FILE).read_text())
    config["version"] = 99
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match="version 99.*upgrade glimpse"):
        load_checkpoint(path)
    config["format"] = "something-else"
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match="format 'something-else'"):
        load_checkpoint(path)
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match="a JSON config.json"):
        load_checkpoint(path)


def test_weights_not_matching_the_config(saved, tmp_path):
    path, _ = saved
    wide = _encoder(hidden=12)
    other = save_checkpoint(tmp_path / "wide", wide, _meta(wide.config.positions))
    shutil.copy(other / WEIGHTS_FILE, path / WEIGHTS_FILE)
    with pytest.raises(InputError, match=r"tensor blocks\.0\.convs\.0\.weight of shape "
                                         r"\(8, 8, 3\).*shape \(12, 8, 3\)"):
        load_checkpoint(path)


def test_check_compatible_names_missing_channels(saved):
    path, _ = saved
    ckpt = load_checkpoint(path)
    stream = ["MZO01", "MLO12", "MRO11", "MRO12", "STI101"]
    with pytest.raises(InputError, match="data has 4 of the 6 channels the checkpoint needs; "
                                         "missing: MLO11, MRT52"):
        check_compatible(ckpt, stream, 1200.0)
    picks = check_compatible(ckpt, ["X"] + NAMES[::-1], 1200.0)
    assert [(["X"] + NAMES[::-1])[i] for i in picks] == NAMES
    with pytest.raises(InputError, match="Nyquist"):
        check_compatible(ckpt, NAMES, 60.0)  # too slow for the 40 Hz low-pass


def test_window_stats_and_a_bad_confidence(saved):
    path, _ = saved
    x = np.zeros((2, N_CHANS, N_TIMES))
    x[1, 0] = np.linspace(-1, 1, N_TIMES)  # a rising channel
    f = window_stats(x)
    assert f.shape == (2, 3 * N_CHANS)
    assert f[1, 2 * N_CHANS] > 1 and f[1, 0] > f[0, 0]  # rise and log variance of channel 0
    config = json.loads((path / CONFIG_FILE).read_text())
    config["confidence"]["weight"] = [0.5] * DIM  # from another head
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match="18 weights"):
        load_checkpoint(path)
