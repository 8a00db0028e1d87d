"""Live acquisition: one LSL signal stream in, preprocessed sliding windows out.

One :class:`StreamAcquisition` per stream. Its thread owns everything on the hot
path, so nothing there takes a lock::

    inlet.pull_chunk(dest_obj=ring slice,      raw samples land in a SampleRing, in place
                     min_samples=needed)       (wakes when the next window's newest arrives)
      -> units to SI (in place), on_samples(raw, times)
      -> timestamps checked for gaps           (split the chunk at each one)
      -> checkpoint channels picked by name    (missing ones stay zero, masked)
      -> OnlinePreprocessor.process            (the checkpoint's own preprocessing)
      -> WindowRing                            (preprocessed output, mirrored)
      -> every hop: validity check, one copy, on_window(Window)

Windows are cut when the output sample that completes them arrives, never on a
timer. Each pull waits (in liblsl, without the GIL) for exactly that sample and
takes what else has arrived, so a stream costs about one pull per hop rather than
one per sender chunk (5x fewer at 10 ms chunks and a 50 ms hop), at no cost in
latency. A second thread follows ``<name>-markers`` (it may appear at any time).

Window grid (``grid``): ``"fixed"`` ends windows every hop counted from the
epoch's first sample. ``"chunks"`` moves that grid once, 2 s into the epoch: for
one second every pull takes single sender chunks, whose last samples show where the
sender's chunks end within a hop; the grid then moves (by less than a hop) so that a
window's newest sample is at or just before a chunk end. Otherwise the newest sample
of every window waits in the sender for the rest of its chunk: up to a chunk (7.5 ms
at 1200 Hz in 10 ms chunks with the fixed grid's phase). A sender without regular
chunk ends keeps the fixed grid. The move makes one hop longer, once.

Health, all counted in :meth:`StreamAcquisition.stats`:

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
* flat channel: peak-to-peak zero over the last second. Saturated channel: not
  flat, but a run of identical values (at least one 50 ms block) at the channel's
  extreme over the last second, as an amplifier at its rail. Both are judged once a
  second and reported (logged when the set changes), not masked: the model decides.

Invalid windows are counted (``n_invalid_windows``), consume a ``seq`` number (a
jump in ``Window.seq`` shows skipped windows) and are never emitted.

A lost stream (the outlet went away, or no data for ``lost_after`` s) is logged,
counted (``n_lost``) and sought again every 0.5 s by the same name and/or source
id; when data flows again ``n_reconnects`` counts it, and the timestamp jump is a
gap like any other.

Callbacks must return quickly (hand work to a queue): ``on_window`` and
``on_samples`` run on the acquisition thread, ``on_marker`` on the markers thread
(each LSL stream has its own), ``on_stream`` on the caller's thread in
:meth:`~StreamAcquisition.start` and on the acquisition thread at a reconnect. An
exception in a callback is logged, never raised into the thread. The arrays given
to ``on_samples`` are views into the ring, valid only during the call: copy them
to keep them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pylsl

from .errors import InputError
from .lsl import (channel_info, check_signal_stream, describe, find_markers, find_stream,
                  open_inlet, predicate, unit_scale)
from .preprocess import OnlinePreprocessor, PreprocessConfig
from .ring import SampleRing, WindowRing
from .window import Window

logger = logging.getLogger("glimpse.streaming.acquisition")

__all__ = ["GRIDS", "RESET_AFTER", "StreamAcquisition"]

RESET_AFTER = 1.0  # s: a longer gap restarts the preprocessing and refills the window
_HEALTH_S = 1.0  # flat / saturated look-back
_BLOCK_S = 0.05  # health statistics are kept per block of at least this long
_PULL_S = 0.1  # most signal pulled at once
_POLL_S = 0.05  # pull timeout: how often the thread looks at stop / lost
_REACQUIRE_S = 0.5  # how often a lost stream is sought again
_MARKERS_KEPT = 4096
_SETTLE_S = 1.0  # grid="chunks": input ignored at the start of an epoch (start-up backlog)
_PROBE_S = 1.0  # then pulled chunk by chunk for this long to see where the sender's chunks end
GRIDS = ("fixed", "chunks")

_DTYPES = {pylsl.cf_float32: np.float32, pylsl.cf_double64: np.float64,
           pylsl.cf_int8: np.int8, pylsl.cf_int16: np.int16, pylsl.cf_int32: np.int32,
           pylsl.cf_int64: np.int64}


class StreamAcquisition:
    """Acquire one LSL stream and emit the checkpoint's windows every ``hop`` seconds.

    ``ch_names`` are the checkpoint's channels (its order); ``preprocess`` its fitted
    :class:`PreprocessConfig` (whose ``ch_names`` must be the same); ``n_times`` the
    window length in output samples; ``grid`` ``"fixed"`` or ``"chunks"``. See the
    module docstring for the pull, the grid and the health rules.
    """

    def __init__(self, name: str | None = None, source_id: str | None = None, *,
                 ch_names: Sequence[str], preprocess: PreprocessConfig, n_times: int,
                 hop: float = 0.05, allow_missing: bool = False, markers: bool = True,
                 on_window: Callable[[Window], None] | None = None,
                 on_samples: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 on_marker: Callable[[float, object, bool], None] | None = None,
                 on_stream: Callable[[pylsl.StreamInfo], None] | None = None,
                 resolve_timeout: float = 10.0, lost_after: float = 2.0,
                 gap_tolerance: float | None = None, grid: str = "fixed"):
        predicate(name, source_id)  # one of them is needed
        self.ch_names = tuple(str(c) for c in ch_names)
        if not self.ch_names or len(set(self.ch_names)) != len(self.ch_names):
            raise InputError("ch_names: the checkpoint's unique channel names",
                             f"{len(self.ch_names)} names, {len(set(self.ch_names))} unique",
                             "pass checkpoint.ch_names")
        if preprocess.ch_names is None or tuple(preprocess.ch_names) != self.ch_names:
            raise InputError("a preprocessing config resolved to the same ch_names",
                             "ch_names=None" if preprocess.ch_names is None else
                             f"{len(preprocess.ch_names)} channels, not in the same order",
                             "pass checkpoint.preprocess and checkpoint.ch_names together")
        if not preprocess.is_fitted:
            raise InputError("a fitted preprocessing config (robust scaler center and scale)",
                             "center=None", "pass checkpoint.preprocess, or fit_scaler first")
        if isinstance(n_times, bool) or not isinstance(n_times, (int, np.integer)) \
                or n_times < 1:
            raise InputError("n_times a positive integer (window length in output samples)",
                             repr(n_times), "pass checkpoint.n_times")
        for what, value in (("hop", hop), ("lost_after", lost_after),
                            ("resolve_timeout", resolve_timeout)) + (
                (("gap_tolerance", gap_tolerance),) if gap_tolerance is not None else ()):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"{what} a positive number of seconds", repr(value),
                                 f"e.g. {what}=0.05" if what == "hop" else f"set {what} > 0")
        if grid not in GRIDS:
            raise InputError(f"grid one of {', '.join(GRIDS)}", repr(grid),
                             "fixed: every hop from the first sample; chunks: moved once onto "
                             "the sender's chunk ends (least latency)")
        self.grid = grid
        self.name, self.source_id = name, source_id
        self.preprocess, self.n_times, self.hop = preprocess, int(n_times), float(hop)
        self.allow_missing, self.follow_markers = bool(allow_missing), bool(markers)
        self.on_window, self.on_samples = on_window, on_samples
        self.on_marker, self.on_stream = on_marker, on_stream
        self.resolve_timeout, self.lost_after = float(resolve_timeout), float(lost_after)
        self.gap_tolerance = gap_tolerance
        self.stream_id: str = source_id or name or ""
        self.info: pylsl.StreamInfo | None = None
        self.missing_channels: list[str] = []
        self.sfreq: float | None = None

        self._state = "stopped"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._marker_thread: threading.Thread | None = None
        self._inlet: pylsl.StreamInlet | None = None
        self._uid: str | None = None
        self._markers: deque[tuple[float, dict]] = deque(maxlen=_MARKERS_KEPT)
        self._markers_lock = threading.Lock()  # the only lock: markers vs truth_at
        self._profile: list | None = None  # set to a list to record per-chunk costs
        self._n_callback_errors = 0
        self._counts = dict(n_samples=0, n_chunks=0, n_windows=0, n_invalid_windows=0,
                            n_gaps=0, gap_s_total=0.0, n_nonfinite=0, n_lost=0,
                            n_reconnects=0, n_markers=0, n_bad_markers=0, n_resets=0, grid_shift=0)
        self._flat: list[str] = []
        self._saturated: list[str] = []
        self._seq = 0
        self._last_t: float | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> StreamAcquisition:
        """Find the stream, check its channels, subscribe and start the threads."""
        if self._thread is not None:
            raise RuntimeError("StreamAcquisition.start(): already started; "
                               "call stop() first, or make a new StreamAcquisition")
        info = find_stream(self.name, self.source_id, timeout=self.resolve_timeout)
        inlet, full = open_inlet(info, timeout=self.resolve_timeout)
        try:
            self._setup(full)
        except Exception:
            inlet.close_stream()
            raise
        self._inlet, self._uid = inlet, info.uid()
        self._stop.clear()
        self._state = "streaming"
        self._last_data = time.monotonic()
        self._last_try = 0.0
        self._notify_stream(full)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"acquire-{full.name()}")
        self._thread.start()
        if self.follow_markers:
            self._marker_thread = threading.Thread(target=self._run_markers, daemon=True,
                                                   name=f"markers-{full.name()}")
            self._marker_thread.start()
        logger.info("acquiring %s: %d/%d checkpoint channels, %g -> %.6g Hz, window %d, hop %d",
                    describe(full), len(self.ch_names) - len(self.missing_channels),
                    len(self.ch_names), self.sfreq, self._pre.sfreq_out, self.n_times,
                    self._hop_out)
        return self

    def stop(self, timeout: float = 5.0) -> StreamAcquisition:
        """Stop the threads and close the inlets; safe to call twice."""
        self._stop.set()
        for thread in (self._thread, self._marker_thread):
            if thread is not None:
                thread.join(timeout)
                if thread.is_alive():
                    logger.warning("%s did not stop within %g s", thread.name, timeout)
        self._thread = self._marker_thread = None
        self._state = "stopped"
        return self

    def __enter__(self) -> StreamAcquisition:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def state(self) -> str:
        return self._state

    def stats(self) -> dict[str, Any]:
        """JSON-able counters; read from any thread."""
        out: dict[str, Any] = {"state": self._state, "stream_id": self.stream_id,
                               "sfreq": self.sfreq}
        out.update(self._counts)
        out["gap_s_total"] = round(out["gap_s_total"], 6)
        out["grid"] = self.grid
        out.update(flat_channels=list(self._flat), saturated_channels=list(self._saturated),
                   missing_channels=list(self.missing_channels))
        return out

    def truth_at(self, t: float, max_age: float = 1.0) -> dict | None:
        """The newest valid marker with ``t - max_age <= marker time <= t``, plus its ``t``."""
        with self._markers_lock:
            for mt, marker in reversed(self._markers):
                if t - max_age <= mt <= t:
                    return {**marker, "t": mt}
                if mt < t - max_age - 60.0:  # markers arrive in time order, give or take
                    break
        return None

    # ------------------------------------------------------------------ setup
    def _setup(self, full: pylsl.StreamInfo) -> None:
        """Map the stream's channels and build the buffers and the preprocessor."""
        check_signal_stream(full)
        labels, _, units = channel_info(full)
        if labels is None:
            raise InputError("a stream that declares its channel labels (desc/channels/"
                             "channel/label), so channels can be matched by name",
                             f"{describe(full)} without labels",
                             "declare the labels in the outlet (glimpse replay and mne-lsl's "
                             "player do)")
        where: dict[str, int] = {}
        for i, label in enumerate(labels):
            where.setdefault(label, i)
        if len(where) < len(labels):
            logger.warning("stream %s repeats channel labels; using the first of each",
                           full.name())
        present = [i for i, n in enumerate(self.ch_names) if n in where]
        missing = [n for n in self.ch_names if n not in where]
        if missing and (not self.allow_missing or not present):
            shown = ", ".join(missing[:20]) + (f", and {len(missing) - 20} more"
                                               if len(missing) > 20 else "")
            raise InputError(
                f"a stream with the {len(self.ch_names)} channels of the checkpoint",
                f"{describe(full)} lacks {len(missing)} of them: {shown}",
                "stream the montage the model was trained on, or use a checkpoint that "
                "can mask missing channels" if present else
                "check the stream: none of its channel names is the checkpoint's")
        if missing:
            logger.warning("stream %s lacks %d checkpoint channels, masked: %s", full.name(),
                           len(missing), missing[:20])
        src = np.array([where[self.ch_names[i]] for i in present], dtype=np.intp)

        scale = np.ones(full.channel_count(), dtype=np.float32)
        unknown, used = set(), set(src.tolist())
        for i, unit in enumerate(units):
            factor = unit_scale(unit)
            if factor is None:
                if i in used:
                    unknown.add(unit)
                factor = 1.0
            scale[i] = factor
        if unknown:
            logger.warning("stream %s declares units %s that glimpse does not know; "
                           "taken as SI (V, T, T/m)", full.name(), sorted(unknown))

        sfreq = float(full.nominal_srate())
        pre = OnlinePreprocessor(self.preprocess, sfreq)  # InputError if the rate cannot work
        dtype = _DTYPES.get(full.channel_format())
        if dtype is None:
            raise InputError("a numeric channel format", f"format {full.channel_format()}",
                             "stream float32 samples")
        n_chans = len(self.ch_names)
        max_pull = int(min(8192, max(16, math.ceil(_PULL_S * sfreq))))
        max_out = -(-max_pull * pre.up // pre.down) + 2

        # Everything below is replaced as a whole: a reconnect may change the layout.
        self.info, self.sfreq, self.missing_channels = full, sfreq, missing
        self.stream_id = full.source_id() or full.name()
        self._pre = pre
        self._src = src
        self._rows = np.array(present, dtype=np.intp)
        # Channels in one run of the stream (the usual case) are a slice: no gather.
        run = len(src) > 0 and np.all(np.diff(src) == 1) and not missing
        self._src_slice = slice(int(src[0]), int(src[-1]) + 1) if run else None
        self._unit_scale = scale if np.any(scale != 1.0) else None
        self._raw = SampleRing(max(int(2 * sfreq), 4 * max_pull), full.channel_count(), dtype)
        self._max_pull = max_pull
        self._pick = np.zeros((n_chans, max_pull), dtype=np.float32)  # rows of missing: 0
        self._hop_out = max(1, int(round(self.hop * pre.sfreq_out)))
        self._out = WindowRing(n_chans, self.n_times + max_out + self._hop_out)
        self._fir_reach = int(math.ceil(2 * pre.group_delay * sfreq)) + 1  # input samples
        self._period = 1.0 / sfreq
        self._tol = (self.gap_tolerance if self.gap_tolerance is not None
                     else max(3.0 * self._period, 0.010))
        if missing:
            mask = np.zeros(n_chans, dtype=bool)
            mask[self._rows] = True
            mask.flags.writeable = False
            self._chan_mask = mask
        else:
            self._chan_mask = None
        # Health statistics per block.
        self._block_len = max(1, int(round(_BLOCK_S * sfreq)))
        self._n_blocks = int(math.ceil(_HEALTH_S / _BLOCK_S))
        # Min / max per block over every stream channel (a cheap time-major reduction);
        # only the checkpoint's channels present in the stream are judged.
        self._lo_hist = np.empty((len(src), self._n_blocks), dtype=np.float32)
        self._hi_hist = np.empty((len(src), self._n_blocks), dtype=np.float32)
        self._blk_lo = np.empty(full.channel_count(), dtype=np.float32)
        self._blk_hi = np.empty(full.channel_count(), dtype=np.float32)
        # grid="chunks" works in input samples: it needs a whole number of them per hop.
        hop_in = self._hop_out * pre.down / pre.up
        self._hop_in = int(round(hop_in)) if abs(hop_in - round(hop_in)) < 1e-9 else None
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        """Restart the preprocessing: the next sample starts a fresh epoch."""
        self._pre.reset()
        self._out.clear()
        self._next_end = self.n_times  # output count at which the next window ends
        self._bad: list[tuple[float, float]] = []  # input-index spans of gaps / non-finite
        self._blk_lo.fill(np.inf)
        self._blk_hi.fill(-np.inf)
        self._blk_n = 0
        self._blocks_done = 0
        self._grid_todo = self.grid == "chunks" and self._hop_in is not None
        self._probe: list[int] = []  # grid="chunks": phase of each probed pull's last sample

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._inlet is None:
                    if self._stop.wait(max(0.0, self._last_try + _REACQUIRE_S
                                           - time.monotonic())):
                        break
                    self._reacquire()
                    continue
                self._pull_once()
            # What arrived before stop() is acquired (and recorded) too: a pull waits
            # for a whole window's samples, so up to a hop may sit in the inlet. The
            # markers thread stops first, so the samples of its last markers are in.
            markers = self._marker_thread
            if markers is not None:
                markers.join(1.0)
            while self._inlet is not None and self._pull_once(wait=False):
                pass
        except Exception:  # a bug must not kill acquisition silently
            logger.exception("acquisition thread of %s failed; acquisition stopped",
                             self.stream_id)
            self._state = "stopped"
        finally:
            if self._inlet is not None:
                self._inlet.close_stream()
                self._inlet = None

    def _pull_once(self, wait: bool = True) -> int:
        """One pull into the ring (``wait=False``: only what is there); the samples pulled."""
        ring = self._raw
        data, times = ring.reserve(self._max_pull)
        need = 1 if self._probing() or not wait else self._need()
        try:
            # Wake when the sample that completes the next window arrives (liblsl waits on
            # its queue, GIL released), then take whatever else is there: about one pull
            # per hop instead of one per sender chunk, at no cost in latency.
            timeout = _POLL_S + need * self._period if wait else 0.0
            _, ts = self._inlet.pull_chunk(timeout=timeout, max_samples=self._max_pull,
                                           dest_obj=data, min_samples=need, as_numpy=True)
        except pylsl.util.LostError:
            ring.commit(0)
            self._inlet.close_stream()
            self._inlet = None
            self._mark_lost("the outlet went away")
            return 0
        n = len(ts)
        now = time.monotonic()
        if n == 0:
            ring.commit(0)
            if self._state == "streaming" and now - self._last_data > self.lost_after:
                self._mark_lost(f"no data for {self.lost_after:g} s")
            if self._state == "lost" and now - self._last_try > _REACQUIRE_S:
                self._reacquire()  # a restarted outlet may be elsewhere; this one is mute
            return 0
        t_pulled = pylsl.local_clock()
        times[:n] = ts
        data, times = ring.commit(n)
        self._last_data = now
        if self._state == "lost":
            self._state = "streaming"
            self._counts["n_reconnects"] += 1
            logger.warning("stream %s is back (reconnect %d)", self.stream_id,
                           self._counts["n_reconnects"])
        self._on_chunk(data, times, t_pulled)
        return n

    def _need(self) -> int:
        """Input samples still missing before the next window can be cut (1..max pull)."""
        pre = self._pre
        newest = (self._next_end - 1) * pre.down // pre.up  # the last input it depends on
        return min(self._max_pull, max(1, newest + 1 - pre.n_samples_in))

    def _probing(self) -> bool:
        """grid="chunks", after the settling second: pull chunk by chunk to see their ends."""
        return self._grid_todo and self._pre.n_samples_in >= _SETTLE_S * self.sfreq

    def _mark_lost(self, why: str) -> None:
        if self._state != "lost":
            self._state = "lost"
            self._counts["n_lost"] += 1
            logger.warning("stream %s lost (%s); seeking it every %g s", self.stream_id, why,
                           _REACQUIRE_S)

    def _reacquire(self) -> None:
        """Look for the stream again; switch to a different outlet if one matches."""
        self._last_try = time.monotonic()
        try:
            found = pylsl.resolve_bypred(predicate(self.name, self.source_id), minimum=1,
                                         timeout=0.2)
        except Exception as err:  # resolver trouble: try again later
            logger.debug("resolve failed: %s", err)
            return
        if not found:
            return
        info = max(found, key=lambda s: s.created_at())
        if self._inlet is not None and info.uid() == self._uid:
            return  # the same outlet, only silent: keep waiting on it
        try:
            inlet, full = open_inlet(info, timeout=2.0)
        except InputError as err:
            logger.debug("reconnect to %s failed: %s", describe(info), err)
            return
        try:
            same = (self.info is not None and full.channel_count() == self.info.channel_count()
                    and full.nominal_srate() == self.info.nominal_srate()
                    and full.channel_format() == self.info.channel_format()
                    and channel_info(full) == channel_info(self.info))
            if not same:
                self._setup(full)  # new layout: new mapping, buffers, preprocessor
            else:
                self.info = full
                self.stream_id = full.source_id() or full.name()
        except InputError as err:
            logger.error("stream %s came back but cannot be used: %s", describe(full), err)
            inlet.close_stream()
            return
        if self._inlet is not None:
            self._inlet.close_stream()
        self._inlet, self._uid = inlet, info.uid()
        logger.info("re-acquired %s", describe(full))
        self._notify_stream(full)

    # ------------------------------------------------------------------ hot path
    def _on_chunk(self, data: np.ndarray, times: np.ndarray, t_pulled: float) -> None:
        prof = self._profile is not None
        if prof:
            t0 = time.perf_counter()
            self._pre_s = 0.0
        if data.dtype != np.float32:
            data = data.astype(np.float32)
        if self._unit_scale is not None:
            data *= self._unit_scale  # in place in the ring (or in the float32 copy)
        n = len(times)
        self._counts["n_samples"] += n
        self._counts["n_chunks"] += 1
        if self.on_samples is not None:
            self._call(self.on_samples, data, times)

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
                self._feed(data[start:cut], times[start:cut], t_pulled)
            self._gap(times[cut - 1] if cut else self._last_t, times[cut])
            start = cut
        self._feed(data[start:], times[start:], t_pulled)
        self._last_t = float(times[-1])
        if self._grid_todo:
            self._align_chunks()
        if prof:
            total = time.perf_counter() - t0
            self._profile.append((n, total, self._pre_s))

    def _gap(self, t_before: float, t_after: float) -> None:
        dt = t_after - t_before
        self._counts["n_gaps"] += 1
        self._counts["gap_s_total"] += max(0.0, dt - self._period)
        reset = dt > RESET_AFTER or dt < 0
        logger.info("gap of %.4f s in %s at t=%.4f%s", dt - self._period, self.stream_id,
                    t_after, "; preprocessing restarts" if reset else "")
        if reset:
            self._counts["n_resets"] += 1
            self._reset_epoch()
        else:  # windows whose input spans the jump are invalid
            edge = self._pre.n_samples_in - 0.5
            self._bad.append((edge, edge))

    def _feed(self, data: np.ndarray, times: np.ndarray, t_pulled: float) -> None:
        """Preprocess one gap-free run of samples and cut the windows it completes."""
        n = len(times)
        pre = self._pre
        if self._src_slice is not None:
            x = data[:, self._src_slice].T  # a view; process() makes its float64 copy
        else:
            x = self._pick[:, :n]
            x[self._rows] = data[:, self._src].T  # missing rows stay zero
        self._health(data, n)
        first_in = pre.n_samples_in
        nonfinite = pre.n_nonfinite
        t = time.perf_counter() if self._profile is not None else 0.0
        out, t_out = pre.process(x, times)
        if self._profile is not None:
            self._pre_s += time.perf_counter() - t
        if pre.n_nonfinite != nonfinite:
            self._counts["n_nonfinite"] += pre.n_nonfinite - nonfinite
            bad = np.flatnonzero(~np.isfinite(x).all(axis=0)) + first_in
            runs = np.split(bad, np.flatnonzero(np.diff(bad) > 1) + 1)
            self._bad.extend((float(r[0]), float(r[-1])) for r in runs)
        if out.shape[1]:
            self._out.write(out, t_out)
            if self._out.count >= self._next_end:
                self._cut(t_pulled)

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

        For ``_PROBE_S`` after the settling second, every pull is one chunk (or, late,
        several); its last sample is a chunk end. Their phases in the hop repeat; the
        grid moves so the newest input of a window is at or just before the nearest.
        """
        if not self._probing():
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
            logger.info("%s: no regular chunk ends in %d pulls; window grid kept",
                        self.stream_id, len(self._probe))
            return

        def wait(shift: int) -> int:  # input samples from a window's newest to a chunk end
            newest = (self._next_end - 1 + shift) * pre.down // pre.up
            return int(((ends - (newest - ref)) % hop_in).min())

        waits = [wait(c) for c in range(self._hop_out)]
        shift = int(np.argmin(waits))
        self._shift_grid(shift, f"to the sender's chunk ends: a window's newest sample waits "
                                f"{waits[0]} -> {waits[shift]} samples for its chunk")

    def _cut(self, t_pulled: float) -> None:
        pre, out, n_times = self._pre, self._out, self.n_times
        up, down = pre.up, pre.down
        count = out.count
        while self._next_end <= count:
            end = self._next_end
            self._next_end += self._hop_out
            seq = self._seq
            self._seq += 1
            if self._bad:
                lo = (end - n_times) * down // up - (self._fir_reach - 1)
                hi = (end - 1) * down // up
                if any(a <= hi and b >= lo for a, b in self._bad):
                    self._counts["n_invalid_windows"] += 1
                    continue
            data, times = out.window(n_times, count - end)
            window = Window(data.copy(), float(times[-1]), t_pulled, pylsl.local_clock(),
                            self.stream_id, self.ch_names, seq, self._chan_mask)
            self._counts["n_windows"] += 1
            if self.on_window is not None:
                self._call(self.on_window, window)
        if self._bad:  # forget what no future window can reach
            oldest = (self._next_end - n_times) * down // up - (self._fir_reach - 1)
            self._bad = [(a, b) for a, b in self._bad if b >= oldest]

    def _health(self, data: np.ndarray, n: int) -> None:
        """Per-block min/max of the raw chunk; flat / saturated at each block's end."""
        np.fmin(self._blk_lo, np.fmin.reduce(data, axis=0), out=self._blk_lo)
        np.fmax(self._blk_hi, np.fmax.reduce(data, axis=0), out=self._blk_hi)
        self._blk_n += n
        if self._blk_n < self._block_len:
            return
        j = self._blocks_done % self._n_blocks
        self._lo_hist[:, j] = self._blk_lo[self._src]
        self._hi_hist[:, j] = self._blk_hi[self._src]
        self._blocks_done += 1
        self._blk_lo.fill(np.inf)
        self._blk_hi.fill(-np.inf)
        self._blk_n = 0
        if self._blocks_done % self._n_blocks:  # judged once per look-back (~77 us)
            return
        lo, hi = self._lo_hist, self._hi_hist
        low, high = lo.min(axis=1), hi.max(axis=1)
        flat = high <= low
        stuck = (lo == hi) & ((hi == high[:, None]) | (lo == low[:, None]))
        saturated = ~flat & stuck.any(axis=1)
        for attr, mask, what in (("_flat", flat, "flat (peak-to-peak 0 over 1 s)"),
                                 ("_saturated", saturated, "saturated (stuck at an extreme)")):
            names = [self.ch_names[self._rows[i]] for i in np.flatnonzero(mask)]
            if names != getattr(self, attr):
                if names:
                    logger.warning("%s: %d channel(s) %s: %s", self.stream_id, len(names),
                                   what, names[:10])
                setattr(self, attr, names)

    def _call(self, callback: Callable, *args) -> None:
        try:
            callback(*args)
        except Exception:
            self._n_callback_errors += 1
            if self._n_callback_errors <= 5 or self._n_callback_errors % 1000 == 0:
                logger.exception("callback %s failed (%d so far)",
                                 getattr(callback, "__name__", callback),
                                 self._n_callback_errors)

    def _notify_stream(self, full: pylsl.StreamInfo) -> None:
        if self.on_stream is not None:
            self._call(self.on_stream, full)

    # ------------------------------------------------------------------ markers
    def _run_markers(self) -> None:
        name = f"{self.info.name()}-markers"
        inlet = None
        try:
            while not self._stop.is_set():
                if inlet is None:
                    info = find_markers(name, timeout=0.25)  # it may appear at any time
                    if info is None:
                        self._stop.wait(0.25)
                        continue
                    try:
                        inlet, _ = open_inlet(info, timeout=2.0, recover=True)
                    except InputError:
                        continue
                    logger.info("following markers %s", describe(info))
                try:
                    samples, stamps = inlet.pull_chunk(timeout=0.1, max_samples=256)
                except pylsl.util.LostError:
                    inlet.close_stream()
                    inlet = None
                    logger.warning("markers stream %s lost; seeking it again", name)
                    continue
                for sample, t in zip(samples, stamps, strict=True):
                    self._handle_marker(float(t), sample[0] if sample else "")
        except Exception:
            logger.exception("markers thread of %s failed", self.stream_id)
        finally:
            if inlet is not None:
                inlet.close_stream()

    def _handle_marker(self, t: float, raw: str) -> None:
        try:
            marker = json.loads(raw)
        except (ValueError, TypeError):
            marker = None
        valid = isinstance(marker, dict)
        if valid:
            self._counts["n_markers"] += 1
            with self._markers_lock:
                self._markers.append((t, marker))
        else:
            self._counts["n_bad_markers"] += 1
            if self._counts["n_bad_markers"] <= 5:
                logger.warning("skipped a marker that is not a JSON object: %.80r", raw)
        if self.on_marker is not None:
            self._call(self.on_marker, t, marker if valid else raw, valid)
