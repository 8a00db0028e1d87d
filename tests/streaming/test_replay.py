"""Replay over real LSL on loopback: no sample dropped, the right channels, markers at
their onsets, discontinuities as timestamp jumps, every real file, the CLI's face.

mne-lsl's pattern: the main no-drop test runs ``glimpse replay`` in a subprocess
with a unique source id and a SAMPLE_INDEX channel; the others replay in-process
at high speed, holding the first push until the test's inlet is connected
(``wait_for_consumer``) so that every sample can be counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mne
import numpy as np
import pylsl
import pytest

from glimpse.service.cli import main
from glimpse.streaming.recordings import Recording, Trial, open_recording
from glimpse.streaming.replay import (INDEX_CHANNEL, Replay, continuous_segments, format_summary,
                                      run_replay)
from glimpse.streaming.session_log import SessionWriter


# LSL on loopback is fast, but a resolve that never succeeds or an inlet that waits
# for data that never comes must fail the test rather than hang CI.
pytestmark = pytest.mark.timeout(60)

# file, seconds: the real recordings of ../shared/realdata (README table)
REAL = [
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", 1.0),
    ("ctf275_short_discontinuous_raw.fif", 2.0),
    ("eeg_reduced.edf", 6.0),
    ("biosemi_stim_channel.bdf", 10.0),
    ("brainvision/test_NO.vhdr", 0.45),
    ("eeglab/test_raw.set", 238.0),
]


def _uid(prefix: str = "replay-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _inlet(source_id: str, timeout: float = 20.0) -> pylsl.StreamInlet:
    infos = pylsl.resolve_byprop("source_id", source_id, timeout=timeout)
    assert infos, f"no LSL stream with source_id {source_id} within {timeout} s"
    inlet = pylsl.StreamInlet(infos[0], max_buflen=60, recover=False)
    inlet.open_stream(timeout=10)
    return inlet


def _channels(info: pylsl.StreamInfo) -> list[tuple[str, str, str]]:
    out, ch = [], info.desc().child("channels").child("channel")
    while not ch.empty():
        out.append((ch.child_value("label"), ch.child_value("type"), ch.child_value("unit")))
        ch = ch.next_sibling()
    return out


def _pull_until(inlet, last_index: float, timeout: float, markers=None, replay=None):
    """Pull until the index channel reaches ``last_index``: (data, timestamps, markers)."""
    chunks, stamps, got = [], [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert replay is None or replay.error is None, f"the replay failed: {replay.error!r}"
        data, ts = inlet.pull_chunk(timeout=0.05, max_samples=65536, as_numpy=True)
        if len(ts):
            chunks.append(data.copy())
            stamps.append(ts.copy())
        if markers is not None:
            values, mts = markers.pull_chunk(timeout=0.0)
            got += [(json.loads(v[0]), t) for v, t in zip(values, mts)]
        if chunks and chunks[-1][-1, -1] >= last_index:
            break
    assert chunks, "no sample arrived"
    if markers is not None:  # markers follow their chunk; give the last ones a moment
        values, mts = markers.pull_chunk(timeout=0.2)
        got += [(json.loads(v[0]), t) for v, t in zip(values, mts)]
    return np.concatenate(chunks), np.concatenate(stamps), got


def _assert_no_drop(index: np.ndarray, first: int, last: int) -> None:
    steps = np.diff(index)
    assert index[0] == first and index[-1] == last, (index[0], index[-1])
    assert np.all(steps == 1), f"dropped or duplicated near {index[1:][steps != 1][:5]}"


def _expected_channels(raw) -> list[tuple[str, str, str]]:
    units = {mne.io.constants.FIFF.FIFF_UNIT_V: "V", mne.io.constants.FIFF.FIFF_UNIT_T: "T",
             mne.io.constants.FIFF.FIFF_UNIT_T_M: "T/m"}
    return [(ch["ch_name"], kind, units.get(int(ch["unit"]), "none"))
            for ch, kind in zip(raw.info["chs"], raw.get_channel_types())]


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    # glimpse as installed: the repository root on the path would let a bare `import models` pass
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "glimpse.service.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------- subprocess


@pytest.mark.timeout(90)  # a second interpreter on 2 busy cores, then 2 s of replay
def test_cli_replay_in_a_subprocess_drops_nothing(realdata, tmp_path):
    path = realdata / "biosemi_stim_channel.bdf"  # 4 channels, 500 Hz, 10 s
    raw = mne.io.read_raw(path, preload=True, verbose="error")
    sid = _uid()
    with _cli("replay", str(path), "--name", sid, "--source-id", sid, "--speed", "5",
              "--index-channel", cwd=tmp_path) as proc:
        try:
            inlet = _inlet(sid)
            info = inlet.info(timeout=10)
            data, ts, _ = _pull_until(inlet, raw.n_times - 1, timeout=30)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert info.nominal_srate() == 500 and info.channel_format() == pylsl.cf_float32
    assert info.type() == "EEG" and info.name() == sid
    assert _channels(info) == _expected_channels(raw) + [(INDEX_CHANNEL, "misc", "none")]
    index = data[:, -1].astype(int)
    # The replay pushes before the inlet connects; from the first sample that arrived
    # to the last one of the file, none is missing or repeated.
    _assert_no_drop(index, index[0], raw.n_times - 1)
    assert index[0] < 0.8 * raw.n_times  # enough arrived to prove something
    np.testing.assert_array_equal(data[:, :-1], raw.get_data()[:, index].T.astype(np.float32))
    np.testing.assert_allclose(np.diff(ts), 1 / (500 * 5), rtol=1e-6)  # content 5x faster
    summary = out.strip().splitlines()[-1]
    assert "ended by end of recording" in summary and f"{raw.n_times} samples" in summary


# --------------------------------------------------------------------------- in-process


@pytest.mark.parametrize(("name", "seconds"), REAL, ids=[n for n, _ in REAL])
def test_every_real_file_streams(realdata, name, seconds):
    rec = open_recording(realdata / name, check_stimuli=False)
    raw = rec.raw
    sid = _uid()
    speed = max(1.0, seconds / 0.4)  # about 0.4 s of wall time each
    with Replay(rec, name=sid, source_id=sid, speed=speed, index_channel=True,
                wait_for_consumer=10) as replay:
        inlet = _inlet(sid)
        info = inlet.info(timeout=10)
        data, ts, _ = _pull_until(inlet, raw.n_times - 1, timeout=20, replay=replay)
        assert replay.wait(5)
    assert info.nominal_srate() == pytest.approx(raw.info["sfreq"])
    assert _channels(info) == _expected_channels(raw) + [(INDEX_CHANNEL, "misc", "none")]
    _assert_no_drop(data[:, -1].astype(int), 0, raw.n_times - 1)
    np.testing.assert_array_equal(data[:, :-1], raw.get_data().T.astype(np.float32))
    assert np.all(np.diff(ts) > 0)
    stats = replay.stats()
    assert stats["state"] == "ended" and stats["n_samples"] == raw.n_times
    assert stats["n_markers"] == len(rec.trials)


def test_ctf_discontinuity_is_a_timestamp_jump(realdata):
    path = realdata / "ctf275_short_discontinuous_raw.fif"
    raw = mne.io.read_raw(path, verbose="error")
    # Two CTF trials of 1201 samples, 99 s apart on the system clock (SCLK01-177).
    segments = continuous_segments(raw)
    assert [(s.start, s.stop) for s in segments] == [(0, 1201), (1201, 2402)]
    assert segments[1].gap_before == pytest.approx(99.0, abs=0.01)
    sid, speed = _uid(), 10.0
    with Replay(path, name=sid, source_id=sid, speed=speed, index_channel=True,
                wait_for_consumer=10) as replay:
        data, ts, _ = _pull_until(_inlet(sid), 2401, timeout=20, replay=replay)
    _assert_no_drop(data[:, -1].astype(int), 0, 2401)
    steps, dt = np.diff(ts), 1 / (1200 * speed)
    # the gap, capped at max_gap=1 s of recording, at 10x: 0.1 s of LSL time
    assert steps[1200] == pytest.approx(dt + 0.1, abs=1e-6)
    np.testing.assert_allclose(np.delete(steps, 1200), dt, rtol=1e-6)
    assert replay.stats()["n_gaps"] == 1


def _synthetic_recording(tmp_path, sfreq=1000.0, n_times=4000, annotations=()):
    info = mne.create_info(["Cz", "Pz"], sfreq, "eeg")
    data = np.vstack([np.arange(n_times), -np.arange(n_times)]) * 1e-9
    raw = mne.io.RawArray(data, info, verbose="error")
    if annotations:
        raw.set_annotations(mne.Annotations(*zip(*annotations)))
    trials = [Trial(onset=s / sfreq, stim_file=tmp_path / f"img{s}.png", concept=f"c{s}",
                    split="test", trial_type="test", sample=s) for s in (50, 1200, 3000, 3999)]
    return Recording(raw=raw, path=tmp_path / "synthetic.fif", bids_path=None, trials=trials,
                     stim_root=tmp_path, trial_source="annotations", format="FIF", system=None)


def test_skips_and_boundaries_replay_as_jumps_and_markers_sit_on_their_samples(tmp_path):
    rec = _synthetic_recording(tmp_path, annotations=[(1.0, 0.5, "BAD_ACQ_SKIP"),
                                                      (3.0, 0.0, "EDGE boundary")])
    sid, speed = _uid(), 5.0
    with Replay(rec, name=sid, source_id=sid, speed=speed, index_channel=True, max_gap=0.8,
                wait_for_consumer=10) as replay:
        markers = _inlet(f"{sid}-markers")
        data, ts, got = _pull_until(_inlet(sid), 3999, timeout=20, markers=markers, replay=replay)
    index = data[:, -1].astype(int)
    # the skipped span (MNE's zeros) is not replayed: 1000..1499 never arrive
    assert np.array_equal(index, np.r_[0:1000, 1500:4000])
    steps, dt = np.diff(ts), 1 / (1000 * speed)
    jumps = {int(index[i + 1]): round(s - dt, 6) for i, s in enumerate(steps) if s > 2 * dt}
    # 0.5 s skipped -> 0.5 s / 5; a boundary of unknown length -> max_gap 0.8 s / 5
    assert jumps == {1500: 0.1, 3000: 0.16}
    # the trial inside the skip is not sent; the others carry their stimulus at their sample
    assert [m["stim_file"] for m, _ in got] == [str(tmp_path / f"img{s}.png")
                                                for s in (50, 3000, 3999)]
    assert all(set(m) == {"stim_file", "concept", "trial_type"} for m, _ in got)
    at = dict(zip(ts, index))
    assert [at[t] for _, t in got] == [50, 3000, 3999]
    assert replay.stats()["n_markers"] == 3


@pytest.mark.timeout(120)  # the shared fixture simulates the session first (~5 s)
def test_bids_file_markers_carry_the_stimulus_at_its_onset(small_meg_session):
    _, _, result = small_meg_session
    path = next(iter(result.data_files.values()))  # a file inside the BIDS dataset
    rec = open_recording(path)
    assert rec.trial_source == "events_tsv"
    first = [t for t in rec.trials if t.sample < rec.trials[0].sample + 6 * rec.sfreq]
    assert len(first) >= 3
    sid = _uid()
    with Replay(path, name=sid, source_id=sid, speed=40, index_channel=True,
                wait_for_consumer=10) as replay:
        markers = _inlet(f"{sid}-markers")
        data, ts, got = _pull_until(_inlet(sid), first[-1].sample, timeout=30, markers=markers,
                                     replay=replay)
        info = markers.info()
    assert info.type() == "Markers" and info.nominal_srate() == 0
    assert info.channel_format() == pylsl.cf_string and info.name() == f"{sid}-markers"
    at = dict(zip(ts, data[:, -1].astype(int)))
    sent = [(at[t], m) for m, t in got if t in at]
    assert len(sent) >= len(first)
    for trial, (sample, marker) in zip(first, sent):
        assert sample == trial.sample
        assert marker == {"stim_file": str(trial.stim_file), "concept": trial.concept,
                          "trial_type": trial.trial_type}
        assert Path(marker["stim_file"]).is_file()
    assert replay.stats()["n_markers"] >= len(first)


def test_loop_counts_on_without_a_jump(realdata):
    path = realdata / "biosemi_stim_channel.bdf"
    rec = open_recording(path)
    n = rec.n_times
    sid = _uid()
    with Replay(rec, name=sid, source_id=sid, speed=100, loop=True, index_channel=True,
                wait_for_consumer=10) as replay:
        markers = _inlet(f"{sid}-markers")
        data, ts, got = _pull_until(_inlet(sid), 2 * n + 10, timeout=20, markers=markers,
                                     replay=replay)
    index = data[:, -1].astype(int)
    _assert_no_drop(index, 0, index[-1])
    np.testing.assert_allclose(np.diff(ts), 1 / (500 * 100), rtol=1e-6)  # no jump at the join
    assert replay.stats()["n_loops"] >= 2
    assert len(got) >= 2 * len(rec.trials)


def test_real_time_pacing_keeps_timestamps_on_the_clock(realdata):
    path = realdata / "brainvision/test_NO.vhdr"  # 0.45 s at 5000 Hz
    n_times = mne.io.read_raw(path, verbose="error").n_times
    sid = _uid()
    with Replay(path, name=sid, source_id=sid, index_channel=True, wait_for_consumer=10) as replay:
        inlet = _inlet(sid)
        index, stamps, arrived = [], [], []
        # Until the replay ended and the last sample came (on a loaded machine the last
        # chunk can still be on its way when the replay ends; closing the outlet then
        # would drop it).
        deadline = None
        while not (replay.wait(0) and index and index[-1][-1] == n_times - 1):
            deadline = deadline or (time.monotonic() + 10 if replay.wait(0) else None)
            assert deadline is None or time.monotonic() < deadline, "the last samples never came"
            data, ts = inlet.pull_chunk(timeout=0.05, max_samples=65536, as_numpy=True)
            if len(ts):
                arrived.append(pylsl.local_clock())
                index.append(data[:, -1].astype(int))
                stamps.append(ts.copy())
    stats = replay.stats()
    _assert_no_drop(np.concatenate(index), 0, n_times - 1)
    # Checks that hold however loaded the machine is (lateness is only reported):
    # at speed 1 the stamps are the recording's clock, 1/sfreq apart, spanning its duration;
    ts = np.concatenate(stamps)
    np.testing.assert_allclose(np.diff(ts), 1 / 5000, rtol=1e-6)
    assert ts[-1] - ts[0] == pytest.approx((n_times - 1) / 5000, rel=1e-6)
    # never faster than real time: no chunk arrives before its newest sample's time;
    assert all(now > chunk[-1] for now, chunk in zip(arrived, stamps))
    # pushed as its time came, not all at the end: the first samples arrive before the last
    # sample's time (the replay cannot push it any earlier).
    assert arrived[0] < ts[-1] and len(stamps) > 1
    assert stats["late_ms"]["p50"] is not None and stats["n_samples"] == n_times


def test_state_checks_and_summary(realdata):
    sid = _uid()
    replay = Replay(realdata / "eeg_reduced.edf", name=sid, source_id=sid, speed=50)
    assert replay.stats()["state"] == "idle"
    replay.stop()  # stopping what never started is harmless
    with replay:
        with pytest.raises(RuntimeError, match="stop it first"):
            replay.start()
        assert replay.wait(10)
    stats = replay.stats()
    assert stats["state"] == "ended" and stats["n_samples"] == 3072
    line = format_summary({**stats, "stopped_by": "end of recording"})
    assert "\n" not in line and "3072 samples" in line and "5 markers" in line
    default = Replay(realdata / "eeg_reduced.edf", name="meg")
    assert default.source_id.startswith("meg-") and default.source_id == \
        Replay(realdata / "eeg_reduced.edf", name="meg").source_id  # stable across restarts


def test_run_replay_stops_on_sigterm(realdata):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    sid, before = _uid(), signal.getsignal(signal.SIGTERM)

    def terminate():  # once the stream is visible, run_replay's handlers are in place
        found = pylsl.resolve_byprop("source_id", sid, timeout=20)
        if found and signal.getsignal(signal.SIGTERM) is not before:
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    stats = run_replay(realdata / "eeglab/test_raw.set", name=sid, source_id=sid, loop=True)
    killer.join(5)
    assert stats["stopped_by"] == "SIGTERM" and stats["state"] == "stopped"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


# --------------------------------------------------------------------------- sessions + CLI


def _session(tmp_path: Path, name: str, sfreq=250.0, n=500):
    """A recorded session: 3 EEG channels, 2 s, markers at 0.5 s and 1.5 s."""
    folder = tmp_path / "session"
    data = (np.sin(np.arange(n)[:, None] / 7.0 + np.arange(3)) * 1e-5).astype(np.float32)
    times = 1000.0 + np.arange(n) / sfreq
    markers = [(times[125], {"stim_file": str(tmp_path / "a.png"), "concept": "a",
                             "trial_type": "exp"}),
               (times[375] + 0.4 / sfreq, {"stim_file": str(tmp_path / "b.png"), "concept": "b",
                                           "trial_type": "test"})]
    with SessionWriter(folder) as session:
        stream = session.add_stream(name, "src", sfreq, ["Fz", "Cz", "Pz"], ["eeg"] * 3, ["V"] * 3)
        stream.write(data[:200], times[:200]).write(data[200:], times[200:])
        for t, marker in markers:
            session.write_marker(t, f"{name}-markers", marker, True)
        session.write_frame({"type": "frame", "seq": 0})
    return folder, data, markers


@pytest.mark.timeout(90)  # a second interpreter on 2 busy cores
def test_cli_replays_a_session_and_ctrl_c_exits_cleanly(tmp_path):
    folder, data, markers = _session(tmp_path, "eeg")
    sid = _uid()
    with _cli("replay", str(folder), "--name", sid, "--source-id", sid, "--speed", "4",
              "--loop", "--index-channel", cwd=tmp_path) as proc:
        try:
            markers_inlet = _inlet(f"{sid}-markers")
            inlet = _inlet(sid)
            info = inlet.info(timeout=10)
            # Three loops: on a heavily loaded machine one marker was once missing from
            # two loops' pull (cause not pinned down); each must still land on its sample.
            got_data, ts, got = _pull_until(inlet, 3 * len(data), timeout=45, markers=markers_inlet)
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    summary = out.strip().splitlines()
    assert len(summary) == 1 and "ended by SIGINT" in summary[0]
    assert _channels(info) == [("Fz", "eeg", "V"), ("Cz", "eeg", "V"), ("Pz", "eeg", "V"),
                               (INDEX_CHANNEL, "misc", "none")]
    assert info.nominal_srate() == 250
    index = got_data[:, -1].astype(int)
    _assert_no_drop(index, index[0], index[-1])
    np.testing.assert_array_equal(got_data[:, :-1], data[index % len(data)])
    # markers from markers.jsonl, at the sample nearest their time, in every loop
    at = dict(zip(ts, index % len(data)))
    sent = [(at[t], m["stim_file"]) for m, t in got if t in at]
    assert {(125, markers[0][1]["stim_file"]), (375, markers[1][1]["stim_file"])} <= set(sent)


def test_cli_replays_a_session_in_process(tmp_path, capsys):
    folder, data, _ = _session(tmp_path, "eeg")
    sid = _uid()
    assert main(["replay", str(folder / "streams" / "eeg"), "--name", sid, "--source-id", sid,
                 "--speed", "20", "--chunk-ms", "5"]) == 0
    line = capsys.readouterr().out.strip()
    assert f"{len(data)} samples x 3 channels" in line and "2 markers" in line


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("glimpse: error: expected ") and "Fix:" in err[0]
    return err[0]


@pytest.mark.parametrize(("args", "names"), [
    (["--speed", "0"], "--speed"),
    (["--speed", "-2"], "--speed"),
    (["--chunk-ms", "0"], "--chunk-ms"),
    (["--chunk-ms", "-5"], "--chunk-ms"),
])
def test_bad_options_are_one_line(realdata, capsys, args, names):
    assert main(["replay", str(realdata / "eeg_reduced.edf"), *args]) == 2
    assert names in _one_line_error(capsys)


def test_missing_recording_is_one_line(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.fif")]) == 2
    assert "nope.fif" in _one_line_error(capsys)


def test_help_teaches(capsys):
    assert main(["replay", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and "--speed" in out and "NAME-markers" in out
