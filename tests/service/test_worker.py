"""glimpse.service.worker: frames as contract 5, the same numbers as the checkpoint and gallery,
onnx = torch, mismatches refused, and a worker thread that drops the oldest, batches
streams together and survives its callbacks and its decoder.

Tiny models built in code, saved and loaded through the real loaders; no hardware.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

import numpy as np
import pylsl
import pytest
import torch

from glimpse.models.baselines import RidgeBaseline
from glimpse.models.brain_encoder import BrainEncoder, BrainEncoderConfig, export_onnx
from glimpse.models.checkpoint import load_checkpoint, save_checkpoint
from glimpse.models.gallery import Gallery
from glimpse.service.decoder import STAGES, Decoder
from glimpse.service.worker import Worker, freeze_heap
from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import PreprocessConfig
from glimpse.streaming.window import Window

N_CHANS, N_TIMES, DIM, N_IMAGES = 6, 30, 8, 40
NAMES = ["MLO11", "MLO12", "MRO11", "MRO12", "MZO01", "MRT52"]
FRAME_KEYS = {"type", "v", "session", "seq", "stream", "window_seq", "t_window_end", "t_decoded",
              "latency_ms", "topk", "confidence", "mode", "truth"}
LATENCY_KEYS = {"acquire", "preprocess", "queue", "encode", "retrieve", "generate", "total"}
# A worker test waits for frames from its thread: a bug that loses them must fail, not hang.
WAIT = 10.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: on a shared 2-core runner, OpenMP spin-waits cost more than a second thread saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _encoder(seed: int = 0, hidden: int = 8) -> BrainEncoder:
    torch.manual_seed(seed)
    positions = np.random.default_rng(seed).uniform(0.1, 0.9, (N_CHANS, 2)).tolist()
    config = BrainEncoderConfig(n_chans=N_CHANS, sfreq=120.0, n_times=N_TIMES, embed_dim=DIM,
                                n_subjects=2, ch_names=NAMES, positions=positions, hidden=hidden,
                                spatial_channels=8, fourier_k=4, n_blocks=2)
    model = BrainEncoder(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _meta(positions, embedder="handcrafted", head="clip") -> dict:
    pre = PreprocessConfig(ch_names=NAMES, center=[0.0] * N_CHANS, scale=[1.0] * N_CHANS)
    return {"ch_names": NAMES, "positions": positions, "sfreq": 120.0,
            "window": {"n_times": N_TIMES, "seconds": 0.25}, "preprocess": pre.to_dict(),
            "subjects": ["01", "02"], "embedder": {"name": embedder, "dim": DIM},
            "data_fingerprint": "0" * 64, "retrieval_head": head,
            "confidence": {"features": "window_stats_v1",
                           "weight": np.linspace(-0.5, 0.5, 3 * N_CHANS).tolist(), "bias": -0.2}}


def _gallery(path, embedder="handcrafted", dim=DIM, n=N_IMAGES, seed=0) -> Gallery:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, generator=g) * torch.rand(n, 1, generator=g).add(0.5)
    ids = [f"train/concept{i % 7}/image {i}.png" for i in range(n)]
    Gallery(emb, ids, [f"/data/{i}" for i in ids], embedder, dim, ["0" * 64] * n).save(path)
    return Gallery.load(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny checkpoint (clip head) and gallery, and the model's ONNX exports."""
    root = tmp_path_factory.mktemp("worker")
    model = _encoder()
    ckpt_dir = save_checkpoint(root / "ckpt", model, _meta(model.config.positions))
    ckpt = load_checkpoint(ckpt_dir)
    export_onnx(ckpt.model, root / "plain.onnx")
    export_onnx(ckpt.model, root / "masked.onnx", with_mask=True)
    return {"root": root, "ckpt_dir": ckpt_dir, "ckpt": ckpt, "gallery": _gallery(root / "gallery")}


@pytest.fixture(scope="module")
def decoder(files):
    return Decoder(files["ckpt"], files["gallery"], k=5)


def _windows(n: int, *, stream: str = "meg", seed: int = 0, start: int = 0, mask=None) -> list[Window]:
    rng = np.random.default_rng(seed)
    now = pylsl.local_clock()
    return [Window(rng.standard_normal((N_CHANS, N_TIMES)).astype(np.float32),
                   t_end=now - 0.010 + 1e-4 * i, t_pulled=now - 0.008, t_cut=now - 0.007,
                   stream_id=stream, ch_names=tuple(NAMES), seq=start + i, chan_mask=mask)
            for i in range(n)]


