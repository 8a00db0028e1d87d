"""Acquisition over real LSL on loopback: an outlet in a subprocess, a unique source id
per test, channel 0 (SAMPLE_INDEX) proving that no sample is dropped or duplicated.

Every test here has its own timeout: a hung inlet or resolver must fail the test, not
stall the run. Each LSL test runs for a few seconds of real time.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest

from glimpse.streaming.acquisition import StreamAcquisition
from glimpse.streaming.errors import InputError
from glimpse.streaming.lsl import find_stream, unit_scale
from glimpse.streaming.preprocess import OnlinePreprocessor, PreprocessConfig, fit_scaler

from fitted import HOP_OUT, N_TIMES
from fitted import fitted_config as _config
from fitted import names as _names

OUTLET = Path(__file__).with_name("lsl_outlet.py")


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _expected_windows(n_in: int, up: int, down: int) -> int:
    n_out = -(-n_in * up // down)
    return max(0, (n_out - N_TIMES) // HOP_OUT + 1)


class Record:
    """Everything the callbacks saw (list.append is atomic: no lock needed)."""

    def __init__(self):
        self.windows, self.samples, self.times, self.markers, self.streams = [], [], [], [], []

    def on_window(self, window):
        self.windows.append(window)

    def on_samples(self, data, times):
        self.samples.append(data.copy())  # views into the ring: copy to keep
        self.times.append(times.copy())

    def on_marker(self, t, marker, valid):
        self.markers.append((t, marker, valid))

    def on_stream(self, info):
        self.streams.append(info.source_id())

    def index(self) -> np.ndarray:
        return np.concatenate([s[:, 0] for s in self.samples]).astype(np.int64)

    def stamps(self) -> np.ndarray:
        return np.concatenate(self.times)


@pytest.fixture
def outlet():
    """Start ``lsl_outlet.py`` with a unique name and source id; killed at teardown."""
    procs = []

    def start(*args, name=None, source_id=None):
        source_id = source_id or uuid.uuid4().hex
        name = name or f"glimpse-test-{source_id[:8]}"
        proc = subprocess.Popen([sys.executable, str(OUTLET), "--name", name,
                                 "--source-id", source_id, *map(str, args)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline().strip()
        assert line == "ready", f"outlet did not start: {line!r}"
        proc.stream_name, proc.source_id = name, source_id
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


@pytest.fixture
def acquire():
    """Make StreamAcquisitions with a Record's callbacks; all stopped at teardown."""
    made = []

    def make(name=None, source_id=None, *, names, config=None, **kwargs):
        rec = Record()
        kwargs.setdefault("resolve_timeout", 5.0)
        # Window arithmetic over LSL: a pull delayed on a loaded machine must not make
        # windows stale here (stale windows are tested on arrays, test_windower.py).
        kwargs.setdefault("max_age", math.inf)
        acq = StreamAcquisition(name, source_id, ch_names=names,
                                preprocess=config or _config(names), n_times=N_TIMES,
                                on_window=rec.on_window, on_samples=rec.on_samples,
                                on_marker=rec.on_marker, on_stream=rec.on_stream, **kwargs)
        made.append(acq)
        return acq, rec

    yield make
    for acq in made:
        acq.stop()


