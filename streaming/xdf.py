"""XDF files, the format LabRecorder writes LSL sessions in, as MNE raw data plus markers.

:func:`read_xdf` reads a file with pyxdf, clock offsets applied (each stream's
timestamps mapped to the recording machine's LSL clock), clock resets handled and
timestamps dejittered, and returns one numeric stream as an ``mne.io.RawArray``:
channel names, types and units from the stream header
(``desc/channels/channel/{label,type,unit}``; ``ch{i}`` and the stream's type, or
"misc", where it names none), values scaled to SI where the unit is one
:func:`glimpse.streaming.lsl.unit_scale` knows, sensor positions from
``location/{X,Y,Z}`` (millimetres, the XDF meta-data convention) where every
channel has one. Every string stream is read as
markers, each at the sample nearest its timestamp, and put on the raw as
annotations whose description is the marker string.

Gaps. Where the signal's timestamps jump by more than a few sample periods and
100 ms (the amplifier or the recorder stopped), an "EDGE boundary" annotation
marks the first sample after the jump, as :func:`glimpse.streaming.session_log.read_session_stream`
does for recorded sessions; :func:`glimpse.streaming.replay.continuous_segments`
(replay, the offline decoder) reads them, so the two sides are never glued.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mne
import numpy as np

from .channels import listing
from .errors import InputError
from .lsl import unit_scale

logger = logging.getLogger("glimpse.streaming.xdf")

__all__ = ["XdfMarker", "XdfSignal", "read_xdf"]

# A step longer than both this many nominal periods and _BREAK_S is a gap, not
# jitter. pyxdf's defaults (1 s and 500 periods, 5 s at 100 Hz) would dejitter
# across shorter gaps: one straight line through both sides, the gap smeared away.
_GAP_PERIODS, _BREAK_S = 3, 0.1


@dataclass(frozen=True)
class XdfMarker:
    """One string marker: its text, LSL time and the index of the nearest signal sample."""

    text: str
    time: float
    sample: int
    stream: str


@dataclass
class XdfSignal:
    """The numeric stream read from an XDF file, with the markers of its string streams."""

    raw: mne.io.RawArray = field(repr=False)
    times: np.ndarray = field(repr=False)  # LSL timestamps of the samples
    name: str
    streams: list[str]  # every stream in the file, "name (type, format)"
    markers: list[XdfMarker] = field(repr=False)
    n_gaps: int = 0


def read_xdf(path: str | os.PathLike, stream: str | None = None) -> XdfSignal:
    """The first numeric, regularly sampled stream of ``path`` (or the one named ``stream``).

    Raises :class:`InputError` for a file pyxdf cannot read, one without a numeric
    stream, or a ``stream`` name the file does not hold.
    """
    import pyxdf  # imported here: only XDF files need it

    path = Path(path)
    try:
        # synchronize_clocks applies the recorded clock offsets; handle_clock_resets
        # splits the offsets where a device's clock restarted; dejittering maps the
        # samples of each continuous stretch ("segment") onto a regular grid
        # (LabRecorder's timestamps carry push jitter), leaving the breaks between.
        streams, _ = pyxdf.load_xdf(path, synchronize_clocks=True, handle_clock_resets=True,
                                    dejitter_timestamps=True,
                                    jitter_break_threshold_seconds=_BREAK_S,
                                    jitter_break_threshold_samples=_GAP_PERIODS, verbose=False)
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one clear line
        first = (str(err).strip().splitlines() or [""])[0]
        raise InputError("a readable XDF file (as LabRecorder writes them)",
                         f"{path}, which failed to read ({type(err).__name__}: {first})",
                         "the file is truncated or damaged: copy it again") from err
    described = [f"{_name(s)} ({_info(s, 'type') or '?'}, {_info(s, 'channel_format')})"
                 for s in streams]
    signal = _pick(streams, stream, path, described)
    raw, times = _raw(signal)
    n_gaps = _mark_gaps(raw, times, signal["info"].get("segments") or [])
    markers = _markers(streams, times)
    if markers:
        onsets = np.array([m.sample for m in markers]) / raw.info["sfreq"]
        raw.set_annotations(raw.annotations + mne.Annotations(
            onsets, 0.0, [m.text for m in markers]))
    logger.debug("%s: stream %s, %d samples of %d channels, %d gaps, %d markers", path,
                 _name(signal), len(times), len(raw.ch_names), n_gaps, len(markers))
    return XdfSignal(raw=raw, times=times, name=_name(signal), streams=described,
                     markers=markers, n_gaps=n_gaps)


def _info(s: dict, key: str) -> Any:
    """A stream header field (pyxdf wraps each one in a list)."""
    value = s["info"].get(key)
    return value[0] if isinstance(value, list) and value else value


def _name(s: dict) -> str:
    return str(_info(s, "name") or "?")


def _is_numeric(s: dict) -> bool:
    return _info(s, "channel_format") != "string"


def _pick(streams: list[dict], stream: str | None, path: Path, described: list[str]) -> dict:
    """The stream named ``stream``, else the first numeric one with a rate and samples."""
    numeric = [s for s in streams if _is_numeric(s)]
    if stream is not None:
        for s in numeric:
            if _name(s) == stream:
                if float(_info(s, "nominal_srate") or 0) <= 0 or not len(s["time_stamps"]):
                    raise InputError("a regularly sampled stream with samples",
                                     f"stream {stream!r} in {path}, irregular or empty",
                                     "name another stream (stream=)")
                return s
        raise InputError(f"a numeric stream named {stream!r}",
                         f"{path} with streams {listing(described)}",
                         "name one of its numeric streams (stream=)")
    for s in numeric:
        if float(_info(s, "nominal_srate") or 0) > 0 and len(s["time_stamps"]):
            return s
    raise InputError("an XDF file with a numeric, regularly sampled stream (EEG, MEG, ...)",
                     f"{path} with streams {listing(described) or 'none'}",
                     "record the amplifier's stream too (LabRecorder: tick it before Start)")


def _channels(s: dict) -> list[dict]:
    """The header's ``desc/channels/channel`` entries as plain dicts (may be empty)."""
    try:
        entries = s["info"]["desc"][0]["channels"][0]["channel"]
    except (KeyError, IndexError, TypeError):
        return []
    return [{k: (v[0] if isinstance(v, list) and v else None) for k, v in e.items()}
            for e in entries if isinstance(e, dict)]


