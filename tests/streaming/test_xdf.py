"""XDF files (LabRecorder): the real ones read, JSON markers become trials, gaps stay
gaps, ``glimpse info`` and ``glimpse replay`` take them, bad files fail in one line.

No installed package writes XDF (pyxdf only reads), so :func:`_write_xdf` builds the
bytes after the XDF specification's chunk layout: magic, FileHeader, StreamHeader,
Samples, StreamFooter.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest

from glimpse.models.data import load_session
from glimpse.service.cli import main
from glimpse.streaming.errors import InputError
from glimpse.streaming.recordings import describe, open_recording
from glimpse.streaming.replay import Replay, continuous_segments
from glimpse.streaming.xdf import read_xdf

# A resolve that never succeeds must fail the test rather than hang CI.
pytestmark = pytest.mark.timeout(60)

SFREQ, N_CHANS = 100.0, 3


def _chunk(tag: int, content: bytes) -> bytes:
    return struct.pack("<BIH", 4, len(content) + 2, tag) + content


def _varlen(n: int) -> bytes:
    return struct.pack("<BI", 4, n)


def _write_xdf(path: Path, streams: list[dict]) -> Path:
    """An XDF file; each stream: name, type, fmt ("float32"/"string"), srate, times,
    values (rows), and optionally channels [(label, type, unit)]."""
    out = [b"XDF:", _chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')]
    for sid, s in enumerate(streams, start=1):
        n = len(s["values"][0]) if s["values"] else 1
        chans = "".join(f"<channel><label>{a}</label><type>{b}</type><unit>{c}</unit>"
                        f"<location><X>{-30 + 30 * i}</X><Y>-100</Y><Z>20</Z></location></channel>"
                        for i, (a, b, c) in enumerate(s.get("channels", [])))
        xml = (f'<?xml version="1.0"?><info><name>{s["name"]}</name><type>{s["type"]}</type>'
               f'<channel_count>{n}</channel_count><nominal_srate>{s["srate"]}</nominal_srate>'
               f'<channel_format>{s["fmt"]}</channel_format><desc><channels>{chans}</channels>'
               f'</desc></info>')
        out.append(_chunk(2, struct.pack("<I", sid) + xml.encode()))
        body = struct.pack("<I", sid) + _varlen(len(s["times"]))
        for t, row in zip(s["times"], s["values"]):
            body += struct.pack("<Bd", 8, t)
            if s["fmt"] == "string":
                body += b"".join(_varlen(len(v.encode())) + v.encode() for v in row)
            else:
                body += np.asarray(row, "<f4").tobytes()
        out.append(_chunk(3, body))
        footer = (f'<?xml version="1.0"?><info><first_timestamp>{s["times"][0]}</first_timestamp>'
                  f'<last_timestamp>{s["times"][-1]}</last_timestamp><sample_count>'
                  f'{len(s["times"])}</sample_count></info>')
        out.append(_chunk(6, struct.pack("<I", sid) + footer.encode()))
    path.write_bytes(b"".join(out))
    return path


def _signal(n: int = 400, gap_at: int = 200, gap_s: float = 2.0) -> dict:
    """An EEG stream in microvolts whose first channel counts samples; a gap at ``gap_at``."""
    times = 1000.0 + np.arange(n) / SFREQ
    times[gap_at:] += gap_s
    values = np.zeros((n, N_CHANS))
    values[:, 0] = np.arange(n)
    values[:, 1] = 50.0
    values[:, 2] = np.random.default_rng(0).normal(0.0, 10.0, n)
    return {"name": "amp", "type": "EEG", "fmt": "float32", "srate": SFREQ,
            "times": list(times), "values": values.tolist(),
            "channels": [("Oz", "EEG", "microvolts"), ("O1", "EEG", "microvolts"),
                         ("O2", "EEG", "microvolts")]}


def _markers(texts: list[str], times: list[float]) -> dict:
    return {"name": "amp-markers", "type": "Markers", "fmt": "string", "srate": 0,
            "times": times, "values": [[t] for t in texts]}


@pytest.fixture
def json_xdf(tmp_path) -> Path:
    """Two JSON markers naming existing images: sample 50 ("exp") and sample 250 ("test")."""
    for name in ("dog/dog_01.png", "cat/cat_01.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"png")
    texts = [json.dumps({"stim_file": "dog/dog_01.png", "concept": "dog", "trial_type": "exp"}),
             json.dumps({"stim_file": "cat/cat_01.png", "concept": "cat", "trial_type": "test"})]
    return _write_xdf(tmp_path / "session.xdf",
                      [_signal(), _markers(texts, [1000.5, 1000.0 + 2.0 + 2.5])])


# --------------------------------------------------------------------------- real files


def test_minimal_real_file(realdata):
    signal = read_xdf(realdata / "xdf" / "minimal.xdf")
    raw = signal.raw
    assert signal.name == "SendDataC" and raw.ch_names == ["ch0", "ch1", "ch2"]
    assert raw.get_channel_types() == ["eeg"] * 3  # the stream's type; the header names none
    assert raw.info["sfreq"] == 10.0 and raw.n_times == 9 and signal.n_gaps == 0
    assert raw.get_data()[:, 0].tolist() == [192, 255, 238]
    # 9 string samples; one lies outside the signal's span once clock offsets apply
    assert 1 <= len(signal.markers) <= 9 and {"Hello", "World"} <= {m.text for m in signal.markers}


def test_clock_resets_real_file_keeps_its_gap(realdata):
    rec = open_recording(realdata / "xdf" / "clock_resets.xdf")
    assert rec.format == "XDF" and len(rec.ch_names) == 8 and rec.sfreq == 100.0
    assert rec.n_times == 27815
    assert len(rec.trials) == 175 and {t.split for t in rec.trials} == {"unknown"}
    segments = continuous_segments(rec.raw)
    assert len(segments) == 2 and segments[0].stop == segments[1].start == 12876


@pytest.mark.parametrize("name", ["minimal.xdf", "clock_resets.xdf"])
def test_glimpse_info_on_real_files(realdata, capsys, name):
    assert main(["info", str(realdata / "xdf" / name), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["format"] == "XDF" and described["n_chans"] in (3, 8)


# --------------------------------------------------------------------------- written files


def test_json_markers_become_trials_with_stimuli(json_xdf, tmp_path):
    rec = open_recording(json_xdf)
    assert rec.ch_names == ["Oz", "O1", "O2"] and rec.trial_source == "markers"
    assert np.allclose(rec.raw.get_data()[1], 50e-6)  # microvolts -> volts
    assert np.allclose(rec.raw.info["chs"][2]["loc"][:3], [0.03, -0.1, 0.02])  # mm -> m
    assert [(t.sample, t.concept, t.split, t.stim_file) for t in rec.trials] == [
        (50, "dog", "train", tmp_path / "dog" / "dog_01.png"),
        (250, "cat", "test", tmp_path / "cat" / "cat_01.png")]
    assert [(s.start, s.stop) for s in continuous_segments(rec.raw)] == [(0, 200), (200, 400)]
    assert describe(json_xdf)["trials"]["stimuli_missing"] == 0


def test_load_session_trains_on_json_markers(tmp_path):
    for concept in ("dog", "cat"):
        (tmp_path / concept).mkdir()
        (tmp_path / concept / f"{concept}_01.png").write_bytes(b"png")
    texts = [json.dumps({"stim_file": f"{c}/{c}_01.png", "concept": c, "trial_type": split})
             for c, split in [("dog", "exp"), ("cat", "test")] * 10]
    path = _write_xdf(tmp_path / "s.xdf", [_signal(n=3000, gap_at=1500),
                                           _markers(texts, [1001.0 + 1.2 * i for i in range(20)])])
    session = load_session(path, progress=False)
    assert session.summary()["trials"] == {"train": 10, "test": 10}
    assert session.ch_names == ("Oz", "O1", "O2")


def test_replay_streams_an_xdf_file_with_its_gap_and_markers(json_xdf):
    sid = f"xdf-test-{uuid.uuid4().hex[:12]}"
    with Replay(json_xdf, name=sid, source_id=sid, speed=10, index_channel=True,
                wait_for_consumer=20) as replay:
        markers = pylsl.StreamInlet(pylsl.resolve_byprop("name", f"{sid}-markers",
                                                         timeout=20)[0])
        markers.open_stream(timeout=10)
        inlet = pylsl.StreamInlet(pylsl.resolve_byprop("source_id", sid, timeout=20)[0],
                                  max_buflen=60)
        inlet.open_stream(timeout=10)
        chunks, stamps, got = [], [], []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (chunks and chunks[-1][-1, -1] >= 399):
            assert replay.error is None, replay.error
            data, ts = inlet.pull_chunk(timeout=0.05, max_samples=4096, as_numpy=True)
            if len(ts):
                chunks.append(data.copy())
                stamps.append(ts.copy())
            got += [json.loads(v[0]) for v in markers.pull_chunk(timeout=0.0)[0]]
        got += [json.loads(v[0]) for v in markers.pull_chunk(timeout=0.5)[0]]
    data, ts = np.concatenate(chunks), np.concatenate(stamps)
    assert data[:, -1].tolist() == list(range(400))  # every sample, once
    assert np.allclose(data[:, 1], 50e-6)
    steps = np.diff(ts)
    assert steps[199] > 5 * np.median(steps)  # the gap is a jump, not glued
    assert [(m["concept"], Path(m["stim_file"]).name) for m in got] == [
        ("dog", "dog_01.png"), ("cat", "cat_01.png")]


def test_plain_markers_through_a_mapping(tmp_path):
    (tmp_path / "dog.png").write_bytes(b"png")
    path = _write_xdf(tmp_path / "plain.xdf", [_signal(), _markers(["img7", "rest"],
                                                                   [1000.5, 1001.0])])
    (tmp_path / "map.json").write_text(json.dumps({"img7": {"stim_file": "dog.png",
                                                            "split": "train"}}))
    rec = open_recording(path, mapping=tmp_path / "map.json")
    assert [(t.sample, t.stim_file, t.split) for t in rec.trials] == [
        (50, tmp_path / "dog.png", "train")]


def test_cli_replays_plain_markers_through_a_mapping(tmp_path, capsys):
    (tmp_path / "dog.png").write_bytes(b"png")
    path = _write_xdf(tmp_path / "plain.xdf", [_signal(), _markers(["img7", "rest"],
                                                                   [1000.5, 1001.0])])
    (tmp_path / "map.json").write_text(json.dumps({"img7": "dog.png"}))
    sid = f"xdf-test-{uuid.uuid4().hex[:12]}"
    assert main(["replay", str(path), "--name", sid, "--source-id", sid, "--speed", "20",
                 "--chunk-ms", "5", "--stream", "amp", "--mapping",
                 str(tmp_path / "map.json")]) == 0
    line = capsys.readouterr().out.strip()
    assert "400 samples x 3 channels" in line and "1 markers" in line


# --------------------------------------------------------------------------- bad input


def test_unknown_stream_name_is_one_line(json_xdf, capsys):
    assert main(["info", str(json_xdf), "--stream", "nope"]) == 2
    assert "'nope'" in _one_line_error(capsys)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("glimpse: error: expected ") and "Fix:" in err[0]
    return err[0]


def test_no_numeric_stream_is_one_line(tmp_path, capsys):
    path = _write_xdf(tmp_path / "markers_only.xdf", [_markers(["a", "b"], [1.0, 2.0])])
    with pytest.raises(InputError, match="numeric"):
        open_recording(path)
    assert main(["info", str(path)]) == 2
    assert "amp-markers" in _one_line_error(capsys)
    assert main(["replay", str(path)]) == 2
    assert "numeric" in _one_line_error(capsys)


def test_plain_markers_without_mapping_describe_but_do_not_train(tmp_path, capsys):
    path = _write_xdf(tmp_path / "plain.xdf", [_signal(n=3000, gap_at=1500),
                                               _markers(["img7", "rest"], [1000.5, 1001.0])])
    rec = open_recording(path)
    assert [(t.trial_type, t.split, t.stim_file) for t in rec.trials] == [
        ("img7", "unknown", None), ("rest", "unknown", None)]
    assert main(["info", str(path)]) == 0
    capsys.readouterr()
    with pytest.raises(InputError, match="training trials.*--mapping"):
        load_session(path)


def test_jittered_timestamps_are_not_gaps(tmp_path):
    stream = _signal(n=1000, gap_at=500)
    jitter = np.random.default_rng(0).uniform(-0.004, 0.004, 1000)  # +-0.4 sample periods
    stream["times"] = list(np.asarray(stream["times"]) + jitter)
    signal = read_xdf(_write_xdf(tmp_path / "jittered.xdf", [stream]))
    assert signal.n_gaps == 1 and signal.raw.annotations.onset.tolist() == [5.0]
