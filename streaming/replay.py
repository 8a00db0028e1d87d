"""Replay a recording as a live LSL stream, with its stimuli on a markers stream beside it.

``glimpse replay`` and the tests use it to stand in for an amplifier. Anything
:func:`glimpse.streaming.recordings.open_recording` opens can be replayed: FIF, CTF,
EDF, BDF, BrainVision, EEGLAB, XDF, BIDS (trials from events.tsv), simulated
sessions and session folders recorded live.

The signal stream carries the recording's channels in float32, SI units as MNE
stores them (V, T, T/m), declared per channel in the stream's description
(``desc/channels/channel/{label,type,unit}``, MNE's channel type names), at the
recording's sfreq. Each trial goes out on ``<name>-markers`` (type "Markers",
irregular rate, one string channel) as the JSON string
``{"stim_file", "concept", "trial_type"}``, right after the chunk that holds its
onset sample, with that sample's timestamp.

Clock. Sample ``i`` of a continuous segment gets the LSL timestamp
``t_segment + (i - start) / (sfreq * speed)``, and a chunk is pushed on a fixed
schedule of ticks every ``chunk_ms`` of wall time, holding every sample whose
timestamp has come. So timestamps are regular (no push jitter in them, as with an
amplifier's clock), the last sample of a chunk is at most one sample period older
than ``local_clock()`` at its push (plus the push's lateness, measured in
:meth:`Replay.stats`), and the schedule is absolute: lateness never accumulates.
With ``speed`` > 1 the content comes faster while the nominal rate stays sfreq.

Discontinuities. A recording whose acquisition stopped and resumed is replayed
with a timestamp jump where it did, so that a gap detector sees it. They are
found as MNE represents them: ``BAD_ACQ_SKIP`` annotations (FIF skips: MNE fills
them with zeros, which are not replayed), "boundary"/"EDGE boundary" annotations
(EEGLAB, ``mne.concatenate_raws``, recorded sessions, XDF breaks) and, for CTF,
jumps of the system clock channel (``SCLK01``), which is how a CTF file cut into
trials (the discontinuous CTF file in ../shared/realdata: two trials 99 s apart)
shows it.
The jump is the real gap divided by ``speed``, capped at ``max_gap`` seconds of
recording time (a 99 s pause helps no test) and never shorter than 50 ms or 10
sample periods, so a tolerance of a few periods catches it at any speed. Looping joins
the end to the start without a jump.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import mne
import numpy as np
import pylsl

from .errors import InputError
from .outlet import INDEX_CHANNEL, SignalOutlet, si_units, signal_info
from .recordings import Recording, open_recording
from .stop_signals import StopSignals

logger = logging.getLogger("glimpse.streaming.replay")

__all__ = ["INDEX_CHANNEL", "Replay", "Segment", "continuous_segments", "format_summary",
           "run_replay"]

_SKIP = "bad_acq_skip"
_BOUNDARIES = {"boundary", "edge boundary", "bad boundary"}  # EEGLAB; concatenate_raws
# A replayed gap is never shorter than this, whatever the speed, so that a gap
# detector's tolerance (acquisition: max(3 sample periods, 10 ms)) always sees it.
_MIN_GAP_PERIODS, _MIN_GAP_S = 10, 0.05
_BLOCK_S = 1.0  # recording seconds read at a time
# Recordings up to this size (as float64) are loaded at once: reading EDF files with
# mixed sampling rates block by block gives edge artifacts (MNE warns), and a
# loaded recording costs no disk reads on the pacing thread. Larger ones are read
# lazily, a block at a time.
_PRELOAD_BYTES = 512 * 2**20
_LINGER_S = 0.5  # keep the outlets after the last push so in-flight chunks reach inlets
_LATENESS_KEPT = 10_000


class Segment(NamedTuple):
    """Samples ``[start, stop)`` acquired without a break; ``gap_before`` is the
    acquisition time (s) missing before ``start``, None where unknown, 0 for the first."""

    start: int
    stop: int
    gap_before: float | None


def continuous_segments(raw: mne.io.BaseRaw) -> list[Segment]:
    """The recording's continuous stretches, from skips, boundaries and the CTF clock."""
    n, sfreq = int(raw.n_times), float(raw.info["sfreq"])
    cuts: dict[int, float | None] = {}  # sample -> gap before it
    spans = []
    ann = raw.annotations
    onsets = np.round((ann.onset - raw.first_time) * sfreq).astype(int)
    for onset, duration, description in zip(onsets, ann.duration, ann.description):
        kind = str(description).strip().lower()
        if kind == _SKIP and duration > 0:
            spans.append((max(int(onset), 0), min(int(onset + round(duration * sfreq)), n)))
        elif kind in _BOUNDARIES and 0 < onset < n:
            cuts.setdefault(int(onset), None)
    cuts.update(_clock_jumps(raw))
    kept, pos, span_gap = [], 0, {}
    for s0, s1 in sorted(spans):
        if s1 <= pos:
            continue
        if s0 > pos:
            kept.append((pos, s0))
        span_gap[max(s1, pos)] = span_gap.get(max(s1, pos), 0.0) + (s1 - max(s0, pos)) / sfreq
        pos = s1
    if pos < n:
        kept.append((pos, n))
    segments = []
    for a, b in kept:
        edges = [a, *sorted(c for c in cuts if a < c < b), b]
        for s0, s1 in zip(edges[:-1], edges[1:]):
            gap = cuts.get(s0)
            if s0 in span_gap:
                gap = span_gap[s0] + (gap or 0.0)
            segments.append(Segment(s0, s1, 0.0 if not segments else gap))
    return segments


