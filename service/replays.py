"""Replays started from the dashboard: ``glimpse replay`` processes that the service owns.

Each replay runs ``python -m glimpse.service.cli --quiet replay FILE`` in a process
of its own, so that a replay that crashes or is killed never touches the service,
and a session's inlets see exactly what they would see from an amplifier: a stream
that goes away and comes back. The manager gives every replay a short id and a
``source_id`` that stays the same across :meth:`ReplayManager.restart`, so inlets
that lost it find it again.

A file that is not a recording is refused in-process before anything is spawned
(:func:`glimpse.streaming.recordings.open_recording` reads only its header); a
replay that fails later (a corrupt file) is reported with the last line its
process wrote to stderr. The manager notices a replay that died when it is next
asked (:meth:`ReplayManager.list`, :meth:`ReplayManager.get`): no thread watches.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pylsl

from glimpse.streaming.recordings import open_recording

from .errors import Conflict, InputError, NotFound

logger = logging.getLogger("glimpse.service.replays")

__all__ = ["MAX_SPEED", "NAME_PATTERN", "ReplayManager", "default_name", "list_streams"]

# LSL names travel in URLs and file names (session folders): keep them plain.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_SPEED = 100.0
_RESOLVE_TRY_S = 0.25  # one LSL resolve while waiting for a new replay's stream
_TAIL_BYTES = 8192  # of a replay's stderr, read for its last line
_OWN_LINE = re.compile(r"glimpse: .*")  # the CLI's error line (liblsl may log on the same line)
_LIBLSL_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \(")
_FORMATS = {pylsl.cf_float32: "float32", pylsl.cf_double64: "double64", pylsl.cf_string: "string",
            pylsl.cf_int32: "int32", pylsl.cf_int16: "int16", pylsl.cf_int8: "int8",
            pylsl.cf_int64: "int64", pylsl.cf_undefined: "undefined"}


def default_name(recording: Path) -> str:
    """``glimpse-<slug of the file stem>``: the LSL name a replay gets when none is given."""
    slug = re.sub(r"[^a-z0-9]+", "-", recording.stem.lower()).strip("-") or "recording"
    return f"glimpse-{slug}"[:64].rstrip("-")


def list_streams(wait_time: float = 0.5) -> list[dict[str, Any]]:
    """The LSL streams visible now (blocks ``wait_time`` seconds), sorted by name."""
    infos = pylsl.resolve_streams(wait_time=wait_time)
    streams = [{"name": info.name(), "type": info.type(), "n_chans": info.channel_count(),
                "sfreq": info.nominal_srate(), "source_id": info.source_id(),
                "hostname": info.hostname(),
                "channel_format": _FORMATS.get(info.channel_format(), "undefined")}
               for info in infos]
    return sorted(streams, key=lambda s: (s["name"], s["source_id"]))


@dataclass
class _Replay:
    """One replay and the process that plays it now (a restart replaces the process)."""

    id: str
    name: str
    source_id: str
    recording: Path
    speed: float
    loop: bool
    log: Path
    state: str = "starting"  # "starting" | "running" | "died" | "stopped"
    proc: subprocess.Popen | None = None
    exit_code: int | None = None
    error: str | None = None
    restarts: int = 0
    started: float = 0.0

    def describe(self) -> dict[str, Any]:
        alive = self.proc is not None and self.state in ("starting", "running")
        return {"id": self.id, "name": self.name, "source_id": self.source_id,
                "recording": str(self.recording), "speed": self.speed, "loop": self.loop,
                "state": self.state, "pid": self.proc.pid if alive else None,
                "exit_code": self.exit_code, "error": self.error, "restarts": self.restarts,
                "started": self.started}

    def last_error_line(self) -> str | None:
        """Why the replay ended: its own ``glimpse: ...`` line on stderr, else the last line
        that is not a liblsl log line (a traceback's), else the signal that killed it."""
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - _TAIL_BYTES))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            lines = []
        ours = [m.group(0).strip() for m in map(_OWN_LINE.search, lines) if m]
        others = [ln.strip() for ln in lines if ln.strip() and not _LIBLSL_LINE.match(ln)]
        if ours or others:
            return (ours or others)[-1]
        if self.exit_code is not None and self.exit_code < 0:
            return f"killed by {signal.Signals(-self.exit_code).name}"
        return None


