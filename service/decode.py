"""``glimpse decode``: acquisition + worker + session recording, in the terminal.

One :class:`~glimpse.streaming.acquisition.StreamAcquisition` per stream feeds one
:class:`~glimpse.service.worker.Worker`; everything acquired (raw samples with their LSL
timestamps, markers) and every decoded frame goes to the session folder as it
happens (:mod:`glimpse.streaming.session_log`, unbuffered writes). A line per second says
how it goes; a summary (also ``summary.json`` in the session folder) ends the run.

Live accuracy: a frame "knows" its true stimulus when a marker came at most 1 s
before its window ended. Its stimulus counts as decodable when the window ends
``TRUTH_SPAN`` after onset (the evoked response's span; a window ending 50 ms
after onset cannot have seen it), and the top-5 hit rate over those windows is
shown beside its chance level (5 / gallery size, when the true image is in the
gallery).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pylsl

from glimpse.streaming.errors import InputError

logger = logging.getLogger("glimpse.service.decode")

#: Window ends (s after the stimulus onset) whose frames count in the live hit rate.
TRUTH_SPAN = (0.15, 0.65)
#: Largest age (s) of a marker that still names a window's stimulus.
TRUTH_MAX_AGE = 1.0
#: Windows queued per stream before the oldest is dropped.
QUEUE_SIZE = 8


class GalleryIds:
    """Match a marker's ``stim_file`` (absolute on the sender's machine) to a gallery id.

    Gallery ids are paths relative to the dataset root (``stimuli/test/x/x_01.png``);
    markers name files as the replaying machine saw them. The longest path suffix
    that is an id wins.
    """

    def __init__(self, ids: Sequence[str]):
        self._ids = {str(i): n for n, i in enumerate(ids)}
        self._cache: dict[str, str | None] = {}

    def match(self, stim_file: Any) -> str | None:
        if not isinstance(stim_file, str) or not stim_file:
            return None
        if stim_file not in self._cache:
            parts = PurePath(stim_file.replace("\\", "/")).parts
            self._cache[stim_file] = next(
                (cand for cand in ("/".join(parts[i:]) for i in range(len(parts)))
                 if cand in self._ids), None)
        return self._cache[stim_file]


class LiveStats:
    """What the live line and the summary report; fed by the worker's frames."""

    def __init__(self, k: int, gallery_size: int):
        self.k, self.gallery_size = k, gallery_size
        self._lock = threading.Lock()
        self.last: dict | None = None
        self.n_frames = 0
        self.n_known = 0  # frames with a decodable true stimulus in the gallery
        self.n_hits1 = self.n_hits = 0
        self.recent: deque[tuple[float, bool]] = deque(maxlen=200)

    def on_frame(self, frame: dict) -> None:
        truth = frame.get("truth") or {}
        age = truth.get("age_s")
        known = (truth.get("id") is not None and age is not None
                 and TRUTH_SPAN[0] <= age <= TRUTH_SPAN[1])
        ids = [t["id"] for t in frame["topk"]]
        with self._lock:
            self.n_frames += 1
            self.last = frame
            if known:
                hit = truth["id"] in ids
                self.n_known += 1
                self.n_hits += hit
                self.n_hits1 += bool(ids) and ids[0] == truth["id"]
                self.recent.append((frame["t_decoded"], hit))

    def summary(self) -> dict[str, Any]:
        with self._lock:
            n = self.n_known
            return {"frames": self.n_frames, "frames_with_truth": n,
                    "top1": self.n_hits1 / n if n else None,
                    "topk": self.n_hits / n if n else None, "k": self.k,
                    "chance_topk": min(self.k, self.gallery_size) / self.gallery_size,
                    "chance_top1": 1 / self.gallery_size,
                    "truth_span_s": list(TRUTH_SPAN)}