# ---------------------------------------------------------------------- end to end
@pytest.mark.timeout(30)  # 3 s of streaming; a stuck inlet fails here
def test_no_drop_end_to_end(outlet, acquire):
    names = _names(24)
    proc = outlet("--n-chans", 24, "--sfreq", 1200, "--chunk", 12, "--duration", 3,
                  "--wait-consumer", 10, "--markers")
    acq, rec = acquire(proc.stream_name, proc.source_id, names=names, lost_after=0.5)
    assert acq.start() is acq
    assert acq.stats()["state"] == "streaming"
    assert proc.wait(20) == 0
    _wait(lambda: acq.stats()["state"] == "lost", 5, "the finished outlet to be lost")
    acq.stop()
    stats = acq.stats()

    index = rec.index()  # every sample, once, in order
    np.testing.assert_array_equal(index, np.arange(3600))
    stamps = rec.stamps()
    np.testing.assert_allclose(np.diff(stamps), 1 / 1200, atol=1e-4)
    assert stats["n_samples"] == 3600 and stats["n_gaps"] == 0
    assert stats["n_lost"] == 1 and stats["n_reconnects"] == 0 and stats["state"] == "stopped"
    assert rec.streams == [proc.source_id]
    # A pull waits for the sample that completes the next window: about one pull per
    # window (56), not one per 12-sample chunk (300).
    assert stats["n_chunks"] < 100, stats["n_chunks"]
    assert stats["grid"] == "fixed" and stats["grid_shift"] == 0

    # The hop arithmetic: 1200 -> 120 Hz, 360 outputs, a 30-sample window every 6.
    assert stats["n_windows"] == len(rec.windows) == _expected_windows(3600, 1, 10) == 56
    assert stats["n_invalid_windows"] == 0
    assert [w.seq for w in rec.windows] == list(range(56))
    t_end = np.array([w.t_end for w in rec.windows])
    assert np.all(np.diff(t_end) > 0)
    for w in rec.windows:
        # t_end is the stamp of the newest input sample: output k needs input 10 k.
        k_last = w.seq * HOP_OUT + N_TIMES - 1
        assert w.t_end == stamps[10 * k_last]
        assert w.data.shape == (24, N_TIMES) and w.data.dtype == np.float32
        assert np.isfinite(w.data).all() and w.chan_mask is None
        assert w.ch_names == tuple(names) and w.stream_id == proc.source_id
        assert w.t_end <= w.t_pulled <= w.t_cut
    assert np.abs(rec.windows[-1].data).max() > 0.1  # signal, scaled by the config


@pytest.mark.timeout(30)  # 4 s of streaming
def test_chunks_grid_moves_windows_onto_the_senders_chunk_ends(outlet, acquire):
    # 1200 Hz in 12-sample chunks (0-11, 12-23, ...). The fixed grid's windows end on
    # input 10 k for output k = 29, 35, ...: 290 % 12 = 2, so the newest sample waits 9
    # samples (7.5 ms) for the rest of its chunk. Moving the grid 2 outputs later puts
    # it on 310 % 12 = 10: one sample before a chunk end, the best a 10-input output
    # step allows.
    names = _names(8)
    proc = outlet("--n-chans", 8, "--sfreq", 1200, "--chunk", 12, "--duration", 4,
                  "--wait-consumer", 10)
    acq, rec = acquire(proc.stream_name, proc.source_id, names=names, grid="chunks",
                       lost_after=0.5)
    acq.start()
    assert proc.wait(20) == 0
    _wait(lambda: acq.stats()["state"] == "lost", 5, "the finished outlet to be lost")
    acq.stop()
    stats = acq.stats()
    # the log says which chunk ends the probe saw (a failure under heavy load shows them)
    assert stats["grid"] == "chunks" and stats["grid_shift"] == 2, stats
    index, stamps = rec.index(), rec.stamps()
    np.testing.assert_array_equal(index, np.arange(4800))
    newest = index[np.searchsorted(stamps, [w.t_end for w in rec.windows])]
    phase = newest % 12
    moved = int(np.argmax(phase == 10))  # the first window after the move
    assert moved > 0 and set(phase[:moved]) == {2} and set(phase[moved:]) == {10}
    steps = np.diff(newest)
    assert steps[moved - 1] == 80 and set(np.delete(steps, moved - 1)) == {60}
    assert [w.seq for w in rec.windows] == list(range(len(rec.windows)))  # one hop longer


