"""The calibration's own trials out of a recorded session folder.

A session folder holds every marker its stream's ``<name>-markers`` carried: this
calibration's, but also earlier presentations', a replay's, a trial the page
announced after the stream had died. :func:`calibration_trials` keeps a trial only
when it is one of this calibration's valid presentation trials (its onset on the
LSL clock within a sample of a valid row of the presentation logs, same stimulus
file) and the samples around it are continuous (no gap from ``BEFORE_S`` before its
onset to ``AFTER_S`` after it: a stream that died and came back leaves a gap, and a
trial shown during it has no signal). The others are dropped and counted, by reason.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError
from glimpse.streaming.session_log import find_session_stream

__all__ = ["AFTER_S", "BEFORE_S", "calibration_trials", "session_times", "valid_onsets"]

BEFORE_S, AFTER_S = 0.25, 1.0  # continuous signal needed around an onset
_GAP_PERIODS = 5  # a timestamp step this many periods over the typical one is a gap (as session_log)


def valid_onsets(rows: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """``(onset on the LSL clock, stim_file)`` of the valid rows of presentation trial logs."""
    return [(float(r["onset_lsl"]), str(r["stim_file"])) for r in rows
            if r.get("valid") and r.get("onset_lsl") is not None]


def session_times(folder: str | Path) -> tuple[np.ndarray, float]:
    """The LSL timestamps of a session folder's one stream (``times.f64``) and its rate."""
    found = find_session_stream(Path(folder))
    if found is None:
        raise InputError("a session folder (session.json, streams/<name>/)", str(folder),
                         "pass the folder a live session recorded")
    session, stream_dir = found
    if stream_dir is None:
        dirs = sorted(p.parent for p in (session / "streams").glob("*/stream.json"))
        if len(dirs) != 1:
            raise InputError("a session folder with one recorded stream", f"{len(dirs)} in {session}",
                             "calibrate from a session that recorded the person's stream only")
        stream_dir = dirs[0]
    meta = json.loads((stream_dir / "stream.json").read_text(encoding="utf-8"))
    n_chans, sfreq = int(meta["n_chans"]), float(meta["sfreq"])
    raw = (stream_dir / "times.f64").read_bytes()
    times = np.frombuffer(raw[: len(raw) - len(raw) % 8], dtype="<f8")
    n_rows = (stream_dir / "samples.f32").stat().st_size // (4 * n_chans)
    return times[: min(len(times), n_rows)].copy(), sfreq


def calibration_trials(data, folder: str | Path, onsets: list[tuple[float, str]]
                       ) -> tuple[Any, dict[str, Any]]:
    """``data`` (a :class:`~glimpse.models.data.SessionData` of ``folder``) with only the
    trials of ``onsets`` (:func:`valid_onsets`) over continuous signal; and the counts."""
    times, sfreq = session_times(folder)
    if not len(times):
        raise InputError("recorded samples in the calibration's session folder", f"none in {folder}",
                         "check that the stream reached the session (GET /api/sessions/{id})")
    period = 1.0 / sfreq
    steps = np.diff(times)
    gap_at = np.flatnonzero(steps > np.median(steps) + _GAP_PERIODS * period) if steps.size else np.array([], int)
    gap_start, gap_end = times[gap_at], times[gap_at + 1]
    sorted_onsets = np.array(sorted(t for t, _ in onsets), float)
    files = {round(t, 6): f for t, f in onsets}
    table = data.trials
    keep = np.zeros(len(table), bool)
    counts = {"kept": 0, "not_this_calibration": 0, "gap": 0, "other_stimulus": 0}
    for i, onset in enumerate(table.onset):
        sample = min(max(int(round(onset * sfreq)), 0), len(times) - 1)
        t = times[sample]
        j = int(np.searchsorted(sorted_onsets, t))
        near = [k for k in (j - 1, j) if 0 <= k < len(sorted_onsets)]
        best = min(near, key=lambda k: abs(sorted_onsets[k] - t)) if near else None
        if best is None or abs(sorted_onsets[best] - t) > 1.5 * period:
            counts["not_this_calibration"] += 1
            continue
        wanted = files.get(round(float(sorted_onsets[best]), 6))
        image = table.image[i]
        if image >= 0 and wanted is not None and Path(wanted).resolve() != Path(data.images[image]).resolve():
            counts["other_stimulus"] += 1
            continue
        if t - BEFORE_S < times[0] or t + AFTER_S > times[-1] or np.any(
                (gap_end > t - BEFORE_S) & (gap_start < t + AFTER_S)):
            counts["gap"] += 1
            continue
        keep[i] = True
    counts["kept"] = int(keep.sum())
    subset = _subset(data, keep)
    counts["by_split"] = {str(s): int(np.sum(subset.trials.split == s)) for s in np.unique(subset.trials.split)}
    return subset, counts


def _subset(data, keep: np.ndarray):
    """``data`` with the trials of ``keep``; images re-indexed to those still used.

    ``prev_onset`` stays as it was: a dropped trial's image was shown all the same.
    """
    table = data.trials
    idx = np.flatnonzero(keep)
    trials = type(table)(**{f.name: getattr(table, f.name)[idx] for f in dataclasses.fields(table)})
    used = np.unique(trials.image[trials.image >= 0])
    row = np.full(len(data.images), -1, np.int64)
    row[used] = np.arange(len(used))
    trials.image = np.where(trials.image >= 0, row[np.maximum(trials.image, 0)], -1)
    return dataclasses.replace(data, trials=trials, images=tuple(data.images[k] for k in used),
                               image_concepts=tuple(data.image_concepts[k] for k in used))
