"""Small helpers over pylsl: find a stream, open an inlet, read its channels and units.

Every time is on the LSL clock (``pylsl.local_clock()``). Inlets apply clock
synchronisation only (``proc_clocksync``): dejittering would smooth the
timestamps over a gap and hide it, and monotonizing would hide a clock that
steps back; acquisition wants to see both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pylsl

from .channels import listing
from .errors import InputError

logger = logging.getLogger("glimpse.streaming.lsl")

__all__ = ["PROCESSING", "channel_info", "describe", "find_markers", "find_stream",
           "list_streams", "open_inlet", "unit_scale"]

PROCESSING = pylsl.proc_clocksync

# Declared unit -> factor to SI (V, T, T/m). Lower-case keys; "µ" (micro sign) and
# "μ" (Greek mu) both mean micro. Integers ("-6") are mne-lsl's power-of-ten form.
_UNITS = {
    "": 1.0, "none": 1.0, "n/a": 1.0, "si": 1.0,
    "v": 1.0, "volt": 1.0, "volts": 1.0,
    "mv": 1e-3, "millivolt": 1e-3, "millivolts": 1e-3,
    "uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "microvolt": 1e-6, "microvolts": 1e-6,
    "nv": 1e-9, "nanovolt": 1e-9, "nanovolts": 1e-9,
    "t": 1.0, "tesla": 1.0, "nt": 1e-9, "pt": 1e-12, "ft": 1e-15, "femtotesla": 1e-15,
    "t/m": 1.0, "t/cm": 1e2, "ft/cm": 1e-13, "ft/mm": 1e-12, "ft/m": 1e-15, "pt/m": 1e-12,
}


def unit_scale(unit: str | None) -> float | None:
    """Factor that turns a value in ``unit`` into SI, or None for an unknown unit."""
    key = (unit or "").strip().lower()
    if key in _UNITS:
        return _UNITS[key]
    try:  # mne-lsl writes powers of ten: "-6" means the data are in µV
        exponent = int(key)
    except ValueError:
        return None
    return 10.0 ** exponent


def describe(info: pylsl.StreamInfo) -> str:
    """One line naming a stream: name, type, source id, channels and rate."""
    rate = info.nominal_srate()
    return (f"'{info.name()}' (type {info.type() or '?'}, source_id "
            f"'{info.source_id() or ''}', {info.channel_count()} channels, "
            f"{'irregular rate' if rate == pylsl.IRREGULAR_RATE else f'{rate:g} Hz'})")


def list_streams(wait: float = 1.0) -> list[pylsl.StreamInfo]:
    """Every stream visible now (waits ``wait`` s for the answers)."""
    return pylsl.resolve_streams(wait_time=wait)


def _quote(value: str) -> str:
    """An XPath 1.0 string literal (it has no escapes: choose the other quote)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise InputError("a stream name or source id without both ' and \"", repr(value),
                     "rename the stream")


def predicate(name: str | None = None, source_id: str | None = None) -> str:
    """The resolver predicate matching ``name`` and/or ``source_id``."""
    parts = []
    if name is not None:
        parts.append(f"name={_quote(name)}")
    if source_id is not None:
        parts.append(f"source_id={_quote(source_id)}")
    if not parts:
        raise InputError("a stream name or a source id", "neither",
                         "pass name=... (e.g. --stream NAME) or source_id=...")
    return " and ".join(parts)


def check_signal_stream(info: pylsl.StreamInfo) -> pylsl.StreamInfo:
    """Refuse streams that cannot carry brain signals: strings, irregular rate."""
    if info.channel_format() == pylsl.cf_string:
        raise InputError("a numeric signal stream (float32, double64 or integer channels)",
                         f"string-typed stream {describe(info)}",
                         "point glimpse at the signal stream, not at a markers stream")
    rate = info.nominal_srate()
    if not (math.isfinite(rate) and rate > 0):
        raise InputError("a signal stream with a regular nominal sampling rate",
                         f"irregular-rate stream {describe(info)}",
                         "declare the sampling rate in the outlet's StreamInfo "
                         "(nominal_srate > 0)")
    if info.channel_count() < 1:
        raise InputError("a stream with at least one channel", describe(info),
                         "fix the outlet's channel_count")
    return info


def find_stream(name: str | None = None, source_id: str | None = None, *,
                timeout: float = 10.0) -> pylsl.StreamInfo:
    """Wait up to ``timeout`` s for the signal stream with this name and/or source id.

    Returns the resolved (partial) info; with several matches, the newest outlet.
    Raises :class:`InputError` naming the streams that do exist when none matches,
    and for string-typed or irregular-rate streams.
    """
    pred = predicate(name, source_id)
    found = pylsl.resolve_bypred(pred, minimum=1, timeout=max(0.0, float(timeout)))
    if not found:
        others = list_streams(wait=min(1.0, max(0.2, float(timeout))))
        shown = listing([describe(s) for s in others], 20) or "no stream at all"
        want = " and ".join(f"{k} '{v}'" for k, v in (("name", name), ("source_id", source_id))
                            if v is not None)
        raise InputError(f"an LSL stream with {want} within {timeout:g} s",
                         f"the streams visible are: {shown}",
                         "start the outlet (e.g. `glimpse replay`), or pick one of these names")
    found.sort(key=lambda s: s.created_at())
    if len(found) > 1:
        logger.warning("%d streams match %s; using the newest, %s",
                       len(found), pred, describe(found[-1]))
    return check_signal_stream(found[-1])


def find_markers(name: str, timeout: float = 0.0) -> pylsl.StreamInfo | None:
    """The string stream called ``name`` (normally ``<signal name>-markers``), or None."""
    found = pylsl.resolve_bypred(predicate(name=name), minimum=1, timeout=timeout)
    found = [s for s in found if s.channel_format() == pylsl.cf_string]
    return max(found, key=lambda s: s.created_at()) if found else None


def open_inlet(info: pylsl.StreamInfo, *, max_buflen: int = 30, timeout: float = 5.0,
               recover: bool = False) -> tuple[pylsl.StreamInlet, pylsl.StreamInfo]:
    """Open and subscribe an inlet; return it with the full info (channel description).

    ``recover=False``: an outlet that goes away raises ``pylsl.LostError`` at the next
    pull, and the caller decides how to find it again (acquisition re-resolves by
    name and source id, so a restarted outlet is found either way).
    """
    inlet = pylsl.StreamInlet(info, max_buflen=max_buflen, recover=recover,
                              processing_flags=PROCESSING)
    try:
        full = inlet.info(timeout=timeout)
        inlet.open_stream(timeout=timeout)
        inlet.time_correction(timeout=timeout)  # the first estimate takes a few ms
    except (pylsl.util.TimeoutError, pylsl.util.LostError) as err:
        inlet.close_stream()
        raise InputError(f"stream {describe(info)} to answer within {timeout:g} s",
                         type(err).__name__, "check that the outlet is still running") from None
    return inlet, full


def channel_info(info: pylsl.StreamInfo) -> tuple[list[str] | None, list[str], list[str]]:
    """Channel labels (None when the stream declares none), types and units."""
    n = info.channel_count()

    def fill(values: Sequence[str | None] | None) -> list[str]:
        values = list(values or [])[:n]
        return [v or "" for v in values] + [""] * (n - len(values))

    labels = info.get_channel_labels()
    if labels is not None:
        labels = list(labels)[:n]
        if len(labels) < n or any(v is None for v in labels):
            labels = None
    return labels, fill(info.get_channel_types()), fill(info.get_channel_units())
