"""glimpse.models.data: loading, and the refusals (NaN, one concept, channels); THINGS-EEG2."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.models.data import _check_channels, load_session
from glimpse.models.windows import WindowSampler, fixed_windows, split_trials
from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import OnlinePreprocessor, PreprocessConfig, preprocess_raw
from glimpse.streaming.recordings import open_recording


@pytest.fixture(scope="module")
def session(small_meg_session):
    root, _, _ = small_meg_session
    return load_session(root, progress=False)


# --------------------------------------------------------------------------- loading


def test_session_shape_and_scaler(session, small_meg_session):
    root, config, _ = small_meg_session
    assert session.subjects == ["01"] and session.sfreq == 120.0 and session.kind == "continuous"
    assert session.positions.shape == (session.n_chans, 2)
    assert session.runs[0].data.dtype == np.float32
    assert session.preprocess.is_fitted and session.preprocess.ch_names == session.ch_names
    n_train = config.concepts * config.exemplars
    assert int(np.sum(session.trials.split == "train")) == n_train
    assert len(session.images) == n_train + config.test_concepts * config.test_exemplars
    # The stored preprocessing reproduces the training data (the live path's numbers).
    raw = open_recording(root, subject="01").raw
    again = preprocess_raw(raw, session.preprocess)
    np.testing.assert_allclose(again, session.runs[0].data, atol=1e-4)
    # Delay: the constant anti-alias FIR delay, not compensated (see glimpse.models.data).
    online = OnlinePreprocessor(session.preprocess, raw.info["sfreq"])
    assert session.group_delay == pytest.approx(online.group_delay)


def test_fingerprint_is_stable_and_tracks_preprocessing(session, small_meg_session):
    root, _, _ = small_meg_session
    assert len(session.fingerprint) == 64
    again = load_session(root, progress=False, preprocess=PreprocessConfig(h_freq=30.0))
    assert again.fingerprint != session.fingerprint


# --------------------------------------------------------------------------- refusals


def _write_eeg(path, data, sfreq, descriptions, onsets, ch_names=("O1", "Oz", "O2", "Pz")):
    import mne

    info = mne.create_info(list(ch_names), sfreq, "eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_montage("standard_1020", verbose="error")
    raw.set_annotations(mne.Annotations(onsets, 0.5, descriptions))
    raw.save(path, verbose="error")
    return path


def _mapping(tmp_path, concepts):
    folder = tmp_path / "stim"
    folder.mkdir(exist_ok=True)
    mapping = {}
    for i, concept in enumerate(concepts):
        f = folder / f"img{i}.png"
        f.write_bytes(b"")  # only existence is checked when loading
        mapping[f"stim{i}"] = {"stim_file": str(f), "concept": concept, "split": "train"}
    return mapping


def test_nan_is_refused_naming_channel_and_time(tmp_path):
    sfreq = 250.0
    data = np.random.default_rng(0).standard_normal((4, 2500)) * 1e-5
    data[2, 700:] = np.nan  # O2 from 2.8 s
    data[3, 900] = np.nan
    path = _write_eeg(tmp_path / "nan_raw.fif", data, sfreq, ["stim0", "stim1"], [1.0, 3.0])
    with pytest.raises(InputError, match=r"channel O2 at 2\.800 s"):
        load_session(path, mapping=_mapping(tmp_path, ["a", "b"]), progress=False)


def test_single_concept_is_refused(tmp_path):
    data = np.random.default_rng(0).standard_normal((4, 2500)) * 1e-5
    path = _write_eeg(tmp_path / "one_raw.fif", data, 250.0, ["stim0", "stim1", "stim2"],
                      [1.0, 3.0, 5.0])
    session = load_session(path, mapping=_mapping(tmp_path, ["dog", "dog", "dog"]), progress=False)
    assert session.positions.shape == (4, 2)
    with pytest.raises(InputError, match="at least 2 concepts"):
        split_trials(session)


def test_missing_channels_are_named():
    config = PreprocessConfig(ch_names=("MLO11", "MLO12", "MRT52"))
    with pytest.raises(InputError, match=r"sub-02 \(x\.fif\) lacks 2 of the 3 channels: MLO11, MRT52"):
        _check_channels(config, ["MLO12", "MZO01"], "02", __import__("pathlib").Path("x.fif"))


def test_things_eeg2_epochs(tmp_path):
    """A miniature THINGS-EEG2 layout: epochs, each window inside its own epoch."""
    names = ["Pz", "P3", "P7", "O1", "Oz", "O2", "P4", "P8", "P1", "P5", "PO7", "PO3", "POz",
             "PO4", "PO8", "P6", "P2"]
    times = np.round(np.arange(-0.2, 0.8, 0.01), 2)
    rng = np.random.default_rng(0)
    images = tmp_path / "image_set"
    meta = {}
    for split, folder, n_img, n_rep in (("train", "training_images", 6, 2),
                                        ("test", "test_images", 2, 3)):
        files, concepts = [], []
        for i in range(n_img):
            concept = f"{i // 2 + 1:05d}_{split}{i // 2}"
            (images / folder / concept).mkdir(parents=True, exist_ok=True)
            (images / folder / concept / f"{concept}_{i}.jpg").write_bytes(b"")
            files.append(f"{concept}_{i}.jpg")
            concepts.append(concept)
        key = "train" if split == "train" else "test"
        meta[f"{key}_img_files"], meta[f"{key}_img_concepts"] = files, concepts
        subj = tmp_path / "Preprocessed_data_100Hz" / "sub-01"
        subj.mkdir(parents=True, exist_ok=True)
        name = "preprocessed_eeg_training.npy" if split == "train" else "preprocessed_eeg_test.npy"
        np.save(subj / name, {"preprocessed_eeg_data": rng.standard_normal((n_img, n_rep, 17, 100)),
                              "ch_names": names, "times": times}, allow_pickle=True)
    np.save(images / "image_metadata.npy", meta, allow_pickle=True)
    session = load_session(tmp_path, progress=False)
    assert session.kind == "epochs" and session.sfreq == 100.0 and session.group_delay == 0
    assert len(session.trials) == 6 * 2 + 2 * 3 and len(session.images) == 8
    splits = split_trials(session, 0.0)
    ws = fixed_windows(session, splits.train, window_s=0.25, offsets=(0.5,))
    assert len(ws) == 12
    # Epoch i occupies samples [100 i, 100 (i + 1)); onset (t = 0) is its 21st sample.
    row = session.trials.run == session.trials.run[splits.train[0]]
    first = np.flatnonzero(row)[0]
    assert session.trials.onset[first] == pytest.approx(0.2)
    sampler = WindowSampler(session, splits.train, nothing_fraction=1.0)
    drawn = sampler.sample(0)
    # The one nothing-new window an epoch holds: -0.2..0.04 s, at its very start.
    nothing = ~drawn.is_stimulus
    assert nothing.sum() == 12 and np.allclose(drawn.offset_s[nothing], 0.04)
    bounds = session.trials.bounds[drawn.trial]
    end = np.round((session.trials.onset[drawn.trial] + drawn.offset_s) * 100).astype(int)
    assert np.all((end - 24 >= bounds[:, 0]) & (end < bounds[:, 1]))
