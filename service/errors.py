"""Errors of the running service, each with the HTTP status it maps to.

All are :class:`~glimpse.streaming.errors.InputError` (expected / got / fix), so the
CLI prints them as it prints any bad input, and the API returns them as JSON with
``status`` (``glimpse.service.api.errors``).
"""

from __future__ import annotations

from glimpse.streaming.errors import InputError

__all__ = ["Conflict", "Forbidden", "NotFound", "TooLarge", "Unauthorized", "status_of"]


class NotFound(InputError):
    """An id or path that names nothing the service knows (404); ``got`` lists the valid ones."""
    status = 404


class Forbidden(InputError):
    """A path outside the data roots (403)."""
    status = 403


class Unauthorized(InputError):
    """A missing or wrong token on a non-loopback bind (401)."""
    status = 401


class Conflict(InputError):
    """A request that contradicts the service's state, e.g. stopping a stopped session (409)."""
    status = 409


class TooLarge(InputError):
    """A request body or WebSocket message over its size limit (413)."""
    status = 413


def status_of(error: InputError) -> int:
    """The HTTP status of an input error: its class's, else 400."""
    return getattr(error, "status", 400)