class ReplayManager:
    """Replays as subprocesses: start, list, stop, restart; deaths noticed on the next look.

    ``roots_resolve`` (the service's data roots) turns a requested path into a
    safe absolute one and refuses paths outside the roots; without it paths are
    taken as given. ``start_timeout`` bounds the wait for a new replay's stream to
    be visible on LSL. Methods block (a start waits for LSL, a stop for the
    process): call them off the event loop.
    """

    def __init__(self, roots_resolve: Callable[[str], Path] | None = None, *,
                 start_timeout: float = 60.0, stop_timeout: float = 10.0):
        self._roots_resolve = roots_resolve
        self.start_timeout, self.stop_timeout = float(start_timeout), float(stop_timeout)
        self._replays: dict[str, _Replay] = {}
        self._lock = threading.Lock()
        self._logs: Path | None = None

    # ------------------------------------------------------------------ public

    def start(self, recording: str | Path, *, speed: float = 1.0, loop: bool = True,
              name: str | None = None) -> dict[str, Any]:
        """Replay ``recording`` as LSL stream ``name`` (and ``name-markers``); returns it running.

        Raises InputError for a file that is not a recording (nothing is spawned)
        or a replay that exits before its stream appears, Conflict for a name that
        a live or died replay holds.
        """
        if not (isinstance(speed, (int, float)) and math.isfinite(speed)
                and 0 < speed <= MAX_SPEED):
            raise InputError(f"a speed above 0 and at most {MAX_SPEED:g} (1 is real time)",
                             repr(speed), "pass e.g. speed 1")
        path = Path(self._roots_resolve(str(recording)) if self._roots_resolve else recording)
        path = path.expanduser().resolve()
        open_recording(path, check_stimuli=False)  # a bad file fails here, clearly and fast
        name = default_name(path) if name is None else name
        if not re.fullmatch(NAME_PATTERN, name):
            raise InputError("a stream name of letters, digits, '.', '_' or '-' (at most 64, "
                             "starting with a letter or digit)", repr(name),
                             "pass e.g. name 'meg-replay', or none for the default")
        with self._lock:
            self._poll()
            holder = next((r for r in self._replays.values()
                           if r.name == name and r.state != "stopped"), None)
            if holder is not None:
                raise Conflict("a stream name no other replay holds", f"{name!r}, held by replay "
                               f"{holder.id} ({holder.state})", f"pass another name, or stop "
                               f"replay {holder.id} first (DELETE /api/replays/{holder.id})")
            for old in [r.id for r in self._replays.values() if r.name == name]:
                del self._replays[old]  # an ended replay gives its name way
            rid = uuid.uuid4().hex[:8]
            replay = _Replay(id=rid, name=name, source_id=f"{name}-{rid}", recording=path,
                             speed=float(speed), loop=bool(loop),
                             log=self._log_dir() / f"{rid}.log")
            self._replays[rid] = replay
        try:
            self._launch(replay)
        except BaseException:
            with self._lock:
                self._replays.pop(rid, None)
            raise
        return replay.describe()

    def list(self) -> list[dict[str, Any]]:
        """Every replay not stopped by :meth:`stop`, oldest first."""
        with self._lock:
            self._poll()
            return [r.describe() for r in self._replays.values()]

    def get(self, replay_id: str) -> dict[str, Any]:
        """One replay; NotFound (listing the valid ids) for an unknown id."""
        with self._lock:
            self._poll()
            return self._find(replay_id).describe()

    def stop(self, replay_id: str) -> dict[str, Any]:
        """Stop a replay (SIGTERM, then SIGKILL after ``stop_timeout``) and forget it."""
        with self._lock:
            self._poll()
            replay = self._replays.pop(self._find(replay_id).id)
            replay.state = "stopped"  # before the process ends, so a start in flight sees why
        if replay.proc is not None:
            replay.exit_code = _terminate(replay.proc, self.stop_timeout)
        replay.log.unlink(missing_ok=True)
        logger.info("replay %s (%s) stopped", replay.id, replay.name)
        return replay.describe()

    def restart(self, replay_id: str) -> dict[str, Any]:
        """Start a replay's process again, with the same name and source_id (inlets reconnect)."""
        with self._lock:
            self._poll()
            replay = self._find(replay_id)
            if replay.state == "starting":
                raise Conflict("a replay that is running, died or ended", f"replay {replay_id} "
                               "still starting", "wait until it runs, then restart it")
            replay.state = "starting"
        if replay.proc is not None:
            _terminate(replay.proc, self.stop_timeout)
        replay.restarts += 1
        self._launch(replay)
        return replay.describe()

    def stop_all(self, timeout: float | None = None) -> None:
        """Stop every replay: SIGTERM to all at once, SIGKILL to those left after ``timeout``."""
        timeout = self.stop_timeout if timeout is None else timeout
        with self._lock:
            replays, self._replays = list(self._replays.values()), {}
        procs = [r.proc for r in replays if r.proc is not None and r.proc.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            _reap(proc, max(0.0, deadline - time.monotonic()))
        for replay in replays:
            replay.state = "stopped"
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)
            self._logs = None
        if procs:
            logger.info("stopped %d replays", len(procs))

    # ----------------------------------------------------------------- private

    def _launch(self, replay: _Replay) -> None:
        """Spawn the replay's process; return once its stream is visible on LSL."""
        cmd = [sys.executable, "-m", "glimpse.service.cli", "--quiet", "replay",
               str(replay.recording), "--name", replay.name, "--source-id", replay.source_id,
               "--speed", repr(replay.speed), *(["--loop"] if replay.loop else [])]
        # stdout to nothing and stderr to a file: a pipe nobody reads fills up and
        # blocks the child.
        with open(replay.log, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, cwd=replay.log.parent)
        replay.proc, replay.exit_code, replay.error = proc, None, None
        replay.started = time.time()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if pylsl.resolve_byprop("source_id", replay.source_id, timeout=_RESOLVE_TRY_S):
                with self._lock:
                    if replay.state == "starting":
                        replay.state = "running"
                logger.info("replay %s: %s as LSL stream %r (source_id %s, pid %d)", replay.id,
                            replay.recording, replay.name, replay.source_id, proc.pid)
                return
            if proc.poll() is not None:
                break
        timed_out = proc.poll() is None
        code = _terminate(proc, self.stop_timeout)
        if replay.state == "stopped":  # stop() while it was starting
            raise Conflict("a replay left to start", f"replay {replay.id} stopped while starting",
                           "start it again")
        replay.state, replay.exit_code = "died", code
        replay.error = replay.last_error_line()
        if timed_out:
            raise InputError(f"the replay's LSL stream visible within {self.start_timeout:g} s",
                             f"no stream with source_id {replay.source_id}",
                             "check that LSL works on this machine (multicast on loopback, "
                             "lsl_api.cfg) and that the recording is not huge")
        raise InputError("a recording that `glimpse replay` can stream",
                         f"{replay.recording}: the replay exited with status {code}: "
                         f"{replay.error or 'no message'}",
                         f"check the file with `glimpse info {replay.recording}`")

    def _poll(self) -> None:
        """Notice replays whose process ended (call with the lock held)."""
        for replay in self._replays.values():
            if replay.state != "running" or replay.proc is None:
                continue
            code = replay.proc.poll()
            if code is None:
                continue
            replay.exit_code = code
            if code == 0:  # the recording ended (no loop), or a SIGTERM from outside
                replay.state = "stopped"
                logger.info("replay %s (%s) ended", replay.id, replay.name)
            else:
                replay.state = "died"
                replay.error = replay.last_error_line()
                logger.warning("replay %s (%s) died with exit code %s: %s", replay.id,
                               replay.name, code, replay.error)

    def _find(self, replay_id: str) -> _Replay:
        if replay_id not in self._replays:
            raise NotFound("the id of a replay", f"{replay_id!r}; valid ids: "
                           f"{', '.join(self._replays) or 'none (no replay running)'}",
                           "list them with GET /api/replays")
        return self._replays[replay_id]

    def _log_dir(self) -> Path:
        if self._logs is None or not self._logs.is_dir():
            self._logs = Path(tempfile.mkdtemp(prefix="glimpse-replays-"))
        return self._logs


def _terminate(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, wait ``timeout`` s, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return _reap(proc, timeout)


def _reap(proc: subprocess.Popen, timeout: float) -> int:
    """Wait ``timeout`` s for a process told to stop, then SIGKILL it; the exit code."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("replay pid %d ignored SIGTERM for %.1f s; killing it", proc.pid, timeout)
        proc.kill()
        return proc.wait()
