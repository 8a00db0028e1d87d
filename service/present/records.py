"""Per-trial records of a presentation: onsets, offsets, catch responses, validity. No I/O.

:class:`TrialRecords` applies the page's events (onset, offset, response, invalid) to
the design's trials, refusing what contradicts the design: a stimulus that is not in
it, an onset for a trial that already had one. The same methods replay a
presentation folder's ``events.jsonl``, so a log read back after a crash is the
state the service had.

Catch responses are scored on the LSL clock: a key press within ``response_window_ms``
of a catch trial's onset that has no response yet is a hit (reaction time from the
onset); any other press is a false alarm, counted on the trial whose image or
fixation it fell in. A catch trial whose window passed without a hit is a miss.
A trial is valid when it was shown and no stop touched it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from glimpse.streaming.channels import listing

from ..errors import Conflict, InputError, NotFound
from .design import Design

__all__ = ["TSV_COLUMNS", "TrialRecord", "TrialRecords", "tsv_text"]

TSV_COLUMNS = ("trial", "stim_id", "stim_file", "concept", "trial_type", "catch", "planned_onset_ms",
               "image_ms", "isi_ms", "onset_lsl", "onset_browser_ms", "offset_lsl", "duration_ms",
               "clock_offset_ms", "clock_uncertainty_ms", "shown", "valid", "invalid_reason",
               "response", "rt_ms", "n_false_alarms")


@dataclass
class TrialRecord:
    """One trial as planned and as it went (LSL seconds, ms elsewhere)."""

    trial: int
    stim_id: str
    stim_file: str
    concept: str
    trial_type: str
    catch: bool
    planned_onset_ms: float
    image_ms: float
    isi_ms: float
    onset_lsl: float | None = None
    onset_browser_ms: float | None = None
    offset_lsl: float | None = None
    clock_offset_ms: float | None = None
    clock_uncertainty_ms: float | None = None
    invalid_reason: str | None = None
    hit_lsl: float | None = None
    n_false_alarms: int = 0

    @property
    def shown(self) -> bool:
        return self.onset_lsl is not None


class TrialRecords:
    """The trials of ``design`` and what happened to them.

    ``shown_path(path)`` gives the ``stim_file`` recorded (absolute by default, as
    replay's markers name stimuli).
    """

    def __init__(self, design: Design, shown_path=str):
        self.design = design
        self.window_s = design.request.response_window_ms / 1000.0
        stimuli = design.stimuli
        self.records = [TrialRecord(trial=t.index, stim_id=t.stim_id, stim_file=shown_path(stimuli[t.stimulus].path),
                                    concept=stimuli[t.stimulus].concept, trial_type=t.trial_type, catch=t.catch,
                                    planned_onset_ms=t.planned_onset_ms, image_ms=t.image_ms, isi_ms=t.isi_ms)
                        for t in design.trials]
        self._ids = {s.id for s in stimuli}
        self.last_onset: int | None = None
        self.n_false_alarms_before = 0  # presses before the first image

    # ------------------------------------------------------------------ events

    def record(self, trial: Any) -> TrialRecord:
        """The record of trial ``trial``; InputError when the design has no such trial."""
        n = len(self.records)
        if not isinstance(trial, int) or isinstance(trial, bool) or not 0 <= trial < n:
            raise NotFound(f"a trial index of this presentation (0 to {n - 1})", repr(trial),
                           "send the index of the trial from the design")
        return self.records[trial]

    def onset(self, trial: int, stim_id: str, t_lsl: float, t_browser_ms: float,
              offset_ms: float, uncertainty_ms: float) -> TrialRecord:
        """Trial ``trial`` showed ``stim_id`` from ``t_lsl``; refuses a stimulus the design
        does not show there, and a second onset."""
        record = self.record(trial)
        if stim_id not in self._ids:
            raise InputError(f"a stimulus of the presented design (trial {trial} shows {record.stim_id!r})",
                             f"{stim_id!r}, which is not in the design; its stimuli are "
                             f"{listing(sorted(self._ids), 5)}", "send the stim_id of the design's trial")
        if stim_id != record.stim_id:
            raise InputError(f"trial {trial}'s stimulus {record.stim_id!r}", repr(stim_id),
                             "send each trial's own stim_id from the design")
        if record.shown:
            raise Conflict(f"one onset per trial (trial {trial} began at {record.onset_lsl:.4f})",
                           "a second onset", "send the onset once, on the frame the image was first drawn")
        if self.last_onset is not None and trial < self.last_onset:
            raise Conflict(f"onsets in the design's order (after trial {self.last_onset})",
                           f"trial {trial}", "show the trials in order")
        record.onset_lsl, record.onset_browser_ms = float(t_lsl), float(t_browser_ms)
        record.clock_offset_ms, record.clock_uncertainty_ms = float(offset_ms), float(uncertainty_ms)
        self.last_onset = trial
        return record

    def offset(self, trial: int, t_lsl: float) -> TrialRecord:
        """Trial ``trial``'s image left the screen at ``t_lsl``."""
        record = self.record(trial)
        if not record.shown:
            raise Conflict(f"an onset for trial {trial} before its offset", "an offset alone",
                           "send the onset first")
        if record.offset_lsl is not None:
            raise Conflict(f"one offset per trial (trial {trial})", "a second offset", "send it once")
        record.offset_lsl = float(t_lsl)
        return record

    def response(self, t_lsl: float) -> dict[str, Any]:
        """Score a key press at ``t_lsl``: ``{"outcome": "hit" | "false_alarm", "trial", "rt_ms"}``."""
        for record in self.records:
            if (record.catch and record.shown and record.hit_lsl is None
                    and record.invalid_reason is None
                    and record.onset_lsl <= t_lsl <= record.onset_lsl + self.window_s):
                record.hit_lsl = float(t_lsl)
                return {"outcome": "hit", "trial": record.trial,
                        "rt_ms": round((t_lsl - record.onset_lsl) * 1000.0, 1)}
        current = self._trial_at(t_lsl)
        if current is None:
            self.n_false_alarms_before += 1
        else:
            current.n_false_alarms += 1
        return {"outcome": "false_alarm", "trial": None if current is None else current.trial, "rt_ms": None}

    def _trial_at(self, t_lsl: float) -> TrialRecord | None:
        """The shown trial whose image or fixation holds ``t_lsl`` (the last one begun)."""
        begun = [r for r in self.records if r.shown and r.onset_lsl <= t_lsl]
        return max(begun, key=lambda r: r.onset_lsl) if begun else None

    def invalidate(self, trials: list[int], reason: str) -> list[int]:
        """Mark shown ``trials`` invalid (``reason``); returns those marked."""
        marked = []
        for trial in trials:
            record = self.record(trial)
            if record.shown and record.invalid_reason is None:
                record.invalid_reason = reason
                marked.append(trial)
        return marked

    def touched(self) -> list[int]:
        """The trials a stop now would touch: the last one begun (its image or fixation is on)."""
        return [] if self.last_onset is None else [self.last_onset]

    # ------------------------------------------------------------------ results

    def rows(self, *, final: bool, now: float) -> list[dict[str, Any]]:
        """One dict per trial (the TSV's columns); ``final``: trials never shown are invalid."""
        return [self._row(r, final, now) for r in self.records]

    def _row(self, r: TrialRecord, final: bool, now: float) -> dict[str, Any]:
        response, rt = None, None
        if r.catch and r.shown:
            if r.hit_lsl is not None:
                response, rt = "hit", round((r.hit_lsl - r.onset_lsl) * 1000.0, 1)
            elif r.invalid_reason is None and (final or now > r.onset_lsl + self.window_s):
                response = "miss"
        elif r.n_false_alarms:
            response = "false_alarm"
        duration = None if r.offset_lsl is None else round((r.offset_lsl - r.onset_lsl) * 1000.0, 2)
        reason = r.invalid_reason or (None if r.shown or not final else "not shown")
        row = {k: v for k, v in asdict(r).items() if k != "hit_lsl"}
        return {**row, "duration_ms": duration, "shown": r.shown,
                "valid": r.shown and r.invalid_reason is None, "invalid_reason": reason,
                "response": response, "rt_ms": rt}

    def summary(self, *, final: bool, now: float) -> dict[str, Any]:
        """Counts: shown, valid, invalid; catch hits, misses, false alarms, median RT."""
        rows = self.rows(final=final, now=now)
        catch = [r for r in rows if r["catch"] and r["shown"]]
        rts = sorted(r["rt_ms"] for r in catch if r["rt_ms"] is not None)
        return {"n_trials": len(rows), "n_shown": sum(r["shown"] for r in rows),
                "n_valid": sum(r["valid"] for r in rows),
                "n_invalid": sum(r["shown"] and not r["valid"] for r in rows),
                "catch": {"n": sum(r["catch"] for r in rows),
                          "hits": sum(r["response"] == "hit" for r in catch),
                          "misses": sum(r["response"] == "miss" for r in catch),
                          "false_alarms": self.n_false_alarms_before + sum(r["n_false_alarms"] for r in rows),
                          "median_rt_ms": rts[len(rts) // 2] if rts else None}}


def tsv_text(rows: list[dict[str, Any]]) -> str:
    """The rows as BIDS-like TSV: one header line, "n/a" for missing values."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "n/a"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return repr(round(value, 6))
        return str(value).replace("\t", " ").replace("\n", " ")

    lines = ["\t".join(TSV_COLUMNS)]
    lines += ["\t".join(cell(row.get(c)) for c in TSV_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"
