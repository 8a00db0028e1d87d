"""The worker process of a live session: windows in from the acquisition process,
decoded frames out to the service.

:func:`worker_main` loads the checkpoint and gallery (``load_decoder``, as
``glimpse decode`` does), listens for the acquisition process on a Unix socket, and
runs a :class:`~glimpse.service.worker.Worker` on what arrives. When this process
dies (segfault, CUDA out-of-memory, SIGKILL), the service starts another on the
same socket address and the acquisition process connects to it again; nothing it
recorded is touched.

Messages on ``conn`` (a duplex pipe to the service), each a tuple. To the
service: ``("ready", {"pid", "backend"})``, ``("error", {...})``, ``("frame",
frame)``, ``("stats", worker stats + "transfer_ms" percentiles)`` (~1/s). From
the service: ``("stop",)``.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import urllib.parse
from multiprocessing.connection import Connection, Listener
from typing import Any

import numpy as np
import pylsl

from .acquirer import STATS_EVERY_S
from .wire import Pipe, error_body, recv_window

logger = logging.getLogger("glimpse.service.sessions.worker_proc")

__all__ = ["worker_main"]


def worker_main(spec: dict[str, Any], conn: Connection) -> None:
    """Decode what the acquisition process sends until the service says stop (or goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    logging.basicConfig(level=spec.get("log_level", logging.WARNING),
                        format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    pipe = Pipe(conn)
    try:
        from ..decode import load_decoder
        from ..worker import Worker, freeze_heap

        decoder, backend = load_decoder(spec["checkpoint"], spec["gallery"], backend=spec["backend"],
                                        device=spec["device"], k=spec["k"], threads=spec["threads"],
                                        allow_missing=spec["allow_missing"])
        prefix = f"/api/gallery/{spec['gallery_id']}/"
        decoder.image_url = lambda image_id: prefix + urllib.parse.quote(image_id)
        address = spec["windows_address"]
        if os.path.exists(address):  # the socket of a worker that died
            os.unlink(address)
        listener = Listener(address, family="AF_UNIX", authkey=spec["authkey"])
        worker = Worker(decoder, session=spec["session"], max_batch=len(spec["streams"]),
                        on_frame=lambda frame: pipe.send(("frame", frame)))
        freeze_heap()
        worker.start()
    except Exception as err:  # noqa: BLE001 - reported to the service
        pipe.send(("error", error_body(err)))
        return
    transfer = collections.deque(maxlen=2048)
    threading.Thread(target=_accept, args=(listener, worker, decoder.ch_names, transfer),
                     name="worker-accept", daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=_report, args=(worker, pipe, transfer, stop), name="worker-report",
                     daemon=True).start()
    pipe.send(("ready", {"pid": os.getpid(), "backend": backend}))
    try:
        while True:
            try:
                if conn.recv()[0] == "stop":
                    break
            except (EOFError, OSError):  # the service is gone
                break
    finally:
        stop.set()
        worker.stop()
        listener.close()


def _accept(listener: Listener, worker, ch_names: tuple[str, ...], transfer) -> None:
    """Take the acquisition process's connection (again, if it reconnects) and its windows."""
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError):  # closed at stop, or a bad handshake
            return
        threading.Thread(target=_receive, args=(conn, worker, ch_names, transfer),
                         name="worker-receive", daemon=True).start()


def _receive(conn: Connection, worker, ch_names: tuple[str, ...], transfer) -> None:
    while True:
        try:
            window = recv_window(conn, ch_names)
        except (EOFError, OSError):
            conn.close()
            return
        # The process hop: from the cut (acquisition process) to here, on the LSL clock.
        transfer.append(1e3 * (pylsl.local_clock() - window.t_cut))
        worker.submit(window)


def _report(worker, pipe: Pipe, transfer, stop: threading.Event) -> None:
    while not stop.wait(STATS_EVERY_S):
        stats = worker.stats()
        hops = np.asarray(transfer, float)
        stats["transfer_ms"] = ({q: float(np.percentile(hops, p)) for q, p in
                                 (("p50", 50), ("p95", 95), ("p99", 99))} if len(hops) else
                                {"p50": None, "p95": None, "p99": None})
        pipe.send(("stats", stats))
