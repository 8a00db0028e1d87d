"""Windows between processes: the acquisition process sends, the worker process receives.

A window crosses as two messages on a ``multiprocessing.connection`` (a Unix socket
the worker listens on): a small JSON header, then the float32 samples as raw bytes,
sent from the array's buffer and received into a fresh array (one kernel copy each
way; no pickle). :class:`WindowSender` runs in the acquisition process: acquisition
threads hand it windows without ever blocking; its thread sends the newest window
of each stream (a window replaced before it went out is dropped and counted, the
worker's own policy) and, when the worker is gone (crashed, restarting), drops and
counts what comes until a worker listens again. :meth:`WindowSender.reconnect` moves
it to whichever worker listens now (a checkpoint swap: the new worker has bound the
address), between two windows, so none is lost in the move.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from multiprocessing.connection import Client, Connection
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError
from glimpse.streaming.window import Window

logger = logging.getLogger("glimpse.service.sessions.wire")

__all__ = ["Pipe", "WindowSender", "await_first", "decode_header", "encode_header", "error_body",
           "recv_window"]

_RETRY_S = 0.2  # how often a sender without a worker tries to connect again


def encode_header(window: Window) -> bytes:
    """The JSON header of a window (everything but its samples)."""
    mask = None if window.chan_mask is None else np.flatnonzero(~window.chan_mask).tolist()
    return json.dumps({"stream": window.stream_id, "seq": int(window.seq),
                       "t_end": float(window.t_end), "t_pulled": float(window.t_pulled),
                       "t_cut": float(window.t_cut), "shape": list(window.data.shape),
                       "missing": mask}).encode()


def decode_header(header: bytes) -> dict[str, Any]:
    return json.loads(header)


def recv_window(conn: Connection, ch_names: tuple[str, ...]) -> Window:
    """The next window from ``conn`` (EOFError when the sender closed)."""
    head = decode_header(conn.recv_bytes())
    flat = np.empty(int(np.prod(head["shape"])), np.float32)  # 1-D: recv_bytes_into sizes by len()
    conn.recv_bytes_into(flat)
    data = flat.reshape(head["shape"])
    mask = None
    if head["missing"] is not None:
        mask = np.ones(data.shape[0], bool)
        mask[head["missing"]] = False
    return Window(data=data, t_end=head["t_end"], t_pulled=head["t_pulled"], t_cut=head["t_cut"],
                  stream_id=head["stream"], ch_names=ch_names, seq=head["seq"], chan_mask=mask)


def error_body(err: BaseException) -> dict[str, str]:
    """An exception as the pipe carries it (InputError keeps its three parts)."""
    if isinstance(err, InputError):
        return {"expected": err.expected, "got": err.got, "fix": err.fix}
    return {"message": f"{type(err).__name__}: {err}"}


class Pipe:
    """``conn.send`` from several threads; a service gone away is not an error here."""

    def __init__(self, conn: Connection):
        self.conn, self.lock = conn, threading.Lock()

    def send(self, message: tuple) -> None:
        with self.lock:
            try:
                self.conn.send(message)
            except (OSError, EOFError, ValueError):
                pass


class WindowSender:
    """Send windows to the worker listening at ``address``; newest per stream, never blocking.

    ``submit`` is called from acquisition threads. Counters (:meth:`stats`):
    ``n_sent``, ``n_replaced`` (a newer window of its stream came before it went out),
    ``n_undelivered`` (no worker to take it: crashed or restarting), ``n_connects``.
    """

    def __init__(self, address: str, authkey: bytes):
        self.address, self.authkey = address, authkey
        self._cond = threading.Condition()
        self._pending: dict[str, Window] = {}
        self._conn: Connection | None = None
        self._stop = self._reconnect = False
        self._last_try = 0.0
        self.n_sent = self.n_replaced = self.n_undelivered = self.n_connects = 0
        self._thread = threading.Thread(target=self._run, name="window-sender", daemon=True)

    def start(self) -> WindowSender:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def reconnect(self) -> None:
        """Close the connection and connect again before the next window (never blocks)."""
        with self._cond:
            self._reconnect = True
            self._cond.notify()

    def submit(self, window: Window) -> None:
        with self._cond:
            if window.stream_id in self._pending:
                self.n_replaced += 1
            self._pending[window.stream_id] = window
            self._cond.notify()

    def stats(self) -> dict[str, int | bool]:
        return {"n_sent": self.n_sent, "n_replaced": self.n_replaced,
                "n_undelivered": self.n_undelivered, "n_connects": self.n_connects,
                "connected": self.connected}

    def _connect(self) -> bool:
        now = time.monotonic()
        if now - self._last_try < _RETRY_S:
            return False
        self._last_try = now
        try:
            self._conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
        except (OSError, EOFError):  # no worker listening (yet): the supervisor restarts it
            return False
        self.n_connects += 1
        logger.info("connected to the worker at %s", self.address)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._pending and not self._reconnect:
                    self._cond.wait(0.5)
                if self._stop:
                    return
                windows, self._pending = list(self._pending.values()), {}
                reconnect, self._reconnect = self._reconnect, False
            if reconnect:
                if self._conn is not None:
                    self._conn.close()  # the old worker reads what it had, then EOF
                    self._conn = None
                self._last_try = -float("inf")
            if self._conn is None:
                self._connect()
            for window in windows:
                if self._conn is None:
                    self.n_undelivered += 1
                    continue
                try:
                    self._conn.send_bytes(encode_header(window))
                    self._conn.send_bytes(np.ascontiguousarray(window.data, np.float32))
                    self.n_sent += 1
                except (OSError, EOFError, ValueError):  # the worker died mid-send
                    logger.warning("the worker went away; windows are counted as undelivered "
                                   "until it is back")
                    self._conn.close()
                    self._conn = None
                    self.n_undelivered += 1


def _error_from(body: dict[str, str]) -> InputError:
    if "expected" in body:
        return InputError(body["expected"], body["got"], body["fix"])
    return InputError("a session that starts", body.get("message", "an unknown failure"),
                      "read the service log for the details")


def await_first(conn: Connection, proc, timeout: float, what: str, *, kind: str = "ready") -> dict:
    """The body of the process's first message, which must be ``kind``; its "error"
    raised as InputError, as are its death and its silence."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(0.1):
            try:
                got, *body = conn.recv()
            except (EOFError, OSError):
                break
            if got == kind:
                return body[0]
            if got == "error":
                raise _error_from(body[0])
        elif not proc.is_alive():
            break
    proc.join(1.0)
    code = proc.exitcode
    raise InputError(f"the {what} process to start within {timeout:g} s",
                     "it exited with code %s" % code if code is not None else "no answer",
                     "read the service log; check the checkpoint, gallery and streams")
