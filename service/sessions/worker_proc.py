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
"transfer_ms" percentiles)`` (~1/s), the generation messages, and ``("retired",
worker stats)``. From the service: ``("activate", mode)``, ``("mode", mode)``,
``("stop",)`` and ``("retire",)``.

Retiring (a checkpoint swap, :mod:`.swap`): a worker of the new checkpoint has bound
the window socket and the acquisition process has moved its connection to it; the old
worker decodes what it still holds, sends its last frames and "retired", and exits
without running finalizers, since its listener's would unlink the socket path that
is now the new worker's.

``spec["subject"]``: the training subject whose subject layer decodes (None: the
first). ``spec["ch_names"]`` and ``spec["preprocess"]`` are the acquisition's; when
the checkpoint orders or scales its channels otherwise (a swapped-in checkpoint), each
window is mapped to the checkpoint's (:class:`~.swap.WindowMap`).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import signal
import sys
import threading
import time
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
        from ..worker import Worker, freeze_heap
        from .swap import WindowMap

        decoder, backend = _load_decoder(spec)
        prefix = f"/api/gallery/{spec['gallery_id']}/"
        decoder.image_url = lambda image_id: prefix + urllib.parse.quote(image_id)
        window_map = WindowMap.between(spec["ch_names"], spec["preprocess"], decoder.ch_names,
                                       decoder.checkpoint.preprocess.to_dict())
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
    pipe.send(("ready", {"pid": os.getpid(), "backend": backend}))
    # Only after "ready": what comes before it (a frame, "generator_ready") the service
    # would read while it waits for "ready", and drop.
    if generation is not None:
        generation.start()
    transfer = collections.deque(maxlen=2048)
    receivers: list[threading.Thread] = []
    names = tuple(spec["ch_names"]) if window_map is not None else decoder.ch_names
    threading.Thread(target=_accept, args=(listener, worker, names, window_map, transfer, receivers),
                     name="worker-accept", daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=_report, args=(worker, generation, pipe, transfer, stop),
                     name="worker-report", daemon=True).start()
    retire = False
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the service is gone
                break
            if message[0] in ("stop", "retire"):
                retire = message[0] == "retire"
                break
            if message[0] == "mode" and generation is not None:
                generation.set_mode(message[1])
    finally:
        stop.set()
        if generation is not None:
            generation.stop()
        if retire:
            _retire(worker, receivers, pipe)
        worker.stop()
        listener.close()


def _load_decoder(spec: dict[str, Any]):
    """``(decoder, backend)`` as ``load_decoder`` gives them, decoding ``spec["subject"]``."""
    from ..decode import load_decoder

    return load_decoder(spec["checkpoint"], spec["gallery"], backend=spec["backend"], device=spec["device"],
                        k=spec["k"], threads=spec["threads"], allow_missing=spec["allow_missing"],
                        subject=spec.get("subject"))


_RETIRE_WAIT_S = 5.0  # for the acquisition to move to the new worker, then for the queue


def _retire(worker, receivers: list[threading.Thread], pipe: Pipe) -> None:
    """Decode what this worker still holds, say "retired", exit at once (see the module doc)."""
    deadline = time.monotonic() + _RETIRE_WAIT_S
    for thread in list(receivers):  # each ends when the acquisition closes its connection
        thread.join(max(0.0, deadline - time.monotonic()))
    while sum(worker.stats()["pending"].values()) and time.monotonic() < deadline:
        time.sleep(0.005)
    worker.stop()  # finishes the batch it decodes; nothing is pending any more
    stats = worker.stats()
    stats["receiving"] = sum(t.is_alive() for t in receivers)  # > 0: the acquisition never left
    pipe.send(("retired", stats))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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


def _accept(listener: Listener, worker, ch_names: tuple[str, ...], window_map, transfer,
            receivers: list[threading.Thread]) -> None:
    """Take the acquisition process's connection (again, if it reconnects) and its windows."""
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError):  # closed at stop, or a bad handshake
            return
        thread = threading.Thread(target=_receive, args=(conn, worker, ch_names, window_map, transfer),
                                  name="worker-receive", daemon=True)
        receivers.append(thread)
        thread.start()


def _receive(conn: Connection, worker, ch_names: tuple[str, ...], window_map, transfer) -> None:
    while True:
        try:
            window = recv_window(conn, ch_names)
        except (EOFError, OSError):
            conn.close()
            return
        # The process hop: from the cut (acquisition process) to here, on the LSL clock.
        transfer.append(1e3 * (pylsl.local_clock() - window.t_cut))
        worker.submit(window if window_map is None else window_map(window))


def _report(worker, generation, pipe: Pipe, transfer, stop: threading.Event) -> None:
    while not stop.wait(STATS_EVERY_S):
        stats = worker.stats()
        stats["generation"] = generation.stats() if generation is not None else None
        hops = np.asarray(transfer, float)
        stats["transfer_ms"] = ({q: float(np.percentile(hops, p)) for q, p in
                                 (("p50", 50), ("p95", 95), ("p99", 99))} if len(hops) else
                                {"p50": None, "p95": None, "p99": None})
        pipe.send(("stats", stats))
