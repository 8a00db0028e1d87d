"""The live path without LSL: a recording fed through the same windower and decoder.

``glimpse decode --recording FILE`` cuts a recording's windows exactly as the live
acquisition would (:class:`~glimpse.streaming.windower.Windower`, in the chunks a
live pull waits for, :func:`~glimpse.streaming.windower.cut_array`), decodes them
with the same :class:`~glimpse.service.decoder.Decoder` and matches each window's
true stimulus from the recording's trials as the live path matches it from the
markers (:func:`~glimpse.service.live.truth_of`). It prints the live figure (top-5
of the windows ending 0.15-0.65 s after an onset, beside chance; top-1), so the
figure of a live run can be checked, or predicted, without a stream.

Timestamps are the recording's own: sample ``i`` at ``i / sfreq`` s, and where the
acquisition stopped and resumed (:func:`~glimpse.streaming.replay.continuous_segments`)
the missing time (1 s past ``RESET_AFTER`` where it is unknown), so the windower
sees the same gaps as it would live. Each push's "now" is its newest timestamp:
nothing is stale offline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.markers import MarkerLog
from glimpse.streaming.recordings import Recording, open_recording
from glimpse.streaming.replay import continuous_segments
from glimpse.streaming.window import Window
from glimpse.streaming.windower import RESET_AFTER, Windower, cut_array

from .live import GalleryIds, truth_of

logger = logging.getLogger("glimpse.service.offline")

__all__ = ["decode_recording", "recording_windows"]

_BLOCK_S = 10.0  # recording read per block (memory, not behaviour)
_BATCH = 64  # windows per forward pass offline


def _markers(rec: Recording, stamp: Callable[[int], float]) -> MarkerLog:
    """The recording's trials as the markers replay would send (contract 7)."""
    log = MarkerLog(kept=max(1, len(rec.trials)))
    for trial in sorted(rec.trials, key=lambda t: t.sample):
        if 0 <= trial.sample < rec.raw.n_times:
            log.add(stamp(trial.sample), {
                "stim_file": None if trial.stim_file is None else str(trial.stim_file),
                "concept": trial.concept, "trial_type": trial.trial_type})
    return log


def recording_windows(rec: Recording, windower_of: Callable[..., Windower]
                      ) -> tuple[Iterator[Window], MarkerLog, Windower]:
    """``(windows, markers, windower)`` of an opened recording.

    ``windower_of(sfreq=..., stream_ch_names=..., units=None, stream_id=...)`` builds
    the windower (the caller holds the checkpoint and the options); the samples go
    to it in SI float32, as ``glimpse replay`` streams them.
    """
    raw = rec.raw
    sfreq = float(raw.info["sfreq"])
    offsets = np.zeros(raw.n_times)  # seconds added to i / sfreq from each segment on
    segments = continuous_segments(raw)
    shift = 0.0
    for seg in segments[1:]:
        shift += seg.gap_before if seg.gap_before is not None else RESET_AFTER + 1.0
        offsets[seg.start:] = shift
    windower = windower_of(sfreq=sfreq, stream_ch_names=list(raw.ch_names), units=None,
                           stream_id=Path(rec.path).name)
    block = max(1, int(_BLOCK_S * sfreq))

    def stamp(i: int) -> float:
        return i / sfreq + offsets[i]

    def windows() -> Iterator[Window]:
        for seg in segments:
            for start in range(seg.start, seg.stop, block):
                stop = min(seg.stop, start + block)
                data = np.ascontiguousarray(raw.get_data(start=start, stop=stop).T,
                                            dtype=np.float32)
                times = np.arange(start, stop) / sfreq + offsets[start:stop]
                yield from cut_array(windower, data, times)

    return windows(), _markers(rec, stamp), windower


def decode_recording(recording: str | Path, decoder, *, hop: float = 0.05,
                     grid: str = "fixed", allow_missing: bool = False,
                     on_frame: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Decode every window of ``recording`` with ``decoder``; the windower's stats.

    Frames (contract 5, their ``truth`` filled as the live worker fills it) go to
    ``on_frame``; their latencies are not live ones and mean nothing here.
    """
    ckpt = decoder.checkpoint
    rec = open_recording(recording, check_stimuli=False)

    def windower_of(**stream) -> Windower:
        return Windower(ckpt.ch_names, ckpt.preprocess, ckpt.n_times, hop=hop, grid=grid,
                        allow_missing=allow_missing, max_age=math.inf, **stream)

    windows, markers, windower = recording_windows(rec, windower_of)
    ids = GalleryIds(decoder.gallery.ids)
    batch: list[Window] = []

    def flush() -> None:
        for frame in decoder.decode(batch, session="offline"):
            frame["truth"] = truth_of(markers, frame["t_window_end"], ids)
            if on_frame is not None:
                on_frame(frame)
        batch.clear()

    for window in windows:
        batch.append(window)
        if len(batch) == _BATCH:
            flush()
    if batch:
        flush()
    return {"recording": str(recording), "trials": len(markers),
            "stream": {"stream_id": windower.stream_id, **windower.stats()}}
