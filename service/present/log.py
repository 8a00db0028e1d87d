"""A presentation's folder on disk, written as it runs and readable after a crash.

::

    <presentations dir>/<YYYYmmdd-HHMMSS>-<id>/
      design.json     the id, stream, design (stimuli with real paths, trials), at creation
      events.jsonl    one JSON line per event as it happens: start, onset, offset,
                      response, invalid, end (flushed at once: safe against SIGKILL)
      trials.tsv      one row per trial (records.TSV_COLUMNS), when the run ends
      trials.json     the same rows and the summary, when the run ends
      report.json     the timing report (the page's and the service's), when the run ends

:func:`read_presentation` rebuilds the state from ``design.json`` and
``events.jsonl`` alone (a torn last line is skipped), so a presentation that never
reached its end is still readable: its trials are then final, the one a crash
touched invalid ("interrupted").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import InputError

from .design import Design
from .records import TrialRecords, tsv_text

__all__ = ["FORMAT", "PresentationLog", "apply_event", "read_presentation"]

logger = logging.getLogger("glimpse.service.present.log")

FORMAT = "glimpse-presentation"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PresentationLog:
    """The folder of one presentation; ``header`` goes to design.json at once."""

    def __init__(self, folder: Path, header: dict[str, Any]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=False)
        _write_atomic(self.folder / "design.json", json.dumps({"format": FORMAT, "version": 1, **header},
                                                              ensure_ascii=False, indent=1))
        self._events = open(self.folder / "events.jsonl", "a", encoding="utf-8")

    def append(self, event: dict[str, Any]) -> None:
        """One event line, flushed to the OS (a killed service loses nothing written)."""
        if self._events.closed:
            logger.warning("presentation %s: event %s after the log was closed", self.folder.name,
                           event.get("event"))
            return
        self._events.write(_dumps(event) + "\n")
        self._events.flush()

    def finish(self, rows: list[dict[str, Any]], summary: dict[str, Any], report: dict[str, Any]) -> None:
        """Write the trial table and the report (whole files, atomically)."""
        _write_atomic(self.folder / "trials.tsv", tsv_text(rows))
        _write_atomic(self.folder / "trials.json", json.dumps({"summary": summary, "trials": rows},
                                                              ensure_ascii=False, indent=1))
        _write_atomic(self.folder / "report.json", json.dumps(report, ensure_ascii=False, indent=1))
        if not self._events.closed:
            os.fsync(self._events.fileno())

    def close(self) -> None:
        if not self._events.closed:
            self._events.flush()
            os.fsync(self._events.fileno())
            self._events.close()


def apply_event(records: TrialRecords, event: dict[str, Any]) -> Any:
    """Apply one logged event to ``records`` (what the live presentation did with it)."""
    kind = event["event"]
    if kind == "onset":
        return records.onset(event["trial"], event["stim_id"], event["t_lsl"], event["t_browser_ms"],
                             event["offset_ms"], event["uncertainty_ms"])
    if kind == "offset":
        return records.offset(event["trial"], event["t_lsl"])
    if kind == "response":
        return records.response(event["t_lsl"])
    if kind == "invalid":
        return records.invalidate(event["trials"], event["reason"])
    return None


def read_presentation(folder: str | os.PathLike) -> dict[str, Any]:
    """A presentation folder as the service would describe it: id, stream, state, stopped
    reason, design, per-trial rows, summary and report (None until the run ended).

    For the calibration flow and for tools: valid trials are ``row["valid"]``.
    """
    folder = Path(folder)
    try:
        header = json.loads((folder / "design.json").read_text(encoding="utf-8"))
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
        design = Design.from_dict(header["design"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"a presentation folder ({FORMAT}: design.json, events.jsonl)",
                         f"{folder} ({type(err).__name__}: {err})", "name a folder the service "
                         "wrote under its presentations dir") from None
    records = TrialRecords(design)
    state, reason, last_t = "created", None, 0.0
    lines = (folder / "events.jsonl").read_bytes().splitlines() if (folder / "events.jsonl").is_file() else []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn last line
        last_t = max(last_t, float(event.get("t_lsl") or event.get("t") or 0.0))
        if event.get("event") == "start":
            state = "running"
        elif event.get("event") == "end":
            state, reason = event["state"], event.get("reason")
        else:
            apply_event(records, event)
    if state == "running":  # the service went away mid-run
        records.invalidate(records.touched(), "interrupted")
        state, reason = "interrupted", "the service stopped during the run"
    final = state not in ("created",)
    report = None
    if (folder / "report.json").is_file():
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return {"id": header.get("id"), "stream": header.get("stream"), "state": state, "stopped_reason": reason,
            "folder": str(folder), "design": header["design"],
            "trials": records.rows(final=final, now=last_t),
            "summary": records.summary(final=final, now=last_t), "report": report}
