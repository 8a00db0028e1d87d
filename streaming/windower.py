"""Chunks of samples in, preprocessed sliding windows out: the pure part of the live path.

A :class:`Windower` is what :class:`~glimpse.streaming.acquisition.StreamAcquisition`
hands each pull to, and what the offline face of the live path
(``glimpse decode --recording``) feeds a recording through. It has no threads, no
LSL and no clock of its own: the caller passes each chunk (stream channel order and
units, time-major ``(n, n_stream_chans)``), the chunk's timestamps and its own "now"
(the pull time, on the same clock as the timestamps)::

    push(data, times, now)
      -> units to SI (in place for float32)    to_si
      -> timestamps checked for gaps           (split the chunk at each one)
      -> checkpoint channels picked by name    (missing ones stay zero, masked)
      -> channel health (flat / saturated)     glimpse.streaming.health
      -> OnlinePreprocessor.process            (the checkpoint's own preprocessing)
      -> WindowRing                            (preprocessed output, mirrored)
      -> every hop: validity and age checks, one copy -> [Window, ...]

Window grid (``grid``): ``"fixed"`` ends windows every hop counted from the
epoch's first sample. ``"chunks"`` moves that grid once, 2 s into the epoch: for
one second the caller pushes single sender chunks (:attr:`Windower.probing` says
when), whose last samples show where the sender's chunks end within a hop; the grid
then moves (by less than a hop) so that a window's newest sample is at or just before
a chunk end. Otherwise the newest sample of every window waits in the sender for the
rest of its chunk: up to a chunk (7.5 ms at 1200 Hz in 10 ms chunks with the fixed
grid's phase). A sender without regular chunk ends keeps the fixed grid. The move
makes one hop longer, once.

Counted in :meth:`Windower.stats`:

* gap: two consecutive timestamps further apart than one sample period plus
  ``gap_tolerance`` (default ``max(3 sample periods, 10 ms)``: loose enough for
  senders that stamp chunks at push time, tight enough to catch a lost packet of
  ~12 samples at 1200 Hz), or stepping back by more than it. A window whose input
  spans the gap is invalid. After a gap longer than 1 s (``RESET_AFTER``, or any
  backward step) the preprocessing restarts from a clean state, as its filters
  would otherwise ring on the jump, and the window refills before the next one.
* non-finite samples: the preprocessor holds the last finite value (its filters
  stay finite); every window whose input span (its samples plus the anti-alias
  filter's reach) contains one is invalid.
* stale: a window whose newest sample is already older than ``max_age`` (default
  two hops) at ``now`` is skipped: a live decoder shows the present, and a start-up
  backlog or a stall decoded late would only look live.

Invalid and stale windows are counted (``n_invalid_windows``, ``n_stale``), consume
a ``seq`` number (a jump in ``Window.seq`` shows skipped windows) and are never
returned.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .channels import find_channels, listing
from .errors import InputError
from .health import ChannelHealth
from .lsl import unit_scale
from .preprocess import OnlinePreprocessor, PreprocessConfig
from .ring import WindowRing
from .window import Window

logger = logging.getLogger("glimpse.streaming.windower")

__all__ = ["GRIDS", "PULL_S", "RESET_AFTER", "Windower", "check_settings", "cut_array"]

RESET_AFTER = 1.0  # s: a longer gap restarts the preprocessing and refills the window
PULL_S = 0.1  # most signal handled at once (the acquisition's largest pull)
GRIDS = ("fixed", "chunks")
_SETTLE_S = 1.0  # grid="chunks": input ignored at the start of an epoch (start-up backlog)
_PROBE_S = 1.0  # then pushed chunk by chunk for this long to see where the sender's chunks end


def _positive(what: str, value: Any, inf: bool = False) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (math.isfinite(value) or (inf and value == math.inf)) and value > 0):
        raise InputError(f"{what} a positive number of seconds", repr(value),
                         f"e.g. {what}=0.05" if what == "hop" else f"set {what} > 0")


def check_settings(ch_names: Sequence[str], preprocess: PreprocessConfig, n_times: int, *,
                   hop: float = 0.05, grid: str = "fixed", gap_tolerance: float | None = None,
                   max_age: float | None = None) -> tuple[str, ...]:
    """Check a window's settings before any stream is found; the channel names as a tuple."""
    names = tuple(str(c) for c in ch_names)
    if not names or len(set(names)) != len(names):
        raise InputError("ch_names: the checkpoint's unique channel names",
                         f"{len(names)} names, {len(set(names))} unique",
                         "pass checkpoint.ch_names")
    if preprocess.ch_names is None or tuple(preprocess.ch_names) != names:
        raise InputError("a preprocessing config resolved to the same ch_names",
                         "ch_names=None" if preprocess.ch_names is None else
                         f"{len(preprocess.ch_names)} channels, not in the same order",
                         "pass checkpoint.preprocess and checkpoint.ch_names together")
    if not preprocess.is_fitted:
        raise InputError("a fitted preprocessing config (robust scaler center and scale)",
                         "center=None", "pass checkpoint.preprocess, or fit_scaler first")
    if isinstance(n_times, bool) or not isinstance(n_times, (int, np.integer)) or n_times < 1:
        raise InputError("n_times a positive integer (window length in output samples)",
                         repr(n_times), "pass checkpoint.n_times")
    _positive("hop", hop)
    if gap_tolerance is not None:
        _positive("gap_tolerance", gap_tolerance)
    if max_age is not None:
        _positive("max_age", max_age, inf=True)  # inf: keep every window
    if grid not in GRIDS:
        raise InputError(f"grid one of {', '.join(GRIDS)}", repr(grid),
                         "fixed: every hop from the first sample; chunks: moved once onto "
                         "the sender's chunk ends (least latency)")
    return names


