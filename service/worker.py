"""The decoding worker: windows in, decoded frames out, off the asyncio event loop.

:class:`Worker`, one thread: acquisition threads :meth:`Worker.submit` windows
into per-stream queues; the thread takes the newest pending window of every
stream, decodes them with a :class:`~glimpse.service.decoder.Decoder` in one
forward pass and hands the frames to callbacks (ARCHITECTURE.md, "Real-time
rules"). When decoding falls behind, older windows are dropped and counted, never
queued without limit.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError
from glimpse.streaming.window import Window

from .decoder import STAGES, Decoder

logger = logging.getLogger("glimpse.service.worker")

__all__ = ["Worker", "freeze_heap"]


def freeze_heap() -> None:
    """Collect once, then exempt every object alive now from the garbage collector.

    Call it when a live session is set up (models, gallery, threads). With torch, MNE
    and onnxruntime loaded the heap holds ~230,000 container objects, and a full
    collection walks them all under the GIL: ~125 ms during which no acquisition or
    decoding thread runs, longer than the 50 ms hop. Frozen (``gc.freeze``), a full
    collection sees only what the session allocates since: ~1 ms.
    """
    gc.collect()
    gc.freeze()


class Worker:
    """One thread decoding the newest window of every stream with a :class:`Decoder`.

    Queue policy (the one ``glimpse decode``, the bench and the service use): each
    stream keeps only its newest pending window (``queue_size=1``); ``submit`` (from
    acquisition threads) never blocks, and a window that a newer one replaces before
    the thread took it is dropped and counted (``n_dropped``). Each round the thread
    takes the pending windows of all streams (up to ``max_batch``; when more streams
    are pending than fit, those served least recently go first), decodes them in one
    forward pass and calls every ``on_frame`` with each frame, in order per stream.
    Why newest-only: a live decoder shows the present. The start-up backlog that
    once needed deeper queues (8 windows in ``glimpse decode``) no longer reaches the
    worker, as the windower skips windows already older than two hops when they are
    cut (``n_stale``); what is left to queue is a stall of the worker itself, and a
    window that waited for a whole decode behind a newer one would only be shown
    late. ``queue_size`` > 1 keeps more per stream and decodes them together (tests).

    ``truth(stream_id, t_window_end)`` gives the true stimulus (a marker dict) or None.
    A window the decoder cannot take (:meth:`Decoder.check_window`) is rejected alone
    and counted (``n_rejected``). Exceptions in callbacks or in the decoder are logged
    and counted (``n_callback_errors``; ``n_errors`` batches, ``n_failed`` windows); the
    thread goes on.
    Use it as a context manager, or ``start()`` ... ``stop()``.
    """

    def __init__(self, decoder: Decoder, *, session: str, max_batch: int = 32, queue_size: int = 1,
                 truth: Callable[[str, float], dict | None] | None = None,
                 on_frame: Callable[[dict], None] | Sequence[Callable[[dict], None]] | None = None,
                 ring_size: int = 4096, rate_window_s: float = 5.0):
        for name, value in (("max_batch", max_batch), ("queue_size", queue_size), ("ring_size", ring_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} a positive integer", f"{name}={value!r}", f"pass {name} >= 1")
        if not isinstance(decoder, Decoder):
            raise InputError("a Decoder", type(decoder).__name__, "build one with Decoder(checkpoint, gallery)")
        self.decoder, self.session = decoder, str(session)
        self.max_batch, self.queue_size = max_batch, queue_size
        self.truth = truth
        self.on_frame: list[Callable[[dict], None]] = (
            [] if on_frame is None else [on_frame] if callable(on_frame) else list(on_frame))
        self.rate_window_s = float(rate_window_s)
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[str, collections.deque] = {}
        self._dropped: collections.Counter = collections.Counter()
        self._served: dict[str, float] = {}  # stream -> perf_counter when last taken
        self._n_submitted = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self._state = "new"
        # Statistics: written by the worker thread, read by stats() under _stats_lock.
        self._stats_lock = threading.Lock()
        self._ring = np.zeros((ring_size, len(STAGES)), np.float64)
        self._ring_batch = np.zeros(ring_size, np.float64)
        self._ring_n = 0  # frames ever written into the ring
        self._batches: collections.deque = collections.deque()  # (perf_counter, n_frames), last rate_window_s
        self._n_decoded = self._n_batches = self._n_errors = self._n_failed = 0
        self._n_callback_errors = self._n_truth_errors = self._n_rejected = 0
        self._t_started: float | None = None
        # No lazy initialisation on the first live window: the largest batch too.
        if max_batch not in decoder.warmed_batch_sizes:
            decoder.warmup(max_batch)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "Worker":
        """Start the decoding thread; returns self."""
        if self._state != "new":
            raise RuntimeError(f"Worker.start() on a {self._state} worker: a worker starts once; "
                               "build a new Worker to start again")
        self._state = "running"
        self._t_started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"glimpse-worker-{self.session}", daemon=True)
        self._thread.start()
        logger.info("worker started (session %s, max_batch %d, queue_size %d)",
                    self.session, self.max_batch, self.queue_size)
        return self

    def stop(self, timeout: float = 5.0) -> "Worker":
        """Stop the thread (pending windows are discarded) and wait up to ``timeout`` s; returns self."""
        if self._state != "running":
            self._state = "stopped"
            return self
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("worker thread still decoding after %.1f s; left to finish as a daemon", timeout)
        self._state = "stopped"
        logger.info("worker stopped: %s", {k: v for k, v in self.stats().items() if k.startswith("n_")})
        return self

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    # ------------------------------------------------------------------ intake

    def submit(self, window: Window) -> None:
        """Queue a window for decoding; never blocks (a full queue drops its oldest, counted)."""
        item = (window, time.perf_counter())
        with self._cond:
            self._n_submitted += 1
            queue = self._queues.get(window.stream_id)
            if queue is None:
                queue = self._queues[window.stream_id] = collections.deque()
            if len(queue) >= self.queue_size:
                queue.popleft()
                self._dropped[window.stream_id] += 1
            queue.append(item)
            self._cond.notify()

    def _take(self) -> list[tuple[Window, float]]:
        """The newest pending windows, at most max_batch; called with the lock held.

        Layer by layer (each stream's newest, then its second newest, ...); when a
        layer does not fit, the streams served least recently go first (then those
        whose oldest window waited longest), so no stream starves. A stream's windows
        older than its oldest taken one are dropped: decoded later, their frames
        would arrive after newer ones.
        """
        layer = [(stream, q) for stream, q in self._queues.items() if q]
        taken: list[tuple[Window, float]] = []
        n_taken: dict[str, int] = {}
        capacity, depth = self.max_batch, 0
        served = self._served
        while capacity > 0 and layer:
            if len(layer) > capacity:
                layer = sorted(layer, key=lambda sq: (served.get(sq[0], -np.inf), sq[1][0][1]))[:capacity]
            for stream, q in layer:
                taken.append(q[-1 - depth])
                n_taken[stream] = depth + 1
            capacity -= len(layer)
            depth += 1
            layer = [(stream, q) for stream, q in layer if len(q) > depth]
        now = time.perf_counter()
        for stream, n in n_taken.items():
            served[stream] = now
            q = self._queues[stream]
            if len(q) > n:
                self._dropped[stream] += len(q) - n
            q.clear()
        taken.sort(key=lambda item: item[0].t_end)
        return taken

    # --------------------------------------------------------------------- loop

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not any(self._queues.values()):
                    self._cond.wait(0.5)
                if self._stop:
                    return
                items = self._take()
            try:
                self._decode(items)
            except Exception:  # noqa: BLE001 - the thread must survive anything a batch does
                self._n_errors += 1
                self._n_failed += len(items)
                if self._n_errors <= 10 or self._n_errors % 1000 == 0:
                    logger.exception("decoding a batch of %d windows failed (%d failures so far); "
                                     "going on", len(items), self._n_errors)

    def _decode(self, items: list[tuple[Window, float]]) -> None:
        t_take = time.perf_counter()
        good = []
        for item in items:  # one stream's bad window must not fail the others' batch
            try:
                self.decoder.check_window(item[0])
                good.append(item)
            except InputError as err:
                self._n_rejected += 1
                if self._n_rejected <= 10 or self._n_rejected % 1000 == 0:
                    logger.error("window %s of stream %s rejected (%d so far): %s", item[0].seq,
                                 item[0].stream_id, self._n_rejected, err)
        items = good
        if not items:
            return
        windows = [w for w, _ in items]
        frames = self.decoder.decode(windows, session=self.session,
                                     queue_ms=[1e3 * (t_take - t) for _, t in items])
        if self.truth is not None:
            for frame in frames:
                try:
                    frame["truth"] = self.truth(frame["stream"], frame["t_window_end"])
                except Exception:  # noqa: BLE001 - a bad marker lookup never stops decoding
                    self._n_truth_errors += 1
                    if self._n_truth_errors <= 10:
                        logger.exception("truth lookup failed for stream %s", frame["stream"])
        self._record(frames)
        for frame in frames:
            for callback in self.on_frame:
                try:
                    callback(frame)
                except Exception:  # noqa: BLE001 - a consumer's bug never stops decoding
                    self._n_callback_errors += 1
                    if self._n_callback_errors <= 10 or self._n_callback_errors % 1000 == 0:
                        logger.exception("on_frame callback %r failed (%d failures so far)",
                                         callback, self._n_callback_errors)

    def _record(self, frames: list[dict]) -> None:
        n, size = len(frames), len(self._ring)
        with self._stats_lock:
            for frame in frames:
                lat = frame["latency_ms"]
                row = self._ring_n % size
                self._ring[row] = [lat[s] for s in STAGES]
                self._ring_batch[row] = n
                self._ring_n += 1
            self._n_decoded += n
            self._n_batches += 1
            now = time.perf_counter()
            batches = self._batches
            batches.append((now, n))
            while now - batches[0][0] > self.rate_window_s:  # keep only the rate's window
                batches.popleft()

    # -------------------------------------------------------------------- stats

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters, decode rate (frames/s over the last ``rate_window_s``) and latency.

        ``latency_ms[stage] = {"p50", "p95", "p99"}`` over the last ``ring_size`` frames
        (None before the first); ``batch_size_mean`` over the same frames.
        """
        with self._cond:
            dropped = dict(self._dropped)
            pending = {s: len(q) for s, q in self._queues.items()}
            n_submitted = self._n_submitted
        now = time.perf_counter()
        with self._stats_lock:
            n = min(self._ring_n, len(self._ring))
            ring, batch = self._ring[:n].copy(), self._ring_batch[:n].copy()
            recent = sum(k for t, k in self._batches if now - t <= self.rate_window_s)
            counts = dict(n_decoded=self._n_decoded, n_batches=self._n_batches, n_errors=self._n_errors,
                          n_failed=self._n_failed, n_callback_errors=self._n_callback_errors,
                          n_truth_errors=self._n_truth_errors, n_rejected=self._n_rejected)
        span = min(self.rate_window_s, now - self._t_started) if self._t_started is not None else 0.0
        if n:
            pct = np.percentile(ring, [50, 95, 99], axis=0)
            latency = {s: {"p50": float(pct[0, j]), "p95": float(pct[1, j]), "p99": float(pct[2, j])}
                       for j, s in enumerate(STAGES)}
        else:
            latency = {s: {"p50": None, "p95": None, "p99": None} for s in STAGES}
        return {"state": self._state, "n_submitted": n_submitted, **counts,
                "n_dropped": int(sum(dropped.values())), "dropped": dropped, "pending": pending,
                "decode_rate": recent / span if span > 0 else 0.0,
                "batch_size_mean": float(batch.mean()) if n else None,
                "latency_ms": latency}