def _session_folder(record: Path | None) -> Path:
    if record is not None:
        return record
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("sessions") / stamp


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def status_line(worker_stats: dict, acq_stats: list[dict], live: LiveStats) -> str:
    """The live line: decode rate, latency, drops, the newest top-1, the truth."""
    total = worker_stats["latency_ms"]["total"]
    invalid = sum(a["n_invalid_windows"] for a in acq_stats)
    lost = [a["stream_id"] for a in acq_stats if a["state"] != "streaming"]
    parts = [f"{worker_stats['decode_rate']:5.1f} frames/s",
             f"latency p50 {_fmt_ms(total['p50'])} p99 {_fmt_ms(total['p99'])} ms",
             f"dropped {worker_stats['n_dropped']}", f"invalid {invalid}"]
    if lost:
        parts.append(f"LOST {','.join(lost)}")
    frame = live.last
    if frame is not None and frame["topk"]:
        best = frame["topk"][0]
        parts.append(f"top-1 {best['id']} ({best['score']:.2f})")
        truth = frame.get("truth")
        if truth:
            parts.append(f"truth {truth.get('id') or truth.get('stim_file')} "
                         f"({truth.get('age_s', 0):+.2f} s)")
    s = live.summary()
    if s["frames_with_truth"]:
        parts.append(f"top-{s['k']} hit {100 * s['topk']:.0f}% of {s['frames_with_truth']} "
                     f"(chance {100 * s['chance_topk']:.0f}%)")
    return " | ".join(parts)


def run_decode(streams: Sequence[str], checkpoint: str | Path, gallery: str | Path, *,
               record: Path | None = None, duration: float | None = None,
               backend: str = "auto", onnx: str | Path | None = None, device: str = "cpu",
               k: int = 5, hop: float = 0.05, allow_missing: bool = False,
               grid: str = "chunks", resolve_timeout: float = 10.0, threads: int | None = 1,
               echo: Callable[[str], None] = print, interval: float = 1.0,
               stop: threading.Event | None = None) -> dict[str, Any]:
    """Decode ``streams`` live until ``duration`` s, Ctrl-C/SIGTERM or ``stop``; the summary.

    ``backend`` "auto": onnxruntime on CPU when ``onnx`` or CHECKPOINT/model.onnx
    exists (3x faster than eager torch at batch 1 for the default encoder), else
    torch. ``threads``: torch's and onnxruntime's CPU threads (None: leave them).
    ``grid``: the acquisition's window grid (``chunks``: moved once onto each sender's
    chunk ends, which saves up to a chunk of latency; ``fixed``: every hop from the
    first sample).
    """
    from glimpse.models.checkpoint import load_checkpoint
    from glimpse.models.export import ONNX_NAME
    from glimpse.models.gallery import Gallery
    from .worker import Decoder, Worker, freeze_heap
    from glimpse.streaming.session_log import SessionWriter

    if not streams:
        raise InputError("at least one --stream NAME", "none", "pass --stream with the LSL "
                         "stream's name (glimpse replay prints it)")
    if duration is not None and not duration > 0:
        raise InputError("--duration a positive number of seconds", repr(duration),
                         "leave it out to decode until Ctrl-C")
    exported = Path(onnx) if onnx is not None else Path(checkpoint) / ONNX_NAME
    if backend == "auto":
        backend = "onnx" if device == "cpu" and exported.is_file() else "torch"
    if backend == "onnx":
        if not exported.is_file():
            raise InputError("an ONNX file with --backend onnx", f"no {exported}",
                             "export one with `glimpse export CKPT` (or pass --onnx FILE)")
        onnx = exported
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # the gallery's top-k runs in torch with either backend
    ckpt = load_checkpoint(checkpoint, device=device)
    gal = Gallery.load(gallery, device=device)
    decoder = Decoder(ckpt, gal, k=k, backend=backend, onnx_path=onnx, device=device,
                      threads=threads)
    if allow_missing and not decoder.supports_mask:
        raise InputError("a model that can mask missing channels with --allow-missing",
                         f"{ckpt.model_name} (no channel mask)",
                         "stream every checkpoint channel, or drop --allow-missing")
    folder = _session_folder(record)
    writer = SessionWriter(folder)
    ids = GalleryIds(gal.ids)
    live = LiveStats(k, len(gal))
    acquisitions: list[Any] = []

    def truth(stream_id: str, t_end: float) -> dict | None:
        # By the current id: a stream that came back from another outlet has a new one.
        acq = next((a for a in acquisitions if a.stream_id == stream_id), None)
        marker = acq.truth_at(t_end, TRUTH_MAX_AGE) if acq is not None else None
        if marker is None:
            return None
        return {**marker, "id": ids.match(marker.get("stim_file")),
                "age_s": float(t_end - marker["t"])}

    # 8 windows (400 ms) per stream, all of them in one batch: the backlog of the first
    # pull after a (re)connect is decoded, not dropped, when the worker keeps up.
    worker = Worker(decoder, session=folder.name, truth=truth, queue_size=QUEUE_SIZE,
                    on_frame=[writer.write_frame, live.on_frame],
                    max_batch=QUEUE_SIZE * len(streams))
    # Before any stream flows: no 100 ms garbage-collector pauses once decoding, and
    # the worker takes the first windows (the backlog of the first pulls) at once.
    freeze_heap()
    worker.start()
    try:
        for name in streams:
            acq = _acquisition(name, ckpt, writer, worker, hop=hop, allow_missing=allow_missing,
                               grid=grid, resolve_timeout=resolve_timeout)
            acquisitions.append(acq)
    except BaseException:
        for acq in acquisitions:
            acq.stop()
        worker.stop()
        writer.close()
        if record is None and not acquisitions:  # nothing recorded: leave no empty session
            shutil.rmtree(folder, ignore_errors=True)
        raise
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    start = time.monotonic()
    echo(f"glimpse decode: {', '.join(streams)} -> {folder}/ ({backend} on {device}, "
         f"{ckpt.model_name}, gallery of {len(gal)}); Ctrl-C stops")
    try:
        while not stop.wait(interval):
            echo(status_line(worker.stats(), [a.stats() for a in acquisitions], live))
            if duration is not None and time.monotonic() - start >= duration:
                break
    finally:
        for acq in acquisitions:
            acq.stop()
        worker.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        summary = {"session": str(folder), "seconds": round(time.monotonic() - start, 1),
                   "worker": worker.stats(),
                   "streams": [a.stats() for a in acquisitions],
                   "accuracy": live.summary()}
        (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n",
                                             encoding="utf-8")
        writer.close()
    echo(format_summary(summary))
    return summary


