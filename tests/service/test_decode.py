"""`glimpse decode` end to end: `glimpse replay` in a subprocess -> LSL on loopback ->
acquisition -> worker -> frames, with the session recorded while it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from glimpse.service.cli import main
from glimpse.service.decode import GalleryIds, run_decode, run_decode_recording
from glimpse.streaming.errors import InputError
from glimpse.streaming.recordings import open_recording

REPO = Path(__file__).resolve().parents[2]

# A replay subprocess, a resolve and a decode of several seconds: a hang must fail.
pytestmark = pytest.mark.timeout(120)

FRAME_KEYS = {"type", "v", "session", "seq", "stream", "window_seq", "t_window_end", "t_decoded",
              "latency_ms", "topk", "confidence", "mode", "truth"}


@pytest.fixture(scope="module")
def decoder_files(small_meg_session, tmp_path_factory):
    """A ridge checkpoint (seconds to fit) and the gallery of the session's test images."""
    from glimpse.models.data import load_session
    from glimpse.models.embedders import load_embedder
    from glimpse.models.gallery import build_gallery
    from glimpse.models.train import TrainConfig, train

    root, _, _ = small_meg_session
    out = tmp_path_factory.mktemp("decode")
    cache = out / "cache"
    result = train(load_session(root, progress=False),
                   TrainConfig(model="ridge", ridge_draws=1, presence_draws=1,
                               cache_dir=str(cache)), out / "ckpt", progress=False)
    gallery = out / "gallery"
    build_gallery(sorted((root / "stimuli" / "test").rglob("*.png")), load_embedder("handcrafted"),
                  root=root, cache_dir=cache, progress=False).save(gallery)
    return root, result.checkpoint_dir, gallery


