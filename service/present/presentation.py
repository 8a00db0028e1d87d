"""Presentations the service runs: each a design, a page that shows it, a log and markers.

A :class:`Presentation` goes ``created`` -> ``running`` (the page sent "start") ->
``done`` (every trial shown and the page's report in) or ``stopped`` (the page lost
visibility or focus, the person pressed Escape, the page disconnected, the service
shut down). Only the page connection that started it may send its events.
:class:`PresentationManager` makes them (in a thread: the design reads files), keeps
the newest ``max_kept`` in memory (their folders stay on disk) and owns the marker
bridge; :meth:`PresentationManager.close` stops what runs and withdraws the outlets.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pylsl

from glimpse.streaming.channels import listing

from ..errors import Conflict, InputError, NotFound
from .bridge import MarkerBridge
from .design import Design, PresentationRequest, build_design
from .log import PresentationLog, apply_event
from .records import TrialRecords
from .timing import SYNC_WARN_MS, build_report

__all__ = ["Presentation", "PresentationManager"]

logger = logging.getLogger("glimpse.service.present")

MAX_CLOCK_GAP_S = 60.0  # an onset further than this from the service's clock is a broken offset


class Presentation:
    """One presentation's state; :meth:`handle` takes the page's checked messages."""

    def __init__(self, pid: str, design: Design, log: PresentationLog, bridge: MarkerBridge,
                 *, sync_warn_ms: float = SYNC_WARN_MS, shown_folder: str | None = None):
        self.id, self.design, self.log, self.bridge = pid, design, log, bridge
        self.stream = design.request.stream
        self.markers_stream = bridge.open(self.stream)
        self.records = TrialRecords(design)
        self.state, self.stopped_reason, self.report = "created", None, None
        self.created, self.sync_warn_ms = time.time(), sync_warn_ms
        self.finished = False
        self.ended_by_service = False  # close() ended it, not the page (its report or its leaving)
        self.ended = threading.Event()  # set when the run's files are written (wait() for it)
        self.shown_folder = shown_folder or str(log.folder)  # as people see it: relative to its root
        self._owner: object | None = None
        self._lock = threading.RLock()  # describe() runs inside handle() for the summary

    # ------------------------------------------------------------------ messages

    def handle(self, request: dict[str, Any], conn: object, t_received: float) -> dict[str, Any] | None:
        """Apply one page message (see ``protocol``); returns the reply, if any."""
        kind = request["type"]
        with self._lock:
            if kind == "start":
                return self._start(request, conn, t_received)
            self._check_sender(kind, conn)
            if kind == "report":
                self._report(request["report"])
                return {"type": "summary", "presentation": self.describe(full=False)}
            if self.state != "running":
                raise Conflict(f"{kind} messages while the presentation runs", f"state {self.state!r}",
                               "create a new presentation to show the images again")
            return getattr(self, f"_{kind}")(request, t_received)

    def _check_sender(self, kind: str, conn: object) -> None:
        if self._owner is None:
            raise Conflict(f"a start message before {kind} messages", f"{kind} first",
                           'send {"type": "start", "sync": {...}} once the clock is estimated')
        if conn is not self._owner:
            raise Conflict("events from the page that started this presentation",
                           "a message from another connection", "show a presentation in one page only")
        if self.finished:
            raise Conflict(f"{kind} messages before the report", f"state {self.state!r}, report in",
                           "create a new presentation")

    def _start(self, request: dict, conn: object, t: float) -> dict[str, Any]:
        if self.state != "created":
            raise Conflict("a presentation not yet started", f"state {self.state!r}",
                           "create a new presentation (POST /api/presentations)")
        self._owner, self.state = conn, "running"
        self.log.append({"event": "start", "t": t, "sync": request["sync"], "screen": request["screen"]})
        logger.info("presentation %s started: %d trials, markers on %s", self.id,
                    len(self.design.trials), self.markers_stream)
        return {"type": "started", "markers_stream": self.markers_stream, "n_trials": len(self.design.trials)}

    def _onset(self, request: dict, t: float) -> dict[str, Any]:
        if abs(request["t_lsl"] - t) > MAX_CLOCK_GAP_S:
            raise InputError(f"an onset within {MAX_CLOCK_GAP_S:g} s of the service's LSL clock "
                             f"(now {t:.3f})", f"t_lsl {request['t_lsl']:.3f}",
                             "estimate the clock offset with pings before sending onsets")
        event = {"event": "onset", **{k: request[k] for k in ("trial", "stim_id", "t_lsl", "t_browser_ms",
                                                               "offset_ms", "uncertainty_ms")}}
        record = apply_event(self.records, event)
        marker = {"stim_file": record.stim_file, "concept": record.concept, "trial_type": record.trial_type,
                  "presentation": self.id, "trial": record.trial, "stim_id": record.stim_id}
        self.bridge.publish(self.stream, marker, record.onset_lsl)
        self.log.append({**event, "t": t})
        return {"type": "marker", "trial": record.trial, "stim_id": record.stim_id, "t_lsl": record.onset_lsl}

    def _offset(self, request: dict, t: float) -> None:
        event = {"event": "offset", "trial": request["trial"], "t_lsl": request["t_lsl"],
                 "t_browser_ms": request["t_browser_ms"]}
        apply_event(self.records, event)
        self.log.append({**event, "t": t})

    def _response(self, request: dict, t: float) -> dict[str, Any]:
        if request["key"] != self.design.request.response_key:
            raise InputError(f"the response key {self.design.request.response_key!r}", repr(request["key"]),
                             "send responses for the design's response_key only")
        result = self.records.response(request["t_lsl"])
        self.log.append({"event": "response", "t_lsl": request["t_lsl"], "key": request["key"],
                         "t_browser_ms": request["t_browser_ms"], "t": t, **result})
        return {"type": "response", **result}

    def _invalid(self, request: dict, t: float) -> dict[str, Any]:
        t_stop = t if request["t_lsl"] is None else request["t_lsl"]
        marked = self._stop(request["trials"], request["reason"], t_stop, t)
        return {"type": "invalid", "trials": marked}

    def _stop(self, trials: list[int], reason: str, t_stop: float, t: float) -> list[int]:
        """Invalidate ``trials``, say so on the markers stream, and stop (lock held)."""
        event = {"event": "invalid", "trials": trials, "reason": reason, "t_lsl": t_stop}
        marked = apply_event(self.records, event)
        self.log.append({**event, "t": t})
        self.bridge.publish(self.stream, {"stim_file": None, "concept": None, "trial_type": "invalid",
                                          "presentation": self.id, "trials": marked, "reason": reason}, t_stop)
        self.state, self.stopped_reason = "stopped", reason
        logger.warning("presentation %s stopped: %s; trials %s invalid", self.id, reason, marked)
        return marked

    def _report(self, page_report: dict) -> None:
        """The page's report ends the run: done when every trial was shown, else stopped."""
        if self.state == "running" and self.records.last_onset != len(self.records.records) - 1:
            stopped = page_report.get("stopped")
            now = pylsl.local_clock()
            self._stop(self.records.touched(), stopped if isinstance(stopped, str) and stopped
                       else "the page ended the run early", now, now)
        elif self.state == "running":
            self.state = "done"
        self._finish(page_report, self.state, self.stopped_reason)

    def _finish(self, page_report: dict | None, state: str, reason: str | None) -> None:
        if self.finished:
            raise Conflict("one report per presentation", "a second report", "create a new presentation")
        now = pylsl.local_clock()
        rows = self.records.rows(final=True, now=now)
        self.report = build_report(page_report, rows, warn_ms=self.sync_warn_ms)
        for warning in self.report["warnings"]:
            logger.warning("presentation %s: %s", self.id, warning)
        self.state, self.stopped_reason, self.finished = state, reason, True
        self.log.append({"event": "end", "t": now, "state": state, "reason": reason})
        self.log.finish(rows, self.records.summary(final=True, now=now), self.report)
        self.log.close()
        self.ended.set()

    # ------------------------------------------------------------------ lifecycle

    def disconnected(self, conn: object) -> None:
        """The page ``conn`` went away: a run it owned stops, its last trial invalid."""
        with self._lock:
            if conn is not self._owner or self.finished:
                return
            now = pylsl.local_clock()
            if self.state == "running":
                self._stop(self.records.touched(), "the page disconnected", now, now)
            self._finish(None, self.state, self.stopped_reason)

    def close(self, reason: str = "the service stopped") -> None:
        """Service shutdown: stop a run, write what there is."""
        with self._lock:
            if not self.finished:
                now = pylsl.local_clock()
                if self.state == "running":
                    self._stop(self.records.touched(), reason, now, now)
                if self.state != "created":
                    self._finish(None, self.state, self.stopped_reason)
                    self.ended_by_service = True
            self.log.close()

    def describe(self, *, full: bool = True) -> dict[str, Any]:
        """JSON-ready: id, streams, state, summary, report; ``full`` adds the design."""
        with self._lock:
            return self._describe(full)

    def _describe(self, full: bool) -> dict[str, Any]:
        now = pylsl.local_clock()
        out = {"id": self.id, "stream": self.stream, "markers_stream": self.markers_stream,
               "state": self.state, "stopped_reason": self.stopped_reason, "created": self.created,
               "folder": self.shown_folder, "page": f"/present?id={self.id}",
               "ws": f"/ws/present/{self.id}", "n_trials": len(self.design.trials),
               "summary": self.records.summary(final=self.finished, now=now), "report": self.report}
        if full:
            out["design"] = self.design.to_dict(lambda s: stimulus_url(self.id, s.index))
        return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ended (done or stopped, files written); False on timeout."""
        return self.ended.wait(timeout)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return self.records.rows(final=self.finished, now=pylsl.local_clock())


def stimulus_url(pid: str, index: int) -> str:
    return f"/api/presentations/{pid}/stimuli/{index}"


class PresentationManager:
    """The service's presentations (newest ``max_kept`` in memory) and the marker bridge.

    Parameters
    ----------
    roots, catalog
        Data roots and catalog: images come from them only.
    presentations_dir : Path
        Where each presentation's folder goes (inside a data root).
    pong_delay_s : float
        Tests only: hold each pong this long after stamping t3, as a slow network would.
    """

    def __init__(self, roots, catalog, presentations_dir: Path, *, pong_delay_s: float = 0.0,
                 max_kept: int = 64, sync_warn_ms: float = SYNC_WARN_MS):
        self.roots, self.catalog, self.dir = roots, catalog, Path(presentations_dir)
        self.pong_delay_s, self.max_kept, self.sync_warn_ms = float(pong_delay_s), int(max_kept), sync_warn_ms
        self.bridge = MarkerBridge()
        self._items: OrderedDict[str, Presentation] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, request: PresentationRequest) -> Presentation:
        """Build the design, open the folder and the markers outlet (blocking: run in a thread)."""
        design = build_design(request, self.roots, self.catalog)
        pid = uuid.uuid4().hex[:12]
        folder = self.dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{pid}"
        header = {"id": pid, "stream": request.stream, "markers_stream": f"{request.stream}-markers",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "design": design.to_dict()}
        presentation = Presentation(pid, design, PresentationLog(folder, header), self.bridge,
                                    sync_warn_ms=self.sync_warn_ms, shown_folder=self.roots.relative(folder))
        with self._lock:
            self._items[pid] = presentation
            for old in [k for k, p in self._items.items() if p.finished or p.state == "created"]:
                if len(self._items) <= self.max_kept:
                    break
                self._items.pop(old).close()
        logger.info("presentation %s: %d trials of %d images for %s", pid, len(design.trials),
                    len(design.stimuli), request.stream)
        return presentation

    def get(self, pid: str) -> Presentation:
        with self._lock:
            presentation = self._items.get(pid)
            if presentation is None:
                raise NotFound("the id of a presentation (POST /api/presentations makes one)",
                               f"{pid!r}; the ids are {listing(list(self._items)) or 'none'}",
                               "use an id from GET /api/presentations")
            return presentation

    def list(self) -> list[Presentation]:
        with self._lock:
            return list(self._items.values())

    def stimulus_path(self, pid: str, index: int) -> Path:
        stimuli = self.get(pid).design.stimuli
        if not 0 <= index < len(stimuli):
            raise NotFound(f"a stimulus index of presentation {pid} (0 to {len(stimuli) - 1})",
                           str(index), "use the url of a stimulus from the design")
        path = stimuli[index].path
        if not path.is_file():
            raise NotFound(f"stimulus {index} of presentation {pid} on disk", f"{path}, which is gone",
                           "restore the image, or create a new presentation")
        return path

    def close(self) -> None:
        """Stop every running presentation, close the logs, withdraw the markers outlets."""
        for presentation in self.list():
            try:
                presentation.close()
            except Exception:  # noqa: BLE001 - the others must still close
                logger.exception("closing presentation %s", presentation.id)
        self.bridge.close()