def _acquisition(name: str, ckpt, writer, worker, **options):
    """A started acquisition of stream ``name`` that records to ``writer`` and feeds ``worker``."""
    from glimpse.streaming.acquisition import StreamAcquisition
    from glimpse.streaming.lsl import channel_info

    sinks: dict[str, Any] = {}

    def on_stream(info: pylsl.StreamInfo) -> None:  # at (re)connect: the layout may change
        labels, types, units = channel_info(info)
        sinks["writer"] = writer.add_stream(info.name(), info.source_id(), info.nominal_srate(),
                                            labels, types, units)
        sinks["markers"] = f"{info.name()}-markers"

    def on_samples(data: np.ndarray, times: np.ndarray) -> None:
        sinks["writer"].write(data, times)  # written before the callback returns

    def on_marker(t: float, marker: object, valid: bool) -> None:
        writer.write_marker(t, sinks.get("markers", ""), marker, valid)

    return StreamAcquisition(name, ch_names=ckpt.ch_names, preprocess=ckpt.preprocess,
                             n_times=ckpt.n_times, on_window=worker.submit,
                             on_samples=on_samples, on_marker=on_marker, on_stream=on_stream,
                             **options).start()


def format_summary(summary: dict[str, Any]) -> str:
    w, acc = summary["worker"], summary["accuracy"]
    total = w["latency_ms"]["total"]
    lines = [f"decoded {w['n_decoded']} windows in {summary['seconds']} s; latency p50 "
             f"{_fmt_ms(total['p50'])} ms, p95 {_fmt_ms(total['p95'])} ms, p99 "
             f"{_fmt_ms(total['p99'])} ms; dropped {w['n_dropped']}"]
    for s in summary["streams"]:
        lines.append(f"  {s['stream_id']}: {s['n_samples']} samples, {s['n_windows']} windows "
                     f"({s['n_invalid_windows']} invalid), {s['n_gaps']} gaps, "
                     f"{s['n_lost']} lost / {s['n_reconnects']} reconnects, "
                     f"{s['n_markers']} markers ({s['n_bad_markers']} malformed)")
    if acc["frames_with_truth"]:
        lines.append(f"  true stimulus in the top-{acc['k']}: {100 * acc['topk']:.1f}% of "
                     f"{acc['frames_with_truth']} windows ending {acc['truth_span_s'][0]:g}-"
                     f"{acc['truth_span_s'][1]:g} s after an onset (chance "
                     f"{100 * acc['chance_topk']:.1f}%); top-1 {100 * acc['top1']:.1f}% "
                     f"(chance {100 * acc['chance_top1']:.1f}%)")
    lines.append(f"  session recorded in {summary['session']}/")
    return "\n".join(lines)
