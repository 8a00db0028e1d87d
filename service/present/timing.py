"""The timing report of a presentation: the page's figures checked against the markers.

The page measures what only it can see (refresh rate from ``requestAnimationFrame``
intervals, missed frames, achieved against planned durations, its clock offset and
uncertainty). The service adds what the markers say on the LSL clock: onset-to-onset
intervals against the design's (``soa_error_ms``), image durations from onset and
offset (``duration_error_ms``) and the clock uncertainty each onset was mapped with.
A clock uncertainty over :data:`SYNC_WARN_MS` is a warning in the report: marker
times may be off by that much.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

__all__ = ["SYNC_WARN_MS", "build_report", "error_stats", "service_timing", "sync_warning"]

SYNC_WARN_MS = 10.0
_MAX_PAGE_WARNINGS = 20


def error_stats(values: list[float]) -> dict[str, Any]:
    """``{"n", "mean", "sd", "median", "max_abs"}`` of timing errors in ms (None when empty)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"n": 0, "mean": None, "sd": None, "median": None, "max_abs": None}
    def ms(value: float) -> float:
        return round(value, 3) + 0.0  # + 0.0: no "-0.0" in a report

    return {"n": len(values), "mean": ms(statistics.fmean(values)), "sd": ms(statistics.pstdev(values)),
            "median": ms(statistics.median(values)), "max_abs": ms(max(abs(v) for v in values))}


def service_timing(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the markers (LSL onsets and offsets) say about the run's timing."""
    shown = [r for r in rows if r["shown"]]
    soa = [((b["onset_lsl"] - a["onset_lsl"]) * 1000.0) - (b["planned_onset_ms"] - a["planned_onset_ms"])
           for a, b in zip(shown, shown[1:]) if b["trial"] == a["trial"] + 1]
    durations = [r["duration_ms"] - r["image_ms"] for r in shown if r["duration_ms"] is not None]
    uncertainty = [r["clock_uncertainty_ms"] for r in shown]
    return {"n_markers": len(shown), "soa_error_ms": error_stats(soa),
            "duration_error_ms": error_stats(durations),
            "clock_uncertainty_ms": {"median": round(statistics.median(uncertainty), 3) if uncertainty else None,
                                     "max": round(max(uncertainty), 3) if uncertainty else None}}


def sync_warning(uncertainty_ms: float | None, warn_ms: float = SYNC_WARN_MS) -> str | None:
    """The warning for a clock uncertainty over ``warn_ms``, else None."""
    if uncertainty_ms is None or uncertainty_ms <= warn_ms:
        return None
    return (f"clock sync uncertain: marker times may be off by up to {uncertainty_ms:.1f} ms "
            f"(more than {warn_ms:g} ms); the round trips to the service were slow: run the page on "
            "the machine of the service or a quiet wired network, and close what loads the CPU")


def build_report(page: dict[str, Any] | None, rows: list[dict[str, Any]], *,
                 warn_ms: float = SYNC_WARN_MS) -> dict[str, Any]:
    """The report kept with a presentation: the page's, the service's, and the warnings."""
    page = dict(page or {})
    service = service_timing(rows)
    warnings = [str(w)[:500] for w in (page.get("warnings") or [])[:_MAX_PAGE_WARNINGS]
                if isinstance(w, str)]
    sync = page.get("sync") if isinstance(page.get("sync"), dict) else {}
    page_uncertainty = sync.get("uncertainty_ms")
    worst = max([u for u in (page_uncertainty, service["clock_uncertainty_ms"]["max"])
                 if isinstance(u, (int, float)) and not isinstance(u, bool) and math.isfinite(u)],
                default=None)
    warning = sync_warning(worst, warn_ms)
    sync_uncertain = warning is not None
    if sync_uncertain and not any(w.startswith("clock sync uncertain") for w in warnings):
        warnings.append(warning)
    return {"page": page, "service": service, "warnings": warnings, "sync_uncertain": sync_uncertain,
            "sync_warn_ms": warn_ms}