# =============================================================================== Decoder


def test_frames_follow_the_contract(decoder):
    windows = _windows(3)
    frames = decoder.decode(windows, session="s1", queue_ms=[0.5, 0.25, 0.0])
    assert len(frames) == 3
    assert [f["window_seq"] for f in frames] == [0, 1, 2]
    assert frames[1]["seq"] == frames[0]["seq"] + 1 and frames[2]["seq"] == frames[1]["seq"] + 1
    for frame, window in zip(frames, windows):
        assert set(frame) == FRAME_KEYS and set(frame["latency_ms"]) == LATENCY_KEYS
        assert frame["type"] == "frame" and frame["v"] == 1 and frame["mode"] == "retrieval"
        assert frame["session"] == "s1" and frame["stream"] == "meg" and frame["truth"] is None
        assert type(frame["t_window_end"]) is float and type(frame["t_decoded"]) is float
        assert frame["t_window_end"] == window.t_end <= frame["t_decoded"] <= pylsl.local_clock()
        lat = frame["latency_ms"]
        assert lat["generate"] is None
        assert all(type(lat[k]) is float for k in LATENCY_KEYS - {"generate"})
        assert lat["total"] == pytest.approx(1e3 * (frame["t_decoded"] - window.t_end))
        assert lat["acquire"] == window.acquire_ms and lat["preprocess"] == window.preprocess_ms
        assert lat["encode"] > 0 and lat["retrieve"] > 0
        assert type(frame["confidence"]) is float and 0 <= frame["confidence"] <= 1
        assert len(frame["topk"]) == 5
        scores = [hit["score"] for hit in frame["topk"]]
        assert scores == sorted(scores, reverse=True) and all(type(s) is float for s in scores)
        for hit in frame["topk"]:
            assert set(hit) == {"id", "score", "url"}
            assert hit["url"] == "/images/" + hit["id"].replace(" ", "%20")
    assert [f["latency_ms"]["queue"] for f in frames] == [0.5, 0.25, 0.0]
    assert json.loads(json.dumps(frames, allow_nan=False)) == frames  # plain JSON, no numpy types


def test_decoding_equals_the_checkpoint_and_the_gallery(files, decoder):
    ckpt, gallery = files["ckpt"], files["gallery"]
    windows = _windows(4, seed=1)
    frames = decoder.decode(windows)
    x = np.stack([w.data for w in windows])
    emb, conf = ckpt.encode(x)
    scores, indices = gallery.topk(emb, 5)
    for i, frame in enumerate(frames):
        assert [h["id"] for h in frame["topk"]] == [gallery.ids[j] for j in indices[i].tolist()]
        np.testing.assert_allclose([h["score"] for h in frame["topk"]], scores[i].numpy(), rtol=0, atol=1e-6)
        assert frame["confidence"] == pytest.approx(float(conf[i]), abs=1e-6)
    # Batch size does not change a window's result.
    alone = decoder.decode(windows[2:3])[0]
    assert [h["id"] for h in alone["topk"]] == [h["id"] for h in frames[2]["topk"]]


def test_mse_head_subject_and_image_urls(files, tmp_path):
    model = _encoder(seed=3)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "mse", model, _meta(model.config.positions, head="mse")))
    decoder = Decoder(ckpt, files["gallery"], k=3, subject="02", image_url=lambda i: f"http://cdn/{i}")
    windows = _windows(2, seed=2)
    frames = decoder.decode(windows)
    emb, _ = ckpt.encode(np.stack([w.data for w in windows]), subject="02")  # the mse head
    _, indices = files["gallery"].topk(emb, 3)
    assert [h["id"] for h in frames[1]["topk"]] == [files["gallery"].ids[j] for j in indices[1].tolist()]
    assert frames[0]["topk"][0]["url"] == "http://cdn/" + frames[0]["topk"][0]["id"]
    with pytest.raises(InputError, match="training subject"):
        Decoder(ckpt, files["gallery"], subject="07")


