"""Masked signal pretraining of the brain encoder's trunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glimpse.models.brain_encoder import BrainEncoder, BrainEncoderConfig
from glimpse.models.pretrain import (
    PretrainConfig,
    ReconstructionHead,
    masked_reconstruction_loss,
    pretrain_trunk,
    random_patch_mask,
)
from glimpse.streaming.errors import InputError

SFREQ = 120.0


# Tiny models: one torch thread (see tests/models/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(n_chans: int = 6, seed: int = 0, **overrides) -> BrainEncoder:
    torch.manual_seed(seed)
    positions = np.random.default_rng(0).uniform(0, 1, (n_chans, 2))
    sizes = dict(n_chans=n_chans, sfreq=SFREQ, n_times=48, embed_dim=8, n_subjects=2,
                 ch_names=[f"MEG{i:03d}" for i in range(n_chans)], positions=positions,
                 spatial_channels=16, fourier_k=4, hidden=32, n_blocks=2)
    return BrainEncoder(BrainEncoderConfig(**{**sizes, **overrides}))


def sinusoid_windows(n: int = 96, n_chans: int = 6, n_times: int = 48, seed: int = 0) -> torch.Tensor:
    """Each channel: two fixed rhythms with a random amplitude and phase per window."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times) / SFREQ
    freqs = rng.uniform(4, 12, (1, n_chans, 2, 1))
    amps = rng.uniform(0.5, 1.5, (n, n_chans, 2, 1))
    phases = rng.uniform(0, 2 * np.pi, (n, n_chans, 2, 1))
    return torch.tensor((amps * np.sin(2 * np.pi * freqs * t + phases)).sum(2), dtype=torch.float32)


@pytest.mark.parametrize("n_times, patch, ratio", [(48, 4, 0.75), (30, 4, 0.75), (181, 4, 0.5), (50, 7, 0.3)])
def test_masked_fraction_is_the_ratio_within_one_patch(n_times, patch, ratio):
    mask = random_patch_mask(64, n_times, ratio, patch, torch.Generator().manual_seed(0))
    assert mask.shape == (64, n_times) and mask.dtype == torch.bool
    fraction = mask.float().mean(dim=1)
    assert ((fraction - ratio).abs() <= patch / n_times + 1e-6).all()
    # Whole patches: constant within each patch.
    starts = mask[:, ::patch].repeat_interleave(patch, dim=1)[:, :n_times]
    assert torch.equal(mask, starts)
    assert len({tuple(row.tolist()) for row in mask}) > 1  # a draw per window


def test_loss_counts_only_the_masked_samples():
    model, decoder = tiny_model().eval(), ReconstructionHead(32, 6)
    x = sinusoid_windows(4)
    subject = torch.zeros(4, dtype=torch.long)
    loss = masked_reconstruction_loss(model, decoder, x, subject, 0.75, 4, torch.Generator().manual_seed(1))
    mask = random_patch_mask(4, 48, 0.75, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        reconstruction = decoder(model.trunk(x.masked_fill(mask[:, None], 0.0), subject))
    expected = ((reconstruction - x) ** 2).permute(0, 2, 1)[mask].mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_pretraining_lowers_the_loss_and_leaves_the_heads_alone():
    model = tiny_model()
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("clip_head", "mse_head"))}
    trunk_before = {k: v.clone() for k, v in model.trunk_state_dict().items()}
    # Half the patches hidden, so that a 6-epoch run on a tiny model shows a clear drop.
    config = PretrainConfig(mask_ratio=0.5, epochs=6, batch_size=16, lr=1e-2)
    history = pretrain_trunk(model, sinusoid_windows(), config, progress=False)
    losses = history["epoch_loss"]
    assert len(losses) == 6 and history["n_windows"] == 96
    assert losses[-1] < 0.7 * losses[0], losses  # ~0.5x in practice
    assert all(b < a for a, b in zip(losses[:2], losses[1:3])), losses
    assert model.training  # mode restored (a fresh module trains)
    for key, value in model.state_dict().items():
        if key in heads_before:
            assert torch.equal(value, heads_before[key]), key
    assert any(not torch.equal(v, trunk_before[k]) for k, v in model.trunk_state_dict().items())


def test_pretraining_is_reproducible_and_keeps_the_global_rng():
    config = PretrainConfig(epochs=1, batch_size=16)
    runs = [pretrain_trunk(tiny_model(seed=3), sinusoid_windows(32), config, progress=False)["batch_loss"]
            for _ in range(2)]
    assert runs[0] == runs[1]
    model = tiny_model()
    state = torch.get_rng_state()
    pretrain_trunk(model, sinusoid_windows(16), config, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_pretrained_trunk_loads_into_a_fresh_encoder(tmp_path):
    pretrained = tiny_model()
    pretrain_trunk(pretrained, (sinusoid_windows(32), torch.tensor([0, 1] * 16)),
                   PretrainConfig(epochs=1, batch_size=16), progress=False)
    # Through safetensors, as `glimpse pretrain --out DIR` then `glimpse train --init DIR` would.
    save_file(pretrained.trunk_state_dict(), str(tmp_path / "trunk.safetensors"))
    fresh = tiny_model(seed=42).load_trunk_state_dict(load_file(str(tmp_path / "trunk.safetensors")))
    x, subject = sinusoid_windows(4, seed=9), torch.tensor([0, 1, 1, 0])
    pretrained.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.trunk(x, subject), pretrained.trunk(x, subject), rtol=0, atol=0)
    # A model for another montage of the same system takes the same trunk.
    tiny_model(n_chans=9).load_trunk_state_dict(pretrained.trunk_state_dict())


def test_accepts_batches_and_rejects_one_shot_iterators():
    model = tiny_model()
    x = sinusoid_windows(32, n_times=64)  # longer than n_times: the trunk is convolutional
    batches = [(x[:16], torch.zeros(16, dtype=torch.long)), (x[16:], torch.ones(16, dtype=torch.long))]
    history = pretrain_trunk(model, batches, PretrainConfig(epochs=2), progress=False)
    assert len(history["epoch_loss"]) == 2 and len(history["batch_loss"]) == 4
    with pytest.raises(InputError, match="DataLoader"):
        pretrain_trunk(model, iter(batches), PretrainConfig(epochs=2), progress=False)
    with pytest.raises(InputError, match="mask_ratio"):
        PretrainConfig(mask_ratio=1.0)
    bad = sinusoid_windows(8)
    bad[3, 2, 5] = float("nan")
    before = {k: v.clone() for k, v in model.trunk_state_dict().items()}
    with pytest.raises(InputError, match="NaN or inf"):
        pretrain_trunk(model, bad, PretrainConfig(epochs=1), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.trunk_state_dict().items())
    with pytest.raises(InputError, match="n_chans=6"):
        pretrain_trunk(model, sinusoid_windows(8, n_chans=5), PretrainConfig(epochs=1), progress=False)