def _clock_jumps(raw: mne.io.BaseRaw) -> dict[int, float | None]:
    """CTF's system clock channel (seconds) steps by one sample period except across breaks."""
    clocks = [c for c in raw.ch_names if c.upper().startswith("SCLK")]
    if not clocks or raw.n_times < 2:
        return {}
    clock = raw.get_data(picks=clocks[:1])[0]
    steps, period = np.diff(clock), 1.0 / raw.info["sfreq"]
    if abs(np.median(steps) - period) > 0.01 * period:
        logger.debug("%s does not count seconds; not used for gaps", clocks[0])
        return {}
    jumps = np.flatnonzero(np.abs(steps - period) > 0.5 * period) + 1
    return {int(j): (float(steps[j - 1] - period) if steps[j - 1] > period else None)
            for j in jumps}


def _marker_json(trial) -> str:
    return json.dumps({"stim_file": None if trial.stim_file is None else str(trial.stim_file),
                       "concept": trial.concept, "trial_type": trial.trial_type})


class Replay:
    """A recording played as an LSL stream plus its ``<name>-markers`` stream, in a thread.

    ``recording`` is a path (opened with :func:`open_recording`; stimulus files are
    not required to exist) or an opened :class:`Recording` (whose raw is loaded
    into memory when under 512 MB as float64). ``speed`` > 1 plays
    faster; ``loop`` starts again at the end; a chunk goes out every ``chunk_ms`` of
    wall time; ``index_channel`` appends a "SAMPLE_INDEX" channel (type "misc")
    holding each sample's running index (recording index + loops x n_times; exact
    in float32 up to 2**24 samples, 3.9 h at 1200 Hz), so a consumer can prove
    that no sample was dropped or duplicated. ``source_id`` defaults to one derived
    from the name and the file, so a restarted replay is the same source to LSL.
    ``max_gap`` caps a discontinuity's replayed pause (recording seconds).
    ``wait_for_consumer`` holds the first push until an inlet opened the signal
    stream, for at most that many seconds (0: push at once; tests and benchmarks
    that must see every sample use it; open the markers inlet first to see every
    marker too).

    ``start()`` creates the outlets (the streams are visible when it returns) and
    starts the pacing thread; ``stop()`` ends it and closes the outlets; a ``with``
    block does both. ``wait()`` blocks until the recording ended (never with
    ``loop``); ``stats()`` reports what went out and the push lateness.
    """

    def __init__(self, recording: str | os.PathLike | Recording, *, name: str = "glimpse-replay",
                 source_id: str | None = None, speed: float = 1.0, loop: bool = False,
                 chunk_ms: float = 10.0, index_channel: bool = False, max_gap: float = 1.0,
                 wait_for_consumer: float = 0.0):
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
            raise InputError("--speed (speed) above 0: 1 is real time, 10 ten times faster",
                             repr(speed), "pass e.g. --speed 1")
        if not (isinstance(chunk_ms, (int, float)) and math.isfinite(chunk_ms) and chunk_ms > 0):
            raise InputError("--chunk-ms (chunk_ms) above 0", repr(chunk_ms),
                             "pass e.g. --chunk-ms 10 (a chunk every 10 ms)")
        if not (math.isfinite(max_gap) and max_gap >= 0):
            raise InputError("max_gap of 0 seconds or more", repr(max_gap), "pass e.g. 1.0")
        if not str(name).strip():
            raise InputError("a stream name (--name)", repr(name), "pass e.g. --name meg")
        self.recording = recording if isinstance(recording, Recording) \
            else open_recording(recording, check_stimuli=False)
        raw = self.recording.raw
        if not raw.preload and 8 * len(raw.ch_names) * raw.n_times <= _PRELOAD_BYTES:
            raw.load_data(verbose="error")
        self.name, self.speed, self.loop = str(name), float(speed), bool(loop)
        self.chunk_ms, self.index_channel = float(chunk_ms), bool(index_channel)
        self.max_gap, self.wait_for_consumer = float(max_gap), float(wait_for_consumer)
        digest = hashlib.sha1(f"{self.name}\0{os.path.abspath(self.recording.path)}".encode())
        self.source_id = source_id or f"{self.name}-{digest.hexdigest()[:10]}"
        self.sfreq = float(raw.info["sfreq"])
        self.ch_names = list(raw.ch_names) + ([INDEX_CHANNEL] if index_channel else [])
        self.segments = continuous_segments(raw)
        if not self.segments:
            raise InputError("a recording with samples to replay",
                             f"{self.recording.path}, all of it marked BAD_ACQ_SKIP",
                             "replay another recording")
        trials = sorted((t for t in self.recording.trials if 0 <= t.sample < raw.n_times),
                        key=lambda t: t.sample)
        self._trial_samples = [t.sample for t in trials]
        self._trial_json = [_marker_json(t) for t in trials]
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._outlet: SignalOutlet | None = None
        self._error: BaseException | None = None
        self._reset_counters()

    # ---------------------------------------------------------------- stream info

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)

    def stream_info(self) -> pylsl.StreamInfo:
        """The signal stream's info: channels with label, type and unit; the source."""
        raw = self.recording.raw
        info = signal_info(self.name, self.source_id, self.sfreq, raw.ch_names,
                           raw.get_channel_types(), si_units(raw.info),
                           index="last" if self.index_channel else None)
        desc = info.desc()
        acquisition = desc.append_child("acquisition")
        acquisition.append_child_value("manufacturer", self.recording.system or "unknown")
        acquisition.append_child_value("model", self.recording.format)
        replay = desc.append_child("replay")
        replay.append_child_value("recording", str(self.recording.path))
        replay.append_child_value("speed", repr(self.speed))
        return info

    # ---------------------------------------------------------------- life cycle

    def start(self) -> Replay:
        """Create the outlets and start pushing."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("Replay.start: already streaming; stop it first with "
                               "`replay.stop()`")
        self._reset_counters()
        self._stop.clear()
        self._done.clear()
        self._error = None
        self._outlet = SignalOutlet(self.stream_info(),
                                    index="last" if self.index_channel else None)
        self._thread = threading.Thread(target=self._run, name=f"replay-{self.name}", daemon=True)
        self._state = "streaming"
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> Replay:
        """Stop pushing and close the outlets; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("replay thread of %r did not stop within %s s", self.name, timeout)
        if self._outlet is not None:
            self._outlet.close()
            self._outlet = None
        if self._state == "streaming":
            self._state = "stopped"
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the recording ended (or the thread failed); True if it did."""
        return self._done.wait(timeout)

    @property
    def error(self) -> BaseException | None:
        """What ended the pacing thread, if it failed."""
        return self._error

    def __enter__(self) -> Replay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- stats

    def _reset_counters(self) -> None:
        self._state = "idle"
        self._n_samples = self._n_chunks = self._n_markers = self._n_loops = 0
        self._n_gaps, self._gap_s, self._n_late = 0, 0.0, 0
        self._t_start = self._t_end = None
        self._lateness: deque[float] = deque(maxlen=_LATENESS_KEPT)
        self._late_max = 0.0

    def stats(self) -> dict[str, Any]:
        """What went out so far (json-able). ``late_ms``: how long after its tick each
        push happened (p50, p99 over the last 10,000 pushes; max over all)."""
        with self._lock:
            late = np.array(self._lateness) * 1e3
        start = self._t_start
        end = self._t_end if self._t_end is not None else pylsl.local_clock()
        return {
            "state": self._state, "name": self.name, "source_id": self.source_id,
            "recording": str(self.recording.path), "n_chans": self.n_chans, "sfreq": self.sfreq,
            "speed": self.speed, "n_samples": self._n_samples, "n_chunks": self._n_chunks,
            "n_markers": self._n_markers, "n_loops": self._n_loops, "n_gaps": self._n_gaps,
            "gap_s": round(self._gap_s, 6),
            "elapsed_s": 0.0 if start is None else round(end - start, 3),
            "late_ms": {"p50": round(float(np.percentile(late, 50)), 3) if late.size else None,
                        "p99": round(float(np.percentile(late, 99)), 3) if late.size else None,
                        "max": round(self._late_max * 1e3, 3)},
            "n_late": self._n_late,
        }

    # ---------------------------------------------------------------- pacing

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + self.wait_for_consumer
            while not self._outlet.have_consumers() and time.monotonic() < deadline:
                if self._stop.wait(0.005):
                    return
            self._pace()
            if self._state == "streaming" and not self._stop.is_set():
                self._state = "ended"
        except Exception as err:  # noqa: BLE001 - kept in .error; run_replay raises it
            self._error, self._state = err, "failed"
            logger.exception("replay of %r failed", self.name)
        finally:
            self._t_end = pylsl.local_clock()
            self._done.set()

    def _schedule(self, dt: float):
        """(segment, timestamp of its first sample, running index of sample 0), lazily, looping."""
        seg_ts0, last_ts, offset = self._t_start, None, 0
        while True:
            for seg in self.segments:
                if last_ts is not None:  # a later segment, or the first again after a loop
                    jump = 0.0
                    if seg.gap_before is None or seg.gap_before > 0:
                        gap = self.max_gap if seg.gap_before is None \
                            else min(seg.gap_before, self.max_gap)
                        jump = max(gap / self.speed, _MIN_GAP_PERIODS / self.sfreq, _MIN_GAP_S)
                        self._n_gaps += 1
                        self._gap_s += jump
                    seg_ts0 = last_ts + dt + jump
                yield seg, seg_ts0, offset
                last_ts = seg_ts0 + (seg.stop - 1 - seg.start) * dt
            if not self.loop:
                return
            self._n_loops += 1
            offset += self.recording.n_times

    def _pace(self) -> None:
        raw = self.recording.raw
        rate = self.sfreq * self.speed  # samples per wall-clock second
        dt, period = 1.0 / rate, self.chunk_ms / 1e3
        block_n = max(int(round(_BLOCK_S * self.sfreq)), int(math.ceil(2 * period * rate)))
        tick = self._t_start = pylsl.local_clock()
        schedule = self._schedule(dt)
        seg, seg_ts0, offset = next(schedule)
        pos = seg.start
        cache_start, cache = 0, np.empty((0, len(raw.ch_names)), np.float32)
        while True:
            tick += period
            now = pylsl.local_clock()
            if now < tick:
                if self._stop.wait(tick - now):
                    return
                now = pylsl.local_clock()
            elif self._stop.is_set():
                return
            self._note_lateness(now - tick)
            if now - tick >= period:  # fell behind: merge the missed ticks into this push
                self._n_late += 1
                tick += math.floor((now - tick) / period) * period
            while True:  # everything due by this tick, across segment ends
                due = min(seg.start + math.floor((tick - seg_ts0) * rate) + 1, seg.stop)
                while pos < due:  # in pieces of at most one block
                    stop = min(due, pos + block_n)
                    if not (cache_start <= pos and stop <= cache_start + len(cache)):
                        end = min(seg.stop, pos + block_n)
                        cache_start, cache = pos, np.ascontiguousarray(
                            raw.get_data(start=pos, stop=end).T, dtype=np.float32)
                    self._push(cache[pos - cache_start: stop - cache_start], seg, pos, seg_ts0,
                               dt, offset)
                    pos = stop
                if pos < seg.stop:
                    break  # the rest is not due yet (or lies after a gap)
                following = next(schedule, None)
                if following is None:
                    return
                seg, seg_ts0, offset = following
                pos = seg.start

    def _push(self, data: np.ndarray, seg: Segment, a: int, seg_ts0: float, dt: float,
              offset: int) -> None:
        n = len(data)
        stamps = seg_ts0 + (np.arange(a, a + n) - seg.start) * dt
        self._outlet.push(data, stamps, offset + a)
        self._n_samples += n
        self._n_chunks += 1
        i = bisect.bisect_left(self._trial_samples, a)
        while i < len(self._trial_samples) and self._trial_samples[i] < a + n:
            self._outlet.push_marker(self._trial_json[i], stamps[self._trial_samples[i] - a])
            self._n_markers += 1
            i += 1

    def _note_lateness(self, late: float) -> None:
        with self._lock:
            self._lateness.append(late)
        self._late_max = max(self._late_max, late)


# --------------------------------------------------------------------------- CLI face


def run_replay(recording: str | os.PathLike | Recording, **options: Any) -> dict[str, Any]:
    """Replay until the recording ends, or Ctrl-C / SIGTERM; return the final stats.

    Takes :class:`Replay`'s keywords. ``stats["stopped_by"]`` says what ended it
    ("end of recording", "SIGINT", "SIGTERM"). A failure of the pacing thread is
    raised here.
    """
    replay = Replay(recording, **options)
    with StopSignals("end of recording") as stop:
        try:
            replay.start()
            gaps = sum(s.gap_before is None or s.gap_before > 0 for s in replay.segments[1:])
            logger.info("replaying %s as LSL stream %r (source_id %s, %d channels at %g Hz) and %r "
                        "(%d trials); speed %gx, a chunk every %g ms%s%s; Ctrl-C stops",
                        replay.recording.path, replay.name, replay.source_id, replay.n_chans,
                        replay.sfreq, f"{replay.name}-markers", len(replay._trial_samples),
                        replay.speed, replay.chunk_ms, f", {gaps} discontinuities" if gaps else "",
                        ", looping" if replay.loop else "")
            while not replay.wait(0.1) and not stop.requested.is_set():
                pass
            if not stop.requested.is_set() and replay.error is None:
                time.sleep(_LINGER_S)
        finally:
            replay.stop()
    if replay.error is not None:
        raise replay.error
    return {**replay.stats(), "stopped_by": stop.by}


def format_summary(stats: dict[str, Any]) -> str:
    """One line: what a replay sent and how well it kept time."""
    late = stats["late_ms"]
    timing = (f"push lateness p50 {late['p50']:.2f} ms, p99 {late['p99']:.2f} ms, "
              f"max {late['max']:.2f} ms" if late["p50"] is not None else "nothing pushed")
    loops = f", {stats['n_loops']} loops" if stats["n_loops"] else ""
    ended_by = stats.get("stopped_by", stats["state"])
    return (f"replay {stats['name']!r} ({stats['source_id']}) ended by {ended_by}: "
            f"{stats['n_samples']} samples x {stats['n_chans']} channels in "
            f"{stats['n_chunks']} chunks over {stats['elapsed_s']:.1f} s at {stats['speed']:g}x, "
            f"{stats['n_markers']} markers, {stats['n_gaps']} gaps{loops}; {timing}")