def _replay(recording: Path, name: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-m", "glimpse.service.cli", "replay", str(recording),
                             "--name", name, "--source-id", name, *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_gallery_ids_match_absolute_stimulus_paths():
    ids = GalleryIds(["stimuli/test/star/star_01.png", "star_01.png"])
    # The longest suffix that is an id wins; other machines' prefixes do not matter.
    assert ids.match("/data/sim/stimuli/test/star/star_01.png") == "stimuli/test/star/star_01.png"
    assert ids.match("C:\\x\\y\\star_01.png") == "star_01.png"
    assert ids.match("/data/other.png") is None and ids.match(None) is None


def test_replay_then_decode_records_everything_and_knows_the_truth(decoder_files, tmp_path):
    root, ckpt, gallery = decoder_files
    name = f"decode-{uuid.uuid4().hex[:10]}"
    proc = _replay(root / "sub-01" / "meg" / "sub-01_task-things_meg.fif", name, "--speed", "4")
    lines: list[str] = []
    try:
        summary = run_decode([name], ckpt, gallery, record=tmp_path / "session", duration=8.0,
                             interval=0.5, echo=lines.append, resolve_timeout=30.0)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    worker, (stream,) = summary["worker"], summary["streams"]
    assert worker["n_decoded"] > 50 and worker["n_errors"] == 0
    # Every frame that left the worker is in frames.jsonl, complete and in order.
    frames = [json.loads(line) for line in
              (tmp_path / "session" / "frames.jsonl").read_text().splitlines()]
    assert len(frames) == worker["n_decoded"]
    assert all(FRAME_KEYS <= set(f) and len(f["topk"]) == 5 for f in frames)
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    assert all(f["t_decoded"] > f["t_window_end"] for f in frames)
    assert all(f["latency_ms"]["total"] == pytest.approx(
        1e3 * (f["t_decoded"] - f["t_window_end"]), abs=1e-6) for f in frames)
    # Markers name the stimulus; test images resolve to gallery ids.
    known = [f["truth"] for f in frames if f["truth"] and f["truth"]["id"]]
    assert known and all(t["id"].startswith("stimuli/test/") for t in known)
    # The recorded session holds every acquired sample and reads back as a recording.
    rec = open_recording(tmp_path / "session")
    assert rec.n_times == stream["n_samples"] and rec.sfreq == 1200.0
    # Markers are recorded as they come; a trial whose onset is after the last sample
    # acquired (its samples were in flight when decoding stopped) is not one of the
    # recording's trials.
    onsets = [json.loads(line)["t"] for line in
              (tmp_path / "session" / "markers.jsonl").read_text().splitlines()]
    last = np.fromfile(next((tmp_path / "session" / "streams").glob("*/times.f64")))[-1]
    assert len(onsets) == stream["n_markers"] > 0
    assert len(rec.trials) == sum(t <= last + 1 / 1200 for t in onsets) >= len(onsets) - 1
    assert (tmp_path / "session" / "summary.json").is_file()
    assert any("frames/s" in line for line in lines) and "session recorded in" in lines[-1]
    # Windows come every hop: 20/s of stream time at 4x speed, none invalid on clean data.
    assert stream["n_invalid_windows"] == 0 and stream["n_gaps"] == 0


def test_decode_refuses_a_stream_that_does_not_exist(decoder_files, tmp_path, capsys):
    _, ckpt, gallery = decoder_files
    code = main(["decode", "--stream", f"nothing-{uuid.uuid4().hex[:8]}", "--checkpoint",
                 str(ckpt), "--gallery", str(gallery), "--timeout", "1",
                 "--record", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "glimpse: error:" in err


def test_decode_refuses_a_gallery_of_another_embedder(decoder_files, tmp_path):
    from glimpse.models.gallery import Gallery

    _, ckpt, gallery = decoder_files
    g = Gallery.load(gallery)
    other = Gallery(embeddings=g.embeddings[:, :16].contiguous(), ids=g.ids, paths=g.paths,
                    embedder="open_clip:tiny", dim=16, hashes=g.hashes)
    other.save(tmp_path / "other")
    with pytest.raises(InputError, match="embedder"):
        run_decode(["x"], ckpt, tmp_path / "other", record=tmp_path / "s", duration=1)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s" / "streams").glob("*"))


def test_decode_refuses_bad_options_before_any_lsl_work(decoder_files, tmp_path):
    _, ckpt, gallery = decoder_files
    with pytest.raises(InputError, match="--duration"):
        run_decode(["x"], ckpt, gallery, duration=0)
    with pytest.raises(InputError, match="--onnx"):
        run_decode(["x"], ckpt, gallery, backend="onnx")
    with pytest.raises(InputError, match="--stream"):
        run_decode([], ckpt, gallery)
    # A ridge cannot mask missing channels: refused live and offline, before any work.
    with pytest.raises(InputError, match="mask missing channels with --allow-missing"):
        run_decode(["x"], ckpt, gallery, allow_missing=True)
    with pytest.raises(InputError, match="mask missing channels with --allow-missing"):
        run_decode_recording(tmp_path / "never-read.fif", ckpt, gallery, allow_missing=True)


# ---------------------------------------------------------------------- offline face
def test_offline_face_cuts_the_windows_the_live_acquisition_cuts(decoder_files):
    """The same recording, replayed over LSL on loopback into a StreamAcquisition (fixed
    grid), and fed offline through the windower: the same windows, number for number."""
    import math
    import time

    from glimpse.models.checkpoint import load_checkpoint
    from glimpse.service.offline import recording_windows
    from glimpse.streaming.acquisition import StreamAcquisition
    from glimpse.streaming.replay import Replay
    from glimpse.streaming.windower import Windower

    root, ckpt_dir, _ = decoder_files
    ckpt = load_checkpoint(ckpt_dir)
    rec = open_recording(root / "sub-01" / "meg" / "sub-01_task-things_meg.fif",
                         check_stimuli=False)
    name = f"offline-{uuid.uuid4().hex[:10]}"
    live = []
    acq = StreamAcquisition(name, ch_names=ckpt.ch_names, preprocess=ckpt.preprocess,
                            n_times=ckpt.n_times, grid="fixed", max_age=math.inf,
                            markers=False, on_window=live.append, resolve_timeout=30.0)
    n_samples = int(8 * rec.sfreq)  # 8 s of signal, 2 s of wall time at speed 4
    with Replay(rec, name=name, source_id=name, speed=4, wait_for_consumer=30):
        acq.start()
        deadline = time.monotonic() + 60
        while acq.stats()["n_samples"] < n_samples and time.monotonic() < deadline:
            time.sleep(0.05)
        acq.stop()
    stats = acq.stats()
    assert stats["n_samples"] >= n_samples and stats["n_gaps"] == 0
    assert len(live) > 100 and [w.seq for w in live] == list(range(len(live)))

    def windower_of(**stream):
        return Windower(ckpt.ch_names, ckpt.preprocess, ckpt.n_times, grid="fixed",
                        max_age=math.inf, **stream)

    windows, markers, _ = recording_windows(rec, windower_of)
    offline = [w for _, w in zip(range(len(live)), windows)]
    assert len(offline) == len(live)
    for a, b in zip(live, offline, strict=True):
        assert a.seq == b.seq and a.data.shape == b.data.shape
        np.testing.assert_allclose(a.data, b.data, atol=1e-4, rtol=1e-4)
    # The trials are its markers, stamped on the recording's clock.
    first = min(rec.trials, key=lambda t: t.sample)
    assert len(markers) == len(rec.trials)
    assert markers.truth_at(first.sample / rec.sfreq)["concept"] == first.concept


def test_decode_recording_prints_the_live_figure(decoder_files, capsys):
    root, ckpt, gallery = decoder_files
    code = main(["decode", "--recording", str(root / "sub-01" / "meg" / "sub-01_task-things_meg.fif"),
                 "--checkpoint", str(ckpt), "--gallery", str(gallery)])
    out = capsys.readouterr().out
    assert code == 0 and "windows (0 invalid)" in out
    assert "true stimulus in the top-5" in out and "chance" in out


def test_live_line_counts_and_names_the_truth():
    """The live line: rate, latency, drops, stale, invalid, the newest top-1 and its truth."""
    from glimpse.service.decode import LiveStats, status_line

    worker = {"decode_rate": 20.0, "n_dropped": 1,
              "latency_ms": {"total": {"p50": 3.25, "p99": 9.75}}}
    acq = [{"n_invalid_windows": 2, "n_stale": 7, "stream_id": "a", "state": "streaming"},
           {"n_invalid_windows": 0, "n_stale": 1, "stream_id": "b", "state": "lost"}]
    live = LiveStats(k=5, gallery_size=48)
    topk = [{"id": f"stimuli/test/x_{i}.png", "score": 0.5 - i / 10} for i in range(5)]

    def line(truth: dict | None) -> str:
        live.on_frame({"topk": topk, "truth": truth, "t_decoded": 0.0})
        return status_line(worker, acq, live)

    text = line({"id": "stimuli/test/x_3.png", "stim_file": "/s/stimuli/test/x_3.png",
                 "age_s": 0.3})
    assert text.startswith(" 20.0 frames/s | latency p50 3.2 p99 9.8 ms | dropped 1 | "
                           "stale 8 | invalid 2 | LOST b | top-1 stimuli/test/x_0.png (0.50)")
    assert "truth stimuli/test/x_3.png (+0.30 s)" in text
    assert "top-5 hit 100% of 1 (chance 10%)" in text
    # A training image is not in the gallery: its file name, said so, and not counted.
    text = line({"id": None, "stim_file": "/s/stimuli/train/y/y_02.png", "age_s": 0.4})
    assert "truth y_02.png (not in gallery) (+0.40 s)" in text and "of 1 " in text
    # A marker without a file (annotations without a mapping): what the marker says.
    text = line({"id": None, "stim_file": None, "concept": None, "trial_type": "face",
                 "age_s": 0.2})
    assert "truth face (+0.20 s)" in text
