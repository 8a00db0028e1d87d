"""The worker process of a live session: windows in from the acquisition process,
decoded frames out to the service.

:func:`worker_main` loads the checkpoint and gallery (``load_decoder``, as
``glimpse decode`` does), listens for the acquisition process on a Unix socket, and
runs a :class:`~glimpse.service.worker.Worker` on what arrives. When this process
dies (segfault, CUDA out-of-memory, SIGKILL), the service starts another on the
same socket address and the acquisition process connects to it again; nothing it
recorded is touched.

Messages on ``conn`` (a duplex pipe to the service), each a tuple. To the
service: ``("loaded", {"pid"})`` once the model is loaded (it then waits as the
session's standby, :mod:`.workers`), ``("ready", {"pid", "backend"})`` once
activated, ``("error", {...})``, ``("frame", frame)``, ``("stats", worker stats +
"transfer_ms" percentiles)`` (~1/s), and the generation messages. From the
service: ``("activate", mode)``, ``("mode", mode)``, ``("stop",)``.
"""

from __future__ import annotations

import collections
import functools
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
    except Exception as err:  # noqa: BLE001 - reported to the service
        pipe.send(("error", error_body(err)))
        return
    # Loaded: wait, as the session's standby, until the service makes this the worker.
    pipe.send(("loaded", {"pid": os.getpid()}))
    try:
        message = conn.recv()
    except (EOFError, OSError):
        return
    if message[0] != "activate":
        return
    spec = {**spec, "mode": message[1]}
    try:
        address = spec["windows_address"]
        if os.path.exists(address):  # the socket of a worker that died
            os.unlink(address)
        listener = Listener(address, family="AF_UNIX", authkey=spec["authkey"])
        worker = Worker(decoder, session=spec["session"], max_batch=len(spec["streams"]),
                        on_frame=lambda frame: pipe.send(("frame", frame)))
        generation = _generation(spec, decoder, pipe)
        freeze_heap()
        worker.start()
    except Exception as err:  # noqa: BLE001 - reported to the service
        pipe.send(("error", error_body(err)))
        return
    if generation is not None:
        generation.start()
    transfer = collections.deque(maxlen=2048)
    threading.Thread(target=_accept, args=(listener, worker, decoder.ch_names, transfer),
                     name="worker-accept", daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=_report, args=(worker, generation, pipe, transfer, stop),
                     name="worker-report", daemon=True).start()
    pipe.send(("ready", {"pid": os.getpid(), "backend": backend}))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the service is gone
                break
            if message[0] == "stop":
                break
            if message[0] == "mode" and generation is not None:
                generation.set_mode(message[1])
    finally:
        stop.set()
        if generation is not None:
            generation.stop()
        worker.stop()
        listener.close()


def _generation(spec: dict[str, Any], decoder, pipe: Pipe):
    """The generation thread (not started) fed by ``decoder``, or None without a generator."""
    if not spec.get("generator"):
        return None
    from .generation import Generation, InitImages

    load = spec.get("load_generator")
    if load is None:
        from glimpse.models.generators import load_generator as load
    gallery = decoder.gallery
    generation = Generation(
        functools.partial(load, spec["generator"], device=spec["device"]), send=pipe.send,
        embedder=(decoder.checkpoint.embedder_name, decoder.checkpoint.embed_dim),
        mode=spec["mode"], steps=spec["steps"], strength=spec["strength"],
        mean_norm=spec["mean_norm"],
        init_images=InitImages(gallery.paths, os.path.dirname(spec["gallery"]), spec["roots"]))
    decoder.on_embeddings = generation.offer
    return generation


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


def _report(worker, generation, pipe: Pipe, transfer, stop: threading.Event) -> None:
    while not stop.wait(STATS_EVERY_S):
        stats = worker.stats()
        stats["generation"] = generation.stats() if generation is not None else None
        hops = np.asarray(transfer, float)
        stats["transfer_ms"] = ({q: float(np.percentile(hops, p)) for q, p in
                                 (("p50", 50), ("p95", 95), ("p99", 99))} if len(hops) else
                                {"p50": None, "p95": None, "p99": None})
        pipe.send(("stats", stats))