def _raw(s: dict) -> tuple[mne.io.RawArray, np.ndarray]:
    """The stream's samples as a RawArray in SI units, and their timestamps."""
    data = np.asarray(s["time_series"], dtype=np.float64).T
    n_chans = data.shape[0]
    header = _channels(s)
    if len(header) != n_chans:
        header = []  # a header that does not describe every channel describes none
    kind = str(_info(s, "type") or "").strip().lower()
    known = mne.io.get_channel_type_constants()
    default = kind if kind in known else "misc"
    names, types = [], []
    for i in range(n_chans):
        entry = header[i] if header else {}
        names.append(str(entry.get("label") or f"ch{i}"))
        ch_type = str(entry.get("type") or default).strip().lower()
        types.append(ch_type if ch_type in known else "misc")
        scale = unit_scale(entry.get("unit"))
        if scale is None:
            logger.warning("%s: unit %r unknown, kept as it is", names[-1], entry.get("unit"))
        elif scale != 1.0:
            data[i] *= scale
    if len(set(names)) != len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]  # MNE needs unique names
    info = mne.create_info(names, float(_info(s, "nominal_srate")), types, verbose="error")
    raw = mne.io.RawArray(data, info, verbose="error")
    positions = [_location(e) for e in header]
    if positions and all(p is not None for p in positions):
        raw.set_montage(mne.channels.make_dig_montage(dict(zip(names, positions)),
                                                      coord_frame="head"), verbose="error")
    return raw, np.asarray(s["time_stamps"], float)


def _location(entry: dict) -> np.ndarray | None:
    """A channel's ``location/{X,Y,Z}`` in metres (the header gives millimetres), or None."""
    where = entry.get("location")
    try:
        return np.array([float(where[k][0]) for k in ("X", "Y", "Z")]) / 1000.0
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _mark_gaps(raw: mne.io.RawArray, times: np.ndarray, segments: list) -> int:
    """An "EDGE boundary" annotation at each sample after a break; their count.

    Breaks are where pyxdf's dejittering started a new segment, and any step still
    too long (a break under its thresholds) or backwards (a clock reset it could not
    undo) after it.
    """
    steps = np.diff(times)
    if not steps.size:
        return 0
    jumps = (steps > np.median(steps) + _GAP_PERIODS / raw.info["sfreq"]) | (steps <= 0)
    starts = {int(start) for start, _ in segments if 0 < int(start) < len(times)}
    gaps = np.array(sorted(starts | set((np.flatnonzero(jumps) + 1).tolist())), dtype=int)
    if gaps.size:
        raw.set_annotations(mne.Annotations(gaps / raw.info["sfreq"], 0.0, "EDGE boundary"))
    return int(gaps.size)


def _markers(streams: list[dict], times: np.ndarray) -> list[XdfMarker]:
    """Every string stream's samples within the signal's span, at the nearest sample."""
    period = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    found = []
    for s in streams:
        if _is_numeric(s):
            continue
        for value, t in zip(s["time_series"], s["time_stamps"]):
            if not times[0] - period <= t <= times[-1] + period:
                continue
            sample = int(np.clip(np.searchsorted(times, t), 0, len(times) - 1))
            if sample > 0 and t - times[sample - 1] <= times[sample] - t:
                sample -= 1
            found.append(XdfMarker(str(value[0]) if len(value) else "", float(t), sample,
                                   _name(s)))
    dropped = sum(len(s["time_stamps"]) for s in streams if not _is_numeric(s)) - len(found)
    if dropped:
        logger.info("%d markers outside the signal's samples skipped", dropped)
    return sorted(found, key=lambda m: m.time)
