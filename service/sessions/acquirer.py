"""The acquisition process of a live session: streams in, session folder written,
windows out to the worker process.

Runs :func:`acquirer_main` in a process of its own (``multiprocessing``, spawn), so
that a worker that crashes (segfault, CUDA out-of-memory, SIGKILL) never stops the
recording (ARCHITECTURE.md, "Real-time rules"). It imports no torch. One
:func:`~glimpse.streaming.recorder.recorded_acquisition` per stream writes every
sample and marker to the session folder as it comes; its windows go to the
:class:`~.wire.WindowSender` (newest per stream, to whichever worker listens) and
to the :class:`~.signal.SignalMonitor`.

Messages on ``conn`` (a duplex pipe to the service), each a tuple. To the
service: ``("ready", {"streams": [ids]})``, ``("error", {"expected", "got", "fix"}
or {"message"})``, ``("marker", stream_id, t, marker)``, ``("signal", message)``
(~4/s per stream), ``("stats", [acquisition stats], sender stats)`` (~1/s) and
``("stopped", [acquisition stats])``. From the service: ``("frame", frame)`` to
record, ``("reconnect",)`` (a new worker listens: send the next windows to it) and
``("stop",)``.
"""

from __future__ import annotations

import logging
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from glimpse.streaming.preprocess import PreprocessConfig
from glimpse.streaming.recorder import recorded_acquisition

from .signal import SignalMonitor
from .wire import Pipe, WindowSender, error_body

logger = logging.getLogger("glimpse.service.sessions.acquirer")

__all__ = ["acquirer_main"]

SIGNAL_EVERY_S, STATS_EVERY_S = 0.25, 1.0


def acquirer_main(spec: dict[str, Any], conn: Connection) -> None:
    """Acquire ``spec["streams"]`` until the service says stop (or goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    logging.basicConfig(level=spec.get("log_level", logging.WARNING),
                        format="%(asctime)s acquirer %(levelname)s %(name)s: %(message)s")
    pipe = Pipe(conn)
    writer = None
    if spec["folder"] is not None:
        from glimpse.streaming.session_log import SessionWriter

        writer = SessionWriter(spec["folder"])
    sender = WindowSender(spec["windows_address"], spec["authkey"]).start()
    monitor = SignalMonitor(spec["ch_names"], np.asarray(spec["positions"]), spec["sfreq"],
                            max(1, round(spec["hop"] * spec["sfreq"])))
    acqs: list = []
    stop = threading.Event()
    try:
        _start(spec, acqs, pipe, sender, monitor, writer)
    except Exception as err:  # noqa: BLE001 - reported to the service, which answers the request
        pipe.send(("error", error_body(err)))
        _shutdown(acqs, sender, writer)
        return
    pipe.send(("ready", {"streams": [a.stream_id for a in acqs]}))
    reporter = threading.Thread(target=_report, args=(acqs, pipe, sender, monitor, stop),
                                name="acquirer-report", daemon=True)
    reporter.start()
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the service is gone: stop, keep what is recorded
                break
            if message[0] == "frame" and writer is not None:
                writer.write_frame(message[1])
            elif message[0] == "reconnect":
                sender.reconnect()
            elif message[0] == "stop":
                break
    finally:
        stop.set()
        reporter.join(2.0)
        _shutdown(acqs, sender, writer)
        pipe.send(("stopped", [a.stats() for a in acqs]))


def _start(spec, acqs, pipe, sender, monitor, writer) -> None:
    preprocess = PreprocessConfig.from_dict(spec["preprocess"])

    def on_window(window) -> None:
        sender.submit(window)
        monitor.update(window)

    for name, source_id in spec["streams"]:
        index = len(acqs)

        def on_marker(t: float, marker: object, valid: bool, index=index) -> None:
            if valid:
                pipe.send(("marker", acqs[index].stream_id, float(t), marker))

        acq = recorded_acquisition(
            name, source_id, ch_names=spec["ch_names"], preprocess=preprocess,
            n_times=spec["n_times"], on_window=on_window, writer=writer, on_marker=on_marker,
            hop=spec["hop"], allow_missing=spec["allow_missing"], grid="chunks",
            max_age=spec["max_age"], resolve_timeout=spec["resolve_timeout"])
        acqs.append(acq)
        acq.start()


def _report(acqs, pipe: Pipe, sender: WindowSender, monitor: SignalMonitor,
            stop: threading.Event) -> None:
    ticks_per_stats = round(STATS_EVERY_S / SIGNAL_EVERY_S)
    tick = 0
    while not stop.wait(SIGNAL_EVERY_S):
        tick += 1
        stats = [a.stats() for a in acqs]
        for acq, s in zip(acqs, stats):
            message = monitor.message(acq.stream_id, flat=s["flat_channels"],
                                      saturated=s["saturated_channels"],
                                      missing=s["missing_channels"])
            if message is not None:
                pipe.send(("signal", message))
        if tick % ticks_per_stats == 0:
            pipe.send(("stats", stats, sender.stats()))


def _shutdown(acqs, sender: WindowSender, writer) -> None:
    for acq in reversed(acqs):
        try:
            acq.stop()
        except Exception:  # noqa: BLE001 - stop the others whatever one does
            logger.exception("stopping %s", acq.stream_id)
    sender.stop()
    if writer is not None:
        writer.close()
