"""glimpse.models.data: loading, windows, splits, and the refusals (NaN, one concept, channels)."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.models.data import (EPOCH_SPAN, MIN_QUIET_S, NOTHING_OFFSETS, STIM_OFFSETS, WindowSampler,
                         _check_channels, cut_windows, epochs, fixed_windows, load_session,
                         split_trials, window_ends)
from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import OnlinePreprocessor, PreprocessConfig, preprocess_raw
from glimpse.streaming.recordings import open_recording


@pytest.fixture(scope="module")
def session(small_meg_session):
    root, _, _ = small_meg_session
    return load_session(root, progress=False)


# --------------------------------------------------------------------------- pure windowing


def test_window_ends_and_cut_on_a_ramp():
    sfreq = 120.0
    data = np.tile(np.arange(1000, dtype=np.float32), (3, 1))  # value = sample index
    onsets = np.array([2.0, 3.4375])  # on and off the sample grid
    ends = window_ends(onsets, 0.25, sfreq)
    assert ends.tolist() == [270, 442]  # the last sample at or before onset + 0.25 s
    x = cut_windows(data, ends, 30)
    assert x.shape == (2, 3, 30) and x.dtype == np.float32
    assert x[0, 0, -1] == 270 and x[0, 0, 0] == 241  # 30 consecutive samples ending there
    with pytest.raises(InputError, match="window ends"):
        cut_windows(data, np.array([10]), 30)


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


def test_windows_land_relative_to_onset(session, small_meg_session):
    """Window content = the causal output at the window's times; the evoked peak lags the
    onset by the filters' delay (the model learns it), measured against the simulator's
    noise-free responses."""
    from glimpse.streaming.simulate import clean_responses

    root, config, _ = small_meg_session
    table = session.trials
    trials = table.select()
    ws = fixed_windows(session, trials, offsets=(0.3,))
    assert len(ws) == len(trials)
    k = np.floor((table.onset[trials] + 0.3) * 120 + 1e-6).astype(int)
    np.testing.assert_array_equal(ws.x[:, :, -1], session.runs[0].data[:, k].T)
    assert np.all((ws.offset_s <= 0.3 + 1e-6) & (ws.offset_s > 0.3 - 1 / 120))

    ep = epochs(session, trials)
    assert ep.x.shape[1:] == (session.n_chans, 181)  # -0.5..1.0 s at 120 Hz, as the paper
    clean = clean_responses(root, "01")
    rel = [str(p.relative_to(root)) for p in session.images]
    post = [i for i, n in enumerate(session.ch_names) if n[2] == "O"]  # CTF occipital
    rows = [clean.ch_names.index(session.ch_names[i]) for i in post]
    # Noise-free evoked RMS at the output rate, time 0 = onset.
    resp = np.mean([clean.response(rel[table.image[t]])[rows] for t in trials], axis=0)
    step = int(round(clean.sfreq / 120))
    model_rms = np.sqrt((resp[:, ::step] ** 2).mean(0))[:120]
    data_rms = np.sqrt((ep.x[:, post].mean(0) ** 2).mean(0))  # in scaled units
    start = int(round(-EPOCH_SPAN[0] * 120))  # sample of the onset in the epoch
    lags = range(0, 20)
    corr = [np.corrcoef(data_rms[start + lag:start + lag + 60], model_rms[:60])[0, 1]
            for lag in lags]
    lag_s = lags[int(np.argmax(corr))] / 120
    # FIR delay (61 ms) + band-pass delay (~5 ms), within one output sample.
    assert abs(lag_s - session.group_delay) <= 0.02, (lag_s, session.group_delay, corr)
    assert max(corr) > 0.8


def test_fingerprint_is_stable_and_tracks_preprocessing(session, small_meg_session):
    root, _, _ = small_meg_session
    assert len(session.fingerprint) == 64
    again = load_session(root, progress=False, preprocess=PreprocessConfig(h_freq=30.0))
    assert again.fingerprint != session.fingerprint


# --------------------------------------------------------------------------- sampling


def test_sampler_windows_stay_in_their_ranges(session):
    splits = split_trials(session, 0.15, seed=0)
    sampler = WindowSampler(session, splits.train, window_s=0.25, nothing_fraction=1.0, seed=3)
    a, b, c = sampler.sample(0), sampler.sample(0), sampler.sample(1)
    np.testing.assert_array_equal(a.x, b.x)  # seeded: (seed, epoch) decides
    assert not np.array_equal(a.offset_s, c.offset_s)
    assert a.x.shape[1:] == (session.n_chans, 30)
    tol = 1 / 120 + 1e-6
    stim, nothing = a.is_stimulus, ~a.is_stimulus
    assert stim.sum() == len(splits.train) and nothing.any()
    assert np.all((a.offset_s[stim] >= STIM_OFFSETS[0] - 1e-6)
                  & (a.offset_s[stim] <= STIM_OFFSETS[1] + 1e-6))
    assert np.all((a.offset_s[nothing] >= NOTHING_OFFSETS[0] - tol)
                  & (a.offset_s[nothing] <= NOTHING_OFFSETS[1] + 1e-6))
    table = session.trials
    start = table.onset[a.trial] + a.offset_s - 29 / 120  # time of each window's first sample
    assert np.all(start[nothing] >= table.prev_onset[a.trial[nothing]] + MIN_QUIET_S - 1e-6)
    assert set(a.target[stim]) <= set(table.image[splits.train])
    item = a[0]
    assert item[0].shape == (session.n_chans, 30) and isinstance(item[3], bool)


def test_validation_concepts_are_disjoint(session):
    splits = split_trials(session, 0.25, seed=1)
    table = session.trials
    assert set(splits.val_concepts).isdisjoint(splits.train_concepts)
    assert set(table.concept[splits.train]) == set(splits.train_concepts)
    assert set(table.concept[splits.val]) == set(splits.val_concepts)
    assert len(splits.val_concepts) == 2  # 25 % of 8 concepts
    assert set(table.split[splits.test]) == {"test"}
    assert not set(splits.test) & (set(splits.train) | set(splits.val))
    assert split_trials(session, 0.25, seed=1).val_concepts == splits.val_concepts


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
    with pytest.raises(InputError, match=r"sub-02 .* lacks 2: MLO11, MRT52"):
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