def test_missing_channels_go_to_the_models_mask(files, decoder):
    mask = np.array([True, True, False, True, False, True])
    windows = _windows(2, seed=4, mask=mask) + _windows(1, seed=5)
    frames = decoder.decode(windows)
    ckpt = files["ckpt"]
    x = torch.from_numpy(np.stack([w.data for w in windows]))
    masks = torch.tensor(np.stack([mask, mask, np.ones(N_CHANS, bool)]))
    with torch.inference_mode():
        clip, _ = ckpt.model(x, torch.zeros(3, dtype=torch.long), masks)
    _, indices = files["gallery"].topk(clip, 5)
    for frame, idx in zip(frames, indices.tolist()):
        assert [h["id"] for h in frame["topk"]] == [files["gallery"].ids[j] for j in idx]
    unmasked = decoder.decode(windows[:1])  # no leftover mask from the last batch of this size
    with torch.inference_mode():
        clip, _ = ckpt.model(x[:1], torch.zeros(1, dtype=torch.long))
    assert unmasked[0]["topk"][0]["id"] == files["gallery"].ids[int(files["gallery"].topk(clip, 1)[1])]


def test_bad_windows_are_refused(decoder):
    w = _windows(1)[0]
    short = Window(w.data[:, :-1], w.t_end, w.t_pulled, w.t_cut, "meg", w.ch_names, 0)
    with pytest.raises(InputError, match=r"windows of shape \(6, 30\).*\(6, 29\) from stream 'meg'"):
        decoder.decode([short])
    other = Window(w.data, w.t_end, w.t_pulled, w.t_cut, "meg", tuple(reversed(NAMES)), 0)
    with pytest.raises(InputError, match="channel order"):
        decoder.decode([other])
    assert decoder.decode([]) == []


@pytest.mark.parametrize("export", ["plain.onnx", "masked.onnx"])
def test_onnx_backend_matches_torch(files, decoder, export):
    onnx = Decoder(files["ckpt"], files["gallery"], k=5, backend="onnx", onnx_path=files["root"] / export,
                   warmup=(1, 4))
    assert onnx.supports_mask == (export == "masked.onnx")
    windows = _windows(4, seed=6)
    for got, want in zip(onnx.decode(windows), decoder.decode(windows)):
        assert [h["id"] for h in got["topk"]] == [h["id"] for h in want["topk"]]
        np.testing.assert_allclose([h["score"] for h in got["topk"]], [h["score"] for h in want["topk"]],
                                   rtol=0, atol=1e-4)
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-6)
    masked = _windows(2, seed=7, mask=np.array([True, False] * 3))
    if onnx.supports_mask:
        for got, want in zip(onnx.decode(masked), decoder.decode(masked)):
            assert [h["id"] for h in got["topk"]] == [h["id"] for h in want["topk"]]
    else:
        with pytest.raises(InputError, match="every channel present"):
            onnx.decode(masked)


def test_onnx_file_from_another_model_is_refused(files, tmp_path):
    ckpt, gallery = files["ckpt"], files["gallery"]
    with pytest.raises(InputError, match="onnx_path with backend='onnx'.*glimpse export"):
        Decoder(ckpt, gallery, backend="onnx")
    with pytest.raises(InputError, match="does not exist"):
        Decoder(ckpt, gallery, backend="onnx", onnx_path=tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="onnxruntime cannot load"):
        Decoder(ckpt, gallery, backend="onnx", onnx_path=tmp_path / "junk.onnx")
    # Another shape: names the shapes it found.
    config = BrainEncoderConfig.from_dict({**ckpt.model.get_config(), "n_times": 40})
    export_onnx(BrainEncoder(config).eval(), tmp_path / "long.onnx")
    with pytest.raises(InputError, match=r"x \(batch, 6, 30\).*'x': \('tensor\(float\)', \['batch', 6, 40\]\)"):
        Decoder(ckpt, gallery, backend="onnx", onnx_path=tmp_path / "long.onnx")
    # Same shapes, other weights: caught by comparing outputs with torch.
    export_onnx(_encoder(seed=9), tmp_path / "other.onnx")
    with pytest.raises(InputError, match="differ from the checkpoint's"):
        Decoder(ckpt, gallery, backend="onnx", onnx_path=tmp_path / "other.onnx")
    with pytest.raises(InputError, match="backend in"):
        Decoder(ckpt, gallery, backend="tensorrt")