@pytest.mark.timeout(30)  # 2 s of streaming
def test_other_rate_and_units_are_converted(outlet, acquire):
    names = _names(6)
    proc = outlet("--n-chans", 6, "--sfreq", 1000, "--chunk", 10, "--duration", 2,
                  "--unit", "uV", "--amplitude", 10.0, "--wait-consumer", 10)
    acq, rec = acquire(proc.stream_name, names=names)  # by name alone
    acq.start()
    proc.wait(20)
    _wait(lambda: acq.stats()["n_samples"] >= 2000, 5, "all samples")
    acq.stop()
    data = np.concatenate(rec.samples)
    np.testing.assert_array_equal(data[:, 0], np.arange(2000))  # unit "none": untouched
    assert 5e-6 < np.abs(data[:, 1:]).max() < 5e-5  # 10 µV declared -> 1e-5 V
    pre = OnlinePreprocessor(_config(names), 1000.0)
    assert (pre.up, pre.down) == (3, 25)
    assert len(rec.windows) == _expected_windows(2000, 3, 25) == 36
    assert acq.stats()["n_invalid_windows"] == 0


def test_unit_scale():
    assert unit_scale("µV") == unit_scale("uV") == unit_scale("microvolts") == 1e-6
    assert unit_scale("V") == unit_scale("T") == unit_scale("T/m") == unit_scale("") == 1.0
    assert unit_scale("fT") == 1e-15 and unit_scale("mV") == 1e-3 and unit_scale("-6") == 1e-6
    assert unit_scale("furlongs") is None


# ---------------------------------------------------------------------- bad input
@pytest.mark.timeout(30)  # a resolver that never returns must fail
def test_wrong_stream_name_lists_the_streams_that_exist(outlet, acquire):
    proc = outlet("--n-chans", 4)
    acq, _ = acquire(f"no-such-stream-{uuid.uuid4().hex[:8]}", names=_names(4),
                     resolve_timeout=0.5)
    with pytest.raises(InputError) as err:
        acq.start()
    message = str(err.value)
    assert "no-such-stream" in message and proc.stream_name in message
    assert proc.source_id in message and "5 channels" in message
    assert acq.stats()["state"] == "stopped"


@pytest.mark.timeout(30)
def test_missing_channels_refused_or_masked(outlet, acquire):
    proc = outlet("--n-chans", 6, "--sfreq", 1000, "--duration", 0)
    wanted = _names(8) + ["Cz"]  # EEG006, EEG007 and Cz are not in the stream
    acq, _ = acquire(source_id=proc.source_id, names=wanted)
    with pytest.raises(InputError) as err:
        acq.start()
    assert "lacks 3" in str(err.value)
    assert all(n in str(err.value) for n in ("EEG006", "EEG007", "Cz"))

    other, _ = acquire(source_id=proc.source_id, names=["MEG0111", "MEG0112"],
                       allow_missing=True)  # no channel in common: refused even so
    with pytest.raises(InputError, match="MEG0111"):
        other.start()

    acq, rec = acquire(source_id=proc.source_id, names=wanted, allow_missing=True)
    acq.start()
    _wait(lambda: len(rec.windows) >= 3, 10, "masked windows")
    acq.stop()
    assert acq.missing_channels == ["EEG006", "EEG007", "Cz"]
    assert acq.stats()["missing_channels"] == ["EEG006", "EEG007", "Cz"]
    w = rec.windows[-1]
    np.testing.assert_array_equal(w.chan_mask, [True] * 6 + [False] * 3)
    assert np.all(w.data[6:] == 0) and np.abs(w.data[:6]).max() > 0
    assert w.ch_names == tuple(wanted)


@pytest.mark.timeout(30)
def test_string_and_irregular_streams_refused(outlet):
    text = outlet("--format", "string", "--n-chans", 2, "--duration", 0)
    irregular = outlet("--sfreq", 0, "--n-chans", 2, "--duration", 0)
    with pytest.raises(InputError, match="string-typed"):
        find_stream(text.stream_name, timeout=5)
    acq = StreamAcquisition(source_id=irregular.source_id, ch_names=_names(2),
                            preprocess=_config(_names(2)), n_times=N_TIMES, resolve_timeout=5)
    with pytest.raises(InputError, match="irregular-rate"):
        acq.start()


