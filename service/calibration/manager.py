"""The service's calibrations: create (every check before anything starts), look up, close.

:meth:`CalibrationManager.create` checks, in order, and answers 400 (or 404/409) before
any session or presentation starts: the request's length (enough calibration trials),
the base checkpoint (a multi-subject brain encoder), the live session named (running,
recording, on the stream), the stream (found on LSL, carrying every channel of the
base), the images (the presentation design builds). Then it starts a recording
session when none was named (the base checkpoint and a gallery of its embedder), the
presentation, and the calibration's watcher.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

from glimpse.streaming.channels import listing
from glimpse.streaming.lsl import channel_info, find_stream, open_inlet

from ..errors import Conflict, InputError, NotFound
from ..present import build_design
from .flow import Calibration, Services
from .request import CalibrationRequest, check_base, check_stream, planned_trials, presentation_request

__all__ = ["CalibrationManager"]

logger = logging.getLogger("glimpse.service.calibration")


def _swap_unavailable(session_id: str, checkpoint: str, subject: str) -> dict:
    raise InputError("a service whose live sessions can switch checkpoints (SessionManager.swap_checkpoint)",
                     "this build without it", f"start a session on {checkpoint} with subject {subject!r} instead")


class CalibrationManager:
    """Calibrations by id.

    Parameters
    ----------
    roots, catalog, sessions, presentations
        The app's data roots, catalog, :class:`~glimpse.service.sessions.manager.SessionManager`
        and :class:`~glimpse.service.present.PresentationManager`.
    publish : callable
        ``publish(session_id, message)``: the hub's.
    calibrations_dir : Path
        Where each calibration's folder goes (inside a data root).
    swap : callable, optional
        ``swap(session_id, checkpoint, subject)`` (default: ``sessions.swap_checkpoint``).
    threads : int, optional
        Torch threads of the adaptation process.
    """

    def __init__(self, roots, catalog, sessions, presentations, publish: Callable[[str, dict], None], *,
                 calibrations_dir: Path, swap: Callable[[str, str, str], dict] | None = None,
                 threads: int | None = None, log_level: int = logging.WARNING, resolve_timeout: float = 5.0):
        if swap is None:
            method = getattr(sessions, "swap_checkpoint", None)
            swap = ((lambda sid, ckpt, subject: method(sid, ckpt, subject=subject)) if method is not None
                    else _swap_unavailable)
        self.dir = Path(calibrations_dir)
        self.services = Services(roots=roots, catalog=catalog, sessions=sessions, presentations=presentations,
                                 publish=publish, swap=swap, threads=threads, log_level=log_level,
                                 cache_dir=str(self.dir / ".cache"))
        self.resolve_timeout = float(resolve_timeout)
        self._items: dict[str, Calibration] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ create

    def create(self, body: dict[str, Any] | CalibrationRequest) -> Calibration:
        """Check everything, then start the recording, the presentation and the watcher (blocking)."""
        request = body if isinstance(body, CalibrationRequest) else CalibrationRequest.model_validate(body)
        services = self.services
        presentation_request(request, "check", 1)  # the presentation fields, before they are used
        n_trials = planned_trials(request)
        base = services.catalog.checkpoint(request.base)
        config = json.loads((Path(base["abspath"]) / "config.json").read_text(encoding="utf-8"))
        check_base(base, config)
        name, source_id = self._session_stream(request)
        info = self._stream_info(name, source_id, base, config)
        name, source_id = info.name(), source_id or info.source_id()
        build_design(presentation_request(request, name, n_trials), services.roots, services.catalog)
        cid = secrets.token_hex(4)
        folder = self.dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{cid}"
        out = self._out(request, folder, base)
        session_id, started = request.session, False
        if session_id is None:
            session_id = self._start_session(name, source_id, base, config, request.gallery)
            started = True
        try:
            calibration = Calibration(cid, request, services, base=base, stream=(name, source_id),
                                      session_id=session_id, started_session=started, n_trials=n_trials,
                                      folder=folder, out=out).start()
        except BaseException:
            if started:
                services.sessions.stop(session_id)
            raise
        with self._lock:
            self._items[cid] = calibration
        return calibration

    def _session_stream(self, request: CalibrationRequest) -> tuple[str | None, str | None]:
        """The stream to calibrate on; a named session must run, record, and be on it."""
        name, source_id = request.stream_pair()
        if request.session is None:
            return name, source_id
        session = self.services.sessions.get(request.session)
        desc = session.describe()
        if session.state != "running":
            raise Conflict("a running live session to record the calibration", f"session {session.id}, "
                           f"{session.state}", "start a session on the stream, or leave \"session\" out")
        if not desc.get("record"):
            raise InputError("a live session that records (its folder is the calibration data)",
                             f"session {session.id} with record off", "start one with \"record\": true")
        streams = desc["streams"]
        if name is None and source_id is None:
            return streams[0]["name"], streams[0]["source_id"]
        if not any((name is None or s["name"] == name) and (source_id is None or s["source_id"] == source_id)
                   for s in streams):
            raise InputError(f"the stream of session {session.id} ({listing([s['name'] or s['source_id'] for s in streams])})",
                             f"stream {name or source_id}", "name the session's stream, or leave \"stream\" out")
        return name, source_id

    def _stream_info(self, name, source_id, base: dict, config: dict):
        """The stream's full info (channel labels), checked against the base's channels."""
        info = find_stream(name, source_id, timeout=self.resolve_timeout)
        inlet, full = open_inlet(info, timeout=self.resolve_timeout)
        inlet.close_stream()
        labels, types, _ = channel_info(full)
        check_stream(base, config, labels, types, f"{full.name()} ({full.source_id()})", full.type())
        return full

    def _out(self, request: CalibrationRequest, folder: Path, base: dict) -> Path:
        if request.out is None:  # named for the viewer's lists: base and person
            return folder / f"{Path(base['abspath']).name}-{request.subject}"
        out = self.services.roots.resolve(request.out, must_exist=False)
        if out.exists() and any(out.iterdir()):
            raise Conflict("a new or empty folder for the adapted checkpoint", f"{request.out}, which holds files",
                           "name a new folder (or leave \"out\" out)")
        return out

    def _start_session(self, name: str, source_id: str | None, base: dict, config: dict,
                       gallery: str | None) -> str:
        """A recording live session on the stream, decoding with the base checkpoint."""
        if gallery is None:
            emb = config["embedder"]
            fits = [g for g in self.services.catalog.galleries()
                    if g.get("embedder") == emb["name"] and int(g.get("dim") or 0) == int(emb["dim"])]
            if not fits:
                raise NotFound(f"a gallery of the base's embedder ({emb['name']}, {emb['dim']} dims) for the "
                               "live session that records the calibration", "none in the data roots",
                               "build one with `glimpse gallery build`, or name a running \"session\"")
            gallery = fits[0]["id"]
        desc = self.services.sessions.create({"streams": [{"name": name, "source_id": source_id}],
                                              "checkpoint": str(base["abspath"]), "gallery": gallery,
                                              "record": True})
        logger.info("calibration: started session %s on %s to record it", desc["id"], name)
        return desc["id"]

    # ------------------------------------------------------------------ look up

    def get(self, cid: str) -> Calibration:
        with self._lock:
            calibration = self._items.get(cid)
            if calibration is None:
                raise NotFound("the id of a calibration (POST /api/calibrations makes one)",
                               f"{cid!r}; the ids are {listing(list(self._items)) or 'none'}",
                               "use an id from GET /api/calibrations")
            return calibration

    def list(self) -> list[Calibration]:
        with self._lock:
            return list(self._items.values())

    def close(self, timeout: float = 5.0) -> None:
        """Stop every watcher and adaptation (the sessions and presentations close on their own)."""
        for calibration in self.list():
            try:
                calibration.close(timeout)
            except Exception:  # noqa: BLE001 - the others must still close
                logger.exception("closing calibration %s", calibration.id)