def test_gallery_from_another_embedder_is_refused(files, tmp_path):
    ckpt = files["ckpt"]
    other = _gallery(tmp_path / "clip", embedder="open_clip:ViT-B-32:random")
    with pytest.raises(InputError, match=r"open_clip:ViT-B-32:random \(8-d\).*handcrafted \(8-d\).*"
                                         r"rebuild the gallery with --embedder handcrafted "
                                         r"\(glimpse gallery build"):
        Decoder(ckpt, other)
    wide = _gallery(tmp_path / "wide", dim=16)
    with pytest.raises(InputError, match=r"handcrafted \(16-d\).*handcrafted \(8-d\).*--embedder handcrafted"):
        Decoder(ckpt, wide)
    with pytest.raises(InputError, match=r"k in \[1, 40\]"):
        Decoder(ckpt, files["gallery"], k=41)


def test_ridge_checkpoint_decodes_and_cannot_mask(files, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, N_CHANS, N_TIMES)).astype(np.float32)
    ridge = RidgeBaseline(alphas=[1.0]).fit(x, rng.standard_normal((30, DIM)).astype(np.float32))
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "ridge", ridge, _meta(np.full((N_CHANS, 2), 0.5).tolist())))
    decoder = Decoder(ckpt, files["gallery"], k=2)
    windows = _windows(2, seed=8)
    emb, _ = ckpt.encode(np.stack([w.data for w in windows]))
    _, indices = files["gallery"].topk(emb, 2)
    assert [h["id"] for h in decoder.decode(windows)[0]["topk"]] == [files["gallery"].ids[j]
                                                                     for j in indices[0].tolist()]
    assert not decoder.supports_mask
    with pytest.raises(InputError, match="cannot mask"):
        decoder.decode(_windows(1, mask=np.array([True] * 5 + [False])))


# =============================================================================== Worker


class Gate:
    """Wraps a decoder's decode: blocks while closed, records batch sizes, can raise once."""

    def __init__(self, decoder: Decoder, *, closed: bool = False, fail_first: bool = False):
        self.decode, self.open_ = decoder.decode, threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[tuple[str, int]]] = []
        self.fail_first = fail_first
        if not closed:
            self.open_.set()

    def __call__(self, windows, **kwargs):
        self.entered.set()
        assert self.open_.wait(WAIT)
        self.batches.append([(w.stream_id, w.seq) for w in windows])
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("planted decoder failure")
        return self.decode(windows, **kwargs)


class Frames:
    """An on_frame callback that collects frames and waits for a number of them."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.frames: list[dict] = []

    def __call__(self, frame):
        self.queue.put(frame)

    def wait(self, n: int) -> list[dict]:
        while len(self.frames) < n:
            self.frames.append(self.queue.get(timeout=WAIT))
        return self.frames


@pytest.fixture
def gated(decoder, monkeypatch):
    """A factory of (worker, gate, frames) whose decoder's decode goes through a Gate."""
    made = []

    def make(closed=True, fail_first=False, **kwargs):
        gate = Gate(decoder, closed=closed, fail_first=fail_first)
        monkeypatch.setattr(decoder, "decode", gate)
        frames = Frames()
        extra = kwargs.pop("on_frame", [])
        worker = Worker(decoder, session="test", on_frame=[frames, *extra], **kwargs).start()
        made.append(worker)
        return worker, gate, frames

    yield make
    for worker in made:
        worker.stop(timeout=WAIT)
        assert not worker._thread.is_alive()


@pytest.mark.timeout(30)
def test_slow_decoding_drops_the_oldest_windows(gated):
    worker, gate, frames = gated(queue_size=3)
    windows = _windows(11)
    worker.submit(windows[0])
    assert gate.entered.wait(WAIT)  # the thread holds window 0, blocked in decode
    for w in windows[1:]:
        worker.submit(w)
        assert sum(worker.stats()["pending"].values()) <= 3  # bounded, whatever arrives
    stats = worker.stats()
    assert stats["n_submitted"] == 11 and stats["n_dropped"] == 7 and stats["dropped"] == {"meg": 7}
    gate.open_.set()
    got = frames.wait(4)
    assert [f["window_seq"] for f in got] == [0, 8, 9, 10]  # the newest survive, in order
    assert gate.batches == [[("meg", 0)], [("meg", 8), ("meg", 9), ("meg", 10)]]
    stats = worker.stats()
    assert stats["n_decoded"] == 4 and stats["n_dropped"] == 7 and stats["pending"] == {"meg": 0}
    assert [f["latency_ms"]["queue"] for f in got[1:]] == sorted(f["latency_ms"]["queue"] for f in got[1:])[::-1]


