"""The session folder: written unbuffered while a session runs, read back as a recording."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from glimpse.service.cli import main
from glimpse.streaming.errors import InputError
from glimpse.streaming.recordings import open_recording
from glimpse.streaming.replay import continuous_segments
from glimpse.streaming.session_log import SessionWriter, read_session_stream


# Files on a local disk and one short subprocess; a hang must fail, not stall CI.
pytestmark = pytest.mark.timeout(60)

CH = (["MLO11", "MRO11", "Oz", "STI101"], ["mag", "mag", "eeg", "stim"], ["T", "T", "V", "NA"])


def _record(folder: Path, n: int = 1200, sfreq: float = 600.0, gap_at: int | None = None):
    data = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32) * 1e-12
    times = 500.0 + np.arange(n) / sfreq
    if gap_at is not None:
        times[gap_at:] += 0.5  # the stream stopped for half a second
    with SessionWriter(folder) as session:
        stream = session.add_stream("meg", "uuid-1", sfreq, *CH)
        for a in range(0, n, 100):
            stream.write(data[a:a + 100], times[a:a + 100])
        session.write_marker(times[300] + 0.3 / sfreq, "meg-markers",
                             {"stim_file": "stimuli/test/cat/cat_01.png", "concept": "cat",
                              "trial_type": "test"}, True)
        dog = {"stim_file": "/abs/dog.png", "concept": "dog", "trial_type": "exp"}
        session.write_marker(times[900], "meg-markers", dog, True)
        session.write_marker(times[950], "meg-markers", "{not json", False)
        session.write_marker(times[-1] + 10, "meg-markers", {"stim_file": "late.png"}, True)
        session.write_frame({"type": "frame", "v": 1, "seq": 0, "confidence": np.float32(0.5)})
    return data, times


def test_round_trip_samples_times_markers_frames(tmp_path):
    folder = tmp_path / "s"
    data, times = _record(folder)
    meta = json.loads((folder / "session.json").read_text())
    assert meta["version"] == 1 and meta["streams"] == ["meg"] and meta["created"]
    stream = json.loads((folder / "streams/meg/stream.json").read_text())
    assert stream == {"name": "meg", "source_id": "uuid-1", "sfreq": 600.0, "n_chans": 4,
                      "ch_names": CH[0], "ch_types": CH[1], "units": CH[2], "dtype": "float32"}
    raw, got_times, markers = read_session_stream(folder)
    np.testing.assert_array_equal(raw.get_data().T.astype(np.float32), data)
    np.testing.assert_array_equal(got_times, times)
    assert raw.ch_names == CH[0] and raw.get_channel_types() == CH[1]
    assert raw.info["sfreq"] == 600.0 and len(raw.annotations) == 0
    assert [m["valid"] for m in markers] == [True, True, False, True]
    assert markers[0]["marker"]["concept"] == "cat" and markers[2]["marker"] == "{not json"
    frame = json.loads((folder / "frames.jsonl").read_text())
    assert frame["confidence"] == 0.5


def test_samples_are_read_on_demand_not_held_as_float64(tmp_path):
    folder = tmp_path / "s"
    data, _ = _record(folder)
    raw, _, _ = read_session_stream(folder)
    assert not raw.preload  # a long session is not loaded whole
    piece = raw.get_data(picks=[CH[0][2], CH[0][0]], start=100, stop=250)
    np.testing.assert_array_equal(piece.T.astype(np.float32), data[100:250][:, [2, 0]])
    raw.pick([CH[0][1]]).load_data()
    assert raw.preload
    np.testing.assert_array_equal(raw.get_data()[0].astype(np.float32), data[:, 1])


def test_open_recording_takes_trials_from_markers(tmp_path, capsys):
    folder = tmp_path / "s"
    _record(folder)
    for path in (folder, folder / "streams" / "meg"):
        rec = open_recording(path)
        assert rec.format == "glimpse session" and rec.trial_source == "markers"
        # nearest sample; invalid markers and those after the last sample are skipped
        assert [(t.sample, t.concept, t.split, t.trial_type) for t in rec.trials] == \
            [(300, "cat", "test", "test"), (900, "dog", "train", "exp")]
        # relative stimulus paths start at the session folder
        cat = Path(os.path.abspath(folder)) / "stimuli/test/cat/cat_01.png"
        assert rec.trials[0].stim_file == cat
        assert rec.trials[1].stim_file == Path("/abs/dog.png")
        assert rec.trials[0].onset == pytest.approx(300 / 600)
    rec = open_recording(folder, stim_root=tmp_path)
    assert rec.trials[0].stim_file == tmp_path / "stimuli/test/cat/cat_01.png"
    assert main(["info", str(folder), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["n_chans"] == 4 and described["trials"]["count"] == 2
    assert described["format"] == "glimpse session"


def test_gaps_in_time_become_boundaries_that_replay_sees(tmp_path):
    _record(tmp_path / "s", gap_at=700)
    raw, _, _ = read_session_stream(tmp_path / "s")
    assert list(raw.annotations.description) == ["EDGE boundary"]
    assert raw.annotations.onset[0] == pytest.approx(700 / 600)
    assert [(s.start, s.stop) for s in continuous_segments(raw)] == [(0, 700), (700, 1200)]


def test_reader_tolerates_a_torn_last_row(tmp_path):
    folder = tmp_path / "s"
    data, times = _record(folder)
    stream = folder / "streams" / "meg"
    with open(stream / "samples.f32", "ab") as f:
        f.write(np.ones(6, "<f4").tobytes())  # one full row and half of the next
    with open(stream / "times.f64", "ab") as f:
        f.write(b"\x00\x01\x02")  # a timestamp cut short
    with open(folder / "markers.jsonl", "ab") as f:
        f.write(b'{"t": 1.0, "stream": "meg-mark')
    raw, got_times, markers = read_session_stream(folder)
    assert raw.n_times == len(data)  # the extra row has no timestamp
    np.testing.assert_array_equal(got_times, times)
    assert len(markers) == 4


WRITER = """
import sys, numpy as np
from glimpse.streaming.session_log import SessionWriter
session = SessionWriter(sys.argv[1])
stream = session.add_stream("eeg", "src", 100.0, ["Cz", "Pz"], ["eeg", "eeg"], ["V", "V"])
k = 0
while True:
    stream.write(np.full((10, 2), k, np.float32), 10.0 + (k * 10 + np.arange(10)) / 100.0)
    session.write_marker(10.0 + k / 10, "eeg-markers", {"k": k}, True)
    print(k, flush=True)  # handed over: the write calls returned
    k += 1
