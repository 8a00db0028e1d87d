"""A session's worker processes: the active one, and a warm standby that takes over
when it dies.

Starting a worker means a new interpreter, torch, onnxruntime, the checkpoint and
the gallery: 3 s on an idle 2-core machine, over 10 s on a loaded one. So each
session keeps a second worker loaded and waiting (``standby``): when the active one
dies, the standby binds the window socket within milliseconds and frames resume
while a new standby loads in the background. The price is a second copy of the
model in memory (on a GPU, its memory too); ``standby=False`` saves it and restarts
from scratch instead.

A checkpoint swap takes the same path with a worker of the new checkpoint: loaded
beside the active one (:meth:`Workers.load`), then made the active one as a standby
is (:meth:`Workers.swap`); standbys of the old checkpoint are discarded, even one
still loading, and the next loads the new one.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from glimpse.streaming.errors import InputError

from .wire import await_first
from .worker_proc import worker_main

logger = logging.getLogger("glimpse.service.sessions")

__all__ = ["WorkerProcess", "Workers"]


class WorkerProcess:
    """One worker process: spawned to load the model, then activated to decode."""

    def __init__(self, ctx, spec: dict[str, Any], name: str):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(spec, child), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.pid: int | None = None
        self.checkpoint_id: str | None = spec.get("checkpoint_id")
        self.retired = threading.Event()  # its "retired" came (a swap): see worker_proc
        self.final_stats: dict = {}

    def wait(self, kind: str, timeout: float) -> dict:
        """The body of the process's next message, which must be ``kind`` (its "error"
        raised as InputError; death or silence too)."""
        body = await_first(self.conn, self.proc, timeout, "worker", kind=kind)
        self.pid = body.get("pid", self.pid)
        return body

    def activate(self, mode: str, timeout: float) -> dict:
        self.conn.send(("activate", mode))
        return self.wait("ready", timeout)

    def alive(self) -> bool:
        return self.proc.is_alive()

    def retire(self, timeout: float) -> dict:
        """Once another worker took over: let this one decode what it holds and go; its
        final stats ({} when it died first or never answered within ``timeout`` s)."""
        if self.alive():
            try:
                self.conn.send(("retire",))
            except (OSError, EOFError, ValueError):  # it just died
                pass
            else:
                self.retired.wait(timeout)  # set by the session's reader of this worker
        # SIGKILL, never a stop: its exit must not unlink the socket path (worker_proc).
        self.kill()
        return self.final_stats

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)


class Workers:
    """The active worker, plus a loaded standby when ``standby`` is on."""

    def __init__(self, ctx, spec: dict[str, Any], *, ready_timeout: float, standby: bool = True):
        self.ctx, self.spec, self.ready_timeout, self.standby_on = ctx, spec, ready_timeout, standby
        self.active: WorkerProcess | None = None
        self._standby: WorkerProcess | None = None
        self._standby_ready = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._epoch = 0  # a swap's new spec: standbys of an older one are discarded

    def _spawn(self, role: str, spec: dict[str, Any] | None = None) -> WorkerProcess:
        spec = self.spec if spec is None else spec
        worker = WorkerProcess(self.ctx, spec, f"glimpse-worker-{spec['session']}-{role}")
        try:
            worker.wait("loaded", self.ready_timeout)
        except BaseException:
            worker.kill()
            raise
        return worker

    def start(self, mode: str) -> WorkerProcess:
        """Load and activate the first worker (errors are the request's), then a standby."""
        worker = self._spawn("active")
        try:
            worker.activate(mode, self.ready_timeout)
        except BaseException:
            worker.kill()
            raise
        self.active = worker
        self._refill()
        return worker

    def replace(self, mode: str) -> WorkerProcess:
        """A new active worker after the old one died: the standby when it is loaded."""
        with self._lock:
            standby, self._standby = self._standby, None
            self._standby_ready.clear()
        if standby is None or not standby.alive():
            if standby is not None:
                standby.kill()
            standby = self._spawn("active")
        try:
            standby.activate(mode, self.ready_timeout)
        except BaseException:
            standby.kill()
            raise
        self.active = standby
        self._refill()
        return standby

    def load(self, spec: dict[str, Any]) -> WorkerProcess:
        """A worker of ``spec`` (a swap's new checkpoint), loaded, not active: blocks for the
        model's load; raises InputError (its process killed) when it does not load."""
        return self._spawn("swap", spec)

    def swap(self, worker: WorkerProcess, spec: dict[str, Any], mode: str) -> WorkerProcess | None:
        """Make the loaded ``worker`` of ``spec`` the active one, as :meth:`replace` does a
        standby; the old active worker (still running: the caller retires it), or None.
        On an error the old one stays active, with the old spec, and ``worker`` is killed."""
        with self._lock:
            if self._closed:
                worker.kill()
                raise InputError("a running session to swap the checkpoint of", "one being stopped",
                                 "start a new session with the checkpoint")
            standby, self._standby = self._standby, None
            self._standby_ready.clear()
            old_spec, self.spec = self.spec, spec
            self._epoch += 1
        if standby is not None:
            standby.kill()  # the old checkpoint's
        try:
            worker.activate(mode, self.ready_timeout)
        except BaseException:
            worker.kill()
            with self._lock:
                self.spec = old_spec
                self._epoch += 1
            self._refill()
            raise
        old, self.active = self.active, worker
        self._refill()
        return old

    def _refill(self) -> None:
        """Load a standby in the background (a failure is logged: the next restart spawns)."""
        if not self.standby_on or self._closed:
            return
        with self._lock:
            epoch, spec = self._epoch, self.spec

        def load() -> None:
            try:
                worker = self._spawn("standby", spec)
            except InputError as err:
                logger.warning("session %s: no standby worker (%s); a crash will restart from scratch",
                               self.spec["session"], err)
                return
            with self._lock:
                if self._closed or epoch != self._epoch:  # stopped, or swapped meanwhile
                    worker.kill()
                    return
                self._standby = worker
            self._standby_ready.set()

        threading.Thread(target=load, name=f"standby-{self.spec['session']}", daemon=True).start()

    def wait_standby(self, timeout: float) -> bool:
        """True once a standby is loaded (tests, and the status)."""
        return self._standby_ready.wait(timeout)

    @property
    def standby_state(self) -> str:
        if not self.standby_on:
            return "off"
        return "ready" if self._standby_ready.is_set() else "loading"

    def close(self, timeout: float) -> None:
        """Stop the active worker (it finishes its batch), kill the standby."""
        with self._lock:
            self._closed = True
            standby, self._standby = self._standby, None
        if standby is not None:
            standby.kill()
        active = self.active
        if active is not None:
            try:
                active.conn.send(("stop",))
            except (OSError, EOFError, ValueError):
                pass
            active.proc.join(timeout)
            active.kill()
