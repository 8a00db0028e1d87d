"""Real-time benchmarks of the live path (latency, capacity, soak); each prints JSON.

One window's path, wired by ``glimpse decode``'s own wiring
(:class:`~glimpse.service.live.LivePath`): a pylsl outlet in ANOTHER
process -> :class:`~glimpse.streaming.acquisition.StreamAcquisition` (pull into the ring,
the checkpoint's online preprocessing, 250 ms windows every 50 ms, markers
followed) -> :class:`~glimpse.service.worker.Worker` (bounded per-stream queues, one batch
across streams) -> :class:`~glimpse.service.decoder.Decoder` (brain encoder in torch or
onnxruntime, exact cosine top-5 over a 10,000-image gallery) -> frame.

Every latency is read from the frames themselves: ``latency_ms.total`` = the
frame's ``t_decoded`` - the LSL timestamp of the newest sample its window depends
on (ARCHITECTURE.md, contract 6). Its stages: ``acquire`` (that sample's stamp ->
its chunk pulled: the rest of the 10 ms chunk, the outlet's lateness, loopback
transport, the inlet's wake-up), ``preprocess`` (pulled -> window cut),
``queue`` (submitted -> taken by the worker thread), ``encode`` (batch assembly,
forward pass, confidence), ``retrieve`` (top-k); ``other`` is total minus their
sum (frame building, hand-offs). ``chunk_wait`` is the first part of ``acquire``
computed from the sample grid: how long the window's newest sample waited in the
outlet for the rest of its chunk.

Subcommands (each has ``--help``):

``latency``   one stream at a time; rows MEG (272 CTF-named channels, 1200 Hz) and
              EEG (64 channels, 1000 Hz) with the default encoder, and MEG with the
              paper-size encoder, each with torch and onnxruntime: p50/p95/p99 of the
              total and of every stage after a warm-up, plus the decoder alone.
``capacity``  N MEG streams into ONE worker (one acquisition thread each), N = 1, 2,
              4, 8, 12, 16, 24, 32, ... until a step fails: the largest N where every
              stream is decoded in real time (20 windows/s, none dropped or invalid,
              no sample lost, p99 total below the 50 ms hop). Each stream is its own
              outlet, 16 outlets per outlet process; stream k starts k/N of a hop
              after stream 0 (``--phases spread``: independent amplifiers, whose
              windows rarely complete together) or all at once (``aligned``).
``soak``      ``glimpse replay --loop --index-channel`` of a recording at 1x in a
              subprocess, decoded by ``glimpse decode``'s own ``run_decode``
              (acquisition, worker, session recording): samples received vs the
              index channel, and resident memory (VmRSS) over time.
``push``      (internal) the outlet process that latency and capacity start.

Outlets (``push``): stream k's sample i is stamped ``t0_k + i / sfreq`` on the LSL
clock and pushed in fixed chunks (10 ms) as soon as the chunk's last sample is
due, so the newest sample of every chunk is stamped at its push time, give or take
the outlet's lateness (reported, and inside the measured latency). ``--stamps
push`` stamps each chunk with ``local_clock()`` at the push instead (jittered, as
naive amplifier apps do; acquisition may then see gaps). Each stream has a
SAMPLE_INDEX channel (checked end to end: no sample lost or duplicated) and a
``<name>-markers`` stream (one marker per second), as ``glimpse replay`` gives.
``--first-chunk`` shortens each outlet's first chunk, which shifts every chunk
boundary against the window grid; with ``--grid fixed`` it shows what
``chunk_wait`` costs, with ``--grid chunks`` (the default, as ``glimpse decode``)
that the grid follows the chunks. Every row and step also reports the machine's
busy and stolen CPU share over the measured span (``machine_cpu``, from
/proc/stat): on a shared VM a slow step with a high steal was the host's doing.

Models are built in code with random weights (same cost as trained ones):
default sizes of ``glimpse train`` (hidden 96, 64 spatial channels, 256-d
"handcrafted" targets, ~0.7 M parameters) or the paper's THINGS-MEG sizes (hidden
320, 270 spatial channels, 768-d, ~6.9 M), 250 ms at 120 Hz (30 samples), saved
with ``save_checkpoint`` and loaded with ``load_checkpoint``; the preprocessing is
fitted on the outlet's own signal with ``fit_scaler`` as training would; the
gallery holds 10,000 random unit vectors, saved and loaded with ``Gallery``; the
ONNX file comes from ``export_checkpoint_onnx``.

Examples::

    python bench/latency.py latency                       # all six rows, 15 s each (~3 min)
    python bench/latency.py latency --rows meg-default-torch --seconds 5
    python bench/latency.py capacity --backend onnx --max-n 32
    python bench/latency.py capacity --device cuda --backend torch --size paper
    python bench/latency.py soak --seconds 600
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

HOP = 0.05  # s, as glimpse decode
WINDOW_S, SFREQ_OUT = 0.25, 120.0
N_TIMES = 30  # 250 ms at 120 Hz
GALLERY_SIZE = 10_000
K = 5
REPO = Path(__file__).resolve().parents[1]
REALDATA_SET = REPO.parent / "shared" / "realdata" / "eeglab" / "test_raw.set"
STREAMS_PER_PUSHER = 16  # capacity: outlets per outlet process
STAGES = ("acquire", "preprocess", "queue", "encode", "retrieve", "total")

# The two live montages of the issue. Amplitudes in SI (T for the CTF axial
# gradiometers MNE stores as "mag", V for EEG).
KINDS = {
    "meg": {"n_chans": 272, "sfreq": 1200.0, "type": "MEG", "ch_type": "mag", "unit": "T",
            "amplitude": 1e-12},
    "eeg": {"n_chans": 64, "sfreq": 1000.0, "type": "EEG", "ch_type": "eeg", "unit": "V",
            "amplitude": 2e-5},
}
SIZES = {
    # glimpse.models.train.DEFAULT_SIZES, the default embedder (handcrafted, 256-d)
    "default": {"embed_dim": 256, "embedder": "handcrafted"},
    # BrainEncoderConfig's own defaults are the paper's (THINGS-MEG, D = 768)
    "paper": {"embed_dim": 768, "embedder": "open_clip:ViT-L-14:random",
              "hidden": 320, "spatial_channels": 270},
}
ROWS = ("meg-default-torch", "meg-default-onnx", "eeg-default-torch", "eeg-default-onnx",
        "meg-paper-torch", "meg-paper-onnx")


# =============================================================================== helpers


def _r(value: float | None, nd: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), nd)


def _dist(values) -> dict[str, Any] | None:
    """p50 / p95 / p99 / mean / max of ``values`` (ms), None when empty."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return None
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": _r(p50), "p95": _r(p95), "p99": _r(p99), "mean": _r(a.mean()),
            "max": _r(a.max()), "n": int(a.size)}


