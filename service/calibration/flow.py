"""One calibration: present, record, adapt, evaluate, hot-swap; its state and progress.

States::

    presenting ──(every trial shown)──► adapting ──► ready ──(swap)──► swapped
        │  ▲                               │           │
        │  └───────(resume)──┐             ▼           └─(swap refused: stays ready, POST swap again)
        └─(stream lost, page stopped,    failed
           session gone)──► interrupted ──(adapt now)──► adapting
    any state but swapped/failed ──(cancel)──► cancelled

A watcher thread looks at the presentation and the live session four times a
second. The stream counts as lost when the session's acquisition says so (no data
for 2 s; its status reaches the service every second): the presentation is then
stopped (its log marks the touched trial invalid, and the page's further onsets are
refused, so no marker without signal is published), the recording goes on (the
acquisition seeks the stream again) and the calibration is ``interrupted``.
``resume`` shows the rest of the same design (``first_trial``) in a new
presentation on the same session: from the first trial not validly shown, less the
trials shown in the last ``LOST_MARGIN_S`` before the loss was seen (their signal
may be missing). Both presentations' valid trials are the calibration's data; the
adaptation reads the one session folder and keeps those trials only
(:mod:`glimpse.service.calibration.trials`). ``adapt`` (from interrupted) adapts on what was recorded so far.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pylsl

from ..errors import Conflict, InputError
from ..sessions.wire import error_body
from .adapt import AdaptJob
from .request import CalibrationRequest, presentation_request
from .trials import AFTER_S, valid_onsets

__all__ = ["LOST_MARGIN_S", "Calibration", "Services"]

logger = logging.getLogger("glimpse.service.calibration")

TICK_S = 0.25
LOST_MARGIN_S = 4.0  # lost after 2 s without data + the status's 1 s + a trial's response
SETTLE_S = AFTER_S + 0.5  # after the last onset: its response is in the folder before reading it
PROGRESS_EVERY_S = 1.0
_ENDED = ("swapped", "failed", "cancelled")


@dataclass
class Services:
    """What a calibration uses of the service: presentations, sessions, the hub, the swap."""

    roots: Any
    catalog: Any
    sessions: Any
    presentations: Any
    publish: Callable[[str, dict], None]
    swap: Callable[[str, str, str], dict]
    threads: int | None = None
    log_level: int = logging.WARNING
    cache_dir: str | None = None


class Calibration:
    """One calibration's flow; :meth:`start` presents, a watcher thread does the rest."""

    def __init__(self, cid: str, request: CalibrationRequest, services: Services, *, base: dict[str, Any],
                 stream: tuple[str, str | None], session_id: str, started_session: bool,
                 n_trials: int, folder: Path, out: Path):
        self.id, self.request, self.services, self.base = cid, request, services, base
        self.stream_name, self.source_id = stream
        self.session_id, self.started_session, self.n_trials = session_id, started_session, n_trials
        self.folder, self.out = folder, out
        self.session_folder = Path(services.sessions.folder(session_id))
        self.state, self.phase, self.error = "presenting", "waiting for the page", None
        self.created, self.changed = time.time(), time.time()
        self.parts: list[dict[str, Any]] = []  # one per presentation: id, first_trial, folder
        self._shown: list[Any] = []  # their Presentation objects (the manager may forget old ones)
        self.n_full: int | None = None
        self.t_lost: float | None = None
        self.epochs: list[dict[str, Any]] = []
        self.data: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.swap_result: dict[str, Any] | None = None
        self.swap_error: dict[str, str] | None = None
        self.swap_held: str | None = None  # why the automatic swap did not happen
        self.messages: deque[dict[str, Any]] = deque(maxlen=50)
        self.timings: dict[str, float] = {}
        self._job: AdaptJob | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._last_progress = (0.0, None)
        self._thread = threading.Thread(target=self._watch, name=f"calibration-{cid}", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Calibration:
        self._present(0)
        self.n_full = len(self._presentation().design.trials)
        self._note("calibration", f"calibration of {self.request.subject}: open {self.present_url} on the "
                   f"person's screen ({self.n_full} trials)")
        self._thread.start()
        return self

    def _present(self, first_trial: int) -> None:
        body = presentation_request(self.request, self.stream_name, self.n_trials, first_trial)
        presentation = self.services.presentations.create(body)
        self._shown.append(presentation)
        self.parts.append({"id": presentation.id, "first_trial": first_trial, "folder": presentation.shown_folder})

    def _presentation(self):
        return self._shown[-1]

    @property
    def present_url(self) -> str:
        return f"/present?id={self.parts[-1]['id']}" if self.parts else ""

    def close(self, timeout: float = 5.0) -> None:
        """Service shutdown: stop watching, stop an adaptation (the recording is the session's)."""
        self._stop.set()
        if self._job is not None:
            self._job.cancel(timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ watching

    def _watch(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                with self._lock:
                    if self.state in _ENDED:
                        return
                    if self.state == "presenting":
                        self._tick_presenting()
            except Exception as err:  # noqa: BLE001 - the flow reports it instead of dying silently
                logger.exception("calibration %s", self.id)
                self._fail(error_body(err))

    def _tick_presenting(self) -> None:
        presentation = self._presentation()
        why = self._session_trouble()
        if why is not None:
            self.t_lost = pylsl.local_clock()  # when it was seen; resume shows the seconds before again
            if not presentation.finished:
                presentation.close(why)
            self._interrupt(why)
            return
        if presentation.state == "done" and presentation.finished:
            last = max((r["onset_lsl"] or 0.0) for r in presentation.rows())
            if pylsl.local_clock() >= last + SETTLE_S:
                self._start_adapting()
            return
        if presentation.state == "stopped" and presentation.finished:
            self._interrupt(f"the presentation stopped: {presentation.stopped_reason}")
            return
        summary = presentation.describe(full=False)["summary"]
        if presentation.state == "running":
            self.phase = "presenting"
        now = time.monotonic()
        if summary["n_shown"] != self._last_progress[1] and now - self._last_progress[0] >= PROGRESS_EVERY_S:
            self._last_progress = (now, summary["n_shown"])
            self._publish("calibration_progress", f"{summary['n_shown']} of {len(presentation.design.trials)} "
                          "trials shown")

    def _session_trouble(self) -> str | None:
        """Why the recording cannot go on now (a lost stream, a session gone), or None."""
        try:
            session = self.services.sessions.get(self.session_id)
        except InputError:
            return f"the live session {self.session_id} is gone"
        if session.state != "running":
            return f"the live session {self.session_id} is {session.state}"
        lost = [s for s in session.status()["streams"] if s.get("state") not in (None, "streaming")]
        if lost:
            return f"the stream {lost[0]['stream_id']} was lost ({lost[0]['state']})"
        return None

    # ------------------------------------------------------------------ transitions

    def _set(self, state: str, phase: str | None = None) -> None:
        self.state, self.changed = state, time.time()
        if phase is not None:
            self.phase = phase
        self.timings[state] = round(self.changed - self.created, 2)

    def _interrupt(self, reason: str) -> None:
        self._set("interrupted", "waiting: resume shows the rest")
        self.error = {"message": reason}
        self._note("calibration", f"calibration interrupted: {reason}; the recording is kept; resume when the "
                   "stream is back", level=logging.WARNING)

    def resume(self) -> dict[str, Any]:
        """Interrupted: show the rest of the design in a new presentation on the same session."""
        with self._lock:
            if self.state != "interrupted":
                raise Conflict("an interrupted calibration to resume", f"calibration {self.id}, {self.state}",
                               "resume only after an interruption (GET /api/calibrations/{id} says why)")
            why = self._session_trouble()
            if why is not None:
                raise Conflict("the stream back and its live session running, to resume", why,
                               "restart the stream (the session finds it again by name), then resume; or "
                               "start a new calibration")
            first = self._resume_point()
            if first >= self.n_full:
                self._start_adapting()
                return self.describe()
            self._present(first)
            self.t_lost, self.error = None, None
            self._set("presenting", "waiting for the page")
            self._note("calibration", f"calibration resumed from trial {first}: open {self.present_url}")
            return self.describe()

    def _resume_point(self) -> int:
        """The full design's index of the first trial to show again."""
        part, rows = self.parts[-1], self._presentation().rows()
        skipped = (self.n_full - part["first_trial"]) - len(rows)  # leading catch trials dropped
        for k, row in enumerate(rows):
            late = self.t_lost is not None and row["onset_lsl"] is not None \
                and row["onset_lsl"] > self.t_lost - LOST_MARGIN_S
            if not row["valid"] or late:
                return part["first_trial"] + skipped + k
        return part["first_trial"] + skipped + len(rows)

    def adapt_now(self) -> dict[str, Any]:
        """Interrupted: adapt on the trials recorded so far."""
        with self._lock:
            if self.state != "interrupted":
                raise Conflict("an interrupted calibration to adapt early", f"calibration {self.id}, {self.state}",
                               "wait for the presentation to end; it adapts by itself")
            self._start_adapting()
            return self.describe()

    def _onsets(self) -> list[tuple[float, str]]:
        return valid_onsets([row for presentation in self._shown for row in presentation.rows()])

    def _start_adapting(self) -> None:
        self._set("adapting", "starting")
        self.error, self.epochs = None, []
        lineage = {"calibration": self.id, "session": self.session_id, "session_folder": str(self.session_folder),
                   "presentations": [{"id": p["id"], "folder": p["folder"]} for p in self.parts],
                   "stream": self.stream_name}
        job = {"base": str(self.base["abspath"]), "folder": str(self.session_folder), "out": str(self.out),
               "subject": self.request.subject, "layers": self.request.layers, "epochs": self.request.epochs,
               "min_trials": self.request.min_trials, "onsets": self._onsets(), "lineage": lineage,
               "threads": self.services.threads, "cache_dir": self.services.cache_dir,
               "log_level": self.services.log_level}
        self._note("calibration", f"adapting {self.base['id']} to {self.request.subject} "
                   f"({len(job['onsets'])} valid trials shown)")
        self._job = AdaptJob(job, self._on_adapt)

    def _on_adapt(self, kind: str, body: Any) -> None:
        with self._lock:
            if self.state != "adapting":
                return  # cancelled meanwhile
            if kind == "phase":
                self.phase = body
                self._publish("calibration_progress", f"adaptation: {body}")
            elif kind == "data":
                self.data = body
            elif kind == "epoch":
                self.epochs.append(body)
                self._publish("calibration_progress", f"epoch {body['epoch']}: val top-5 "
                              f"{_fmt(body.get('val_top5'))}")
            elif kind == "result":
                self.result = body
                self._set("ready", "done")
                self._note("calibration", _result_line(body))
            elif kind == "error":
                self._fail(body)
            elif kind == "exit" and self.state == "adapting":
                self._fail({"message": f"the adaptation process exited with code {body} before its result"})
        if kind == "result" and self.request.swap:
            self.swap_held = None if self.request.swap_if_worse else _worse(body)
            if self.swap_held is not None:
                self._note("calibration", f"not switched: {self.swap_held}; POST .../swap switches anyway",
                           level=logging.WARNING)
                return
            try:
                self.swap()
            except InputError:
                pass  # kept in swap_error; POST .../swap tries again

    def _fail(self, body: dict[str, str]) -> None:
        self._set("failed", "failed")
        self.error = body
        text = body.get("message") or f"expected {body.get('expected')}; got {body.get('got')}. Fix: {body.get('fix')}"
        self._note("calibration", f"calibration failed: {text}", level=logging.WARNING)

    def swap(self) -> dict[str, Any]:
        """Ready: the live session decodes with the adapted checkpoint and the new subject."""
        with self._lock:
            if self.state != "ready":
                raise Conflict("a ready calibration to swap in", f"calibration {self.id}, {self.state}",
                               "wait until it is ready (GET /api/calibrations/{id})")
            try:
                self.swap_result = self.services.swap(self.session_id, str(self.out), self.request.subject)
            except InputError as err:
                self.swap_error = error_body(err)
                self._note("calibration", f"the hot swap was refused: {err}", level=logging.WARNING)
                raise
            self.swap_error = None
            self._set("swapped", "done")
            self._note("calibration", f"session {self.session_id} now decodes {self.request.subject} with "
                       f"{self.services.roots.relative(self.out)}")
            return self.describe()

    def cancel(self) -> dict[str, Any]:
        """Stop what runs (presentation, adaptation); the recording and its session go on."""
        with self._lock:
            if self.state in _ENDED:
                raise Conflict("a calibration still running", f"calibration {self.id}, {self.state}",
                               "nothing to cancel")
            if self._job is not None:
                self._job.cancel()
            if self.parts:
                presentation = self._presentation()
                if not presentation.finished:
                    presentation.close("the calibration was cancelled")
            self._set("cancelled", "cancelled")
            self._note("calibration", "calibration cancelled; the recording goes on in its session")
            self._stop.set()
            return self.describe()

    # ------------------------------------------------------------------ views

    def _publish(self, event: str, message: str) -> None:
        self.services.publish(self.session_id, {"type": "event", "session": self.session_id, "event": event,
                                                "message": message, "t": time.time(), "calibration": self.brief()})

    def _note(self, event: str, message: str, level: int = logging.INFO) -> None:
        """A message kept, logged, published, and the state written to calibration.json."""
        self.messages.append({"t": time.time(), "message": message, "level": logging.getLevelName(level).lower()})
        logger.log(level, "calibration %s: %s", self.id, message)
        self._publish(event, message)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / ".calibration.json.tmp"
            tmp.write_text(json.dumps(self.describe(), indent=1, default=str) + "\n", encoding="utf-8")
            tmp.replace(self.folder / "calibration.json")
        except OSError as err:
            logger.warning("calibration %s: cannot write calibration.json: %s", self.id, err)

    def brief(self) -> dict[str, Any]:
        last = self.epochs[-1] if self.epochs else {}
        return {"id": self.id, "state": self.state, "phase": self.phase, "epoch": last.get("epoch"),
                "epochs": self.request.epochs, "val_top5": last.get("val_top5")}

    def _trials(self) -> dict[str, Any]:
        planned = {"n": self.n_full or 0}
        shown = {"n_shown": 0, "n_valid": 0, "exp": 0, "test": 0, "catch": 0}
        current = None
        for presentation in self._shown:
            rows = presentation.rows()
            shown["n_shown"] += sum(r["shown"] for r in rows)
            for row in rows:
                if row["valid"]:
                    shown["n_valid"] += 1
                    shown[row["trial_type"]] = shown.get(row["trial_type"], 0) + 1
            current = {"id": presentation.id, "state": presentation.state, "n_trials": len(rows),
                       "n_shown": sum(r["shown"] for r in rows), "stopped_reason": presentation.stopped_reason}
        return {**planned, **shown, "presentation": current}

    def describe(self) -> dict[str, Any]:
        """JSON-ready: state, progress (trials, epochs), data, result, swap, messages."""
        with self._lock:
            request = self.request.model_dump(mode="json")
            return {
                **self.brief(), "created": self.created, "changed": self.changed, "error": self.error,
                "subject": self.request.subject, "request": request,
                "base": {k: self.base.get(k) for k in ("id", "name", "path", "model", "modality", "n_chans",
                                                       "sfreq", "embedder")},
                "stream": {"name": self.stream_name, "source_id": self.source_id},
                "session": self.session_id, "started_session": self.started_session,
                "session_folder": self.services.roots.relative(self.session_folder),
                "folder": self.services.roots.relative(self.folder),
                "checkpoint": self.services.roots.relative(self.out),
                "presentation_id": self.parts[-1]["id"] if self.parts else None, "present_url": self.present_url,
                "presentations": list(self.parts), "trials": self._trials(), "history": list(self.epochs),
                "data": self.data, "result": self.result, "swap": self.swap_result, "swap_error": self.swap_error,
                "swap_held": self.swap_held,
                "messages": list(self.messages), "timings": dict(self.timings),
            }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _worse(result: dict[str, Any]) -> str | None:
    """Why the adapted model should not replace the live one: held-out top-5 after more than
    one standard error below before (None when it is not, or without held-out trials)."""
    before, after = result.get("held_out_before"), result.get("held_out_after")
    if not (before and after) or before.get("top5") is None or after.get("top5") is None:
        return None
    if after["top5"] + (after.get("se_top5") or 0.0) < before["top5"]:
        return (f"the adapted model decodes the held-out images worse (top-5 {before['top5']:.3f} before, "
                f"{after['top5']:.3f} after, s.e. {after.get('se_top5') or 0.0:.3f})")
    return None


def _result_line(result: dict[str, Any]) -> str:
    before, after = result.get("held_out_before"), result.get("held_out_after")
    if before and after:
        return (f"adapted: held-out top-5 {before['top5']:.3f} before, {after['top5']:.3f} after "
                f"(chance {after['chance_top5']:.3f}, {after['n_trials']} trials)")
    return "adapted (no held-out trials to compare before and after)"
