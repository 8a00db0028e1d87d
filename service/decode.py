"""``glimpse decode``: the live path in the terminal, and its offline face.

Live (:func:`run_decode`): the streams go through the one live wiring,
:class:`~glimpse.service.live.LivePath` (an acquisition per stream, one worker,
the session folder written as it happens: :mod:`glimpse.streaming.session_log`,
unbuffered writes). A line per second says how it goes; a summary (also
``summary.json`` in the session folder) ends the run. Offline
(``glimpse decode --recording``): :mod:`glimpse.service.offline`.

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
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from glimpse.streaming.errors import InputError

from .live import TRUTH_MAX_AGE, GalleryIds, LivePath

__all__ = ["TRUTH_MAX_AGE", "TRUTH_SPAN", "GalleryIds", "LiveStats", "format_summary",
           "load_decoder", "run_decode", "run_decode_recording", "status_line"]

logger = logging.getLogger("glimpse.service.decode")

#: Window ends (s after the stimulus onset) whose frames count in the live hit rate.
TRUTH_SPAN = (0.15, 0.65)

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
    stale = sum(a["n_stale"] for a in acq_stats)
    lost = [a["stream_id"] for a in acq_stats if a["state"] != "streaming"]
    parts = [f"{worker_stats['decode_rate']:5.1f} frames/s",
             f"latency p50 {_fmt_ms(total['p50'])} p99 {_fmt_ms(total['p99'])} ms",
             f"dropped {worker_stats['n_dropped']}", f"stale {stale}", f"invalid {invalid}"]
    if lost:
        parts.append(f"LOST {','.join(lost)}")
    frame = live.last
    if frame is not None and frame["topk"]:
        best = frame["topk"][0]
        parts.append(f"top-1 {best['id']} ({best['score']:.2f})")
        truth = frame.get("truth")
        if truth:
            # Outside the gallery (a training image): the file name; no file: what the marker says.
            stim = truth.get("stim_file")
            shown = truth.get("id") or (f"{Path(str(stim)).name} (not in gallery)" if stim else
                                        truth.get("concept") or truth.get("trial_type") or "?")
            parts.append(f"truth {shown} ({truth.get('age_s', 0):+.2f} s)")
    s = live.summary()
    if s["frames_with_truth"]:
        parts.append(f"top-{s['k']} hit {100 * s['topk']:.0f}% of {s['frames_with_truth']} "
                     f"(chance {100 * s['chance_topk']:.0f}%)")
    return " | ".join(parts)


def load_decoder(checkpoint: str | Path, gallery: str | Path, *, backend: str = "auto",
                 onnx: str | Path | None = None, device: str = "cpu", k: int = 5,
                 threads: int | None = 1, allow_missing: bool = False, subject: int | str | None = None):
    """``(decoder, backend)``: the checkpoint and gallery loaded, as ``glimpse decode`` runs them.

    ``subject``: whose subject layer decodes (a training subject id or index; default
    the first), e.g. the person an adapted checkpoint was calibrated for.

    ``backend`` "auto": onnxruntime on CPU when ``onnx`` or CHECKPOINT/model.onnx
    exists (3x faster than eager torch at batch 1 for the default encoder), else
    torch. ``threads``: torch's and onnxruntime's CPU threads (None: leave them).
    """
    from glimpse.models.checkpoint import load_checkpoint
    from glimpse.models.export import ONNX_NAME
    from glimpse.models.gallery import Gallery

    from .decoder import Decoder

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
                      threads=threads, subject=subject)
    if allow_missing and not decoder.supports_mask:
        raise InputError("a model that can mask missing channels with --allow-missing",
                         f"{ckpt.model_name} (no channel mask)",
                         "give it every checkpoint channel, or drop --allow-missing")
    return decoder, backend


def run_decode(streams: Sequence[str], checkpoint: str | Path, gallery: str | Path, *,
               record: Path | None = None, duration: float | None = None,
               backend: str = "auto", onnx: str | Path | None = None, device: str = "cpu",
               k: int = 5, hop: float = 0.05, allow_missing: bool = False,
               grid: str = "chunks", resolve_timeout: float = 10.0, threads: int | None = 1,
               max_age: float | None = None, echo: Callable[[str], None] = print,
               interval: float = 1.0, stop: threading.Event | None = None) -> dict[str, Any]:
    """Decode ``streams`` live until ``duration`` s, Ctrl-C/SIGTERM or ``stop``; the summary.

    ``backend``, ``onnx``, ``threads``: see :func:`load_decoder`. ``grid``: the
    acquisition's window grid (``chunks``: moved once onto each sender's chunk ends,
    which saves up to a chunk of latency; ``fixed``: every hop from the first
    sample). ``max_age``: windows whose newest sample is older than this when cut are
    skipped and counted as stale (default: two hops).
    """
    from glimpse.streaming.session_log import SessionWriter

    if not streams:
        raise InputError("at least one --stream NAME", "none", "pass --stream with the LSL "
                         "stream's name (glimpse replay prints it)")
    if duration is not None and not duration > 0:
        raise InputError("--duration a positive number of seconds", repr(duration),
                         "leave it out to decode until Ctrl-C")
    if max_age is not None and not max_age > 0:
        raise InputError("--max-age a positive number of seconds", repr(max_age),
                         "leave it out for two hops")
    decoder, backend = load_decoder(checkpoint, gallery, backend=backend, onnx=onnx,
                                    device=device, k=k, threads=threads,
                                    allow_missing=allow_missing)
    ckpt, gal = decoder.checkpoint, decoder.gallery
    folder = _session_folder(record)
    live = LiveStats(k, len(gal))
    stop = stop or threading.Event()
    summary: dict[str, Any] = {}
    with ExitStack() as stack:  # unwinds in reverse order, whatever stops the run
        writer = SessionWriter(folder)
        path = LivePath(decoder, streams, session=folder.name, writer=writer,
                        ids=GalleryIds(gal.ids), on_frame=[live.on_frame], hop=hop,
                        allow_missing=allow_missing, grid=grid, max_age=max_age,
                        resolve_timeout=resolve_timeout)
        if record is None:  # no stream ever started: leave no empty session behind
            stack.callback(lambda: path.acquisitions or shutil.rmtree(folder, ignore_errors=True))
        stack.callback(writer.close)
        path.start()
        stack.callback(_summarise, summary, folder, path, live, time.monotonic())
        stack.callback(path.stop)  # before the summary: no sample or frame after it
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                stack.callback(signal.signal, signum, signal.signal(signum, lambda *_: stop.set()))
        start = time.monotonic()
        echo(f"glimpse decode: {', '.join(streams)} -> {folder}/ ({backend} on {device}, "
             f"{ckpt.model_name}, gallery of {len(gal)}); Ctrl-C stops")
        while not stop.wait(interval):
            stats = path.stats()
            echo(status_line(stats["worker"], stats["streams"], live))
            if duration is not None and time.monotonic() - start >= duration:
                break
    echo(format_summary(summary))
    return summary


def _summarise(summary: dict, folder: Path, path: LivePath, live: LiveStats,
               start: float) -> None:
    """Fill ``summary`` and write summary.json, once acquisitions and worker stopped."""
    stats = path.stats()
    summary.update(session=str(folder), seconds=round(time.monotonic() - start, 1),
                   worker=stats["worker"], streams=stats["streams"], accuracy=live.summary())
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def run_decode_recording(recording: str | Path, checkpoint: str | Path, gallery: str | Path,
                         *, backend: str = "auto", onnx: str | Path | None = None,
                         device: str = "cpu", k: int = 5, hop: float = 0.05,
                         allow_missing: bool = False, grid: str = "fixed",
                         threads: int | None = 1,
                         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The offline face of ``glimpse decode``: ``recording`` through the live windower and
    decoder, without LSL (:mod:`glimpse.service.offline`); the summary, its live figure."""
    from .offline import decode_recording

    decoder, backend = load_decoder(checkpoint, gallery, backend=backend, onnx=onnx,
                                    device=device, k=k, threads=threads,
                                    allow_missing=allow_missing)
    live = LiveStats(k, len(decoder.gallery))
    result = decode_recording(recording, decoder, hop=hop, grid=grid,
                              allow_missing=allow_missing, on_frame=live.on_frame)
    summary = {**result, "accuracy": live.summary()}
    s, acc = result["stream"], summary["accuracy"]
    echo(f"glimpse decode --recording {recording} ({backend} on {device}, "
         f"{decoder.checkpoint.model_name}, gallery of {len(decoder.gallery)}): "
         f"{s['n_windows']} windows ({s['n_invalid_windows']} invalid), {s['n_gaps']} gaps, "
         f"{result['trials']} trials")
    echo(_accuracy_line(acc) if acc["frames_with_truth"] else
         "  no window ends 0.15-0.65 s after a trial whose stimulus is in the gallery")
    return summary


