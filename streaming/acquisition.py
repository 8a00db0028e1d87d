"""Live acquisition: one LSL signal stream in, preprocessed sliding windows out.

One :class:`StreamAcquisition` per stream: it finds the stream, pulls, reconnects
and follows ``<name>-markers``; everything the samples go through on their way to
a window is the pure :class:`~glimpse.streaming.windower.Windower`'s (units,
channel picking and masking, gaps, the online preprocessing, the window grid,
invalid and stale windows, channel health: see its module). The acquisition thread
owns the windower and the ring, so nothing on the hot path takes a lock::

    inlet.pull_chunk(dest_obj=ring slice,      raw samples land in a SampleRing, in place
                     min_samples=need)         (wakes when the next window's newest arrives)
      -> windower.to_si, on_samples(data, times)
      -> windower.push_si(data, times, now)    -> on_window(Window) for each window

Windows are cut when the sample that completes them arrives, never on a timer.
Each pull waits (in liblsl, without the GIL) for exactly that sample
(:meth:`Windower.need`) and takes what else has arrived, so a stream costs about
one pull per hop rather than one per sender chunk (5x fewer at 10 ms chunks and a
50 ms hop), at no cost in latency. While the ``"chunks"`` grid probes the sender's
chunk ends (:attr:`Windower.probing`), each pull takes what is there.

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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pylsl

from .errors import InputError
from .lsl import (channel_info, check_signal_stream, describe, find_markers, find_stream,
                  open_inlet, predicate)
from .markers import MarkerLog
from .preprocess import PreprocessConfig
from .ring import SampleRing
from .window import Window
from .windower import GRIDS, RESET_AFTER, Windower, check_settings

logger = logging.getLogger("glimpse.streaming.acquisition")

__all__ = ["GRIDS", "RESET_AFTER", "StreamAcquisition"]

_POLL_S = 0.05  # pull timeout: how often the thread looks at stop / lost
_REACQUIRE_S = 0.5  # how often a lost stream is sought again

_DTYPES = {pylsl.cf_float32: np.float32, pylsl.cf_double64: np.float64,
           pylsl.cf_int8: np.int8, pylsl.cf_int16: np.int16, pylsl.cf_int32: np.int32,
           pylsl.cf_int64: np.int64}


class StreamAcquisition:
    """Acquire one LSL stream and emit the checkpoint's windows every ``hop`` seconds.

    ``ch_names`` are the checkpoint's channels (its order); ``preprocess`` its fitted
    :class:`PreprocessConfig` (whose ``ch_names`` must be the same); ``n_times`` the
    window length in output samples; ``grid`` ``"fixed"`` or ``"chunks"``;
    ``max_age`` the largest age of a window's newest sample when it is cut (default
    two hops; older ones are counted as ``n_stale``, never emitted). ``profile=True``
    records the hot path's cost per pull (:meth:`pull_costs`). See the module
    docstrings here and in :mod:`glimpse.streaming.windower` for the rules.
    """

    def __init__(self, name: str | None = None, source_id: str | None = None, *,
                 ch_names: Sequence[str], preprocess: PreprocessConfig, n_times: int,
                 hop: float = 0.05, allow_missing: bool = False, markers: bool = True,
                 on_window: Callable[[Window], None] | None = None,
                 on_samples: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 on_marker: Callable[[float, object, bool], None] | None = None,
                 on_stream: Callable[[pylsl.StreamInfo], None] | None = None,
                 resolve_timeout: float = 10.0, lost_after: float = 2.0,
                 gap_tolerance: float | None = None, grid: str = "fixed",
                 max_age: float | None = None, profile: bool = False):
        predicate(name, source_id)  # one of them is needed
        self.ch_names = check_settings(ch_names, preprocess, n_times, hop=hop, grid=grid,
                                       gap_tolerance=gap_tolerance, max_age=max_age)
        for what, value in (("lost_after", lost_after), ("resolve_timeout", resolve_timeout)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"{what} a positive number of seconds", repr(value),
                                 f"set {what} > 0")
        self.name, self.source_id = name, source_id
        self.preprocess, self.n_times = preprocess, int(n_times)
        self.allow_missing, self.follow_markers = bool(allow_missing), bool(markers)
        self.on_window, self.on_samples = on_window, on_samples
        self.on_marker, self.on_stream = on_marker, on_stream
        self.resolve_timeout, self.lost_after = float(resolve_timeout), float(lost_after)
        self._window_options = dict(hop=float(hop), grid=grid, gap_tolerance=gap_tolerance,
                                    max_age=max_age, allow_missing=bool(allow_missing),
                                    profile=bool(profile))
        self.grid, self.hop = grid, float(hop)
        self.stream_id: str = source_id or name or ""
        self.info: pylsl.StreamInfo | None = None
        self.windower: Windower | None = None
        self.markers = MarkerLog()

        self._state = "stopped"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._marker_thread: threading.Thread | None = None
        self._inlet: pylsl.StreamInlet | None = None
        self._uid: str | None = None
        self._n_callback_errors = 0
        self._counts = dict(n_lost=0, n_reconnects=0, n_markers=0, n_bad_markers=0)

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
        w = self.windower
        logger.info("acquiring %s: %d/%d checkpoint channels, %g -> %.6g Hz, window %d, hop %d",
                    describe(full), len(self.ch_names) - len(w.missing_channels),
                    len(self.ch_names), w.sfreq, w.sfreq_out, self.n_times, w.hop_out)
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

    @property
    def sfreq(self) -> float | None:
        return None if self.windower is None else self.windower.sfreq

    @property
    def missing_channels(self) -> list[str]:
        return [] if self.windower is None else list(self.windower.missing_channels)

    def stats(self) -> dict[str, Any]:
        """JSON-able counters (the windower's too); read from any thread."""
        out: dict[str, Any] = {"state": self._state, "stream_id": self.stream_id,
                               "sfreq": self.sfreq}
        w = self.windower
        out.update(w.stats() if w is not None else dict(
            n_samples=0, n_chunks=0, n_windows=0, n_invalid_windows=0, n_stale=0, n_gaps=0,
            gap_s_total=0.0, n_nonfinite=0, n_resets=0, grid_shift=0, flat_channels=[],
            saturated_channels=[]))
        out.update(self._counts)
        out.update(grid=self.grid, missing_channels=self.missing_channels)
        return out

    def pull_costs(self) -> list[tuple[int, float, float]]:
        """With ``profile=True``: per pull, (samples, seconds in the hot path, seconds
        preprocessing), since the stream was (re)set up; else empty."""
        w = self.windower
        return list(w.costs) if w is not None and w.costs is not None else []

    def truth_at(self, t: float, max_age: float = 1.0) -> dict | None:
        """The newest valid marker with ``t - max_age <= marker time <= t``, plus its ``t``."""
        return self.markers.truth_at(t, max_age)

    # ------------------------------------------------------------------ setup
    def _setup(self, full: pylsl.StreamInfo) -> None:
        """Map the stream's channels and build the windower and the ring."""
        check_signal_stream(full)
        labels, _, units = channel_info(full)
        if labels is None:
            raise InputError("a stream that declares its channel labels (desc/channels/"
                             "channel/label), so channels can be matched by name",
                             f"{describe(full)} without labels",
                             "declare the labels in the outlet (glimpse replay and mne-lsl's "
                             "player do)")
        dtype = _DTYPES.get(full.channel_format())
        if dtype is None:
            raise InputError("a numeric channel format", f"format {full.channel_format()}",
                             "stream float32 samples")
        stream_id = full.source_id() or full.name()
        windower = Windower(self.ch_names, self.preprocess, self.n_times,
                            sfreq=float(full.nominal_srate()), stream_ch_names=labels,
                            units=units, stream_id=stream_id, source=describe(full),
                            clock=pylsl.local_clock, **self._window_options)
        if self.windower is not None:  # a stream back with a new layout: counts go on
            windower.continue_from(self.windower)
        # Replaced as a whole: a reconnect may change the layout.
        self._raw = SampleRing(max(int(2 * windower.sfreq), 4 * windower.max_pull),
                               full.channel_count(), dtype)
        self.info, self.stream_id, self.windower = full, stream_id, windower
        self._period = 1.0 / windower.sfreq

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
        ring, windower = self._raw, self.windower
        data, times = ring.reserve(windower.max_pull)
        need = 1 if windower.probing or not wait else windower.need()
        try:
            # Wake when the sample that completes the next window arrives (liblsl waits on
            # its queue, GIL released), then take whatever else is there: about one pull
            # per hop instead of one per sender chunk, at no cost in latency.
            timeout = _POLL_S + need * self._period if wait else 0.0
            _, ts = self._inlet.pull_chunk(timeout=timeout, max_samples=windower.max_pull,
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
        data = windower.to_si(data)  # in place in the ring (or in a float32 copy)
        if self.on_samples is not None:
            self._call(self.on_samples, data, times)
        for window in windower.push_si(data, times, t_pulled):
            if self.on_window is not None:
                self._call(self.on_window, window)
        return n

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
                self.stream_id = self.windower.stream_id = full.source_id() or full.name()
        except InputError as err:
            logger.error("stream %s came back but cannot be used: %s", describe(full), err)
            inlet.close_stream()
            return
        if self._inlet is not None:
            self._inlet.close_stream()
        self._inlet, self._uid = inlet, info.uid()
        logger.info("re-acquired %s", describe(full))
        self._notify_stream(full)

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
            self.markers.add(t, marker)
        else:
            self._counts["n_bad_markers"] += 1
            if self._counts["n_bad_markers"] <= 5:
                logger.warning("skipped a marker that is not a JSON object: %.80r", raw)
        if self.on_marker is not None:
            self._call(self.on_marker, t, marker if valid else raw, valid)