@pytest.mark.timeout(30)
def test_by_default_each_stream_keeps_only_its_newest_window(gated):
    worker, gate, frames = gated()  # the policy of glimpse decode, the bench and the service
    assert worker.queue_size == 1
    worker.submit(_windows(1, stream="warm")[0])
    assert gate.entered.wait(WAIT)
    for stream in ("a", "b"):
        for w in _windows(3, stream=stream):
            worker.submit(w)
    assert worker.stats()["pending"] == {"warm": 0, "a": 1, "b": 1}
    gate.open_.set()
    frames.wait(3)
    assert sorted(gate.batches[1]) == [("a", 2), ("b", 2)]  # one forward pass, the newest
    assert worker.stats()["dropped"] == {"a": 2, "b": 2}


@pytest.mark.timeout(30)
def test_streams_are_batched_together(gated):
    worker, gate, frames = gated(max_batch=32, queue_size=2)
    worker.submit(_windows(1, stream="warm")[0])
    assert gate.entered.wait(WAIT)
    for stream in ("a", "b", "c"):
        for w in _windows(2, stream=stream, seed=hash(stream) % 100):
            worker.submit(w)
    gate.open_.set()
    got = frames.wait(7)
    assert len(gate.batches) == 2 and sorted(gate.batches[1]) == [(s, i) for s in "abc" for i in (0, 1)]
    by_stream = {}
    for frame in got[1:]:
        by_stream.setdefault(frame["stream"], []).append(frame["window_seq"])
    assert by_stream == {"a": [0, 1], "b": [0, 1], "c": [0, 1]}  # in order per stream
    assert worker.stats()["batch_size_mean"] == pytest.approx((1 + 6 * 6) / 7)


@pytest.mark.timeout(30)
def test_a_full_batch_takes_the_streams_served_least_recently(gated):
    worker, gate, frames = gated(max_batch=2, queue_size=2)
    worker.submit(_windows(1, stream="warm")[0])
    assert gate.entered.wait(WAIT)
    for stream in ("a", "b", "c"):  # never served: the oldest pending window goes first
        worker.submit(_windows(1, stream=stream)[0])
    worker.submit(_windows(1, stream="a", start=1)[0])
    gate.open_.set()
    frames.wait(4)
    # Round 2: each stream's newest, for a and b; c keeps its window for round 3.
    assert sorted(gate.batches[1]) == [("a", 1), ("b", 0)]
    assert gate.batches[2] == [("c", 0)]
    assert worker.stats()["dropped"] == {"a": 1}  # a's first window, older than one decoded
    gate.open_.clear()
    gate.entered.clear()
    worker.submit(_windows(1, stream="warm", start=1)[0])  # hold the thread again, so a, b, c wait together
    assert gate.entered.wait(WAIT)
    for stream in ("a", "b", "c"):  # now c, served last, waits; a and b were served before it
        worker.submit(_windows(1, stream=stream, start=5)[0])
    gate.open_.set()
    frames.wait(8)
    assert gate.batches[3] == [("warm", 1)]
    assert sorted(gate.batches[4]) == [("a", 5), ("b", 5)] and gate.batches[5] == [("c", 5)]


@pytest.mark.timeout(30)
def test_a_failing_callback_never_stops_the_worker(gated, caplog):
    calls = []

    def broken(frame):
        calls.append(frame["window_seq"])
        raise ValueError("planted callback bug")

    worker, gate, frames = gated(closed=False, on_frame=[broken])
    with caplog.at_level(logging.ERROR, logger="glimpse.service.worker"):
        for w in _windows(3):
            worker.submit(w)
            frames.wait(w.seq + 1)
    assert [f["window_seq"] for f in frames.frames] == [0, 1, 2] and calls == [0, 1, 2]
    assert worker.stats()["n_callback_errors"] == 3 and worker.running
    assert "planted callback bug" in caplog.text