def _vmrss_kib(pid: int | str = "self") -> int | None:
    """Resident memory of a process from /proc (psutil is not a dependency)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str, loadavg: tuple[float, ...]) -> dict[str, Any]:
    """What the figures depend on: cores, load, library versions, device."""
    import onnxruntime as ort
    import pylsl
    import torch

    info = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "loadavg_at_start": [round(x, 2) for x in loadavg],
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "switch_interval_s": sys.getswitchinterval(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__,
            "onnxruntime_providers": ort.get_available_providers(),
            "pylsl": pylsl.__version__, "liblsl": pylsl.library_version(), "device": device,
            "cuda": None}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["cuda"] = {"name": torch.cuda.get_device_name(torch.device(device)),
                        "torch_cuda": torch.version.cuda}
    return info


def _signal(n: int, n_chans: int, sfreq: float, amplitude: float, seed: int) -> np.ndarray:
    """``(n, n_chans)`` float32 in SI: noise plus a 10 Hz rhythm (the outlets' signal)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sfreq
    phase = rng.uniform(0, 2 * np.pi, n_chans)
    x = 0.3 * rng.standard_normal((n, n_chans)) + np.sin(2 * np.pi * 10.0 * t[:, None] + phase)
    return (amplitude * x).astype(np.float32)


def montage(kind: str) -> tuple[list[str], np.ndarray]:
    """Channel names and 2-D positions in [0, 1]^2: CTF-275's first 272 sensors, or biosemi64."""
    import mne

    from glimpse.models.brain_encoder import sensor_positions_2d

    if kind == "meg":
        info = mne.channels.read_meg_canonical_info("ctf275")
        names = list(info.ch_names[:272])  # 'MLC11-2908' ...: as a CTF recording names them
    else:
        names = mne.channels.make_standard_montage("biosemi64").ch_names
        info = mne.create_info(names, KINDS[kind]["sfreq"], "eeg")
        info.set_montage("biosemi64")
    return names, sensor_positions_2d(info, names)


def _circle_positions(n: int) -> np.ndarray:
    """Sensors on a ring: positions for a montage MNE cannot place (no digitisation)."""
    a = 2 * np.pi * np.arange(n) / max(n, 1)
    return np.stack([0.5 + 0.4 * np.cos(a), 0.5 + 0.4 * np.sin(a)], axis=1)


def build_checkpoint(folder: Path, names: list[str], positions: np.ndarray, preprocess,
                     size: str, n_subjects: int = 4, seed: int = 0) -> Path:
    """A brain-encoder checkpoint with random weights, written with save_checkpoint."""
    import torch

    from glimpse.models.brain_encoder import BrainEncoder, BrainEncoderConfig
    from glimpse.models.checkpoint import save_checkpoint
    from glimpse.models.train import DEFAULT_SIZES

    spec = SIZES[size]
    arch = dict(DEFAULT_SIZES) if size == "default" else {
        "hidden": spec["hidden"], "spatial_channels": spec["spatial_channels"]}
    torch.manual_seed(seed)
    config = BrainEncoderConfig(n_chans=len(names), sfreq=SFREQ_OUT, n_times=N_TIMES,
                                embed_dim=spec["embed_dim"], n_subjects=n_subjects,
                                ch_names=list(names), positions=np.asarray(positions).tolist(),
                                **arch)
    model = BrainEncoder(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(seed)
    meta = {"ch_names": list(names), "positions": np.asarray(positions), "sfreq": SFREQ_OUT,
            "window": {"n_times": N_TIMES, "seconds": WINDOW_S},
            "preprocess": preprocess.to_dict(),
            "subjects": [f"{i + 1:02d}" for i in range(n_subjects)],
            "embedder": {"name": spec["embedder"], "dim": spec["embed_dim"]},
            "data_fingerprint": "0" * 64, "retrieval_head": "clip",
            "confidence": {"features": "window_stats_v1",
                           "weight": (0.01 * rng.standard_normal(3 * len(names))).tolist(),
                           "bias": 0.0, "calibrated": True},
            "training": {"bench": "random weights, bench/latency.py"}}
    return save_checkpoint(folder, model, meta)


def build_gallery(path: Path, size: str, seed: int = 0) -> Path:
    """10,000 random unit vectors of the checkpoint's dimension and embedder, saved."""
    import torch

    from glimpse.models.gallery import Gallery

    spec = SIZES[size]
    e = torch.randn(GALLERY_SIZE, spec["embed_dim"], generator=torch.Generator().manual_seed(seed))
    e = torch.nn.functional.normalize(e, dim=1)
    ids = [f"things/concept{i // 12:04d}/image{i:05d}.jpg" for i in range(GALLERY_SIZE)]
    return Gallery(e, ids, ids, spec["embedder"], spec["embed_dim"], ["0" * 64] * GALLERY_SIZE
                   ).save(path)


class Models:
    """Checkpoints, galleries and ONNX exports for (kind, size), built once in ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self._ckpt: dict[tuple[str, str], Path] = {}
        self._gallery: dict[str, Path] = {}
        self._onnx: dict[tuple[str, str], Path] = {}
        self._montage: dict[str, tuple[list[str], np.ndarray]] = {}
        self.build_s: dict[str, float] = {}

    def montage(self, kind: str) -> tuple[list[str], np.ndarray]:
        if kind not in self._montage:
            self._montage[kind] = montage(kind)
        return self._montage[kind]

    def checkpoint(self, kind: str, size: str) -> Path:
        key = (kind, size)
        if key not in self._ckpt:
            from glimpse.streaming.preprocess import PreprocessConfig, fit_scaler

            t = time.perf_counter()
            names, positions = self.montage(kind)
            spec = KINDS[kind]
            # Fitted as glimpse train fits it: default filters, scaler on the signal.
            import mne

            data = _signal(int(6 * spec["sfreq"]), len(names), spec["sfreq"], spec["amplitude"],
                           seed=1)
            raw = mne.io.RawArray(data.T.astype(np.float64),
                                  mne.create_info(names, spec["sfreq"], spec["ch_type"]),
                                  verbose="error")
            pre = fit_scaler(raw, PreprocessConfig(ch_names=tuple(names)), skip_s=1.0)
            self._ckpt[key] = build_checkpoint(self.root / f"ckpt-{kind}-{size}", names,
                                               positions, pre, size)
            self.build_s[f"checkpoint_{kind}_{size}"] = round(time.perf_counter() - t, 2)
        return self._ckpt[key]

    def gallery(self, size: str) -> Path:
        if size not in self._gallery:
            self._gallery[size] = build_gallery(self.root / f"gallery-{size}", size)
        return self._gallery[size]

    def onnx(self, kind: str, size: str) -> Path:
        key = (kind, size)
        if key not in self._onnx:
            from glimpse.models.export import export_checkpoint_onnx

            t = time.perf_counter()
            path = self.root / f"model-{kind}-{size}.onnx"
            export_checkpoint_onnx(self.checkpoint(kind, size), path)
            self._onnx[key] = path
            self.build_s[f"onnx_{kind}_{size}"] = round(time.perf_counter() - t, 2)
        return self._onnx[key]


def make_decoder(models: Models, kind: str, size: str, backend: str, device: str,
                 threads: int | None):
    """``(checkpoint, decoder)`` through glimpse decode's own loader."""
    from glimpse.service.decode import load_decoder

    onnx = models.onnx(kind, size) if backend == "onnx" else None
    decoder, _ = load_decoder(models.checkpoint(kind, size), models.gallery(size),
                              backend=backend, onnx=onnx, device=device, k=K, threads=threads)
    return decoder.checkpoint, decoder


def decoder_floor(decoder, n_calls: int) -> dict[str, Any]:
    """``Decoder.decode`` of one window alone (no LSL, no other thread busy): the floor.

    Two ways: ``back_to_back`` (one call after another: warm caches, the best case)
    and ``paced`` (one call per hop, sleeping between, as live windows come: a
    torch eager forward pays ~4 ms more on this 2-core machine after 50 ms idle,
    onnxruntime ~0.5 ms). Timed on a thread of its own, as the Worker runs it: on a
    loaded 2-core machine, torch's two OpenMP threads made the same forward pass
    ~100x slower on the main thread than on another thread.
    """
    result: dict[str, Any] = {}

    def run() -> None:
        result["back_to_back"] = _floor(decoder, n_calls, 0.0)
        result["paced"] = _floor(decoder, max(20, n_calls // 4), HOP)

    thread = threading.Thread(target=run, name="bench-floor")
    thread.start()
    thread.join()
    return result


def _floor(decoder, n_calls: int, gap: float) -> dict[str, Any]:
    import pylsl

    from glimpse.streaming.window import Window

    rng = np.random.default_rng(0)
    data = rng.standard_normal((decoder.n_chans, decoder.n_times)).astype(np.float32)
    costs, encode, retrieve = [], [], []
    for i in range(n_calls + 10):
        t = pylsl.local_clock()
        w = Window(data, t, t, t, "floor", decoder.ch_names, i)
        t0 = time.perf_counter()
        frame = decoder.decode([w])[0]
        if i >= 10:
            costs.append(1e3 * (time.perf_counter() - t0))
            encode.append(frame["latency_ms"]["encode"])
            retrieve.append(frame["latency_ms"]["retrieve"])
        if gap:
            time.sleep(gap)
    return {"decode": _dist(costs), "encode": _dist(encode), "retrieve": _dist(retrieve)}


# =============================================================================== outlets


def _push_main(args: argparse.Namespace) -> int:  # long: one real-time push loop, kept whole
    """The outlet process: every stream of ``--spec``, pushed in real time until stdin closes."""
    import pylsl

    from glimpse.streaming.outlet import SignalOutlet, signal_info

    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:  # the parent closed the pipe (or died): stop
        try:
            sys.stdin.read()
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    chunk_ms, stamps_mode = float(spec["chunk_ms"]), spec["stamps"]
    streams = []
    for s in spec["streams"]:
        n, sfreq = len(s["ch_names"]), float(s["sfreq"])
        info = signal_info(s["name"], s["source_id"], sfreq, s["ch_names"],
                           [s["ch_type"]] * n, [s["unit"]] * n, index="last",
                           stream_type=s["type"])
        outlet = SignalOutlet(info, index="last", markers=spec["markers_every_s"] > 0,
                              max_buffered=60)
        c = max(1, int(round(chunk_ms * sfreq / 1e3)))
        first_chunk = int(spec.get("first_chunk") or c)
        span = c * max(1, int(round(sfreq / c)))  # ~1 s of signal, cycled
        block = _signal(span + c, n, sfreq, s["amplitude"], seed=s["seed"])  # + c: never wraps
        streams.append({"name": s["name"], "outlet": outlet, "c": c,
                        "sfreq": sfreq, "block": block, "span": span, "next": 0,
                        "size": max(1, min(first_chunk, c)),
                        "offset_s": float(s["offset_s"]), "n": 0,
                        "marker_every": max(1, int(round(spec["markers_every_s"] * sfreq)))
                        if outlet.markers is not None else 0,
                        "grid": np.arange(c, dtype=np.float64) / sfreq})
    print(json.dumps({"event": "ready"}), flush=True)
    deadline = time.monotonic() + float(spec["wait_consumers_s"])
    while not all(s["outlet"].have_consumers() for s in streams):
        if time.monotonic() > deadline or stop.wait(0.005):
            break
    t_base = pylsl.local_clock() + 0.02
    for s in streams:
        s["t0"] = t_base + s["offset_s"]
        s["due"] = s["t0"] + (s["size"] - 1) / s["sfreq"]
    print(json.dumps({"event": "started", "t0": {s["name"]: s["t0"] for s in streams},
                      "chunk": {s["name"]: [s["c"], s["size"]] for s in streams}}), flush=True)
    late = np.zeros(1 << 18)
    n_late_rec = n_late = n_markers = 0
    cpu0 = os.times()
    while not stop.is_set():
        due = min(s["due"] for s in streams)
        now = pylsl.local_clock()
        if due > now:
            if stop.wait(due - now):
                break
            now = pylsl.local_clock()
        for s in streams:
            while s["due"] <= now:
                c, first, size = s["c"], s["next"], s["size"]
                start = first % s["span"]
                rows = s["block"][start:start + size]
                lateness = now - s["due"]
                if stamps_mode == "push":
                    now = pylsl.local_clock()
                    stamps = now - s["grid"][:size][::-1]
                else:
                    stamps = s["t0"] + first / s["sfreq"] + s["grid"][:size]
                s["outlet"].push(rows, stamps, first_index=first)
                if s["marker_every"]:
                    m = s["marker_every"]
                    nxt = -(-first // m) * m
                    if nxt < first + size:
                        n_markers += 1
                        s["outlet"].push_marker(json.dumps(
                            {"stim_file": f"things/concept{n_markers % 800:04d}/image.jpg",
                             "concept": f"concept{n_markers % 800:04d}",
                             "trial_type": "bench"}), float(stamps[nxt - first]))
                late[n_late_rec % len(late)] = lateness
                n_late_rec += 1
                n_late += lateness > c / s["sfreq"]
                s["n"] += size
                s["next"] = first + size
                s["size"] = c
                s["due"] = s["t0"] + (first + size + c - 1) / s["sfreq"]
            now = pylsl.local_clock()
    cpu1 = os.times()
    lat_ms = 1e3 * late[:min(n_late_rec, len(late))]
    print(json.dumps({"event": "stats", "pushes": n_late_rec,
                      "samples": {s["name"]: s["n"] for s in streams},
                      "late_ms": _dist(lat_ms), "n_late_over_one_chunk": int(n_late),
                      "markers": n_markers,
                      "cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 3)}),
          flush=True)
    time.sleep(0.2)  # let the last chunk leave before the outlets go
    return 0


class Outlets:
    """Outlet processes (``push``) for a list of stream specs, ``per_process`` streams each."""

    def __init__(self, streams: list[dict], root: Path, *, chunk_ms: float, stamps: str,
                 per_process: int, markers_every_s: float = 1.0, wait_consumers_s: float = 120.0,
                 first_chunk: int | None = None):
        self.streams = streams
        self.groups = [streams[i:i + per_process] for i in range(0, len(streams), per_process)]
        self.procs: list[subprocess.Popen] = []
        self.events: list[queue.Queue] = []
        self.t0: dict[str, float] = {}
        self.chunk: dict[str, int] = {}
        self.stats: list[dict] = []
        self._specs = []
        for g, group in enumerate(self.groups):
            path = root / f"outlets-{uuid.uuid4().hex[:8]}-{g}.json"
            path.write_text(json.dumps({"streams": group, "chunk_ms": chunk_ms, "stamps": stamps,
                                        "markers_every_s": markers_every_s,
                                        "wait_consumers_s": wait_consumers_s,
                                        "first_chunk": first_chunk}), encoding="utf-8")
            self._specs.append(path)

    def start(self, timeout: float = 60.0) -> Outlets:
        for path in self._specs:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "push",
                                     "--spec", str(path)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, cwd=str(REPO))
            events: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, args=(proc, events), daemon=True).start()
            self.procs.append(proc)
            self.events.append(events)
        for events in self.events:
            self._expect(events, "ready", timeout)
        return self

    @staticmethod
    def _read(proc: subprocess.Popen, events: queue.Queue) -> None:
        for line in proc.stdout:
            try:
                events.put(json.loads(line))
            except ValueError:
                continue
        events.put({"event": "exit"})

    def _expect(self, events: queue.Queue, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = events.get(timeout=max(0.01, left))
            except queue.Empty:
                raise RuntimeError(f"outlet process: no {name!r} within {timeout:g} s") from None
            if event.get("event") == name:
                return event
            if event.get("event") == "exit":
                raise RuntimeError(f"outlet process exited before {name!r}")

    def wait_started(self, timeout: float = 120.0) -> dict[str, float]:
        for events in self.events:
            event = self._expect(events, "started", timeout)
            self.t0.update(event["t0"])
            self.chunk.update(event["chunk"])
        return self.t0

    def stop(self) -> list[dict]:
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc, events in zip(self.procs, self.events):
            try:
                self.stats.append(self._expect(events, "stats", 15.0))
            except RuntimeError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return self.stats


def stream_specs(kind: str, n: int, names: list[str], *, phases: str) -> list[dict]:
    """``n`` outlet specs of ``kind`` with unique names and source ids; stream k starts
    ``k / n`` of a hop after the first with ``phases="spread"`` (independent amplifiers)."""
    spec = KINDS[kind]
    tag = uuid.uuid4().hex[:8]
    return [{"name": f"bench-{kind}-{tag}-{k}", "source_id": uuid.uuid4().hex,
             "type": spec["type"], "sfreq": spec["sfreq"], "ch_names": list(names),
             "ch_type": spec["ch_type"], "unit": spec["unit"], "amplitude": spec["amplitude"],
             "seed": 100 + k, "offset_s": (k / n) * HOP if phases == "spread" else 0.0}
            for k in range(n)]


# =============================================================================== one live run


class IndexCheck:
    """``on_samples``: follows the SAMPLE_INDEX column; counts lost and duplicated samples."""

    def __init__(self, column: int = -1):
        self.column = column
        self.last: int | None = None
        self.first: int | None = None
        self.n = self.lost = self.duplicated = 0

    def __call__(self, data: np.ndarray, times: np.ndarray) -> None:
        idx = data[:, self.column]
        first, last = int(idx[0]), int(idx[-1])
        if self.last is None:
            self.first = first
        else:
            step = first - self.last
            if step > 1:
                self.lost += step - 1
            elif step < 1:
                self.duplicated += 1 - step
        if len(idx) > 1:
            steps = np.diff(idx)
            if not (steps == 1).all():
                self.lost += int(np.clip(steps - 1, 0, None).sum())
                self.duplicated += int(np.clip(1 - steps, 0, None).sum())
        self.n += len(idx)
        self.last = last

    def snapshot(self) -> tuple[int, int, int]:
        return self.n, self.lost, self.duplicated


class FrameLog:
    """``on_frame``: keeps the latency of frames whose window ended in the measured span."""

    def __init__(self):
        self.t_start, self.t_stop = math.inf, math.inf
        self.rows: list[tuple] = []

    def __call__(self, frame: dict) -> None:
        t = frame["t_window_end"]
        if self.t_start <= t < self.t_stop:
            lat = frame["latency_ms"]
            self.rows.append((frame["stream"], frame["window_seq"], t, frame["t_decoded"],
                              *(lat[s] for s in STAGES)))


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _machine_ticks() -> tuple[int, int, int] | None:
    """(busy, steal, total) clock ticks of the whole machine since boot (Linux /proc/stat).

    Steal is time the hypervisor gave the vCPUs to someone else: on a shared VM it
    shows when a slow step was the host's doing, not the code's.
    """
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


def run_live(decoder, ckpt, specs: list[dict], root: Path, *, warmup: float, seconds: float,
             chunk_ms: float, stamps: str, per_process: int, record: bool = False,
             first_chunk: int | None = None, grid: str = "chunks",
             grace: float = 1.0) -> dict[str, Any]:
    """Outlets for ``specs`` -> glimpse decode's live wiring (LivePath); measure ``seconds``."""
    import pylsl

    from glimpse.service.live import LivePath

    outlets = Outlets(specs, root, chunk_ms=chunk_ms, stamps=stamps, per_process=per_process,
                      first_chunk=first_chunk, wait_consumers_s=60.0 + 2.0 * len(specs))
    frames = FrameLog()
    checks = [IndexCheck() for _ in specs]
    writer = None
    if record:
        from glimpse.streaming.session_log import SessionWriter

        writer = SessionWriter(root / f"session-{uuid.uuid4().hex[:8]}")
    # profile: each acquisition's hot-path cost per pull (StreamAcquisition.pull_costs).
    path = LivePath(decoder, [(s["name"], s["source_id"]) for s in specs], session="bench",
                    writer=writer, on_frame=[frames], on_samples=checks.__getitem__, hop=HOP,
                    resolve_timeout=30.0, lost_after=5.0, grid=grid, profile=True)
    outlets.start()
    t_setup = time.perf_counter()
    try:
        path.start()  # freezes the heap first, as glimpse decode does
        outlets.wait_started()
        setup_s = time.perf_counter() - t_setup
        time.sleep(warmup)
        snap = lambda: (path.worker.stats(), {a.stream_id: a.stats() for a in path.acquisitions},
                        {s["source_id"]: c.snapshot() for s, c in zip(specs, checks)})  # noqa: E731
        w0, a0, i0 = snap()
        p0 = [len(a.pull_costs()) for a in path.acquisitions]
        cpu0, wall0, ticks0 = _cpu_s(), time.perf_counter(), _machine_ticks()
        frames.t_start = pylsl.local_clock()
        frames.t_stop = frames.t_start + seconds
        time.sleep(seconds)
        cpu1, wall1, ticks1 = _cpu_s(), time.perf_counter(), _machine_ticks()
        chunks = [row for a, k in zip(path.acquisitions, p0) for row in a.pull_costs()[k:]]
        time.sleep(grace)  # windows that ended in the span get `grace` s to come out
        frames.t_start = math.inf  # freeze
        w1, a1, i1 = snap()
    finally:
        path.stop()
        outlet_stats = outlets.stop()
        if writer is not None:
            writer.close()
    return _summarise(frames, specs, outlets, w0, w1, a0, a1, i0, i1, seconds,
                      cpu=(cpu1 - cpu0) / (wall1 - wall0), setup_s=setup_s,
                      machine=_machine_share(ticks0, ticks1),
                      outlet_stats=outlet_stats, stamps=stamps, chunks=chunks)


def _machine_share(t0, t1) -> dict[str, Any] | None:
    """Busy and stolen shares of the machine's CPU time between two _machine_ticks()."""
    if t0 is None or t1 is None or t1[2] <= t0[2]:
        return None
    span = t1[2] - t0[2]
    return {"busy_pct": _r(100 * (t1[0] - t0[0]) / span, 1),
            "steal_pct": _r(100 * (t1[1] - t0[1]) / span, 1)}


def _summarise(frames: FrameLog, specs, outlets: Outlets, w0, w1, a0, a1, i0, i1,
               seconds: float, *, cpu: float, setup_s: float, outlet_stats, stamps,
               chunks, machine) -> dict:  # long: one figure per line of the JSON
    rows = frames.rows
    hop_ms = 1e3 * HOP
    by_stream: dict[str, list[tuple]] = {s["source_id"]: [] for s in specs}
    for row in rows:
        by_stream.setdefault(row[0], []).append(row)
    lat = np.array([r[4:] for r in rows], dtype=np.float64).reshape(-1, len(STAGES))
    stages = {s: _dist(lat[:, j]) for j, s in enumerate(STAGES)}
    other = lat[:, -1] - lat[:, :-1].sum(axis=1) if len(lat) else []
    stages["other"] = _dist(other)
    # chunk_wait: how long each window's newest sample sat in the outlet for its chunk.
    waits = []
    if stamps == "grid":
        sfreq_of = {s["source_id"]: (s["name"], s["sfreq"]) for s in specs}
        for row in rows:
            name, sfreq = sfreq_of[row[0]]
            t0, (c, f) = outlets.t0.get(name), outlets.chunk.get(name, (1, 1))
            if t0 is not None:  # chunks end at samples f - 1 + k c
                i = int(round((row[2] - t0) * sfreq))
                end = f - 1 if i < f else f - 1 + (-(-(i - f + 1) // c)) * c
                waits.append(1e3 * (end - i) / sfreq)
    stages["chunk_wait"] = _dist(waits)
    # batch sizes: frames of one batch share t_decoded
    _, counts = np.unique([r[3] for r in rows], return_counts=True) if rows else (None, [])
    expected = int(round(seconds / HOP))
    per_stream, ok_all = [], True
    for s in specs:
        sid = s["source_id"]
        mine = by_stream.get(sid, [])
        seqs = sorted(r[1] for r in mine)
        missing_seq = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else expected
        totals = [r[4 + STAGES.index("total")] for r in mine]
        p99 = float(np.percentile(totals, 99)) if totals else math.inf
        dropped = (w1["dropped"].get(sid, 0) - w0["dropped"].get(sid, 0))
        invalid = a1[sid]["n_invalid_windows"] - a0[sid]["n_invalid_windows"]
        stale = a1[sid]["n_stale"] - a0[sid]["n_stale"]
        gaps = a1[sid]["n_gaps"] - a0[sid]["n_gaps"]
        lost = a1[sid]["n_lost"] - a0[sid]["n_lost"]
        n_s = i1[sid][0] - i0[sid][0]
        lost_samples = i1[sid][1] - i0[sid][1]
        dup_samples = i1[sid][2] - i0[sid][2]
        pulls = a1[sid]["n_chunks"] - a0[sid]["n_chunks"]
        reasons = []
        if len(mine) < expected - 1:
            reasons.append(f"decoded {len(mine)} of {expected} windows")
        if missing_seq:
            reasons.append(f"{missing_seq} windows skipped")
        if dropped:
            reasons.append(f"{dropped} dropped by the worker")
        if stale:
            reasons.append(f"{stale} stale windows (older than two hops when cut)")
        if invalid or gaps or lost:
            reasons.append(f"{invalid} invalid windows, {gaps} gaps, {lost} lost")
        if lost_samples or dup_samples:
            reasons.append(f"{lost_samples} samples lost, {dup_samples} duplicated")
        if not p99 < hop_ms:
            reasons.append(f"p99 {p99:.1f} ms >= {hop_ms:g} ms")
        ok_all &= not reasons
        per_stream.append({
            "stream": s["name"], "windows": len(mine), "windows_expected": expected,
            "rate_hz": _r(len(mine) / seconds, 2), "skipped_windows": missing_seq,
            "dropped": dropped, "stale_windows": stale, "invalid_windows": invalid, "gaps": gaps,
            "samples": n_s, "samples_lost": lost_samples, "samples_duplicated": dup_samples,
            "samples_per_pull": _r(n_s / pulls, 2) if pulls else None,
            "total_p50_ms": _r(float(np.median(totals))) if totals else None,
            "total_p99_ms": _r(p99), "realtime": not reasons, "why_not": reasons})
    worst = max(per_stream, key=lambda p: p["total_p99_ms"] if p["total_p99_ms"] is not None
                else math.inf)
    return {"realtime": ok_all, "frames": len(rows), "seconds": seconds,
            "latency_ms": stages,
            "batch_size": {"mean": _r(float(np.mean(counts)), 2) if len(counts) else None,
                           "max": int(np.max(counts)) if len(counts) else None},
            "worst_stream": {k: worst[k] for k in ("stream", "total_p99_ms", "rate_hz")},
            "streams": per_stream,
            "cpu_main_process_cores": _r(cpu, 2), "machine_cpu": machine,
            "setup_s": _r(setup_s, 2),
            "acquisition_per_pull_us": _chunk_costs(chunks),
            "outlets": {"processes": len(outlets.procs), "stamps": stamps,
                        "stats": outlet_stats}}


def _chunk_costs(chunks: list[tuple]) -> dict[str, Any] | None:
    """Acquisition's hot path per pull (µs): all of it, its preprocessing, the rest."""
    if not chunks:
        return None
    a = np.asarray(chunks, dtype=np.float64)
    us = lambda v: {k: _r(x, 1) for k, x in _dist(1e6 * v).items() if k != "n"}  # noqa: E731
    return {"pulls": len(a), "samples_per_pull": _r(a[:, 0].mean(), 2), "hot_path": us(a[:, 1]),
            "preprocess": us(a[:, 2]), "beyond_preprocess": us(a[:, 1] - a[:, 2])}


# =============================================================================== latency


def cmd_latency(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    rows = args.rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose among {list(ROWS)}")
    out: dict[str, Any] = {"bench": "latency", "rows": []}
    with tempfile.TemporaryDirectory(prefix="glimpse-bench-") as tmp:
        models = Models(Path(tmp))
        for row in rows:
            kind, size, backend = row.split("-")
            t = time.perf_counter()
            ckpt, decoder = make_decoder(models, kind, size, backend, args.device, args.threads)
            floor = decoder_floor(decoder, args.floor_calls) if args.floor_calls else None
            names, _ = models.montage(kind)
            specs = stream_specs(kind, 1, names, phases="aligned")
            live = run_live(decoder, ckpt, specs, Path(tmp), warmup=args.warmup,
                            seconds=args.seconds, chunk_ms=args.chunk_ms, stamps=args.stamps,
                            per_process=1, record=args.record, first_chunk=args.first_chunk,
                            grid=args.grid)
            n_params = sum(p.numel() for p in ckpt.model.parameters())
            result = {
                "row": row, "stream": {"kind": kind, "n_chans": KINDS[kind]["n_chans"],
                                       "sfreq": KINDS[kind]["sfreq"],
                                       "chunk_ms": args.chunk_ms},
                "model": {"size": size, "params": int(n_params),
                          "embed_dim": SIZES[size]["embed_dim"], "n_times": ckpt.n_times,
                          "sfreq": ckpt.sfreq},
                "backend": backend, "device": str(decoder.device),
                "torch_threads": torch.get_num_threads(),
                "latency_ms": live["latency_ms"], "decoder_alone_ms": floor,
                "realtime": live["realtime"], "stream_stats": live["streams"][0],
                "cpu_main_process_cores": live["cpu_main_process_cores"],
                "machine_cpu": live["machine_cpu"],
                "acquisition_per_pull_us": live["acquisition_per_pull_us"],
                "outlet": live["outlets"]["stats"][0] if live["outlets"]["stats"] else None,
                "row_s": _r(time.perf_counter() - t, 1)}
            out["rows"].append(result)
            tot = live["latency_ms"]["total"] or {}
            print(f"[latency] {row}: total p50 {tot.get('p50')} p95 {tot.get('p95')} "
                  f"p99 {tot.get('p99')} ms", file=sys.stderr, flush=True)
            del decoder, ckpt
        out["build_s"] = models.build_s
    out["summary"] = {}
    for r in out["rows"]:
        total = r["latency_ms"]["total"] or {}
        floor = ((r["decoder_alone_ms"] or {}).get("back_to_back") or {}).get("decode") or {}
        out["summary"][r["row"]] = {
            **{k: total.get(k) for k in ("p50", "p95", "p99")},
            "decoder_alone_p50": floor.get("p50"),
            "chunk_wait_p50": (r["latency_ms"]["chunk_wait"] or {}).get("p50"),
            "above_decoder_p50": _r(total["p50"] - floor["p50"])
            if total.get("p50") is not None and floor.get("p50") is not None else None}
    out["config"] = {"seconds_per_row": args.seconds, "warmup_s": args.warmup,
                     "chunk_ms": args.chunk_ms, "stamps": args.stamps, "hop_s": HOP,
                     "window": f"{N_TIMES} samples at {SFREQ_OUT:g} Hz",
                     "gallery": GALLERY_SIZE, "k": K, "record": args.record,
                     "first_chunk": args.first_chunk,
                     "outlet": "one pylsl outlet process per row (bench/latency.py push)"}
    return out


# =============================================================================== capacity


def _steps(first: list[int], max_n: int) -> list[int]:
    steps = sorted({n for n in first if 1 <= n <= max_n})
    n = steps[-1] if steps else 1
    while n < max_n:  # beyond the list: x1.5
        n = min(max_n, int(math.ceil(n * 1.5)))
        steps.append(n)
    return steps


def cmd_capacity(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"bench": "capacity", "steps": []}
    steps = _steps(args.n, args.max_n)
    with tempfile.TemporaryDirectory(prefix="glimpse-bench-") as tmp:
        models = Models(Path(tmp))
        ckpt, decoder = make_decoder(models, "meg", args.size, args.backend, args.device,
                                     args.threads)
        names, _ = models.montage("meg")
        best, failures = 0, 0
        for n in steps:
            decoder.warmup(range(1, n + 1))  # every batch size the worker may take
            specs = stream_specs("meg", n, names, phases=args.phases)
            live = run_live(decoder, ckpt, specs, Path(tmp), warmup=args.warmup,
                            seconds=args.seconds, chunk_ms=args.chunk_ms, stamps=args.stamps,
                            per_process=args.streams_per_outlet_process, grid=args.grid)
            step = {"n_streams": n, "realtime": live["realtime"],
                    "total_ms": {k: (live["latency_ms"]["total"] or {}).get(k)
                                 for k in ("p50", "p95", "p99", "max")},
                    "worst_stream": live["worst_stream"],
                    "min_rate_hz": min(s["rate_hz"] for s in live["streams"]),
                    "dropped": sum(s["dropped"] for s in live["streams"]),
                    "invalid_windows": sum(s["invalid_windows"] for s in live["streams"]),
                    "stale_windows": sum(s["stale_windows"] for s in live["streams"]),
                    "samples_lost": sum(s["samples_lost"] for s in live["streams"]),
                    "batch_size": live["batch_size"],
                    "stages_p50_ms": {k: (v or {}).get("p50")
                                      for k, v in live["latency_ms"].items()},
                    "stages_p99_ms": {k: (v or {}).get("p99")
                                      for k, v in live["latency_ms"].items()},
                    "cpu_main_process_cores": live["cpu_main_process_cores"],
                    "machine_cpu": live["machine_cpu"],
                    "outlet_processes": live["outlets"]["processes"],
                    "outlet_late_ms": [s.get("late_ms") for s in live["outlets"]["stats"]],
                    "outlet_cpu_s": [s.get("cpu_s") for s in live["outlets"]["stats"]],
                    "why_not": sorted({w for s in live["streams"] for w in s["why_not"]})[:8]}
            if args.per_stream:
                step["streams"] = live["streams"]
            out["steps"].append(step)
            print(f"[capacity] N={n}: {'real time' if live['realtime'] else 'NOT real time'}"
                  f", p99 {step['total_ms']['p99']} ms, machine {live['machine_cpu']} "
                  f"{step['why_not'][:2]}", file=sys.stderr,
                  flush=True)
            if live["realtime"]:
                if failures == 0:
                    best = n
            else:
                failures += 1
                if failures >= args.failures:
                    break
        out["build_s"] = models.build_s
        out["model"] = {"size": args.size, "params": int(sum(p.numel()
                                                              for p in ckpt.model.parameters())),
                        "embed_dim": SIZES[args.size]["embed_dim"]}
        out["device"] = str(decoder.device)
    out["capacity_streams"] = best
    out["torch_threads"] = torch.get_num_threads()
    out["config"] = {"backend": args.backend, "seconds_per_step": args.seconds,
                     "warmup_s": args.warmup, "chunk_ms": args.chunk_ms, "stamps": args.stamps,
                     "phases": args.phases, "hop_s": HOP, "gallery": GALLERY_SIZE, "k": K,
                     "outlets": f"{args.streams_per_outlet_process} streams per outlet "
                                "process (bench/latency.py push), each stream its own outlet",
                     "criterion": "every stream: >= 20 windows/s (all but one of the span's), "
                                  "no skipped, dropped, stale or invalid window, no lost or "
                                  "duplicated sample, p99 total < 50 ms"}
    return out


# =============================================================================== soak


def _soak_checkpoint(recording: Path, root: Path, size: str) -> tuple[Path, Path, dict]:
    """A checkpoint on the recording's montage, its scaler fitted on the recording itself."""
    from glimpse.models.brain_encoder import sensor_positions_2d
    from glimpse.streaming.errors import InputError
    from glimpse.streaming.preprocess import PreprocessConfig, fit_scaler
    from glimpse.streaming.recordings import open_recording

    rec = open_recording(recording, check_stimuli=False)
    raw = rec.raw
    pre = fit_scaler(raw, PreprocessConfig(), skip_s=1.0)  # picks "data", as glimpse train
    names = list(pre.ch_names)
    try:
        positions = sensor_positions_2d(raw.info, names)
        placed = "mne layout"
    except InputError:
        positions, placed = _circle_positions(len(names)), "ring (no montage in the file)"
    ckpt = build_checkpoint(root / "ckpt", names, positions, pre, size)
    gallery = build_gallery(root / "gallery", size)
    return ckpt, gallery, {"path": str(recording), "format": rec.format,
                           "sfreq": rec.sfreq, "n_chans": len(raw.ch_names),
                           "model_channels": len(names), "seconds": _r(rec.n_times / rec.sfreq, 2),
                           "trials": len(rec.trials), "positions": placed}


def _slope_per_min(t: np.ndarray, y: np.ndarray) -> float | None:
    if len(t) < 3 or np.ptp(t) <= 0:
        return None
    return float(np.polyfit(t / 60.0, y, 1)[0])


def cmd_soak(args: argparse.Namespace) -> dict[str, Any]:  # long: one run and its JSON, in order
    from glimpse.service.decode import run_decode

    recording = Path(args.recording).expanduser()
    if not recording.exists():
        raise SystemExit(f"no recording at {recording}: pass --recording (any file glimpse "
                         "reads, or a session from `glimpse simulate`)")
    warm = args.warmup if args.warmup is not None else min(60.0, args.seconds / 5)
    out: dict[str, Any] = {"bench": "soak"}
    with tempfile.TemporaryDirectory(prefix="glimpse-soak-") as tmp:
        root = Path(tmp)
        ckpt, gallery, rec_info = _soak_checkpoint(recording, root, args.size)
        onnx = None
        if args.backend == "onnx":
            from glimpse.models.export import export_checkpoint_onnx

            onnx = root / "model.onnx"
            export_checkpoint_onnx(ckpt, onnx)
        name, sid = f"bench-soak-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        replay = subprocess.Popen(
            [sys.executable, "-m", "glimpse.service.cli", "replay", str(recording), "--name", name,
             "--source-id", sid, "--loop", "--index-channel", "--speed", str(args.speed),
             "--chunk-ms", str(args.chunk_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
        series: list[tuple[float, int | None, int | None]] = []
        started = threading.Event()
        done = threading.Event()
        t_begin = [time.monotonic()]
        last_line = [""]

        def sample_rss() -> None:
            started.wait()
            t0 = t_begin[0]
            while True:
                series.append((time.monotonic() - t0, _vmrss_kib(), _vmrss_kib(replay.pid)))
                if done.wait(args.rss_every):
                    series.append((time.monotonic() - t0, _vmrss_kib(), _vmrss_kib(replay.pid)))
                    return

        next_progress = [args.progress_every]

        def echo(line: str) -> None:  # run_decode's live line, once a second
            if not started.is_set():
                t_begin[0] = time.monotonic()
                started.set()
                return
            if "\n" not in line:  # not the final multi-line summary
                last_line[0] = line
            elapsed = time.monotonic() - t_begin[0]
            if elapsed >= warm and not dropped_at_warmup and "dropped " in line:
                dropped_at_warmup.append(int(line.split("dropped ")[1].split()[0]))
            if args.progress_every and elapsed >= next_progress[0]:
                next_progress[0] += args.progress_every
                print(f"[soak {elapsed:5.0f} s, rss {(_vmrss_kib() or 0) / 1024:.1f} MiB] {line}",
                      file=sys.stderr, flush=True)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        session = Path(args.session) if args.session else root / "session"
        dropped_at_warmup: list[int] = []
        try:
            summary = run_decode([name], ckpt, gallery, record=session, duration=args.seconds,
                                 backend=args.backend, onnx=onnx, device=args.device,
                                 threads=args.threads, grid=args.grid, resolve_timeout=30.0,
                                 echo=echo)
        finally:
            started.set()
            done.set()
            sampler.join(5)
            if replay.poll() is None:
                replay.send_signal(signal.SIGINT)
            try:
                replay_out, replay_err = replay.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                replay.kill()
                replay_out, replay_err = replay.communicate()
        out["samples"] = _session_index(session)
        out["replay"] = {"summary": replay_out.strip().splitlines()[-1] if replay_out.strip()
                         else None, "returncode": replay.returncode,
                         "stderr_tail": replay_err.strip().splitlines()[-3:]}
    stream = summary["streams"][0] if summary["streams"] else {}
    w = summary["worker"]
    t = np.array([s[0] for s in series])
    mem = {}
    for label, col in (("decode_process", 1), ("replay_process", 2)):
        kib = np.array([s[col] if s[col] is not None else np.nan for s in series], float)
        ok = np.isfinite(kib)
        if not ok.any():
            mem[label] = None
            continue
        mib, tt = kib[ok] / 1024, t[ok]
        after = tt >= warm
        base = mib[after][0] if after.any() else mib[0]
        mem[label] = {"start_mib": _r(mib[0], 1), "after_warmup_mib": _r(base, 1),
                      "end_mib": _r(mib[-1], 1), "max_mib": _r(mib.max(), 1),
                      "growth_mib": _r(mib[-1] - mib[0], 1),
                      "growth_after_warmup_mib": _r(mib[-1] - base, 1),
                      "slope_mib_per_min_after_warmup": _r(_slope_per_min(tt[after], mib[after]), 3)
                      if after.sum() >= 3 else None}
    out.update({
        "recording": rec_info, "speed": args.speed, "seconds": summary["seconds"],
        "expected_samples_by_clock": int(round(summary["seconds"] * rec_info["sfreq"]
                                               * args.speed)),
        "acquisition": {k: stream.get(k) for k in ("n_samples", "n_chunks", "n_windows",
                                                     "n_stale", "n_invalid_windows", "n_gaps",
                                                     "n_lost", "n_reconnects", "n_markers",
                                                     "n_bad_markers", "state")},
        "worker": {"n_decoded": w["n_decoded"], "n_dropped": w["n_dropped"],
                   "n_dropped_after_warmup": w["n_dropped"] - dropped_at_warmup[0]
                   if dropped_at_warmup else None,
                   "n_errors": w["n_errors"], "decode_rate": _r(w["decode_rate"], 2),
                   "latency_ms_total": w["latency_ms"]["total"]},
        "memory": mem, "rss_every_s": args.rss_every, "warmup_s": warm,
        "rss_series": [[_r(a, 1), b, c] for a, b, c in series] if args.series else None,
        "last_live_line": last_line[0],
        "model": {"size": args.size, "backend": args.backend, "device": args.device},
    })
    s = out["samples"]
    # The soak criterion: no sample lost or duplicated end to end (and no window
    # invalidated by a gap); worker drops and memory are reported beside it.
    out["ok"] = bool(s and s["received"] > 0 and s["lost"] == 0 and s["duplicated"] == 0
                     and s["received"] == s["expected"]
                     and (stream.get("n_invalid_windows") or 0) == 0
                     and (stream.get("n_gaps") or 0) == 0)
    return out


def _session_index(session: Path) -> dict[str, Any] | None:
    """Received vs expected samples, from the SAMPLE_INDEX column the session recorded."""
    metas = sorted(session.glob("streams/*/stream.json"))
    if not metas:
        return None
    meta = json.loads(metas[0].read_text(encoding="utf-8"))
    n_chans = int(meta["n_chans"])
    col = meta["ch_names"].index("SAMPLE_INDEX")
    path = metas[0].parent / "samples.f32"
    n_rows = path.stat().st_size // (4 * n_chans)
    if n_rows == 0:
        return {"received": 0, "expected": 0, "lost": 0, "duplicated": 0}
    data = np.memmap(path, dtype="<f4", mode="r", shape=(n_rows, n_chans))
    idx = np.asarray(data[:, col], dtype=np.int64)
    steps = np.diff(idx)
    first, last = int(idx[0]), int(idx[-1])
    return {"received": int(n_rows), "first_index": first, "last_index": last,
            "expected": last - first + 1,
            "lost": int(np.clip(steps - 1, 0, None).sum()),
            "duplicated": int(np.clip(1 - steps, 0, None).sum())}


# =============================================================================== CLI


def _parser() -> argparse.ArgumentParser:  # long: every option with its help text
    p = argparse.ArgumentParser(
        prog="bench/latency.py", description=__doc__.split("\n\n")[0],
        epilog="Subcommand --help says what each measures; see the module docstring.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser, seconds: float, warmup: float | None,
               warmup_help: str = "[default: %(default)s]") -> None:
        q.add_argument("--device", default="cpu", help="cpu or cuda[:i] (torch backend; onnx "
                       "uses CUDA only with onnxruntime-gpu)  [default: cpu]")
        q.add_argument("--threads", type=int, default=None,
                       help="CPU threads of torch (encoder and gallery top-k) and of "
                       "onnxruntime  [default: torch's setting]")
        q.add_argument("--seconds", type=float, default=seconds,
                       help=f"measured seconds per row/step/run  [default: {seconds:g}]")
        q.add_argument("--warmup", type=float, default=warmup,
                       help="seconds of streaming before measuring  " + warmup_help)
        q.add_argument("--chunk-ms", type=float, default=10.0,
                       help="outlet chunk length in ms  [default: 10]")
        q.add_argument("--grid", choices=("chunks", "fixed"), default="chunks",
                       help="window grid (glimpse decode --grid): chunks = moved once onto "
                       "the sender's chunk ends, fixed = every hop from the first "
                       "sample  [default: chunks]")
        q.add_argument("--switch-interval", type=float, default=None, metavar="S",
                       help="sys.setswitchinterval for this process (how long a thread may "
                       "hold the GIL while another waits)  [default: Python's, 0.005]")

    q = sub.add_parser("latency", help="per-window latency of one stream, torch and onnx",
                       description="One LSL stream at a time (outlet in another process) into "
                       "acquisition + worker. Per row: p50/p95/p99 of latency_ms.total and of "
                       "every stage (acquire, preprocess, queue, encode, retrieve, other, "
                       "chunk_wait), the decoder alone, drops. Rows: " + ", ".join(ROWS) + ".")
    common(q, 15.0, 3.0)
    q.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                   help="rows to run (KIND-SIZE-BACKEND)  [default: all]")
    q.add_argument("--stamps", choices=("grid", "push"), default="grid",
                   help="grid: sample i stamped t0 + i/sfreq, pushed when due; push: chunk "
                   "stamped with local_clock() at the push  [default: grid]")
    q.add_argument("--first-chunk", type=int, default=None, metavar="SAMPLES",
                   help="samples in each outlet's first chunk (shifts the chunk boundaries "
                   "against the window grid; chunk_wait shows the effect)  [default: a full "
                   "chunk]")
    q.add_argument("--floor-calls", type=int, default=100,
                   help="Decoder.decode calls timed alone before streaming (0: skip)")
    q.add_argument("--record", action="store_true",
                   help="also record the session (samples + frames), as glimpse decode does")
    q.set_defaults(func=cmd_latency)

    q = sub.add_parser("capacity", help="how many MEG streams one worker decodes in real time",
                       description="N MEG streams (272 ch, 1200 Hz; each its own outlet, "
                       "--streams-per-outlet-process per outlet process) into ONE worker with "
                       "one acquisition thread per stream, as glimpse decode runs them. N "
                       "steps through --n, then x1.5 up to --max-n, until --failures steps "
                       "fail. capacity_streams: the largest N before the first failure.")
    common(q, 10.0, 3.0)
    q.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (CPU or --device cuda) or onnx  [default: torch, as glimpse "
                   "decode]")
    q.add_argument("--size", choices=tuple(SIZES), default="default",
                   help="default (glimpse train's) or paper encoder  [default: default]")
    q.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 24, 32],
                   help="stream counts to try first  [default: 1 2 4 8 12 16 24 32]")
    q.add_argument("--max-n", type=int, default=256, help="largest N  [default: 256]")
    q.add_argument("--failures", type=int, default=1,
                   help="stop after this many failing steps  [default: 1]")
    q.add_argument("--streams-per-outlet-process", type=int, default=STREAMS_PER_PUSHER,
                   help=f"outlets per outlet process  [default: {STREAMS_PER_PUSHER}]")
    q.add_argument("--phases", choices=("spread", "aligned"), default="spread",
                   help="spread: stream k starts k/N of a hop later (independent amplifiers); "
                   "aligned: all windows complete together  [default: spread]")
    q.add_argument("--stamps", choices=("grid", "push"), default="grid")
    q.add_argument("--per-stream", action="store_true", help="include every stream's figures")
    q.set_defaults(func=cmd_capacity)

    q = sub.add_parser("soak", help="replay at 1x for minutes: no sample lost, memory flat",
                       description="`glimpse replay --loop --index-channel RECORDING` in a "
                       "subprocess, decoded by glimpse decode's run_decode (acquisition, "
                       "worker, session recording) with a checkpoint built on the "
                       "recording's montage. Reports samples received vs the index channel "
                       "(lost, duplicated), acquisition and worker counters, and VmRSS of "
                       "both processes every --rss-every s: start, end, max, growth, slope "
                       "per minute after the warm-up.")
    common(q, 600.0, None, "(memory slope after it)  [default: min(60, seconds / 5)]")
    q.add_argument("--recording", default=str(REALDATA_SET),
                   help="what to replay  [default: the 238 s EEGLAB file in ../shared/realdata]")
    q.add_argument("--speed", type=float, default=1.0, help="replay speed  [default: 1]")
    q.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    q.add_argument("--size", choices=tuple(SIZES), default="default")
    q.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    q.add_argument("--progress-every", type=float, default=60.0,
                   help="seconds between progress lines on stderr (0: none)")
    q.add_argument("--series", action="store_true", help="include the RSS series")
    q.add_argument("--session", default=None, metavar="DIR",
                   help="keep the recorded session here  [default: a temporary folder]")
    q.set_defaults(func=cmd_soak)

    q = sub.add_parser("push", help="(internal) outlet process for latency and capacity")
    q.add_argument("--spec", required=True, help="JSON spec written by Outlets")
    q.set_defaults(func=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "push":
        return _push_main(args)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    t, load = time.perf_counter(), os.getloadavg()
    result = args.func(args)
    result["machine"] = machine_info(args.device, load)
    result["wall_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
