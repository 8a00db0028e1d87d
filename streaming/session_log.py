"""The session folder: everything a live session acquired and decoded, written as it runs.

Layout (issue 4's interface spec)::

    SESSION/
      session.json                        {"version", "created", "glimpse", "streams": [...]}
      streams/<name>/stream.json          {"name", "source_id", "sfreq", "n_chans", "ch_names",
                                           "ch_types", "units", "dtype": "float32"}
      streams/<name>/samples.f32          little-endian float32, (n_samples, n_chans) row-major, SI
      streams/<name>/times.f64            little-endian float64 LSL timestamps, one per sample
      markers.jsonl                       {"t", "stream", "marker", "valid"} per line
      frames.jsonl                        one decoded frame per line

Every write goes straight to the OS (``os.write`` on an unbuffered descriptor,
no Python buffer in between), so killing the process, even with SIGKILL, loses
nothing that a ``write`` call had returned from. The reader,
:func:`read_session_stream`, takes the rows that both ``samples.f32`` and
``times.f64`` hold in full and skips a torn last line of a ``.jsonl`` file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mne
import numpy as np

from .errors import InputError
from .version import glimpse_version

logger = logging.getLogger("glimpse.streaming.session_log")

__all__ = ["RawSession", "SessionWriter", "StreamWriter", "find_session_stream", "read_session_stream"]

VERSION = 1
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
# A timestamp step this many nominal sample periods longer than the typical step is
# a gap in acquisition (the stream stopped), not jitter.
_GAP_PERIODS = 5




def _write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write may write less than asked (signals, pipes): loop until all is handed over."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, paths: what frames and markers may carry besides JSON types."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _line(record: dict) -> bytes:
    return (json.dumps(record, default=_jsonable, separators=(",", ":")) + "\n").encode()


def _folder_name(name: str) -> str:
    """A stream name as a folder name: LSL names may hold '/' or spaces."""
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "stream"


class StreamWriter:
    """Appends one stream's samples and timestamps; thread-safe.

    Made by :meth:`SessionWriter.add_stream`.
    """

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder, self.meta = folder, meta
        self.n_chans = int(meta["n_chans"])
        self.n_samples = 0
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stream.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        self._fd_samples = os.open(folder / "samples.f32", _FLAGS, 0o644)
        self._fd_times = os.open(folder / "times.f64", _FLAGS, 0o644)

    @property
    def name(self) -> str:
        return self.meta["name"]

    def write(self, data: np.ndarray, times: np.ndarray) -> StreamWriter:
        """Append ``data`` (n, n_chans), SI units, and its LSL ``times`` (n,)."""
        data, times = np.asarray(data), np.asarray(times)
        if data.ndim != 2 or data.shape[1] != self.n_chans or times.shape != (data.shape[0],):
            raise InputError(f"data (n, {self.n_chans}) and times (n,) for stream {self.name!r}",
                             f"data {data.shape} and times {times.shape}",
                             "pass one row per sample and one timestamp per row")
        if not len(times):
            return self
        rows = np.ascontiguousarray(data, dtype="<f4")
        stamps = np.ascontiguousarray(times, dtype="<f8")
        with self._lock:
            if self._fd_samples < 0:
                raise RuntimeError(f"StreamWriter for {self.name!r} is closed; "
                                   "open a new SessionWriter to record more")
            # Samples first: a reader takes only rows that have a timestamp too.
            _write_all(self._fd_samples, rows.data)
            _write_all(self._fd_times, stamps.data)
            self.n_samples += len(stamps)
        return self

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd_samples, self._fd_times):
                if fd >= 0:
                    os.close(fd)
            self._fd_samples = self._fd_times = -1


class SessionWriter:
    """Writes a session folder while the session runs; a context manager.

    ``add_stream`` returns a :class:`StreamWriter` per stream (the same one again
    when a stream with the same name, source id and channels comes back after a
    reconnect); markers and frames go to ``markers.jsonl`` and ``frames.jsonl``.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        if (self.folder / "session.json").exists():
            raise InputError("a new or empty session folder", f"{self.folder}, which already "
                             "holds a session", "pick another folder (or delete that one)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._streams: dict[str, StreamWriter] = {}
        self._created = datetime.now(timezone.utc).isoformat()
        self._fd_markers = os.open(self.folder / "markers.jsonl", _FLAGS, 0o644)
        self._fd_frames = os.open(self.folder / "frames.jsonl", _FLAGS, 0o644)
        self._write_session_json()

    def _write_session_json(self) -> None:
        meta = {"version": VERSION, "created": self._created, "glimpse": glimpse_version(),
                "streams": list(self._streams)}
        tmp = self.folder / "session.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / "session.json")  # never a half-written session.json

    def add_stream(self, name: str, source_id: str, sfreq: float, ch_names, ch_types,
                   units) -> StreamWriter:
        """Start recording a stream; its folder is ``streams/<name>``."""
        ch_names, ch_types, units = list(ch_names), list(ch_types), list(units)
        if not (len(ch_names) == len(ch_types) == len(units)) or not ch_names:
            raise InputError("as many channel types and units as channel names (at least one)",
                             f"{len(ch_names)} names, {len(ch_types)} types, {len(units)} units",
                             "pass one type and one unit per channel")
        meta = {"name": str(name), "source_id": str(source_id or ""), "sfreq": float(sfreq),
                "n_chans": len(ch_names), "ch_names": [str(c) for c in ch_names],
                "ch_types": [str(t) for t in ch_types], "units": [str(u) for u in units],
                "dtype": "float32"}
        with self._lock:
            self._check_open("add_stream")
            base = folder = _folder_name(str(name))
            n = 1
            while folder in self._streams:
                if self._streams[folder].meta == meta:
                    return self._streams[folder]  # the same stream, reconnected
                n += 1
                folder = f"{base}-{n}"
            writer = StreamWriter(self.folder / "streams" / folder, meta)
            self._streams[folder] = writer
            self._write_session_json()
        logger.debug("recording stream %r in %s", name, writer.folder)
        return writer

    def write_marker(self, t: float, stream: str, marker: Any, valid: bool) -> None:
        """One marker: LSL time, markers stream name, parsed JSON object or raw string."""
        line = _line({"t": float(t), "stream": stream, "marker": marker, "valid": bool(valid)})
        with self._lock:
            self._check_open("write_marker")
            _write_all(self._fd_markers, line)

    def write_frame(self, frame: dict) -> None:
        """One decoded frame (ARCHITECTURE.md contract 5)."""
        line = _line(frame)
        with self._lock:
            self._check_open("write_frame")
            _write_all(self._fd_frames, line)

    def _check_open(self, method: str) -> None:
        if self._fd_markers < 0:
            raise RuntimeError(f"SessionWriter.{method}: the session {self.folder} is closed; "
                               "open a new SessionWriter to record more")

    def close(self) -> None:
        with self._lock:
            if self._fd_markers < 0:
                return
            for writer in self._streams.values():
                writer.close()
            os.close(self._fd_markers)
            os.close(self._fd_frames)
            self._fd_markers = self._fd_frames = -1

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- reading


def find_session_stream(path: str | os.PathLike) -> tuple[Path, Path | None] | None:
    """``(session folder, stream folder or None)`` when ``path`` is a session or one of
    its ``streams/<name>`` folders, else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "session.json").is_file():
        return path, None
    if (path / "stream.json").is_file() and path.parent.name == "streams" \
            and (path.parent.parent / "session.json").is_file():
        return path.parent.parent, path
    return None


class RawSession(mne.io.BaseRaw):
    """A recorded stream's samples as an MNE raw that reads ``samples.f32`` on demand.

    Not preloaded: a long session is read in the pieces that are asked for (replay
    reads chunk by chunk) instead of held whole as float64. ``load_data()`` loads it.
    """

    def __init__(self, path: Path, info: mne.Info, n_samples: int):
        super().__init__(info, preload=False, last_samps=[n_samples - 1], filenames=[path],
                         raw_extras=[{"n_chans": info["nchan"], "n_samples": n_samples}],
                         orig_format="single", verbose="error")

    def _read_segment_file(self, data, idx, fi, start, stop, cals, mult):
        extras = self._raw_extras[fi]
        rows = np.memmap(self.filenames[fi], dtype="<f4", mode="r",
                         shape=(extras["n_samples"], extras["n_chans"]))
        block = np.asarray(rows[start:stop], dtype=np.float64).T  # (n_chans, stop - start)
        data[:] = mult @ block[idx] if mult is not None else block[idx] * cals


def read_session_stream(folder: str | os.PathLike, stream: str | None = None,
                        ) -> tuple[RawSession, np.ndarray, list[dict]]:
    """One recorded stream of a session: ``(raw, times, markers)``.

    ``folder`` is the session folder (pick the stream by name with ``stream`` when
    it holds several) or its ``streams/<name>`` folder. ``raw`` reads the samples
    on demand (:class:`RawSession`; SI units, the stream's channel types; types MNE
    does not know become "misc");
    ``times`` their LSL timestamps. Where the timestamps jump (the stream stopped),
    an "EDGE boundary" annotation marks the discontinuity, as MNE marks the joins
    of concatenated recordings. ``markers`` are the markers.jsonl records of the
    stream's ``<name>-markers`` stream (all of them when the session recorded one
    stream), in file order; a torn last line is skipped.
    """
    found = find_session_stream(Path(folder).expanduser())
    if found is None:
        raise InputError("a session folder (with session.json) or its streams/<name> folder",
                         f"{folder}", "pass the folder that `glimpse decode --record` wrote")
    session, stream_dir = found
    names = sorted(p.parent.name for p in (session / "streams").glob("*/stream.json"))
    if stream_dir is None:
        if stream is not None:
            stream_dir = session / "streams" / _folder_name(stream)
        elif len(names) == 1:
            stream_dir = session / "streams" / names[0]
        if stream_dir is None or not (stream_dir / "stream.json").is_file():
            raise InputError(f"one recorded stream in {session}" if stream is None
                             else f"a stream named {stream!r} in {session}",
                             f"streams {names or 'none'}",
                             "name one of those (stream=), or pass its streams/<name> folder")
    meta = json.loads((stream_dir / "stream.json").read_text(encoding="utf-8"))
    n_chans, sfreq = int(meta["n_chans"]), float(meta["sfreq"])
    if sfreq <= 0 or not math.isfinite(sfreq):
        raise InputError("a stream with a regular sampling rate", f"sfreq {sfreq} in "
                         f"{stream_dir / 'stream.json'}", "record a regularly sampled stream")
    samples_path = stream_dir / "samples.f32"
    n_rows = samples_path.stat().st_size // (4 * n_chans) if samples_path.is_file() else 0
    times = np.frombuffer(_whole_rows(stream_dir / "times.f64", 8), dtype="<f8")
    n = min(n_rows, len(times))
    if n == 0:
        raise InputError("a recorded stream with at least one sample", f"none in {stream_dir}",
                         "record for longer")
    times = times[:n].copy()
    known = mne.io.get_channel_type_constants()
    ch_types = [t.lower() if t.lower() in known else "misc" for t in meta["ch_types"]]
    info = mne.create_info(list(meta["ch_names"]), sfreq, ch_types, verbose="error")
    raw = RawSession(samples_path, info, n)
    steps = np.diff(times)
    if steps.size:
        gaps = np.flatnonzero(steps > np.median(steps) + _GAP_PERIODS / sfreq) + 1
        if gaps.size:
            raw.set_annotations(mne.Annotations(gaps / sfreq, 0.0, "EDGE boundary"))
    markers = _read_markers(session, None if len(names) == 1 else f"{meta['name']}-markers")
    logger.debug("%s: %d samples of %d channels, %d gaps, %d markers", stream_dir, n, n_chans,
                 len(raw.annotations), len(markers))
    return raw, times, markers


def _whole_rows(path: Path, row_bytes: int) -> bytes:
    """The file's bytes up to its last complete row (a killed writer may leave half a row)."""
    if not path.is_file():
        return b""
    data = path.read_bytes()
    return data[: len(data) - len(data) % row_bytes]


def _read_markers(session: Path, stream: str | None) -> list[dict]:
    path = session / "markers.jsonl"
    if not path.is_file():
        return []
    markers, bad = [], 0
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1  # a torn last line, written when the process died
            continue
        if isinstance(record, dict) and (stream is None or record.get("stream") == stream):
            markers.append(record)
    if bad:
        logger.debug("%s: %d unreadable lines skipped", path, bad)
    return markers