@pytest.mark.timeout(30)
def test_the_worker_survives_a_decoder_exception(gated, caplog):
    with caplog.at_level(logging.ERROR, logger="glimpse.service.worker"):
        worker, gate, frames = gated(closed=False, fail_first=True)
        worker.submit(_windows(1)[0])
        deadline = time.monotonic() + WAIT
        while worker.stats()["n_errors"] < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        worker.submit(_windows(1, start=1)[0])
        got = frames.wait(1)
    assert got[0]["window_seq"] == 1 and worker.running
    stats = worker.stats()
    assert stats["n_errors"] == 1 and stats["n_failed"] == 1 and stats["n_decoded"] == 1
    assert "planted decoder failure" in caplog.text


@pytest.mark.timeout(30)
def test_a_bad_window_is_rejected_alone(gated, caplog):
    worker, gate, frames = gated()
    worker.submit(_windows(1, stream="warm")[0])
    assert gate.entered.wait(WAIT)
    good = _windows(1, stream="meg")[0]
    bad = Window(good.data[:, :-2], good.t_end, good.t_pulled, good.t_cut, "broken", good.ch_names, 0)
    worker.submit(bad)
    worker.submit(good)
    with caplog.at_level(logging.ERROR, logger="glimpse.service.worker"):
        gate.open_.set()
        got = frames.wait(2)
    assert [f["stream"] for f in got] == ["warm", "meg"] and gate.batches[1] == [("meg", 0)]
    stats = worker.stats()
    assert stats["n_rejected"] == 1 and stats["n_errors"] == 0
    assert "stream broken rejected" in caplog.text and "(6, 28)" in caplog.text


@pytest.mark.timeout(30)
def test_truth_fills_frames_and_stats_summarise(gated):
    seen = []

    def truth(stream_id, t_end):
        seen.append((stream_id, t_end))
        return {"stim_file": "train/concept1/image 1.png", "concept": "concept1", "trial_type": "test"}

    worker, gate, frames = gated(closed=False, truth=truth)
    windows = _windows(5)
    for w in windows:
        worker.submit(w)
        frames.wait(w.seq + 1)
    assert all(f["truth"]["concept"] == "concept1" for f in frames.frames)
    assert seen == [("meg", w.t_end) for w in windows]
    json.dumps(frames.frames, allow_nan=False)
    stats = worker.stats()
    assert stats["state"] == "running" and stats["n_decoded"] == 5 and stats["n_dropped"] == 0
    assert stats["decode_rate"] > 0 and stats["batch_size_mean"] == 1.0
    assert set(stats["latency_ms"]) == set(STAGES)
    for stage in STAGES:  # the percentiles of the frames' own latencies
        recorded = [f["latency_ms"][stage] for f in frames.frames]
        want = np.percentile(recorded, [50, 95, 99])
        got = stats["latency_ms"][stage]
        assert [got["p50"], got["p95"], got["p99"]] == pytest.approx(want.tolist())
    assert stats["latency_ms"]["total"]["p50"] >= stats["latency_ms"]["encode"]["p50"]
    json.dumps(stats, allow_nan=False)


@pytest.mark.timeout(30)
def test_lifecycle(decoder):
    worker = Worker(decoder, session="life")
    assert worker.stats()["latency_ms"]["total"]["p99"] is None
    assert 32 in decoder.warmed_batch_sizes  # the largest batch ran once at construction
    with worker:
        with pytest.raises(RuntimeError, match=r"Worker.start\(\) on a running worker"):
            worker.start()
        assert worker.running
    assert not worker._thread.is_alive() and worker.stats()["state"] == "stopped"
    t0 = time.monotonic()
    worker.stop()  # twice is harmless
    assert time.monotonic() - t0 < 1
    with pytest.raises(InputError, match="max_batch a positive integer"):
        Worker(decoder, session="x", max_batch=0)


def test_freeze_heap_exempts_the_setup_from_collections():
    import gc

    setup = [object() for _ in range(3)]  # alive when the session is set up
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        # Moved to the permanent generation: no collection walks them any more ...
        tracked = {id(o) for o in gc.get_objects()}
        assert id(setup) not in tracked
        later = [object()]  # ... while what the session allocates since is collected
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is setup for o in gc.get_objects())
