"""The brain encoder: config as data, input checks, channel masking, positions, size, ONNX."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest
import torch
from torch import nn

from glimpse.models.blocks import Conv1d, SpatialAttention
from glimpse.models.brain_encoder import (
    BrainEncoder,
    BrainEncoderConfig,
    export_onnx,
    sensor_positions_2d,
)
from glimpse.streaming.errors import InputError
from glimpse.streaming.simulate.physics import sensor_info

PAPER_PARAMS = 6.4e6  # Benchetrit et al. 2023, brain module for THINGS-MEG


# Tiny models: one torch thread (see tests/models/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(n_chans: int = 6, n_times: int = 40, seed: int = 0, **overrides) -> BrainEncoderConfig:
    """A model small enough to run every code path on a CPU in milliseconds."""
    rng = np.random.default_rng(seed)
    sizes = dict(n_chans=n_chans, sfreq=120.0, n_times=n_times, embed_dim=8, n_subjects=2,
                 ch_names=[f"EEG{i:03d}" for i in range(n_chans)], positions=rng.uniform(0, 1, (n_chans, 2)),
                 spatial_channels=8, fourier_k=4, hidden=16, n_blocks=2)
    return BrainEncoderConfig(**{**sizes, **overrides})


def inputs(config: BrainEncoderConfig, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.n_chans, config.n_times, generator=generator)
    return x, torch.arange(batch) % config.n_subjects


@pytest.fixture(scope="module")
def ctf_info() -> mne.Info:
    return mne.channels.read_meg_canonical_info("ctf275")


def things_meg_config(ctf_info: mne.Info, n_times: int) -> BrainEncoderConfig:
    names = [n for n in ctf_info.ch_names][:272]
    return BrainEncoderConfig(n_chans=272, sfreq=120.0, n_times=n_times, embed_dim=768, n_subjects=4,
                              ch_names=names, positions=sensor_positions_2d(ctf_info, names))


def test_forward_shapes_and_trunk():
    config = tiny_config()
    model = BrainEncoder(config).eval()
    x, subject = inputs(config)
    clip, mse = model(x, subject)
    assert isinstance(model(x, subject), tuple)
    assert clip.shape == mse.shape == (3, 8) and clip.dtype == torch.float32
    assert model.trunk(x, subject).shape == (3, 16, 40)
    # The trunk is convolutional: pretraining may feed longer windows.
    assert model.trunk(torch.randn(2, 6, 64), torch.zeros(2, dtype=torch.long)).shape == (2, 16, 64)


def test_config_round_trips_through_json_and_rebuilds_the_same_model():
    config = tiny_config(dropout=0.1, glu_kernel=3)
    data = json.loads(json.dumps(config.to_dict()))
    assert BrainEncoderConfig.from_dict(data) == config
    model = BrainEncoder(config).eval()
    clone = BrainEncoder.from_config(model.get_config()).eval()
    clone.load_state_dict(model.state_dict())
    x, subject = inputs(config)
    for a, b in zip(model(x, subject), clone(x, subject)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("overrides, needle", [
    (dict(ch_names=["a", "b"]), "one channel name per channel"),
    (dict(positions=[[0.5, 0.5]] * 5), "positions of shape (n_chans=6, 2)"),
    (dict(positions=[[0.5, 0.5]] * 5 + [[1.2, 0.5]]), "inside [0, 1]^2"),
    (dict(positions=[[0.5, 0.5]] * 5 + [[float("nan"), 0.5]]), "finite"),
    (dict(n_times=8), "the window is too short for this model: n_times=8 < 9 samples (75 ms at 120 Hz)"),
    (dict(n_subjects=0), "n_subjects a positive integer"),
    (dict(embed_dim=0), "embed_dim a positive integer"),
    (dict(kernel_size=2), "odd"),
    (dict(dropout=1.0), "dropout in [0, 1)"),
    (dict(demean="yes"), "demean true or false"),
])
def test_config_conflicts_fail_at_construction(overrides, needle):
    with pytest.raises(InputError) as error:
        tiny_config(**overrides)
    assert needle in str(error.value)
    assert "Fix:" in str(error.value) and "\n" not in str(error.value)


def test_from_dict_rejects_unknown_and_missing_keys():
    data = tiny_config().to_dict()
    with pytest.raises(InputError, match="unknown keys"):
        BrainEncoderConfig.from_dict({**data, "n_heads": 4})
    data.pop("sfreq")
    with pytest.raises(InputError, match=r"missing \['sfreq'\]"):
        BrainEncoderConfig.from_dict(data)


def test_demean_removes_each_sensors_offset_over_the_window_and_old_configs_load_without_it():
    x, subject = inputs(tiny_config())
    offset = torch.randn(1, x.shape[1], 1) * 50  # a slow drift: constant over one window
    on = BrainEncoder(tiny_config(demean=True)).eval()
    assert torch.allclose(on(x + offset, subject)[0], on(x, subject)[0], atol=1e-4)
    off = BrainEncoder(tiny_config()).eval()  # the default of older checkpoints: the raw window
    assert not torch.allclose(off(x + offset, subject)[0], off(x, subject)[0], atol=1e-2)
    data = tiny_config().to_dict()
    del data["demean"]  # written before the option existed
    assert BrainEncoderConfig.from_dict(data).demean is False


def test_default_depth_fits_a_live_window_and_reports_its_receptive_field():
    # 250 ms at 120 Hz = 30 samples: shorter than the 125-sample receptive field of
    # the paper's 5 blocks, but every dilated tap still reaches real samples.
    model = BrainEncoder(tiny_config(n_times=30, n_blocks=5))
    assert model.receptive_field == 125 and model.min_n_times == 17
    with pytest.raises(InputError, match="n_times=16 < 17 samples"):
        tiny_config(n_times=16, n_blocks=5)


@pytest.mark.parametrize("make, needle", [
    (lambda x, s: (x[:, :5], s, None), "n_chans=6 channels"),
    (lambda x, s: (x[:, :, :39], s, None), "n_times=40 samples"),
    (lambda x, s: (x.double(), s, None), "dtype torch.float32"),
    (lambda x, s: (x, s + 5, None), "subject indices in [0, 1]"),
    (lambda x, s: (x, s.float(), None), "integer tensor"),
    (lambda x, s: (x, s, torch.ones(3, 5, dtype=torch.bool)), "chan_mask a bool tensor of shape (3, 6)"),
    (lambda x, s: (x, s, torch.zeros(3, 6, dtype=torch.bool)), "at least one present channel"),
])
def test_bad_inputs_give_short_errors(make, needle):
    config = tiny_config()
    model = BrainEncoder(config)
    with pytest.raises(InputError) as error:
        model(*make(*inputs(config)))
    assert needle in str(error.value)


def test_masking_a_channel_removes_its_influence():
    """A masked channel = a model built without it (the spatial weights are per position)."""
    config = tiny_config()
    full = BrainEncoder(config).eval()
    keep = [0, 1, 2, 4, 5]
    reduced_config = tiny_config(n_chans=5, ch_names=[config.ch_names[i] for i in keep],
                                 positions=[config.positions[i] for i in keep])
    reduced = BrainEncoder(reduced_config).eval()
    reduced.load_state_dict(full.state_dict())  # same weights: none depends on n_chans
    x, subject = inputs(config)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 3] = False
    masked = full(x, subject, mask)
    for a, b in zip(masked, reduced(x[:, keep], subject)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    x_noisy = x.clone()
    x_noisy[:, 3] = 1e3 * torch.randn(3, 40)
    for a, b in zip(masked, full(x_noisy, subject, mask)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Unmasked, the channel does count.
    assert not torch.allclose(full(x_noisy, subject)[0], full(x, subject)[0])


def test_spatial_dropout_drops_a_disc_of_sensors_and_never_all():
    positions = torch.tensor(np.random.default_rng(1).uniform(0, 1, (200, 2)), dtype=torch.float32)
    layer = SpatialAttention(positions, out_channels=4, fourier_k=4, dropout_radius=0.2).train()
    x = torch.zeros(16, 200, 5)
    torch.manual_seed(0)
    kept = layer._spatial_dropout(x, None)
    assert kept.any(dim=1).all() and (~kept).any()
    for row in kept:
        dropped = positions[~row]
        if len(dropped) > 1:  # every dropped pair lies within the disc's diameter
            assert torch.cdist(dropped, dropped).max() <= 0.4 + 1e-6
    everything = SpatialAttention(positions, 4, 4, dropout_radius=5.0)._spatial_dropout(x, None)
    assert everything.all()  # nothing would be left: keep the window whole
    model = BrainEncoder(tiny_config(spatial_dropout=0.2)).train()
    assert all(torch.isfinite(out).all() for out in model(*inputs(model.config)))


def test_inference_cache_follows_weight_updates():
    config = tiny_config()
    model = BrainEncoder(config).eval()
    x, subject = inputs(config)
    with torch.inference_mode():
        before = model(x, subject)[0]
    with torch.no_grad():
        model.spatial.query.weight.mul_(3.0)
    with torch.inference_mode():
        after = model(x, subject)[0]
    with torch.enable_grad():
        fresh = model(x, subject)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh.detach())


@pytest.mark.parametrize("kernel, dilation", [(1, 1), (3, 1), (3, 4), (5, 2)])
def test_conv1d_matmul_path_equals_torch_conv(kernel, dilation):
    conv = Conv1d(5, 7, kernel, dilation=dilation)
    x = torch.randn(3, 5, 20, requires_grad=True)
    ours = conv(x)
    reference = nn.Conv1d.forward(conv, x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    ours.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_trunk_state_dict_transfers_across_montages_but_not_widths():
    model = BrainEncoder(tiny_config())
    state = model.trunk_state_dict()
    assert {key.split(".")[0] for key in state} == {"spatial", "conv_in", "subject_layer", "blocks"}
    other_montage = BrainEncoder(tiny_config(n_chans=9, seed=3))
    other_montage.load_trunk_state_dict(state)
    torch.testing.assert_close(other_montage.blocks[0].convs[0].weight, model.blocks[0].convs[0].weight)
    with pytest.raises(InputError, match="hidden"):
        BrainEncoder(tiny_config(hidden=24)).load_trunk_state_dict(state)
    more_subjects = BrainEncoder(tiny_config(n_subjects=3))
    with pytest.raises(InputError, match="subjects=False"):
        more_subjects.load_trunk_state_dict(state)
    assert more_subjects.load_trunk_state_dict(state, subjects=False) is more_subjects
    with pytest.raises(InputError, match="missing"):
        model.load_trunk_state_dict({k: v for k, v in state.items() if not k.startswith("blocks.1.")})


def test_sensor_positions_on_ctf275(ctf_info):
    names = ctf_info.ch_names
    pos = sensor_positions_2d(ctf_info, names)
    assert pos.shape == (len(names), 2) and pos.min() >= 0 and pos.max() <= 1
    assert np.isclose(pos.min(0), 0).all() and np.isclose(pos.max(0), 1).all()
    assert len(np.unique(pos.round(6), axis=0)) == len(names)
    x_of = {n: pos[i, 0] for i, n in enumerate(names)}
    y_of = {n: pos[i, 1] for i, n in enumerate(names)}
    left = np.mean([x for n, x in x_of.items() if n.startswith("ML")])
    right = np.mean([x for n, x in x_of.items() if n.startswith("MR")])
    frontal = np.mean([y for n, y in y_of.items() if n[2] == "F"])
    occipital = np.mean([y for n, y in y_of.items() if n[2] == "O"])
    assert left < 0.5 < right and occipital < 0.5 < frontal
    # A subset keeps its positions, so a trunk transfers between montages.
    subset = names[::7]
    np.testing.assert_allclose(sensor_positions_2d(ctf_info, subset), pos[::7])
    # The simulator's MEG info (CTF-275 + a stim channel) gives the same layout.
    simulated = sensor_info("meg", sfreq=1200.0, line_freq=50.0)
    np.testing.assert_allclose(sensor_positions_2d(simulated, names), pos)


def test_sensor_positions_on_a_10_20_eeg_montage():
    montage_name = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"
    names = ["Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "F7", "F8", "T7", "T8", "P7",
             "P8", "Fz", "Cz", "Pz"]
    info = mne.create_info(names, 250.0, "eeg")
    info.set_montage(mne.channels.make_standard_montage(montage_name))
    pos = dict(zip(names, sensor_positions_2d(info, names)))
    assert pos["Fp1"][1] > pos["Cz"][1] > pos["O1"][1]
    assert pos["C3"][0] < pos["Cz"][0] < pos["C4"][0]
    assert pos["T7"][0] == pytest.approx(0, abs=1e-9) and pos["T8"][0] == pytest.approx(1, abs=1e-9)


def test_sensor_positions_errors(ctf_info):
    with pytest.raises(InputError, match="missing"):
        sensor_positions_2d(ctf_info, ["MLC11-2908", "NOPE"])
    bare = mne.create_info(["A1", "A2"], 100.0, "eeg")
    with pytest.raises(InputError, match="set a montage"):
        sensor_positions_2d(bare, ["A1", "A2"])
    mixed = mne.create_info(["M", "E"], 100.0, ["mag", "eeg"])
    with pytest.raises(InputError, match="one sensor type"):
        sensor_positions_2d(mixed, ["M", "E"])


def test_things_meg_parameter_count_is_near_the_papers(ctf_info):
    model = BrainEncoder(things_meg_config(ctf_info, n_times=181))
    n = model.n_parameters
    print(f"THINGS-MEG brain encoder: {n:,} parameters (paper ~6.4 M)")
    assert abs(n - PAPER_PARAMS) <= 0.15 * PAPER_PARAMS


@pytest.mark.parametrize("size", ["live_things_meg", "tiny_with_mask"])
def test_onnx_export_matches_torch(tmp_path, ctf_info, size):
    ort = pytest.importorskip("onnxruntime")
    if size == "live_things_meg":  # the shape the service runs: 272 sensors, 250 ms at 120 Hz
        config, with_mask = things_meg_config(ctf_info, n_times=30), False
    else:
        config, with_mask = tiny_config(), True
    torch.manual_seed(0)
    model = BrainEncoder(config).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding is tested
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "encoder.onnx"
    assert export_onnx(model, path, with_mask=with_mask) == "torchscript"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        x, _ = inputs(config, batch=batch, seed=batch)
        subject = torch.arange(batch) % config.n_subjects
        feed = {"x": x.numpy(), "subject": subject.numpy()}
        args = (x, subject)
        if with_mask:
            mask = torch.rand(batch, config.n_chans, generator=torch.Generator().manual_seed(batch)) > 0.3
            mask[:, 0] = True
            feed["chan_mask"], args = mask.numpy(), args + (mask,)
        with torch.inference_mode():
            expected = model(*args)
        got = session.run(["clip", "mse"], feed)
        for e, g in zip(expected, got):
            assert g.shape == (batch, config.embed_dim)
            assert np.abs(e.numpy() - g).max() <= 1e-4
