"""Messages between the presentation page and the service (``/ws/present/{id}``). No I/O.

The page sends JSON text messages; times are LSL seconds (``t_lsl``: the page's
browser time mapped by its own offset estimate) and the raw browser time in ms
(``t_browser_ms`` = ``performance.timeOrigin`` + the frame's or event's timestamp)::

    {"type": "ping", "id": int, "t1": browser ms}       -> {"type": "pong", "id", "t1", "t2", "t3"}
    {"type": "start", "sync": {...}, "screen": {...}}    -> {"type": "started", "markers_stream"}
    {"type": "onset", "trial", "stim_id", "t_lsl", "t_browser_ms", "offset_ms", "uncertainty_ms"}
                                                         -> {"type": "marker", "trial", "t_lsl"}
    {"type": "offset", "trial", "t_lsl", "t_browser_ms"} -> nothing
    {"type": "response", "key", "t_lsl", "t_browser_ms"} -> {"type": "response", "outcome", "trial", "rt_ms"}
    {"type": "invalid", "trials": [int], "reason", "t_lsl"} -> {"type": "invalid", "trials"}
    {"type": "report", "report": {...}}                  -> {"type": "summary", "presentation": {...}}

t2 (at receive) and t3 (at send) are ``pylsl.local_clock()`` seconds, as the hub's
pongs. A bad message gets ``{"type": "error", "expected", "got", "fix", "message"}``
and the socket stays open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..api.wsjson import decode_message, short
from ..errors import InputError

__all__ = ["CLIENT_TYPES", "error_reply", "parse_message"]


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and abs(value) < 1e300 and math.isfinite(value))


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "number": ("a finite number", _number),
    "ms": ("a finite number (ms)", _number),
    "lsl": ("LSL seconds (a finite number)", _number),
    "nonneg": ("a finite number >= 0", lambda v: _number(v) and v >= 0),
    "index": ("an integer >= 0", _int),
    "text": ("a string of at most 200 characters", lambda v: isinstance(v, str) and len(v) <= 200),
    "id": ("a stimulus id (a string of at most 1000 characters)", lambda v: isinstance(v, str) and len(v) <= 1000),
    "object": ("a JSON object", lambda v: isinstance(v, dict)),
    "indices": ("a list of integers >= 0", lambda v: isinstance(v, list) and len(v) <= 100_000
                and all(_int(i) for i in v)),
    "lsl_or_null": ("LSL seconds or null", lambda v: v is None or _number(v)),
}

# type -> required fields and their rules; optional ones carry a default.
_MESSAGES: dict[str, dict[str, str]] = {
    "ping": {"id": "index", "t1": "ms"},
    "start": {},
    "onset": {"trial": "index", "stim_id": "id", "t_lsl": "lsl", "t_browser_ms": "ms",
              "offset_ms": "number", "uncertainty_ms": "nonneg"},
    "offset": {"trial": "index", "t_lsl": "lsl", "t_browser_ms": "ms"},
    "response": {"key": "text", "t_lsl": "lsl", "t_browser_ms": "ms"},
    "invalid": {"trials": "indices", "reason": "text"},
    "report": {"report": "object"},
}
_OPTIONAL: dict[str, dict[str, tuple[str, Any]]] = {
    "start": {"sync": ("object", {}), "screen": ("object", {})},
    "invalid": {"t_lsl": ("lsl_or_null", None)},
}
_EXAMPLES = {
    "ping": '{"type": "ping", "id": 0, "t1": performance.timeOrigin + performance.now()}',
    "onset": '{"type": "onset", "trial": 0, "stim_id": "<the trial\'s stim_id>", "t_lsl": 1234.5678, '
             '"t_browser_ms": 1.7e12, "offset_ms": -1.7e12, "uncertainty_ms": 0.4}',
    "invalid": '{"type": "invalid", "trials": [3], "reason": "the tab was hidden", "t_lsl": 1234.5}',
}
CLIENT_TYPES = tuple(_MESSAGES)


def parse_message(message: dict, max_bytes: int) -> dict[str, Any]:
    """One ASGI receive event -> a checked request (only the known fields); InputError
    (TooLarge over ``max_bytes``) otherwise."""
    request = decode_message(message, max_bytes, tuple(_MESSAGES),
                             too_large_fix="send one event per message; keep the report to summary figures",
                             example='{"type": "ping", "id": 0, "t1": 1.7e12}')
    kind = request["type"]
    checked: dict[str, Any] = {"type": kind}
    example = _EXAMPLES.get(kind, f'{{"type": "{kind}", ...}} as the protocol describes')
    for field, rule in _MESSAGES[kind].items():
        checked[field] = _field(request, kind, field, rule, example)
    for field, (rule, default) in _OPTIONAL.get(kind, {}).items():
        checked[field] = _field(request, kind, field, rule, example) if field in request else default
    return checked


def _field(request: dict, kind: str, field: str, rule: str, example: str) -> Any:
    what, ok = _RULES[rule]
    value = request.get(field)
    if field not in request or not ok(value):
        got = "nothing" if field not in request else short(value)
        article = "an" if kind[0] in "aeiou" else "a"
        raise InputError(f'"{field}": {what} in {article} {kind} message', got, f"send e.g. {example}")
    return float(value) if rule in ("number", "ms", "lsl", "nonneg") else value


def error_reply(error: InputError) -> dict[str, Any]:
    """The "error" message answering a bad client message."""
    return {"type": "error", "expected": error.expected, "got": error.got, "fix": error.fix,
            "message": str(error)}