"""


@pytest.mark.timeout(60)  # a second interpreter on 2 busy cores
def test_sigkill_loses_nothing_handed_over(tmp_path):
    folder = tmp_path / "s"
    # glimpse as installed: the repository root on the path would let a bare `import models` pass
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(folder)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            for _ in range(50):
                last = int(proc.stdout.readline())
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        finally:
            proc.kill()
    raw, times, markers = read_session_stream(folder)
    n = (last + 1) * 10
    assert raw.n_times >= n
    values = raw.get_data()[0]
    expected = np.repeat(np.arange(raw.n_times // 10 + 1), 10)[:raw.n_times]  # chunk k holds k
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_allclose(times, 10.0 + np.arange(raw.n_times) / 100.0)
    assert [m["marker"]["k"] for m in markers][: last + 1] == list(range(last + 1))


def test_streams_by_name_and_reconnects(tmp_path):
    folder = tmp_path / "s"
    with SessionWriter(folder) as session:
        a = session.add_stream("meg/1", "x", 100.0, ["A"], ["mag"], ["T"])
        assert session.add_stream("meg/1", "x", 100.0, ["A"], ["mag"], ["T"]) is a  # reconnect
        b = session.add_stream("meg/1", "y", 100.0, ["A", "B"], ["eeg", "ECG"], ["V", "V"])
        assert a.folder.name == "meg_1" and b.folder.name == "meg_1-2"
        a.write(np.zeros((3, 1)), np.arange(3.0))
        b.write(np.zeros((2, 2)), np.arange(2.0))
        session.write_marker(1.0, "meg/1-markers", {"stim_file": "x.png"}, True)
    with pytest.raises(InputError, match="meg_1-2"):
        read_session_stream(folder)  # two streams: name one
    raw, _, markers = read_session_stream(folder, "meg/1")
    assert raw.n_times == 3 and len(markers) == 1
    raw, _, _ = read_session_stream(folder / "streams" / "meg_1-2")
    assert raw.get_channel_types() == ["eeg", "ecg"]


def test_writer_refuses_bad_input(tmp_path):
    with SessionWriter(tmp_path / "s") as session:
        stream = session.add_stream("eeg", "x", 100.0, ["Cz"], ["eeg"], ["V"])
        with pytest.raises(InputError, match="data"):
            stream.write(np.zeros((4, 2)), np.zeros(4))
        with pytest.raises(InputError, match="channel types"):
            session.add_stream("bad", "x", 100.0, ["Cz", "Pz"], ["eeg"], ["V"])
    with pytest.raises(RuntimeError, match="closed"):
        session.write_marker(0.0, "eeg-markers", {}, True)
    with pytest.raises(RuntimeError, match="closed"):
        stream.write(np.zeros((1, 1)), np.zeros(1))
    with pytest.raises(InputError, match="already holds a session"):
        SessionWriter(tmp_path / "s")
    with pytest.raises(InputError, match="session folder"):
        read_session_stream(tmp_path)
