"""The session simulator: files mne-bids reads back, a design like THINGS, physics that shows.

Sessions are simulated once per module at the test size (1 subject, 8 training
concepts x 2 exemplars) and shared; every check reads the written files, not the
simulator's internals, except where the internals are the thing under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pandas as pd
import pytest
from scipy import signal

from glimpse.streaming.errors import InputError
from glimpse.streaming.simulate import SimulationConfig, clean_responses, simulate_session

EVENT_COLUMNS = {"onset", "duration", "trial_type", "value", "sample", "image_path", "concept"}


def _events(root: Path, modality: str, subject: str = "01") -> pd.DataFrame:
    path = root / f"sub-{subject}" / modality / f"sub-{subject}_task-things_events.tsv"
    return pd.read_csv(path, sep="\t")


def _raw(root: Path, modality: str, subject: str = "01") -> mne.io.BaseRaw:
    bids_path = mne_bids.BIDSPath(subject=subject, task="things", datatype=modality, root=root)
    return mne_bids.read_raw_bids(bids_path, verbose=False)


def _posterior(ch_names: list[str], modality: str) -> list[str]:
    if modality == "meg":
        return [c for c in ch_names if c.startswith("M") and c[2] == "O"]
    return [c for c in ch_names if c.startswith(("O", "PO", "Iz"))]


def _epochs(root: Path, modality: str, picks: list[str], tmin: float, tmax: float, band=(1.0, 40.0)):
    """Band-passed, baseline-corrected epochs of ``picks`` for every trial, and the events."""
    raw = _raw(root, modality)
    raw.pick(picks).load_data()
    sfreq = raw.info["sfreq"]
    sos = signal.butter(4, band, "bandpass", fs=sfreq, output="sos")
    data = signal.sosfiltfilt(sos, raw.get_data(), axis=-1)
    events = _events(root, modality)
    n0, n1 = int(round(tmin * sfreq)), int(round(tmax * sfreq))
    epochs = np.stack([data[:, s + n0 : s + n1] for s in events["sample"]])
    epochs -= epochs[:, :, : -n0].mean(axis=2, keepdims=True)
    return epochs, np.arange(n0, n1) / sfreq, events


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def meg(small_meg_session) -> tuple[Path, SimulationConfig, object]:
    return small_meg_session


@pytest.fixture(scope="module")
def eeg(tmp_path_factory, small_meg_session) -> tuple[Path, SimulationConfig, object]:
    config = dataclasses.replace(small_meg_session[1], modality="eeg")
    root = tmp_path_factory.mktemp("eeg") / "sim"
    return root, config, simulate_session(config, root, progress=False)


# Timeouts: the first test to use a fixture pays for simulating it (~5 s MEG, ~2 s
# EEG on 2 cores); 60 s leaves room for a slow CI machine without letting a hang stall.


@pytest.mark.timeout(60)
def test_meg_session_reads_back_with_mne_bids(meg):
    root, config, result = meg
    raw = _raw(root, "meg")
    assert raw.info["sfreq"] == 1200.0
    assert len(mne.pick_types(raw.info, meg=True)) == 274  # CTF-275 canonical layout
    assert raw.ch_names[-1] == "STI101"
    assert result.data_files["01"].is_file() and result.data_files["01"].suffix == ".fif"
    assert abs(raw.times[-1] - result.duration_s["01"]) < 0.01
    # The trigger channel carries exp=1, test=2, catch=3 at every event onset.
    events = _events(root, "meg")
    stim = raw.get_data(picks="STI101", start=0, stop=raw.n_times)[0]
    np.testing.assert_array_equal(stim[events["sample"].to_numpy()], events["value"].to_numpy())


@pytest.mark.timeout(60)
def test_events_follow_the_things_design(meg):
    root, config, result = meg
    events = _events(root, "meg")
    assert EVENT_COLUMNS <= set(events.columns)
    assert set(events["trial_type"]) == {"exp", "test", "catch"}
    np.testing.assert_allclose(events["duration"], 0.5)
    assert events["value"].map({1: "exp", 2: "test", 3: "catch"}).tolist() == events["trial_type"].tolist()
    for path in events["image_path"].unique():
        assert (root / path).is_file() and (root / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    exp, test = events[events.trial_type == "exp"], events[events.trial_type == "test"]
    assert set(exp["concept"]).isdisjoint(set(test["concept"]))
    assert exp["image_path"].value_counts().eq(1).all()
    assert len(exp) == config.concepts * config.exemplars
    assert test["image_path"].value_counts().eq(config.test_repeats).all()
    assert test["image_path"].nunique() == config.test_concepts * config.test_exemplars
    assert (events.loc[events.trial_type == "catch", "image_path"] == "stimuli/catch/catch.png").all()
    # Randomised order, 500 ms on + 1000 +- 200 ms fixation.
    assert not (events["trial_type"].iloc[: len(exp)] == "exp").all()
    soa = np.diff(events["onset"].to_numpy())
    assert soa.min() >= 1.3 - 1e-3 and soa.max() <= 1.7 + 1e-3 and soa.std() > 0.05


@pytest.mark.timeout(60)
def test_eeg_session_has_64_channels_and_blinks(eeg):
    root, config, result = eeg
    raw = _raw(root, "eeg")
    assert raw.info["sfreq"] == 1000.0
    assert len(mne.pick_types(raw.info, eeg=True)) == 64
    raw.pick(["Fp1", "Fp2", "O1", "O2"]).load_data()
    sos = signal.butter(2, [0.5, 6.0], "bandpass", fs=1000.0, output="sos")
    slow = signal.sosfiltfilt(sos, raw.get_data(), axis=-1)
    frontal, occipital = np.abs(slow[:2]).max(axis=1), np.abs(slow[2:]).max(axis=1)
    # Blinks (~100 uV) dominate the slow activity at Fp1/Fp2, not at O1/O2.
    assert frontal.min() > 3 * occipital.max()
    assert frontal.min() > 50e-6
    events = _events(root, "eeg")
    assert EVENT_COLUMNS <= set(events.columns)


@pytest.mark.timeout(60)
def test_evoked_response_peaks_where_configured(meg):
    root, config, _ = meg
    raw_names = _raw(root, "meg").ch_names
    epochs, times, events = _epochs(root, "meg", _posterior(raw_names, "meg"), -0.2, 0.8)
    keep = (events["trial_type"] != "catch").to_numpy()
    rms = np.sqrt((epochs[keep].mean(axis=0) ** 2).mean(axis=0))
    # Search from 50 ms to halfway to the first late component (170 ms).
    window = (times >= 0.05) & (times <= 0.135)
    peak = times[window][np.argmax(rms[window])]
    assert abs(peak - config.early_latency) <= 0.02, peak
    assert rms[window].max() > 1.5 * rms[window][[0, -1]].max()  # a real peak, not a flank
    post, pre = rms[(times > 0.05) & (times < 0.35)], rms[times < 0]
    assert np.sqrt(np.mean(post**2)) > 3 * np.sqrt(np.mean(pre**2))
    offset = (times > 0.55) & (times < 0.65)
    assert rms[offset].max() > 2 * np.sqrt(np.mean(pre**2))


@pytest.mark.timeout(60)
def test_responses_depend_on_the_image(meg):
    """Split halves of the same test concept correlate more than different concepts.

    This fails if the simulated response ignores the image: after removing the
    response common to all concepts, only concept-specific signal can correlate.
    """
    root, config, _ = meg
    raw_names = _raw(root, "meg").ch_names
    epochs, times, events = _epochs(root, "meg", _posterior(raw_names, "meg"), -0.1, 0.45, band=(1.0, 20.0))
    win = times > 0.05
    test = events[events["trial_type"] == "test"]
    concepts = sorted(test["concept"].unique())
    halves = []
    for parity in (0, 1):
        rows = []
        for concept in concepts:
            idx = test.index[(test["concept"] == concept)].to_numpy()
            rows.append(epochs[idx[parity::2]][:, :, win].mean(axis=0).ravel())
        rows = np.array(rows)
        halves.append(rows - rows.mean(axis=0))
    corr = np.corrcoef(halves[0], halves[1])[: len(concepts), len(concepts) :]
    same, other = np.diag(corr).mean(), corr[~np.eye(len(concepts), dtype=bool)].mean()
    # Seeds 0-4 give margins of 0.35-0.7; image-blind responses give ~0 +- 0.1.
    assert same > other + 0.2, (same, other)


@pytest.mark.timeout(60)
def test_clean_responses_are_what_the_data_carries(meg):
    root, config, _ = meg
    clean = clean_responses(root, "01")
    raw_names = _raw(root, "meg").ch_names
    picks = _posterior(raw_names, "meg")
    epochs, times, events = _epochs(root, "meg", picks, -0.2, 0.6)
    test = events[events["trial_type"] == "test"]
    rows = [clean.ch_names.index(c) for c in picks]
    n = int((times >= 0).sum())
    corrs = []
    for path in test["image_path"].unique():
        measured = epochs[test.index[test["image_path"] == path]].mean(axis=0)[:, times >= 0]
        truth = clean.response(path)[rows, :n]
        corrs.append(np.corrcoef(measured.ravel(), truth.ravel())[0, 1])
    assert np.mean(corrs) > 0.6, corrs
    with pytest.raises(InputError, match="image_path"):
        clean.response("stimuli/nope.png")


def _measured_snr_db(root: Path, modality: str) -> float:
    """Single-trial SNR from the files: test repeats give signal (their mean) and noise (deviations)."""
    raw_names = _raw(root, modality).ch_names
    epochs, times, events = _epochs(root, modality, _posterior(raw_names, modality), -0.1, 0.6, band=(1.0, 40.0))
    epochs = epochs[:, :, times >= 0]
    test = events[events["trial_type"] == "test"]
    signal_power, noise_power = [], []
    for path in test["image_path"].unique():
        trials = epochs[test.index[test["image_path"] == path]]
        r = len(trials)
        noise = ((trials - trials.mean(axis=0)) ** 2).mean() * r / (r - 1)
        signal_power.append((trials.mean(axis=0) ** 2).mean() - noise / r)
        noise_power.append(noise)
    return 10 * math.log10(max(np.mean(signal_power), 1e-40) / np.mean(noise_power))


@pytest.mark.timeout(90)  # two extra EEG sessions (~2 s each) + reading them back
def test_snr_knob_changes_the_measured_snr(tmp_path, small_meg_session):
    measured = {}
    for snr in (-15.0, 0.0):
        config = dataclasses.replace(small_meg_session[1], modality="eeg", snr_db=snr)
        simulate_session(config, tmp_path / str(snr), progress=False)
        measured[snr] = _measured_snr_db(tmp_path / str(snr), "eeg")
        realised = json.loads((tmp_path / str(snr) / "simulation.json").read_text())["derived"]["subjects"][0]["realized_snr_db"]
        assert abs(realised - snr) < 0.5
    assert measured[0.0] > measured[-15.0] + 8, measured  # line noise and blinks cap the top end


@pytest.mark.timeout(90)  # two more MEG sessions (~5 s each) on 2 cores
def test_same_seed_same_files_other_seed_other_data(meg, tmp_path):
    root, config, result = meg
    again = simulate_session(config, tmp_path / "again", progress=False)
    first, second = _hashes(root), _hashes(again.bids_root)
    assert first.keys() == second.keys()
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, differ
    data = "sub-01/meg/sub-01_task-things_meg.fif"
    assert {data, "sub-01/meg/sub-01_task-things_events.tsv", "stimuli/catch/catch.png"} <= first.keys()
    assert sum(k.endswith(".png") for k in first) > config.concepts * config.exemplars
    other = simulate_session(SimulationConfig(**{**config.to_dict(), "seed": 1}), tmp_path / "other", progress=False)
    assert _hashes(other.bids_root)[data] != first[data]


@pytest.mark.timeout(60)
def test_a_new_person_joins_the_world_of_a_session(meg, tmp_path):
    """first_subject: the same world (stimuli, patterns), a subject the session does not have."""
    root, config, _ = meg
    new = simulate_session(dataclasses.replace(config, first_subject=2), tmp_path / "new", progress=False)
    base, other = _hashes(root), _hashes(new.bids_root)
    assert "sub-02/meg/sub-02_task-things_meg.fif" in other and not any(k.startswith("sub-01/") for k in other)
    images = [k for k in base if k.startswith("stimuli/")]
    assert images and all(other[k] == base[k] for k in images)  # the same images: the same world
    assert json.loads((new.bids_root / "simulation.json").read_text())["derived"]["subjects"][0]["subject"] == "02"


@pytest.mark.timeout(30)
def test_figure_and_record_are_written(meg):
    root, config, result = meg
    assert result.figure_path == root / "figures" / "evoked.png"
    assert result.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((root / "simulation.json").read_text())
    assert SimulationConfig.from_dict(record["config"]) == config
    assert record["seed"] == 0
    derived = record["derived"]
    assert derived["sfreq"] == 1200.0 and derived["head"]["n_chans"] == 274
    assert set(derived["train_concepts"]).isdisjoint(derived["test_concepts"])
    assert abs(record["measured_from_files"]["early_peak_s"]["01"] - 0.1) <= 0.02
    summary = result.summary()
    json.dumps(summary)
    assert summary["n_trials_per_subject"]["exp"] == config.concepts * config.exemplars
    assert summary["total_mb"] > 0


def test_config_round_trips_through_json():
    config = SimulationConfig(modality="eeg", subjects=3, late_latencies=(0.18, 0.3), snr_db=-5.0)
    again = SimulationConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert SimulationConfig().resolved_sfreq == 1200.0 and again.resolved_sfreq == 1000.0


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("concepts", 0, "--concepts >= 2"),
        ("subjects", 0, "--subjects"),
        ("test_concepts", 0, "--test-concepts"),
        ("snr_db", float("nan"), "--snr-db"),
        ("image_size", 16, "--image-size"),
        ("modality", "fmri", "--modality"),
        ("concepts", 59, "--concepts"),
        ("first_subject", 0, "--first-subject"),
    ],
)
def test_bad_config_is_an_input_error(field, value, flag):
    with pytest.raises(InputError, match=flag) as err:
        SimulationConfig(**{field: value})
    assert "Fix:" in str(err.value)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(InputError, match="unknown keys"):
        SimulationConfig.from_dict({"concepts": 4, "colour": "red"})


@pytest.mark.timeout(60)  # one tiny EEG session
def test_out_dir_must_be_empty_unless_overwrite(tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    tiny = SimulationConfig(modality="eeg", subjects=1, concepts=2, exemplars=1, test_concepts=1, test_exemplars=1, test_repeats=2, image_size=32)
    with pytest.raises(InputError, match="--overwrite") as err:
        simulate_session(tiny, out, progress=False)
    assert str(out) in str(err.value)
    assert (out / "old.txt").read_text() == "keep me"
    result = simulate_session(tiny, out, overwrite=True, progress=False)
    assert not (out / "old.txt").exists()
    assert (out / "dataset_description.json").is_file() and result.data_files["01"].is_file()


def test_shape_code_ignores_where_and_how_big_and_tells_shapes_apart():
    """The late components' shape code is position/size invariant yet shape specific.

    That is what makes unseen concepts decodable: a new family x variant pair is
    coded by what its image looks like. Fails if the code follows position or size
    (same shape moved and scaled would differ) or ignores the shape.
    """
    from glimpse.streaming.simulate.physics import shape_features
    from glimpse.streaming.simulate.stimuli import sample_stimulus

    def stim(family, variant, seed):
        return sample_stimulus(1, "train", family, variant, 1, np.random.default_rng(seed))

    same, other = [], []
    for seed in range(6):
        star = shape_features(stim("star", "single", seed))
        same.append(star @ shape_features(stim("star", "single", seed + 100)))
        other.append(star @ shape_features(stim("cross", "hollow", seed + 100)))
    assert np.allclose([np.linalg.norm(shape_features(stim("heart", "pair", 1)))], 1.0)
    # Measured: same shape (moved, scaled, recoloured, rotated) ~0.5-0.9, other shapes ~0-0.3.
    assert np.mean(same) > np.mean(other) + 0.3, (same, other)