def _accuracy_line(acc: dict[str, Any]) -> str:
    return (f"  true stimulus in the top-{acc['k']}: {100 * acc['topk']:.1f}% of "
            f"{acc['frames_with_truth']} windows ending {acc['truth_span_s'][0]:g}-"
            f"{acc['truth_span_s'][1]:g} s after an onset (chance "
            f"{100 * acc['chance_topk']:.1f}%); top-1 {100 * acc['top1']:.1f}% "
            f"(chance {100 * acc['chance_top1']:.1f}%)")


def format_summary(summary: dict[str, Any]) -> str:
    w, acc = summary["worker"], summary["accuracy"]
    total = w["latency_ms"]["total"]
    lines = [f"decoded {w['n_decoded']} windows in {summary['seconds']} s; latency p50 "
             f"{_fmt_ms(total['p50'])} ms, p95 {_fmt_ms(total['p95'])} ms, p99 "
             f"{_fmt_ms(total['p99'])} ms; dropped {w['n_dropped']}"]
    for s in summary["streams"]:
        lines.append(f"  {s['stream_id']}: {s['n_samples']} samples, {s['n_windows']} windows "
                     f"({s['n_stale']} stale, {s['n_invalid_windows']} invalid), "
                     f"{s['n_gaps']} gaps, "
                     f"{s['n_lost']} lost / {s['n_reconnects']} reconnects, "
                     f"{s['n_markers']} markers ({s['n_bad_markers']} malformed)")
    if acc["frames_with_truth"]:
        lines.append(_accuracy_line(acc))
    lines.append(f"  session recorded in {summary['session']}/")
    return "\n".join(lines)
