"""One WebSocket text message -> a JSON object with a known "type": the checks the hub
(/ws) and the presentation socket (/ws/present/{id}) share."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from ..errors import InputError, TooLarge

__all__ = ["decode_message", "short"]


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity are not JSON


def decode_message(message: dict, max_bytes: int, types: Collection[str], *, too_large_fix: str,
                   example: str) -> dict[str, Any]:
    """The JSON object of one ASGI receive event, whose "type" is one of ``types``.

    InputError names what came (binary, not JSON, another type); TooLarge a message
    over ``max_bytes``. ``too_large_fix`` and ``example`` go into those errors.
    """
    text, data = message.get("text"), message.get("bytes")
    size = len(text.encode("utf-8", "surrogatepass")) if text is not None else len(data or b"")
    if size > max_bytes:
        raise TooLarge(f"a message of at most {max_bytes} bytes", f"{size} bytes", too_large_fix)
    expected = 'a JSON object with "type" one of ' + ", ".join(types)
    if text is None:
        raise InputError(expected, f"a binary message of {size} bytes", "send JSON as a text message")
    try:
        request = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise InputError(expected, f"text that is not JSON ({error}): {short(text)}",
                         "send one JSON object per message") from None
    if not isinstance(request, dict) or request.get("type") not in types:
        got = (f"type {short(request.get('type'))}" if isinstance(request, dict)
               else f"a JSON {type(request).__name__}")
        raise InputError(expected, got, f"e.g. {example}")
    return request
