"""glimpse.models.windows: cutting windows at fixed and random offsets, and the trial splits."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.models.data import load_session
from glimpse.models.windows import (EPOCH_SPAN, MIN_QUIET_S, NOTHING_OFFSETS, STIM_OFFSETS,
                                    WindowSampler, cut_windows, epochs, fixed_windows,
                                    split_trials, window_ends)
from glimpse.streaming.errors import InputError


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