# ---------------------------------------------------------------------- outages
@pytest.mark.timeout(40)  # a 5 s pause plus 2 s of data
def test_pause_of_5_s_is_lost_then_back_as_a_gap(outlet, acquire):
    names = _names(4)
    proc = outlet("--n-chans", 4, "--sfreq", 1000, "--chunk", 10, "--duration", 2,
                  "--pause-at", 1.0, "--pause-for", 5, "--wait-consumer", 10)
    acq, rec = acquire(proc.stream_name, proc.source_id, names=names, lost_after=1.0)
    acq.start()
    _wait(lambda: acq.stats()["state"] == "lost", 10, "the pause to be noticed")
    n_before = len(rec.windows)
    _wait(lambda: acq.stats()["n_reconnects"] == 1, 10, "the stream to come back")
    assert acq.stats()["state"] == "streaming"
    proc.wait(20)
    _wait(lambda: acq.stats()["n_samples"] >= 2000, 5, "all samples")
    acq.stop()
    stats = acq.stats()
    np.testing.assert_array_equal(rec.index(), np.arange(2000))  # nothing lost in transport
    assert stats["n_lost"] >= 1 and stats["n_gaps"] == 1 and stats["n_resets"] == 1
    assert stats["gap_s_total"] == pytest.approx(5.0, abs=0.01)
    # Two epochs, each refilling its window: the hop arithmetic per epoch.
    stamps = rec.stamps()
    cut = int(np.flatnonzero(np.diff(stamps) > 1)[0]) + 1
    pre = OnlinePreprocessor(_config(names), 1000.0)
    assert len(rec.windows) == (_expected_windows(cut, pre.up, pre.down)
                                + _expected_windows(2000 - cut, pre.up, pre.down))
    assert stats["n_invalid_windows"] == 0 and n_before >= 1
    t_end = np.array([w.t_end for w in rec.windows])
    assert np.all(np.diff(t_end) > 0)
    after = [w for w in rec.windows if w.t_end > stamps[cut]]
    assert after[0].t_end == stamps[cut + (N_TIMES - 1) * 25 // 3]  # the window refilled first


@pytest.mark.timeout(40)
def test_killed_outlet_is_reacquired_when_it_restarts(outlet, acquire):
    names = _names(4)
    first = outlet("--n-chans", 4, "--sfreq", 1000, "--duration", 0)
    acq, rec = acquire(source_id=first.source_id, names=names, lost_after=1.0)
    acq.start()
    _wait(lambda: len(rec.windows) >= 5, 10, "windows from the first outlet")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    _wait(lambda: acq.stats()["state"] == "lost", 5, "the killed outlet to be lost")
    n_lost_windows = len(rec.windows)
    time.sleep(1.0)  # an outage longer than RESET_AFTER: the filters restart

    second = outlet("--n-chans", 4, "--sfreq", 1000, "--duration", 0, "--start-index", 100000,
                    name=first.stream_name, source_id=first.source_id)
    t_restart = pylsl.local_clock()
    _wait(lambda: acq.stats()["n_reconnects"] == 1, 10, "the restarted outlet")
    _wait(lambda: len(rec.windows) >= n_lost_windows + 5, 10, "windows again")
    acq.stop()
    stats = acq.stats()
    assert stats["n_lost"] == 1 and stats["n_gaps"] == 1 and stats["n_resets"] == 1
    assert rec.streams == [first.source_id, second.source_id]  # on_stream at each connect
    index = rec.index()
    assert index.max() >= 100000 and np.all(np.diff(index[index >= 100000]) == 1)
    assert rec.windows[-1].t_end > t_restart
    assert [w.seq for w in rec.windows] == list(range(len(rec.windows)))


@pytest.mark.timeout(30)
def test_malformed_markers_are_skipped_and_counted(outlet, acquire):
    names = _names(4)
    proc = outlet("--n-chans", 4, "--sfreq", 1000, "--duration", 0, "--markers",
                  "--marker-every", 0.1, "--bad-marker-every", 3)
    acq, rec = acquire(proc.stream_name, names=names)
    acq.start()
    _wait(lambda: acq.stats()["n_bad_markers"] >= 2 and acq.stats()["n_markers"] >= 4, 15,
          "good and bad markers")
    n_windows = len(rec.windows)
    _wait(lambda: len(rec.windows) > n_windows + 3, 5, "windows after the bad markers")
    acq.stop()
    stats = acq.stats()
    assert stats["state"] == "stopped"
    bad = [m for m in rec.markers if not m[2]]
    good = [m for m in rec.markers if m[2]]
    assert bad and all(isinstance(m[1], str) and "broken" in m[1] for m in bad)
    assert all(isinstance(m[1], dict) for m in good)
    t, marker, _ = good[-1]
    truth = acq.truth_at(t + 0.05, max_age=0.1)
    assert truth["concept"] == marker["concept"] and truth["t"] == t
    assert acq.truth_at(t - 1000) is None and acq.truth_at(t + 5, max_age=1.0) is None


@pytest.mark.timeout(60)  # MNE import and read in the outlet, 2 s of data
def test_ctf_discontinuity_is_a_detected_gap(realdata, outlet, acquire):
    import mne

    path = realdata / "ctf275_short_discontinuous_raw.fif"
    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    clock = raw.get_data(picks=["SCLK01-177"])[0]
    jumps = np.flatnonzero(np.diff(clock) > 1.5 / raw.info["sfreq"])
    assert len(jumps) == 1  # where the CTF system clock says acquisition stopped
    config = fit_scaler(raw, PreprocessConfig(picks=("meg",)))
    names = list(config.ch_names)
    assert len(names) > 270  # the axial gradiometers (MNE types them "mag")

    proc = outlet("--raw", path, "--clock-channel", "SCLK01-177", "--chunk", 12,
                  "--wait-consumer", 20, "--type", "MEG")
    acq, rec = acquire(proc.stream_name, proc.source_id, names=names, config=config)
    acq.start()
    proc.wait(30)
    _wait(lambda: acq.stats()["n_samples"] >= raw.n_times, 5, "all samples")
    acq.stop()
    stats = acq.stats()
    np.testing.assert_array_equal(rec.index(), np.arange(raw.n_times))
    jump = clock[jumps[0] + 1] - clock[jumps[0]]
    assert stats["n_gaps"] == 1 and stats["n_resets"] == 1
    assert stats["gap_s_total"] == pytest.approx(jump - 1 / 1200, abs=1e-3)
    # Each side is its own epoch: no window spans the jump, each refills its window.
    seg = jumps[0] + 1
    assert stats["n_windows"] == 2 * _expected_windows(seg, 1, 10) == 32
    assert stats["n_invalid_windows"] == 0
    t_jump = rec.stamps()[seg]
    before = [w for w in rec.windows if w.t_end < t_jump]
    after = [w for w in rec.windows if w.t_end >= t_jump]
    assert len(before) == len(after) == 16
    assert all(np.isfinite(w.data).all() for w in rec.windows)


# ---------------------------------------------------------------------- checks
def test_constructor_checks():
    names = _names(3)
    with pytest.raises(InputError, match="name or a source id"):
        StreamAcquisition(ch_names=names, preprocess=_config(names), n_times=30)
    with pytest.raises(InputError, match="fitted"):
        StreamAcquisition("x", ch_names=names, preprocess=PreprocessConfig(ch_names=names),
                          n_times=30)
    with pytest.raises(InputError, match="same ch_names"):
        StreamAcquisition("x", ch_names=names[::-1], preprocess=_config(names), n_times=30)
    with pytest.raises(InputError, match="n_times"):
        StreamAcquisition("x", ch_names=names, preprocess=_config(names), n_times=0)
    with pytest.raises(InputError, match="hop"):
        StreamAcquisition("x", ch_names=names, preprocess=_config(names), n_times=30, hop=0)
    with pytest.raises(InputError, match="grid one of fixed, chunks"):
        StreamAcquisition("x", ch_names=names, preprocess=_config(names), n_times=30,
                          grid="clock")
    with pytest.raises(InputError, match="lost_after"):
        StreamAcquisition("x", ch_names=names, preprocess=_config(names), n_times=30,
                          lost_after=0)
    acq = StreamAcquisition("x", ch_names=names, preprocess=_config(names), n_times=30)
    stats = acq.stats()
    assert stats["state"] == "stopped" and stats["n_stale"] == 0
    assert acq.stop() is acq  # stop before start: fine
