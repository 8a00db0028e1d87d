"""The windower on plain arrays: no LSL, no threads, no clock; milliseconds per test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import OnlinePreprocessor, PreprocessConfig, preprocess_raw
from glimpse.streaming.windower import RESET_AFTER, Windower, cut_array

from fitted import HOP_OUT, N_TIMES
from fitted import fitted_config as _config
from fitted import names as _names


def _windower(names, sfreq=1000.0, stream=None, units=None, **kwargs) -> Windower:
    """A stream with SAMPLE_INDEX first, then ``stream`` (default: the checkpoint's names)."""
    stream = list(names) if stream is None else list(stream)
    kwargs.setdefault("max_age", math.inf)
    return Windower(names, _config(names), N_TIMES, sfreq=sfreq,
                    stream_ch_names=["SAMPLE_INDEX", *stream],
                    units=units or ["none"] + ["V"] * len(stream), stream_id="arrays", **kwargs)


def _signal(n, n_chans, sfreq=1000.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 1 + n_chans)`` float32 (index column first) and timestamps from t = 1000 s."""
    rng = np.random.default_rng(seed)
    data = np.empty((n, n_chans + 1), np.float32)
    data[:, 0] = np.arange(n)
    t = np.arange(n) / sfreq
    data[:, 1:] = 1e-5 * (rng.standard_normal((n, n_chans))
                          + np.sin(2 * np.pi * 10 * t[:, None] + np.arange(n_chans)))
    return data, 1000.0 + t


def _push(w, data, times, chunk=10, now=None):
    out = []
    for start in range(0, len(times), chunk):
        t = times[start:start + chunk]
        out.extend(w.push(data[start:start + chunk], t, t[-1] if now is None else now(t)))
    return out


def _expected_windows(n_in: int, up: int, down: int) -> int:
    n_out = -(-n_in * up // down)
    return max(0, (n_out - N_TIMES) // HOP_OUT + 1)


def _spans(pre, total):
    """Input span of each window: its samples plus the anti-alias filter's reach."""
    reach = math.ceil(2 * pre.group_delay * pre.sfreq_in) + 1
    spans = {}
    for seq in range(total):
        end = seq * HOP_OUT + N_TIMES
        spans[seq] = ((end - N_TIMES) * pre.down // pre.up - (reach - 1),
                      (end - 1) * pre.down // pre.up)
    return spans


# ---------------------------------------------------------------------- counts and contents
@pytest.mark.parametrize("sfreq, chunk", [(1000.0, 10), (1200.0, 12), (1200.0, 77)])
def test_windows_are_the_offline_preprocessing_cut_every_hop(sfreq, chunk):
    names = _names(5)
    w = _windower(names, sfreq=sfreq)
    data, times = _signal(int(3 * sfreq), 5, sfreq)
    windows = _push(w, data, times, chunk=chunk)
    pre = OnlinePreprocessor(_config(names), sfreq)
    total = _expected_windows(len(times), pre.up, pre.down)
    assert len(windows) == total == w.stats()["n_windows"] > 50
    assert [x.seq for x in windows] == list(range(total))
    offline = preprocess_raw(data[:, 1:].T.astype(np.float64), _config(names), sfreq)
    for x in windows:
        end = x.seq * HOP_OUT + N_TIMES
        np.testing.assert_allclose(x.data, offline[:, end - N_TIMES:end], atol=1e-4, rtol=1e-4)
        assert x.t_end == times[(end - 1) * pre.down // pre.up]  # newest input it depends on
        assert x.data.dtype == np.float32 and x.chan_mask is None
        assert x.ch_names == tuple(names) and x.stream_id == "arrays"
        assert x.t_pulled == x.t_cut  # no clock given: t_cut is the caller's now
    stats = w.stats()
    assert stats["n_samples"] == len(times) and stats["n_gaps"] == stats["n_invalid_windows"] == 0


def test_cut_array_pulls_what_the_next_window_needs():
    names = _names(3)
    data, times = _signal(2500, 3)
    a, b = _windower(names), _windower(names)
    by_need = cut_array(a, data, times)
    by_chunks = _push(b, data, times, chunk=33)
    # One push per window, after the pushes (of at most max_pull) that fill the first.
    assert len(by_need) <= a.stats()["n_chunks"] <= len(by_need) + 4
    assert [x.seq for x in by_need] == [x.seq for x in by_chunks]
    for x, y in zip(by_need, by_chunks, strict=True):
        np.testing.assert_allclose(x.data, y.data, atol=1e-5)
        assert x.t_end == y.t_end


def test_units_are_scaled_to_si():
    names = _names(4)
    data, times = _signal(1500, 4)
    volts = _push(_windower(names), data.copy(), times)
    micro = data.copy()
    micro[:, 1:] *= 1e6
    in_uv = _push(_windower(names, units=["none"] + ["uV"] * 4), micro, times)
    assert len(volts) == len(in_uv) > 0
    for x, y in zip(volts, in_uv, strict=True):
        np.testing.assert_allclose(x.data, y.data, atol=1e-4)
    ints = _windower(names, units=["none"] + ["uV"] * 4)
    assert ints.to_si(np.full((2, 5), 7, np.int16)).dtype == np.float32


# ---------------------------------------------------------------------- channels
def test_missing_channels_refused_or_masked():
    wanted = _names(8) + ["Cz"]  # EEG006, EEG007 and Cz are not in the stream
    with pytest.raises(InputError) as err:
        _windower(wanted, stream=_names(6))
    assert "lacks 3" in str(err.value)
    assert all(n in str(err.value) for n in ("EEG006", "EEG007", "Cz"))
    with pytest.raises(InputError, match="MEG0111"):  # nothing in common: refused even so
        _windower(["MEG0111", "MEG0112"], stream=_names(6), allow_missing=True)

    # The stream's order differs from the checkpoint's: picked by name.
    stream = _names(6)[::-1]
    w = _windower(wanted, stream=stream, allow_missing=True)
    assert w.missing_channels == ["EEG006", "EEG007", "Cz"]
    data, times = _signal(1500, 6)
    windows = _push(w, data, times)
    assert windows
    x = windows[-1]
    np.testing.assert_array_equal(x.chan_mask, [True] * 6 + [False] * 3)
    assert np.all(x.data[6:] == 0) and np.abs(x.data[:6]).max() > 0
    # EEG000 is the stream's last column: the window's first row is its preprocessing.
    offline = preprocess_raw(data[:, 1:][:, ::-1].T.astype(np.float64), _config(_names(6)),
                             1000.0)
    end = x.seq * HOP_OUT + N_TIMES
    np.testing.assert_allclose(x.data[:6], offline[:, end - N_TIMES:end], atol=1e-4)


def test_settings_are_checked():
    names = _names(3)
    with pytest.raises(InputError, match="fitted"):
        Windower(names, PreprocessConfig(ch_names=tuple(names)), 30, sfreq=1000.0,
                 stream_ch_names=names)
    with pytest.raises(InputError, match="same ch_names"):
        Windower(names[::-1], _config(names), 30, sfreq=1000.0, stream_ch_names=names)
    with pytest.raises(InputError, match="n_times"):
        Windower(names, _config(names), 0, sfreq=1000.0, stream_ch_names=names)
    with pytest.raises(InputError, match="grid one of fixed, chunks"):
        Windower(names, _config(names), 30, sfreq=1000.0, stream_ch_names=names, grid="clock")
    with pytest.raises(InputError, match="max_age"):
        Windower(names, _config(names), 30, sfreq=1000.0, stream_ch_names=names, max_age=0)


# ---------------------------------------------------------------------- bad data
def test_nan_and_inf_bursts_invalidate_the_windows_they_touch():
    names = _names(8)
    w = _windower(names)
    data, times = _signal(3500, 8)
    data[1000:1005, 1:5] = np.nan
    data[2000:2005, 5:9] = np.inf
    windows = _push(w, data, times)
    stats = w.stats()
    assert stats["n_nonfinite"] == 2 * 5 * 4  # two bursts, 5 samples, half the 8 channels
    pre = OnlinePreprocessor(_config(names), 1000.0)
    total = _expected_windows(3500, pre.up, pre.down)
    touched = {s for s, (lo, hi) in _spans(pre, total).items()
               if any(lo <= b + 4 and hi >= b for b in (1000, 2000))}
    assert len(touched) >= 10
    emitted = {x.seq for x in windows}
    assert emitted == set(range(total)) - touched  # never emitted, nothing else lost
    assert stats["n_invalid_windows"] == len(touched)
    assert all(np.isfinite(x.data).all() for x in windows)
    assert max(emitted) > max(touched)  # windows after the bursts are fine


def test_short_gap_invalidates_the_windows_across_it():
    names = _names(4)
    w = _windower(names)
    data, times = _signal(3000, 4)
    times[2000:] += 0.020  # 20 samples lost: a short gap, below RESET_AFTER
    windows = _push(w, data, times)
    stats = w.stats()
    assert stats["n_gaps"] == 1 and stats["n_resets"] == 0
    assert stats["gap_s_total"] == pytest.approx(0.020, abs=1e-6)
    pre = OnlinePreprocessor(_config(names), 1000.0)
    total = _expected_windows(3000, pre.up, pre.down)
    across = {s for s, (lo, hi) in _spans(pre, total).items() if lo <= 1999 and hi >= 2000}
    assert across and stats["n_invalid_windows"] == len(across)
    assert {x.seq for x in windows} == set(range(total)) - across


@pytest.mark.parametrize("jump", [RESET_AFTER + 4.0, -0.5])
def test_long_gap_or_backward_step_restarts_the_epoch(jump):
    names = _names(4)
    w = _windower(names)
    data, times = _signal(3000, 4)
    times[1500:] += jump + (-1.0 if jump < 0 else 0.0)  # backward: 1.5 s back in time
    windows = _push(w, data, times)
    stats = w.stats()
    assert stats["n_gaps"] == 1 and stats["n_resets"] == 1 and stats["n_invalid_windows"] == 0
    pre = OnlinePreprocessor(_config(names), 1000.0)
    per_epoch = _expected_windows(1500, pre.up, pre.down)
    assert len(windows) == 2 * per_epoch
    assert [x.seq for x in windows] == list(range(2 * per_epoch))  # seq goes on
    # The second epoch refills its window first, from the offline preprocessing of its
    # own samples (the filters restarted).
    second = windows[per_epoch:]
    assert second[0].t_end == times[1500 + (N_TIMES - 1) * pre.down // pre.up]
    offline = preprocess_raw(data[1500:, 1:].T.astype(np.float64), _config(names), 1000.0)
    np.testing.assert_allclose(second[0].data, offline[:, :N_TIMES], atol=1e-4)


# ---------------------------------------------------------------------- grid
def test_chunks_grid_moves_windows_onto_the_senders_chunk_ends():
    # 1200 Hz in 12-sample chunks (0-11, 12-23, ...). The fixed grid's windows end on
    # input 10 k for output k = 29, 35, ...: 290 % 12 = 2, so the newest sample waits 9
    # samples (7.5 ms) for the rest of its chunk. Moving the grid 2 outputs later puts
    # it on 310 % 12 = 10: one sample before a chunk end, the best a 10-input output
    # step allows.
    names = _names(3)
    w = _windower(names, sfreq=1200.0, grid="chunks")
    data, times = _signal(4800, 3, 1200.0)
    windows, start = [], 0
    while start < len(times):  # as the acquisition pulls: one chunk while probing
        stop = start + 12 if w.probing else min(len(times), -(-(start + w.need()) // 12) * 12)
        windows.extend(w.push(data[start:stop], times[start:stop], times[stop - 1]))
        start = stop
    stats = w.stats()
    assert stats["grid_shift"] == 2
    newest = np.searchsorted(times, [x.t_end for x in windows])
    phase = newest % 12
    moved = int(np.argmax(phase == 10))  # the first window after the move
    assert moved > 0 and set(phase[:moved]) == {2} and set(phase[moved:]) == {10}
    steps = np.diff(newest)
    assert steps[moved - 1] == 80 and set(np.delete(steps, moved - 1)) == {60}
    assert [x.seq for x in windows] == list(range(len(windows)))  # one hop longer


def test_fixed_grid_never_moves():
    names = _names(3)
    w = _windower(names, sfreq=1200.0)
    data, times = _signal(4800, 3, 1200.0)
    _push(w, data, times, chunk=12)
    assert w.stats()["grid_shift"] == 0 and not w.probing


# ---------------------------------------------------------------------- stale
def test_stale_windows_are_skipped_counted_and_numbered():
    names = _names(3)
    w = _windower(names, max_age=None)  # default: two hops
    assert w.max_age == pytest.approx(0.1)
    data, times = _signal(3000, 3)
    # A start-up backlog: the first 2 s arrive in one pull, now = the newest stamp.
    first = w.push(data[:2000], times[:2000], times[1999])
    ages = [times[1999] - x.t_end for x in first]
    assert first and max(ages) <= 0.1
    n_stale = w.stats()["n_stale"]
    assert n_stale > 20 and len(first) == 2  # only the present survives
    # Then live pulls, those of samples 2500-2599 150 ms late: their windows are stale too.
    late = lambda t: t[-1] + (0.15 if 2500 <= t[-1] * 1000 - 1e6 < 2600 else 0.0)  # noqa: E731
    rest = _push(w, data[2000:], times[2000:], now=late)
    stats = w.stats()
    assert stats["n_stale"] > n_stale
    windows = first + rest
    pre = OnlinePreprocessor(_config(names), 1000.0)
    total = _expected_windows(3000, pre.up, pre.down)
    assert stats["n_windows"] == len(windows) == total - stats["n_stale"]
    seqs = [x.seq for x in windows]
    assert seqs == sorted(seqs) and seqs[-1] == total - 1  # stale ones took their numbers
    assert all(x.t_pulled - x.t_end <= 0.1 for x in windows)


def test_max_age_is_configurable():
    names = _names(3)
    data, times = _signal(2000, 3)
    keep_all = _windower(names, max_age=math.inf)
    assert len(keep_all.push(data, times, times[-1] + 10.0)) == keep_all.stats()["n_windows"] > 20
    strict = _windower(names, max_age=0.5)
    kept = strict.push(data, times, times[-1])
    assert all(times[-1] - x.t_end <= 0.5 for x in kept)
    assert len(kept) + strict.stats()["n_stale"] == keep_all.stats()["n_windows"]


# ---------------------------------------------------------------------- health
def test_health_flat_and_saturated():
    names = _names(4)
    w = _windower(names)
    data, times = _signal(3000, 4)
    data[:, 2] = 0.0  # EEG001: dead
    data[500:600, 3] = 1e-4  # EEG002: 100 ms at its rail
    _push(w, data[:1400], times[:1400])
    stats = w.stats()
    assert stats["flat_channels"] == ["EEG001"] and stats["saturated_channels"] == ["EEG002"]
    _push(w, data[1400:], times[1400:])
    stats = w.stats()
    assert stats["flat_channels"] == ["EEG001"]
    assert stats["saturated_channels"] == []  # the stuck run left the last second


def test_continue_from_carries_counts_and_numbers():
    names = _names(3)
    data, times = _signal(1500, 3)
    old = _windower(names)
    n = len(_push(old, data, times))
    new = _windower(names, stream=names[::-1]).continue_from(old)
    assert new.seq == old.seq == n and new.stats()["n_windows"] == n
    more = _push(new, data, times + 10.0)
    assert more[0].seq == n and new.stats()["n_resets"] == 1
