"""Who may talk to the service, and how much they may send.

When a token is set (``--token`` / ``GLIMPSE_TOKEN``; required off loopback), every
REST call and WebSocket handshake must carry it: ``Authorization: Bearer TOKEN``, the
``glimpse_token`` cookie, or ``?token=TOKEN`` (browsers cannot set headers on a
WebSocket). Tokens are compared in constant time. :class:`BodyLimit` refuses request
bodies over ``settings.max_body_bytes`` (413) before they are read in full.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Request, WebSocket
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Unauthorized
from .errors import error_response

logger = logging.getLogger("glimpse.service.api.auth")

__all__ = ["COOKIE", "BodyLimit", "token_dependency", "websocket_token_ok"]

COOKIE = "glimpse_token"
_EXPECTED = f"a token: Authorization: Bearer TOKEN, the {COOKIE} cookie or ?token=TOKEN"
_FIX = "pass the token the service was started with (--token / GLIMPSE_TOKEN)"


def _presented(conn: HTTPConnection) -> str | None:
    """The token a request or handshake carries, wherever it carries it."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return conn.cookies.get(COOKIE) or conn.query_params.get("token")


def _check(conn: HTTPConnection) -> str | None:
    """None when ``conn`` may proceed, else what it got wrong ("no token", "a wrong token")."""
    token = conn.app.state.settings.token
    if token is None:
        return None
    presented = _presented(conn)
    if presented is None:
        return "no token"
    if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
        return "a wrong token"
    return None


async def token_dependency(request: Request) -> None:
    """FastAPI dependency: Unauthorized (401) unless the request carries the token."""
    problem = _check(request)
    if problem is not None:
        raise Unauthorized(_EXPECTED, problem, _FIX)


def websocket_token_ok(websocket: WebSocket) -> bool:
    """True when the handshake carries the token (or none is set); the hub refuses it else."""
    problem = _check(websocket)
    if problem is not None:
        client = websocket.client.host if websocket.client else "unknown"
        logger.info("WebSocket %s from %s refused: %s", websocket.url.path, client, problem)
    return problem is None


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; FastAPI re-raises HTTPExceptions as they are."""


class BodyLimit:
    """Pure ASGI middleware: request bodies over ``max_body_bytes`` get 413.

    A declared Content-Length over the limit is refused before the body is read; a
    chunked body is counted as it arrives and refused when it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, int(max_body_bytes)

    def _detail(self, got: str) -> dict[str, str]:
        return {"expected": f"a request body of at most {self.max_body_bytes} bytes", "got": got,
                "fix": "send less in one request (the limit is --max-body-bytes / "
                       "GLIMPSE_MAX_BODY_BYTES)"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = error_response(413, **self._detail(f"Content-Length {declared}"),
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(413, self._detail(f"more than {self.max_body_bytes} bytes"))
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge as exc:  # a reader outside FastAPI's exception handlers
            if started:
                raise
            await error_response(413, **exc.detail)(scope, receive, send)
