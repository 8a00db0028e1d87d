"""WebSocket endpoints: /ws (subscribe by message) and /ws/sessions/{id}.

The handshake checks the token (``?token=`` or the ``glimpse_token`` cookie) when one
is set; a wrong or missing one is refused with HTTP 401 before the upgrade. An
accepted connection is served by the app's :class:`~glimpse.service.api.hub.Hub`.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from .auth import websocket_token_ok
from .errors import error_response

__all__ = ["router"]

router = APIRouter()

CLOSE_UNAUTHORIZED = 4401  # where the server cannot answer the handshake with HTTP 401


@router.websocket("/ws")
async def ws_any(websocket: WebSocket) -> None:
    """A connection that subscribes to sessions by message."""
    await _serve(websocket, [])


@router.websocket("/ws/sessions/{session_id}")
async def ws_session(websocket: WebSocket, session_id: str) -> None:
    """A connection subscribed to ``session_id`` from the start."""
    await _serve(websocket, [session_id])


async def _serve(websocket: WebSocket, sessions: list[str]) -> None:
    if not websocket_token_ok(websocket):
        await _refuse(websocket)
        return
    await websocket.accept()
    await websocket.app.state.hub.serve(websocket, sessions)


async def _refuse(websocket: WebSocket) -> None:
    # websocket_token_ok has logged who was refused and why.
    if "websocket.http.response" not in websocket.scope.get("extensions", {}):
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="unauthorized")
        return
    await websocket.send_denial_response(error_response(
        401, "the service's token in the ?token= query parameter or the glimpse_token cookie",
        "a missing or wrong token", "open the viewer from the address `glimpse serve` prints, "
        "or add ?token=<GLIMPSE_TOKEN> to the WebSocket URL", headers={"WWW-Authenticate": "Bearer"}))