class Windower:
    """Cut the checkpoint's windows every ``hop`` seconds from chunks of one stream.

    ``ch_names``, ``preprocess`` (fitted, same ``ch_names``) and ``n_times`` are the
    checkpoint's; ``sfreq``, ``stream_ch_names`` and ``units`` (None: SI) describe
    the stream. Missing checkpoint channels are refused, or with ``allow_missing``
    (and at least one present) zeroed and ``False`` in each window's ``chan_mask``.
    ``max_age`` (s, default two hops; ``math.inf`` keeps every window) is the largest
    age of a window's newest sample at the ``now`` of the push that cut it.
    ``clock`` (optional) stamps ``Window.t_cut``; without it ``t_cut`` is ``now``.
    ``profile=True`` records per push ``(samples, seconds in push, seconds
    preprocessing)`` in :attr:`costs` (a cost measurement, not behaviour).
    """

    def __init__(self, ch_names: Sequence[str], preprocess: PreprocessConfig, n_times: int, *,
                 sfreq: float, stream_ch_names: Sequence[str],
                 units: Sequence[str] | None = None, hop: float = 0.05,
                 allow_missing: bool = False, gap_tolerance: float | None = None,
                 grid: str = "fixed", max_age: float | None = None, stream_id: str = "",
                 source: str | None = None, clock: Callable[[], float] | None = None,
                 profile: bool = False):
        self.ch_names = check_settings(ch_names, preprocess, n_times, hop=hop, grid=grid,
                                       gap_tolerance=gap_tolerance, max_age=max_age)
        self.n_times, self.hop, self.grid = int(n_times), float(hop), grid
        self.stream_id, self.clock = stream_id, clock
        self.max_age = 2 * self.hop if max_age is None else float(max_age)
        source = source or f"stream '{stream_id}'"
        labels = [str(c) for c in stream_ch_names]
        where, missing = find_channels(self.ch_names, labels)
        present = [i for i, n in enumerate(self.ch_names) if n in where]
        if missing and (not allow_missing or not present):
            raise InputError(
                f"a stream with the {len(self.ch_names)} channels of the checkpoint",
                f"{source} lacks {len(missing)} of them: {listing(missing, 20)}",
                "stream the montage the model was trained on, or use a checkpoint that "
                "can mask missing channels" if present else
                "check the stream: none of its channel names is the checkpoint's")
        if len(set(labels)) < len(labels):
            logger.warning("%s repeats channel labels; using the first of each", source)
        if missing:
            logger.warning("%s lacks %d checkpoint channels, masked: %s", source, len(missing),
                           listing(missing, 20))
        self.missing_channels = missing
        n_stream = len(labels)
        src = np.array([where[self.ch_names[i]] for i in present], dtype=np.intp)
        self._src, self._rows = src, np.array(present, dtype=np.intp)
        # Channels in one run of the stream (the usual case) are a slice: no gather.
        run = len(src) > 0 and np.all(np.diff(src) == 1) and not missing
        self._src_slice = slice(int(src[0]), int(src[-1]) + 1) if run else None
        self._unit_scale = self._scales(units, n_stream, set(src.tolist()), source)

        self.sfreq = float(sfreq)
        pre = self._pre = OnlinePreprocessor(preprocess, self.sfreq)  # InputError if the rate cannot work
        n_chans = len(self.ch_names)
        self.max_pull = int(min(8192, max(16, math.ceil(PULL_S * self.sfreq))))
        max_out = -(-self.max_pull * pre.up // pre.down) + 2
        self._pick = np.zeros((n_chans, self.max_pull), dtype=np.float32)  # rows of missing: 0
        self.hop_out = max(1, int(round(self.hop * pre.sfreq_out)))
        self._out = WindowRing(n_chans, self.n_times + max_out + self.hop_out)
        self._fir_reach = int(math.ceil(2 * pre.group_delay * self.sfreq)) + 1  # input samples
        self._period = 1.0 / self.sfreq
        self._tol = gap_tolerance if gap_tolerance is not None else max(3.0 * self._period, 0.010)
        self.chan_mask: np.ndarray | None = None
        if missing:
            self.chan_mask = np.zeros(n_chans, dtype=bool)
            self.chan_mask[self._rows] = True
            self.chan_mask.flags.writeable = False
        self.health = ChannelHealth([self.ch_names[i] for i in present], src, n_stream,
                                    self.sfreq, stream_id)
        # grid="chunks" works in input samples: it needs a whole number of them per hop.
        hop_in = self.hop_out * pre.down / pre.up
        self._hop_in = int(round(hop_in)) if abs(hop_in - round(hop_in)) < 1e-9 else None
        self.costs: list[tuple[int, float, float]] | None = [] if profile else None
        self._counts = dict(n_samples=0, n_chunks=0, n_windows=0, n_invalid_windows=0,
                            n_stale=0, n_gaps=0, gap_s_total=0.0, n_nonfinite=0, n_resets=0,
                            grid_shift=0)
        self.seq = 0  # the next window's number
        self._last_t: float | None = None
        self._pre_s = 0.0
        self.reset()

    @staticmethod
    def _scales(units, n_stream: int, used: set[int], source: str) -> np.ndarray | None:
        """Per stream channel, the factor to SI; None when every one is 1."""
        scale = np.ones(n_stream, dtype=np.float32)
        unknown = set()
        for i, unit in enumerate(units or ()):
            factor = unit_scale(unit)
            if factor is None:
                if i in used:
                    unknown.add(unit)
                factor = 1.0
            scale[i] = factor
        if unknown:
            logger.warning("%s declares units %s that glimpse does not know; taken as SI "
                           "(V, T, T/m)", source, sorted(unknown))
        return scale if np.any(scale != 1.0) else None

    def continue_from(self, previous: Windower) -> Windower:
        """Carry counters, ``seq`` and the last timestamp over from the windower this one
        replaces (a stream that came back with another layout); returns self."""
        self._counts = dict(previous._counts)
        self.seq, self._last_t = previous.seq, previous._last_t
        return self

    def reset(self) -> Windower:
        """Restart the preprocessing: the next sample starts a fresh epoch; returns self."""
        self._pre.reset()
        self._out.clear()
        self._next_end = self.n_times  # output count at which the next window ends
        self._bad: list[tuple[float, float]] = []  # input-index spans of gaps / non-finite
        self.health.reset()
        self._grid_todo = self.grid == "chunks" and self._hop_in is not None
        self._probe: list[int] = []  # grid="chunks": phase of each probed push's last sample
        return self

    # ------------------------------------------------------------------ state
    @property
    def sfreq_out(self) -> float:
        return self._pre.sfreq_out

    @property
    def probing(self) -> bool:
        """grid="chunks", after the settling second: push one sender chunk at a time."""
        return self._grid_todo and self._pre.n_samples_in >= _SETTLE_S * self.sfreq

    def need(self) -> int:
        """Input samples still missing before the next window can be cut (1..max_pull)."""
        pre = self._pre
        newest = (self._next_end - 1) * pre.down // pre.up  # the last input it depends on
        return min(self.max_pull, max(1, newest + 1 - pre.n_samples_in))

    def stats(self) -> dict[str, Any]:
        """JSON-able counters, and the flat and saturated channels."""
        out: dict[str, Any] = dict(self._counts)
        out["gap_s_total"] = round(out["gap_s_total"], 6)
        out.update(flat_channels=list(self.health.flat),
                   saturated_channels=list(self.health.saturated))
        return out

    # ------------------------------------------------------------------ input
    def to_si(self, data: np.ndarray) -> np.ndarray:
        """float32 samples in SI: scaled in place when ``data`` is float32, else a copy."""
        if data.dtype != np.float32:
            data = data.astype(np.float32)
        if self._unit_scale is not None:
            data *= self._unit_scale
        return data

    def push(self, data: np.ndarray, times: np.ndarray, now: float) -> list[Window]:
        """Feed ``(n, n_stream_chans)`` samples in stream units; the windows they complete."""
        return self.push_si(self.to_si(data), times, now)

    def push_si(self, data: np.ndarray, times: np.ndarray, now: float) -> list[Window]:
        """:meth:`push` for samples already through :meth:`to_si`."""
        n = len(times)
        if n == 0:
            return []
        if self.costs is not None:
            t0 = time.perf_counter()
            self._pre_s = 0.0
        self._counts["n_samples"] += n
        self._counts["n_chunks"] += 1
        windows: list[Window] = []
        # Gaps: split the chunk at each timestamp jump.
        period, tol = self._period, self._tol
        cuts = []
        if self._last_t is not None and abs(times[0] - self._last_t - period) > tol:
            cuts.append(0)
        if n > 1:
            step = times[1:] - times[:-1]
            if step.max() > period + tol or step.min() < period - tol:
                step -= period
                np.abs(step, out=step)
                cuts.extend((np.flatnonzero(step > tol) + 1).tolist())
        start = 0
        for cut in cuts:
            if cut > start:
                self._feed(data[start:cut], times[start:cut], now, windows)
            self._gap(times[cut - 1] if cut else self._last_t, times[cut])
            start = cut
        self._feed(data[start:], times[start:], now, windows)
        self._last_t = float(times[-1])
        if self._grid_todo:
            self._align_chunks()
        if self.costs is not None:
            self.costs.append((n, time.perf_counter() - t0, self._pre_s))
        return windows

    def _gap(self, t_before: float, t_after: float) -> None:
        dt = t_after - t_before
        self._counts["n_gaps"] += 1
        self._counts["gap_s_total"] += max(0.0, dt - self._period)
        reset = dt > RESET_AFTER or dt < 0
        logger.info("gap of %.4f s in %s at t=%.4f%s", dt - self._period, self.stream_id,
                    t_after, "; preprocessing restarts" if reset else "")
        if reset:
            self._counts["n_resets"] += 1
            self.reset()
        else:  # windows whose input spans the jump are invalid
            edge = self._pre.n_samples_in - 0.5
            self._bad.append((edge, edge))

    def _feed(self, data: np.ndarray, times: np.ndarray, now: float,
              windows: list[Window]) -> None:
        """Preprocess one gap-free run of samples, a pull at most at a time; cut its windows."""
        for start in range(0, len(times), self.max_pull):
            self._feed_pull(data[start:start + self.max_pull],
                            times[start:start + self.max_pull], now, windows)

    def _feed_pull(self, data: np.ndarray, times: np.ndarray, now: float,
                   windows: list[Window]) -> None:
        n = len(times)
        pre = self._pre
        if self._src_slice is not None:
            x = data[:, self._src_slice].T  # a view; process() makes its float64 copy
        else:
            x = self._pick[:, :n]
            x[self._rows] = data[:, self._src].T  # missing rows stay zero
        self.health.update(data)
        first_in = pre.n_samples_in
        nonfinite = pre.n_nonfinite
        t = time.perf_counter() if self.costs is not None else 0.0
        out, t_out = pre.process(x, times)
        if self.costs is not None:
            self._pre_s += time.perf_counter() - t
        if pre.n_nonfinite != nonfinite:
            self._counts["n_nonfinite"] += pre.n_nonfinite - nonfinite
            bad = np.flatnonzero(~np.isfinite(x).all(axis=0)) + first_in
            runs = np.split(bad, np.flatnonzero(np.diff(bad) > 1) + 1)
            self._bad.extend((float(r[0]), float(r[-1])) for r in runs)
        if out.shape[1]:
            self._out.write(out, t_out)
            if self._out.count >= self._next_end:
                self._cut(now, windows)

    # ------------------------------------------------------------------ grid
    # Windows end every hop_out outputs; the grid's phase is chosen once per epoch by
    # delaying the next window end by `shift` < hop_out outputs (one hop is longer).
    def _shift_grid(self, shift: int, why: str) -> None:
        self._grid_todo = False
        self._counts["grid_shift"] = shift
        if shift:
            self._next_end += shift
            logger.info("%s: window grid moved by %d output samples (%.1f ms) %s",
                        self.stream_id, shift, 1e3 * shift / self._pre.sfreq_out, why)

    def _align_chunks(self) -> None:
        """grid="chunks": windows end on the sender's chunk ends (least wait for a chunk).

        For ``_PROBE_S`` after the settling second, every push is one chunk (or, late,
        several); its last sample is a chunk end. Their phases in the hop repeat; the
        grid moves so the newest input of a window is at or just before the nearest.
        """
        if not self.probing:
            return
        pre, hop_in = self._pre, self._hop_in
        ref = (self.n_times - 1) * pre.down // pre.up  # newest input of the epoch's first window
        self._probe.append((pre.n_samples_in - 1 - ref) % hop_in)
        if pre.n_samples_in < (_SETTLE_S + _PROBE_S) * self.sfreq or len(self._probe) < 10:
            return
        counts = np.bincount(self._probe, minlength=hop_in)
        ends = np.flatnonzero(counts >= max(2, 0.1 * len(self._probe)))
        if not len(ends):
            self._shift_grid(0, "")
            logger.info("%s: no regular chunk ends in %d pushes; window grid kept",
                        self.stream_id, len(self._probe))
            return

        def wait(shift: int) -> int:  # input samples from a window's newest to a chunk end
            newest = (self._next_end - 1 + shift) * pre.down // pre.up
            return int(((ends - (newest - ref)) % hop_in).min())

        waits = [wait(c) for c in range(self.hop_out)]
        shift = int(np.argmin(waits))
        logger.info("%s: chunk ends at input phases %s of %d in %d pushes", self.stream_id,
                    ends.tolist(), hop_in, len(self._probe))
        self._shift_grid(shift, f"to the sender's chunk ends: a window's newest sample waits "
                                f"{waits[0]} -> {waits[shift]} samples for its chunk")

    # ------------------------------------------------------------------ cut
    def _cut(self, now: float, windows: list[Window]) -> None:
        pre, out, n_times = self._pre, self._out, self.n_times
        up, down = pre.up, pre.down
        count = out.count
        while self._next_end <= count:
            end = self._next_end
            self._next_end += self.hop_out
            seq = self.seq
            self.seq += 1
            if self._bad:
                lo = (end - n_times) * down // up - (self._fir_reach - 1)
                hi = (end - 1) * down // up
                if any(a <= hi and b >= lo for a, b in self._bad):
                    self._counts["n_invalid_windows"] += 1
                    continue
            data, times = out.window(n_times, count - end)
            t_end = float(times[-1])
            if now - t_end > self.max_age:  # already in the past: never shown as live
                self._counts["n_stale"] += 1
                continue
            t_cut = self.clock() if self.clock is not None else now
            windows.append(Window(data.copy(), t_end, now, t_cut, self.stream_id,
                                  self.ch_names, seq, self.chan_mask))
            self._counts["n_windows"] += 1
        if self._bad:  # forget what no future window can reach
            oldest = (self._next_end - n_times) * down // up - (self._fir_reach - 1)
            self._bad = [(a, b) for a, b in self._bad if b >= oldest]


def cut_array(windower: Windower, data: np.ndarray, times: np.ndarray,
              now: Callable[[np.ndarray], float] | None = None) -> list[Window]:
    """Push ``(n, n_stream_chans)`` samples in the sizes a live pull waits for
    (:meth:`Windower.need`: up to the sample that completes the next window); the windows.

    ``now(times_of_the_chunk)`` gives each push's "now"; by default the chunk's newest
    timestamp (pulled the moment it was complete: nothing is stale).
    """
    windows: list[Window] = []
    start, n = 0, len(times)
    while start < n:
        stop = min(n, start + windower.need())
        chunk_times = times[start:stop]
        t_now = float(chunk_times[-1]) if now is None else now(chunk_times)
        windows.extend(windower.push(data[start:stop], chunk_times, t_now))
        start = stop
    return windows
