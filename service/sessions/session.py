"""One live session as the service runs it: an acquisition process, a worker process,
and the service-side threads that join them to the WebSocket hub.

::

   LSL ──► acquisition process ──windows (Unix socket)──► worker process
            │ session folder                                  │ frames (pipe)
            ▲ frames to record          ◄── LiveSession ◄─────┘
            └ markers, signal, stats ──►   truth, accuracy, status ──► hub (publish)

:class:`LiveSession` starts both processes (``spawn``) and waits until the model is
loaded and every stream is found and matches the checkpoint; a failure there is the
request's error (the same message as ``glimpse decode``). While it runs, a
supervisor thread watches the worker: when it dies it reports the crash, starts
another on the same socket address, and the acquisition process (which kept
recording every sample) connects to it; frames resume. The service matches each
frame to its true stimulus from the markers the acquisition process forwards,
records it through the acquisition process (the one writer of the folder), and
publishes it.

Generation (a session started with a generator): the worker's generation thread
(:mod:`.generation`) sends images generated from the newest embedding of each
stream; each is published as a binary WebSocket message carrying the session
``seq`` of the frame it came from (:func:`~.generation.encode_generated`)
and the window's age. :meth:`LiveSession.set_mode` switches retrieval, generation
and two-stage while it runs; a generator failure is reported ("generation_failed")
and the session falls back to retrieval.

Checkpoint swap (:meth:`LiveSession.swap_checkpoint`): a worker of the new
checkpoint loads beside the active one, takes the window socket as a standby does,
the acquisition process moves its connection to it between two windows, and the old
worker decodes what it still holds and goes. Acquisition and recording never stop;
each frame names the checkpoint that decoded it (``"checkpoint"``, its catalog id).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


from glimpse.streaming.errors import InputError
from glimpse.streaming.markers import MarkerLog

import pylsl

from ..decode import LiveStats
from ..errors import Conflict
from ..live import GalleryIds, truth_of
from .acquirer import acquirer_main
from .generation import GENERATION_MODES, encode_generated
from .wire import Pipe, await_first
from .workers import Workers

logger = logging.getLogger("glimpse.service.sessions")

__all__ = ["LiveSession"]

_TICK_S = 0.25  # supervisor: how often it looks at the processes
_MAX_FAST_RESTARTS = 5  # restarts within _RESTART_WINDOW_S before backing off
_RESTART_WINDOW_S, _BACKOFF_S = 60.0, 10.0
_SEQS_KEPT = 512  # worker frame seq -> session seq, for the generated images that follow
_RETIRE_S = 10.0  # a swapped-out worker's time to decode what it holds


class LiveSession:
    """A running session; ``spec`` holds everything both processes need (see manager)."""

    def __init__(self, spec: dict[str, Any], *, publish: Callable[[dict], None],
                 describe: dict[str, Any], gallery_ids: list[str], gallery_size: int,
                 clients: Callable[[], int] = lambda: 0,
                 stimulus_url: Callable[[str], str | None] = lambda stim_file: None,
                 ready_timeout: float = 120.0, standby: bool = True):
        self.id = spec["session"]
        self.spec, self.publish, self.ready_timeout = spec, publish, ready_timeout
        self.clients = clients
        self._stimulus_url = functools.lru_cache(maxsize=4096)(stimulus_url)
        self._describe = describe
        self.state = "starting"
        self.created = time.time()
        self.ids = GalleryIds(gallery_ids)
        self.live = LiveStats(spec["k"], gallery_size)
        self.markers: dict[str, MarkerLog] = {}
        self.events: deque[dict] = deque(maxlen=50)
        self.worker_state, self.worker_restarts, self.worker_pid = "starting", 0, None
        self._restarts: deque[float] = deque()
        self._worker_stats: dict = {}
        self._acq_stats: list[dict] = []
        self._sender_stats: dict = {}
        self._stream_state: dict[str, str] = {}
        self.mode = spec.get("mode", "retrieval")
        self.n_generated = self.n_generated_unmatched = 0
        self._generator_state = "loading" if spec.get("generator") else None
        self._seq = itertools.count()
        self._frames_lock = threading.Lock()
        self._ctx = mp.get_context("spawn")
        self._acq = None
        self._acq_pipe: Pipe | None = None
        self._workers = Workers(self._ctx, spec, ready_timeout=ready_timeout, standby=standby)
        self._worker_conn: Connection | None = None
        self._worker_lock = threading.Lock()  # sends to the worker: requests and the stop
        self._handover = threading.Lock()  # one change of the active worker at a time
        self._swapping = threading.Lock()
        self.swaps: list[dict[str, Any]] = []
        self._retired_dropped = 0  # windows that swapped-out workers dropped
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockdir = tempfile.mkdtemp(prefix="glimpse-")
        spec["windows_address"] = os.path.join(self._sockdir, "windows.sock")
        spec["authkey"] = secrets.token_bytes(16)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> LiveSession:
        """Start the worker, then the acquisition; raise InputError (all cleaned) on failure."""
        try:
            self._spawn_worker()
            parent, child = self._ctx.Pipe()
            self._acq = self._ctx.Process(target=acquirer_main, args=(self.spec, child),
                                          name=f"glimpse-acquire-{self.id}", daemon=True)
            self._acq.start()
            child.close()
            await_first(parent, self._acq, self.spec["resolve_timeout"] + 30.0, "acquisition")
            self._acq_pipe = Pipe(parent)
        except BaseException:
            self.state = "failed"
            self._kill_all()
            raise
        self.state = "running"
        for target, name in ((self._read_acquirer, "acq-reader"), (self._supervise, "supervisor")):
            thread = threading.Thread(target=target, name=f"{name}-{self.id}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._event("session_started", f"decoding {', '.join(self.stream_names)}")
        self._announce()
        return self

    @property
    def stream_names(self) -> list[str]:
        return [n or s for n, s in self.spec["streams"]]

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop the acquisition (the folder closes with every sample), then the worker;
        write summary.json; the final status."""
        if self.state in ("stopping", "stopped"):
            return self.status()
        with self._frames_lock:  # every frame counted so far is ahead of "stop" in the pipe
            self.state = "stopping"
        self._stop.set()
        if self._acq_pipe is not None:
            self._acq_pipe.send(("stop",))
            self._acq.join(timeout)  # its last message, "stopped", carries the final stats
        self._stop_worker(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self._kill_all()
        self.state = "stopped"
        status = self.status()
        folder = self.spec["folder"]
        if folder is not None and Path(folder).is_dir():
            Path(folder, "summary.json").write_text(json.dumps(status, indent=1) + "\n",
                                                    encoding="utf-8")
        self._event("session_stopped", "stopped")
        self._announce()
        return status

    def _stop_worker(self, timeout: float) -> None:
        with self._worker_lock:  # no request goes to a worker being stopped
            self._worker_conn = None
        self._workers.close(timeout)

    def _kill_all(self) -> None:
        if self._acq is not None and self._acq.is_alive():
            self._acq.kill()
            self._acq.join(5.0)
        self._workers.close(0.0)
        shutil.rmtree(self._sockdir, ignore_errors=True)

    # -------------------------------------------------------------------- worker

    def _spawn_worker(self) -> None:
        """The first worker (its errors are the request's), or a replacement (the standby)."""
        if self.spec.get("generator"):
            self._generator_state = "loading"  # each worker loads its own
        worker = (self._workers.replace(self.mode) if self._workers.active is not None
                  else self._workers.start(self.mode))
        self._attach(worker)

    def _attach(self, worker) -> None:
        """``worker`` is the active one now: requests go to it, its messages are read."""
        with self._worker_lock:
            self._worker_conn = worker.conn
        self.worker_pid, self.worker_state = worker.pid, "running"
        thread = threading.Thread(target=self._read_worker, args=(worker,),
                                  name=f"worker-reader-{self.id}", daemon=True)
        thread.start()

    def _to_worker(self, message: tuple) -> None:
        with self._worker_lock:
            if self._worker_conn is not None:
                try:
                    self._worker_conn.send(message)
                except (OSError, EOFError, ValueError):  # it died: the supervisor restarts it
                    pass

    def _read_worker(self, worker) -> None:
        seqs: dict[int, int] = {}  # this worker's frame seq -> the session's
        while True:
            try:
                kind, body = worker.conn.recv()
            except (EOFError, OSError):  # the worker exited: the supervisor sees it
                return
            if kind == "frame":
                self._on_frame(body, seqs, worker.checkpoint_id)
            elif kind == "stats":
                if worker is self._workers.active:  # not a retiring one's
                    self._worker_stats = body
            elif kind == "retired":
                worker.final_stats = body
                worker.retired.set()
            elif kind == "generated":
                self._on_generated(body, seqs)
            elif worker is not self._workers.active:
                continue  # a retiring worker's generator no longer speaks for the session
            elif kind == "generator_ready":
                self._generator_state = "ready"
                self._event("generator_ready", f"generator {body['kind']} ready ({body['size']} px, "
                            f"warm-up {body['warmup_ms']:.0f} ms)")
            elif kind == "generation_failed":
                self._on_generation_failed(body["message"])

    def _on_frame(self, frame: dict, seqs: dict[int, int] | None = None,
                  checkpoint_id: str | None = None) -> None:
        with self._frames_lock:  # a frame is counted, recorded and published, or none of it
            if self.state != "running":
                return  # decoded after the stop: the session has ended
            worker_seq, frame["seq"] = frame["seq"], next(self._seq)  # per session, across restarts
            frame["mode"], frame["checkpoint"] = self.mode, checkpoint_id
            if seqs is not None:
                seqs[worker_seq] = frame["seq"]
                if len(seqs) > _SEQS_KEPT:
                    del seqs[next(iter(seqs))]
            truth = truth_of(self.markers.get(frame["stream"]), frame["t_window_end"], self.ids)
            if truth is not None:  # the gallery's image, else the file itself when it is served
                truth["url"] = (f"/api/gallery/{self.spec['gallery_id']}/" + urllib.parse.quote(truth["id"])
                                if truth["id"] is not None else self._stimulus_url(str(truth.get("stim_file") or "")))
            frame["truth"] = truth
            frame["hit"] = (None if truth is None or truth["id"] is None
                            else truth["id"] in [t["id"] for t in frame["topk"]])
            self.live.on_frame(frame)
            self._acq_pipe.send(("frame", frame))  # recorded by the folder's one writer
        self.publish(frame)

    def _on_generated(self, body: dict, seqs: dict[int, int]) -> None:
        seq = seqs.get(body["seq"])
        if seq is None or self.state != "running" or self.mode == "retrieval":
            self.n_generated_unmatched += 1  # its frame was never published, or generation is off
            return
        header = {"type": "generated", "session": self.id, "seq": seq, "stream": body["stream"],
                  "t_window_end": body["t_window_end"],
                  "age_ms": 1e3 * (pylsl.local_clock() - body["t_window_end"]),
                  "mode": body["mode"], "format": body["format"], "width": body["width"],
                  "height": body["height"], "generate_ms": body["generate_ms"]}
        self.n_generated += 1
        self.publish(encode_generated(seq, header, body["image"]))

    def _on_generation_failed(self, message: str) -> None:
        if self._generator_state == "loading":
            self._generator_state = "failed"
        self.mode = self.spec["mode"] = "retrieval"
        self._event("generation_failed", f"{message}; the session goes on with retrieval")
        self._announce()

    def set_mode(self, mode: str) -> dict[str, Any]:
        """Switch between retrieval, generation and two-stage; the new description."""
        if self.state != "running":
            raise Conflict("a running session", f"session {self.id}, {self.state}",
                           "start a new session in that mode")
        if mode in GENERATION_MODES and not self.spec.get("generator"):
            raise InputError(f"a session started with a generator for mode {mode!r}",
                             f"session {self.id}, started without one",
                             'start a session with "generator": a generator folder in the data roots')
        if mode != self.mode:
            self.mode = self.spec["mode"] = mode  # a restarted worker starts in it
            if mode in GENERATION_MODES and self._generator_state == "failed":
                self._generator_state = "loading"  # the worker loads it again
            self._to_worker(("mode", mode))
            self._event("mode_changed", f"mode: {mode}")
            self._announce()
        return self.describe()

    def swap_checkpoint(self, changes: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Decode with another checkpoint from the next window on; the new description.

        ``changes``: the worker spec's new "checkpoint" (folder), "checkpoint_id",
        "subject" and "mean_norm"; ``checkpoint``: the description's new "checkpoint".
        The caller has checked that it takes this session's windows
        (:func:`~.swap.check_swap`). Blocks while the new worker loads (seconds), then
        hands over in milliseconds (module doc). Conflict when the session is not running
        or swaps already; InputError when the new worker fails (the old one decodes on).
        """
        self._require_running("swap its checkpoint")
        if not self._swapping.acquire(blocking=False):
            raise Conflict("one checkpoint swap at a time", f"session {self.id}, swapping already",
                           "wait for the answer to that swap, then try again")
        try:
            return self._swap(changes, checkpoint)
        except InputError as err:
            self._event("checkpoint_swap_failed", f"swapping to checkpoint {checkpoint['id']} failed "
                        f"({err}); decoding goes on with {self._describe['checkpoint']['id']}")
            raise
        finally:
            self._swapping.release()

    def _swap(self, changes: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        worker = self._workers.load({**self.spec, **changes})  # the old worker decodes meanwhile
        t_loaded = time.monotonic()
        with self._handover:
            if self.state != "running":
                worker.kill()
                self._require_running("swap its checkpoint")
            spec = {**self.spec, **changes, "mode": self.mode}
            old = self._workers.swap(worker, spec, self.mode)  # it listens: the socket is its
            if spec.get("generator"):
                self._generator_state = "loading"  # the new worker loads its own
            self.spec, before = spec, self._describe["checkpoint"]
            self._attach(worker)
            self._acq_pipe.send(("reconnect",))  # the next window goes to the new worker
            self._describe = {**self._describe, "checkpoint": checkpoint}
        t_handover = time.monotonic()
        final = old.retire(_RETIRE_S) if old is not None else {}
        self._retired_dropped += final.get("n_dropped", 0)
        label = {k: (before.get(k), checkpoint.get(k)) for k in ("id", "name", "subject")}
        swap = {"t": time.time(), "from": {k: v[0] for k, v in label.items()},
                "to": {k: v[1] for k, v in label.items()},
                "load_s": t_loaded - t0, "handover_ms": 1e3 * (t_handover - t_loaded),
                "old_worker": {k: final.get(k) for k in ("n_decoded", "n_dropped", "receiving")}}
        self.swaps.append(swap)
        self._event("checkpoint_swapped", f"checkpoint {before['name'] or before['id']} (subject "
                    f"{before.get('subject')}) -> {checkpoint['name'] or checkpoint['id']} (subject "
                    f"{checkpoint.get('subject')}); loaded in {swap['load_s']:.1f} s and started in "
                    f"{swap['handover_ms']:.0f} ms while the old one decoded", swap=swap)
        self._announce()
        return self.describe()

    def _require_running(self, action: str) -> None:
        if self.state != "running":
            raise Conflict("a running session", f"session {self.id}, {self.state}",
                           f"start a new session to {action}")

    def _supervise(self) -> None:
        ticks = 0
        while not self._stop.wait(_TICK_S):
            ticks += 1
            active = self._workers.active
            if active is not None and not active.alive() and not self._stop.is_set():
                with self._handover:  # not while a swap changes the active worker
                    if active is self._workers.active and not self._stop.is_set():
                        self._restart_worker()
            if not self._acq.is_alive() and not self._stop.is_set():
                self.state = "failed"
                self._event("session_failed", f"the acquisition process exited with code "
                            f"{self._acq.exitcode}; the recording so far is in the session folder")
                self._announce()
                return
            if ticks % round(1.0 / _TICK_S) == 0:
                self._check_streams()
                self.publish({"type": "status", **self.status()})

    def _restart_worker(self) -> None:
        code = self._workers.active.proc.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit code {code}")
        self.worker_state = "restarting"
        self._event("worker_crashed", f"the worker process (pid {self.worker_pid}) died, {how}; "
                    "recording goes on; restarting it")
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > _RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) > _MAX_FAST_RESTARTS and self._stop.wait(_BACKOFF_S):
            return
        try:
            self._spawn_worker()
        except InputError as err:
            self.worker_state = "down"
            self._event("worker_crashed", f"restarting the worker failed: {err}")
            return
        self.worker_restarts += 1
        self._event("worker_restarted", f"worker restarted (pid {self.worker_pid}); frames resume")

    # ---------------------------------------------------------------- acquirer

    def _read_acquirer(self) -> None:
        conn = self._acq_pipe.conn
        while True:
            try:
                kind, *body = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "marker":
                stream, t, marker = body
                self.markers.setdefault(stream, MarkerLog()).add(t, marker)
            elif kind == "signal":
                self.publish({**body[0], "session": self.id})
            elif kind == "stats":
                self._acq_stats, self._sender_stats = body
            elif kind == "stopped":
                self._acq_stats = body[0]
                return

    def _check_streams(self) -> None:
        for s in self._acq_stats:
            # Every stream streamed when the session started (the acquirer's "ready").
            before, now = self._stream_state.get(s["stream_id"], "streaming"), s["state"]
            if before != now:
                if now == "streaming":
                    self._event("stream_back", f"stream {s['stream_id']} is back")
                else:
                    self._event("stream_lost", f"stream {s['stream_id']} is {now}; sought again")
            self._stream_state[s["stream_id"]] = now

    def _announce(self) -> None:
        """The session's description, to its clients, when its state changed."""
        self.publish({"type": "session", "session": self.describe()})

    def _event(self, event: str, message: str, **fields: Any) -> None:
        body = {"type": "event", "session": self.id, "event": event, "message": message,
                "t": time.time(), **fields}
        self.events.append(body)
        (logger.warning if event in ("worker_crashed", "stream_lost", "session_failed")
         else logger.info)("session %s: %s", self.id, message)
        self.publish(body)

    # -------------------------------------------------------------------- views

    def describe(self) -> dict[str, Any]:
        return {**self._describe, "id": self.id, "state": self.state, "created": self.created,
                "mode": self.mode, "generator_state": self._generator_state}

    def _generation_status(self, worker: dict | None) -> dict[str, Any] | None:
        if not self.spec.get("generator"):
            return None
        return {**(worker or {}), "mode": self.mode, "state": self._generator_state,
                "n_published": self.n_generated, "n_unmatched": self.n_generated_unmatched}

    def status(self) -> dict[str, Any]:
        w, acqs = self._worker_stats, self._acq_stats
        stages = ("acquire", "preprocess", "queue", "encode", "retrieve", "total")
        empty = {"p50": None, "p95": None, "p99": None}
        latency = {s: (w.get("latency_ms") or {}).get(s, empty) for s in stages}
        latency["transfer"] = w.get("transfer_ms", empty)
        return {
            "session": self.id, "state": self.state,
            "worker": {"state": self.worker_state, "restarts": self.worker_restarts,
                       "pid": self.worker_pid, "standby": self._workers.standby_state},
            "decode_rate": w.get("decode_rate", 0.0), "latency_ms": latency,
            "n_decoded": self.live.n_frames, "n_dropped": w.get("n_dropped", 0)
            + self._retired_dropped + self._sender_stats.get("n_replaced", 0),
            "n_undelivered": self._sender_stats.get("n_undelivered", 0),
            "n_stale": sum(a.get("n_stale", 0) for a in acqs),
            "n_invalid": sum(a.get("n_invalid_windows", 0) for a in acqs),
            "streams": [{k: a.get(k) for k in ("stream_id", "state", "n_samples", "n_windows",
                                                 "n_gaps", "n_lost", "n_reconnects", "n_markers",
                                                 "missing_channels", "flat_channels",
                                                 "saturated_channels")} for a in acqs],
            "accuracy": self.live.summary(), "events": list(self.events)[-10:],
            "generation": self._generation_status(w.get("generation")),
            "clients": self.clients(),
            "checkpoint": {k: (self._describe.get("checkpoint") or {}).get(k)
                           for k in ("id", "name", "subject")},
            "swaps": list(self.swaps),
        }

