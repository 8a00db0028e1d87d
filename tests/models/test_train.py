"""glimpse.models.losses and glimpse.models.train: the objectives, the config, end-to-end training, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from glimpse.models.checkpoint import load_checkpoint
from glimpse.models.data import load_session
from glimpse.models.losses import ClipLoss, DecodingLoss, clip_loss, mse_loss
from glimpse.models.train import TrainConfig, train
from glimpse.models.windows import fixed_windows, split_trials
from glimpse.streaming.errors import InputError

REPO = Path(__file__).resolve().parents[2]
# A brain encoder small enough for seconds on 2 cores, with the real architecture.
TINY = dict(hidden=16, spatial_channels=16, n_blocks=2, epochs=3, batch_size=16, patience=5,
            model_options={"fourier_k": 4})


# --------------------------------------------------------------------------- synthetic data


def write_synthetic(folder: Path, *, concepts: int = 12, exemplars: int = 3, test_concepts: int = 2,
                    seed: int = 0, noise: float = 0.3) -> tuple[Path, Path]:
    """An EEG recording whose evoked pattern is a linear function of the image's colour.

    Each image is a disc of one colour; the response over 8 posterior channels
    (0.1-0.6 s after onset) is a common pattern plus ``M @ rgb``, so held-out colours
    are predictable. Returns (recording, mapping file).
    """
    import mne
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    sfreq, soa = 200.0, 1.5
    names = ["O1", "Oz", "O2", "PO3", "PO4", "P3", "Pz", "P4"]
    mixing = rng.standard_normal((len(names), 3))
    stim = folder / "stimuli"
    entries, trials = {}, []
    for c in range(concepts + test_concepts):
        split = "train" if c < concepts else "test"
        base = rng.uniform(0.1, 0.9, 3)
        for e in range(exemplars if split == "train" else 2):
            rgb = np.clip(base + rng.normal(0, 0.05, 3), 0, 1)
            path = stim / split / f"c{c}" / f"c{c}_{e}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.new("RGB", (48, 48), (128, 128, 128))
            ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=tuple(int(255 * v) for v in rgb))
            img.save(path)
            key = f"img{len(entries)}"
            entries[key] = {"stim_file": str(path.relative_to(folder)), "concept": f"c{c}",
                            "split": split}
            trials += [(key, rgb)] * (1 if split == "train" else 2)
    order = rng.permutation(len(trials))
    n = int((len(trials) * soa + 3) * sfreq)
    data = noise * rng.standard_normal((len(names), n))
    common = rng.standard_normal(len(names))  # the evoked response every image gives
    t = np.arange(int(0.8 * sfreq)) / sfreq
    bump = np.exp(-0.5 * ((t - 0.35) / 0.12) ** 2)  # sustained, ~0.1-0.6 s
    onsets, descriptions = [], []
    for i, k in enumerate(order):
        key, rgb = trials[k]
        onset = 2.0 + i * soa
        s = int(round(onset * sfreq))
        data[:, s:s + len(t)] += (common + 2 * mixing @ (rgb - 0.5))[:, None] * bump[None, :]
        onsets.append(onset)
        descriptions.append(key)
    info = mne.create_info(names, sfreq, "eeg")
    raw = mne.io.RawArray(data * 1e-5, info, verbose="error")
    raw.set_montage("standard_1020", verbose="error")
    raw.set_annotations(mne.Annotations(onsets, 0.5, descriptions))
    recording = folder / "synthetic_raw.fif"
    raw.save(recording, verbose="error")
    mapping = folder / "mapping.json"
    mapping.write_text(json.dumps(entries))
    return recording, mapping


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    recording, mapping = write_synthetic(folder)
    return load_session(recording, mapping=mapping, progress=False), recording, mapping


# --------------------------------------------------------------------------- losses


def test_clip_loss_random_is_log_batch_aligned_is_zero():
    torch.manual_seed(0)
    b, d = 16, 4096
    image = torch.randn(b, d)
    brain = torch.randn(b, d)
    # Brain-to-image form at scale 1: random cosines ~ 0 -> uniform softmax.
    loss = clip_loss(brain * 1e-3, image, symmetric=False)
    assert loss.item() == pytest.approx(math.log(b), rel=1e-3)
    assert clip_loss(brain, image, logit_scale=0.0).item() == pytest.approx(math.log(b), rel=0.02)
    aligned = torch.nn.functional.normalize(image, dim=-1) * 100
    assert clip_loss(aligned, image, symmetric=False).item() < 1e-3
    assert clip_loss(aligned, image, logit_scale=math.log(100)).item() < 1e-3
    # The scale is clamped at 100: a larger logit_scale changes nothing.
    at_max = clip_loss(brain, image, logit_scale=math.log(100))
    assert clip_loss(brain, image, logit_scale=10.0) == at_max


def test_clip_loss_repeated_images_are_not_negatives():
    torch.manual_seed(0)
    image = torch.randn(4, 64)
    labels = torch.tensor([0, 1, 0, 2])
    image[2] = image[0]  # one image shown twice in the batch
    brain = torch.nn.functional.normalize(image, dim=-1) * 50
    loss = clip_loss(brain, image, labels=labels, symmetric=False)
    assert loss.item() < 1e-3  # the duplicate is one column, not a competing negative
    assert clip_loss(brain, image, labels=labels, logit_scale=math.log(50)).item() < 1e-3


def test_gradient_reaches_the_temperature():
    loss_fn = ClipLoss(symmetric=True)
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    loss = loss_fn(torch.randn(8, 16, requires_grad=True), torch.randn(8, 16))
    loss.backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad.abs() > 0
    assert ClipLoss(symmetric=False).logit_scale is None


def test_mse_and_mix():
    pred, target = torch.zeros(3, 4), torch.ones(3, 4)
    assert mse_loss(pred, target).item() == 4.0  # summed over dimensions, mean over windows
    is_stim = torch.tensor([True, True, False])
    labels = torch.tensor([0, 1, -1])
    image = torch.eye(4)[:3]
    mix = DecodingLoss("mix", lam=0.25)
    total, parts = mix(torch.randn(3, 4), torch.zeros(3, 4), image, labels, is_stim)
    assert parts["mse"] == pytest.approx(1.0)  # stimulus windows only: |0 - unit|^2
    assert total.item() == pytest.approx(0.25 * parts["clip"] + 0.75 * parts["mse"], rel=1e-6)
    assert set(DecodingLoss("clip")(torch.randn(3, 4), torch.zeros(3, 4), image, labels,
                                    is_stim)[1]) == {"clip"}
    with pytest.raises(InputError, match="loss among"):
        DecodingLoss("hinge")
    with pytest.raises(InputError, match="one shape"):
        mse_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# --------------------------------------------------------------------------- config


def test_config_round_trip_and_checks():
    config = TrainConfig(loss="clip_symmetric", eval_offsets=[0.3, 0.4])
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="model in"):
        TrainConfig(model="transformer")
    with pytest.raises(InputError, match="unknown"):
        TrainConfig.from_dict({"epochz": 3})


# --------------------------------------------------------------------------- training


def _check_checkpoint_reproduces(result, session):
    ckpt = load_checkpoint(result.checkpoint_dir)
    splits = split_trials(session, result.config.val_concept_fraction, result.config.seed)
    ws = fixed_windows(session, splits.val, window_s=result.config.window_s, offsets=(0.3,))
    emb, conf = ckpt.encode(ws.x, subject=0)
    model = result.model
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            clip, mse = model(torch.from_numpy(ws.x), torch.zeros(len(ws), dtype=torch.long))
        want = (clip if ckpt.retrieval_head == "clip" else mse).numpy()
    else:
        want = model.predict(ws.x)
    np.testing.assert_array_equal(emb, want)
    return ckpt, conf


@pytest.fixture(scope="module")
def meg_session(small_meg_session):
    return load_session(small_meg_session[0], progress=False)


def test_train_brain_encoder_end_to_end(meg_session, tmp_path):
    session = meg_session
    config = TrainConfig(val_concept_fraction=0.25, **TINY)
    result = train(session, config, tmp_path / "ckpt", progress=False)
    ckpt, conf = _check_checkpoint_reproduces(result, session)
    assert ckpt.model_name == "brain_encoder" and ckpt.n_times == 30
    assert ckpt.config["model"]["config"]["hidden"] == 16
    assert ckpt.fingerprint == session.fingerprint
    assert ckpt.config["training"] == config.to_dict()
    cal = ckpt.config["confidence"]
    assert cal["calibrated"] and len(cal["weight"]) == 3 * ckpt.n_chans
    assert all(isinstance(cal[k], float) for k in ("bias", "ece", "auc"))
    assert conf is not None and np.all((conf >= 0) & (conf <= 1))
    m = result.metrics
    # 2 held-out concepts x 2 exemplars: top-5 among 4 images is always right.
    assert m["epochs_run"] <= 3 and m["n_val_concepts"] == 2 and m["n_val_images"] == 4
    assert m["val_chance_top5"] == 1.0 and len(result.history) == m["epochs_run"]
    assert 0 <= m["confidence_ece"] <= 1
    for figure in ("training.png", "reliability.png"):
        assert (tmp_path / "ckpt" / "figures" / figure).stat().st_size > 1000


def test_train_ridge_end_to_end(meg_session, tmp_path):
    config = TrainConfig(model="ridge", val_concept_fraction=0.25, ridge_draws=2)
    result = train(meg_session, config, tmp_path / "ridge", progress=False)
    ckpt, conf = _check_checkpoint_reproduces(result, meg_session)
    assert ckpt.model_name == "ridge" and ckpt.config["model"]["config"]["n_chans"] == 274
    assert conf is not None and (tmp_path / "ridge" / "figures" / "reliability.png").is_file()


def test_ridge_learns_through_the_same_entry_point(synthetic, tmp_path):
    session, _, _ = synthetic
    config = TrainConfig(model="ridge", val_concept_fraction=0.34, ridge_draws=2, seed=1)
    result = train(session, config, tmp_path / "ridge", progress=False)
    ckpt, conf = _check_checkpoint_reproduces(result, session)
    assert ckpt.model_name == "ridge" and ckpt.retrieval_head == "mse"
    m = result.metrics
    # Held-out colours are predictable from the linear response: well above chance.
    assert m["val_top5"] > 1.5 * m["val_chance_top5"], m
    # The confidence separates windows with a response from those without.
    assert m["confidence_auc"] > 0.8, m


def test_braindecode_peer_trains_on_live_windows(synthetic, tmp_path):
    session, _, _ = synthetic
    config = TrainConfig(model="shallow_fbcsp", epochs=1, batch_size=16, val_concept_fraction=0.34)
    result = train(session, config, tmp_path / "shallow", progress=False)
    ckpt, conf = _check_checkpoint_reproduces(result, session)
    assert ckpt.model_name == "shallow_fbcsp" and ckpt.n_times == 30 and conf is not None


def test_train_refuses_a_single_concept(tmp_path):
    recording, mapping = write_synthetic(tmp_path, concepts=1, test_concepts=1)
    session = load_session(recording, mapping=mapping, progress=False)
    with pytest.raises(InputError, match="at least 2 concepts"):
        train(session, TrainConfig(**TINY), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import hashlib, json, os, sys
from glimpse.models.data import load_session
from glimpse.models.train import TrainConfig, train
recording, mapping, out, config = sys.argv[1:5]
session = load_session(recording, mapping=mapping, progress=False)
result = train(session, TrainConfig(**json.loads(config)), out, progress=False)
digest = hashlib.sha256()
for name, tensor in sorted(result.model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
with open(os.path.join(out + "-hashes", "rank" + os.environ["RANK"]), "w") as f:
    f.write(json.dumps({"hash": digest.hexdigest(), "world": result.metrics["world_size"],
                        "wrote": result.checkpoint_dir is not None}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)  # two interpreters importing torch and MNE on 2 busy cores
def test_ddp_two_processes(synthetic, tmp_path):
    _, recording, mapping = synthetic
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "ckpt"
    (tmp_path / "ckpt-hashes").mkdir()
    config = dict(TINY, epochs=2, val_concept_fraction=0.34)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(recording), str(mapping), str(out), json.dumps(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ckpt-hashes" / f"rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["hash"] == ranks[1]["hash"]  # DDP kept the replicas identical
    assert [r["world"] for r in ranks] == [2, 2] and [r["wrote"] for r in ranks] == [True, False]
    ckpt = load_checkpoint(out)
    assert ckpt.config["metrics"]["world_size"] == 2
