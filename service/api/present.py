"""``/api/presentations``, ``/ws/present/{id}`` and the page ``/present``.

REST (token as everywhere, ``auth.token_dependency``)::

    POST /api/presentations                   a PresentationRequest -> 201, the presentation with its design
    GET  /api/presentations                   every presentation kept in memory, without designs
    GET  /api/presentations/{id}              one, with its design (stimuli with URLs, trials)
    GET  /api/presentations/{id}/trials       the per-trial log (JSON; ?format=tsv for the TSV)
    GET  /api/presentations/{id}/report       the timing report (409 until the run ended)
    GET  /api/presentations/{id}/stimuli/{k}  stimulus k's image

The WebSocket checks the token at the handshake as ``ws.py`` does (401 before the
upgrade) and speaks :mod:`glimpse.service.present.protocol`: pings answered at once
(t2 at receive, t3 at send, on ``pylsl.local_clock()``), the page's events applied by
:class:`~glimpse.service.present.Presentation`. Bad messages are answered with an
error and the socket stays open; more than ``MAX_BAD_MESSAGES`` close it (1008), one
over the size limit too (1009). A message to a presentation the service ended
itself (a cancelled calibration, a lost stream) is answered with ``{"type": "ended",
"state", "reason"}`` and the socket closes (1000): the page stops its run. The app holds a
:class:`~glimpse.service.present.PresentationManager` as ``app.state.presentations``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib.resources import files
from typing import Any, Literal

import pylsl
from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from ..errors import Conflict, InputError, TooLarge
from ..present import PresentationManager, PresentationRequest
from ..present.protocol import error_reply, parse_message
from ..present.records import tsv_text
from .auth import token_dependency, websocket_token_ok
from .errors import error_response

__all__ = ["MAX_BAD_MESSAGES", "router"]

logger = logging.getLogger("glimpse.service.api.present")

MAX_BAD_MESSAGES = 32
CLOSE_UNAUTHORIZED, CLOSE_POLICY, CLOSE_TOO_BIG = 4401, 1008, 1009

router = APIRouter()
api = APIRouter(prefix="/api/presentations", tags=["presentations"], dependencies=[Depends(token_dependency)])


def _manager(app) -> PresentationManager:
    return app.state.presentations


@api.post("", status_code=201)
async def create_presentation(body: PresentationRequest, request: Request) -> dict[str, Any]:
    """Build a design from an image folder or a gallery; open its markers stream."""
    presentation = await run_in_threadpool(_manager(request.app).create, body)
    return presentation.describe()


@api.get("")
async def list_presentations(request: Request) -> list[dict[str, Any]]:
    """The presentations in memory, newest last, without their designs."""
    return [p.describe(full=False) for p in _manager(request.app).list()]


@api.get("/{presentation_id}")
async def get_presentation(presentation_id: str, request: Request) -> dict[str, Any]:
    """One presentation: state, design, summary and report."""
    return _manager(request.app).get(presentation_id).describe()


@api.get("/{presentation_id}/trials", response_model=None)
async def get_trials(presentation_id: str, request: Request,
                     fmt: Literal["json", "tsv"] = Query("json", alias="format")) -> Any:
    """The per-trial log: onset on the LSL clock, stimulus, validity, catch response."""
    presentation = _manager(request.app).get(presentation_id)
    rows = presentation.rows()
    if fmt == "tsv":
        return PlainTextResponse(tsv_text(rows), media_type="text/tab-separated-values")
    return {"id": presentation.id, "state": presentation.state, "trials": rows}


@api.get("/{presentation_id}/report")
async def get_report(presentation_id: str, request: Request) -> dict[str, Any]:
    """The timing report, once the run ended (done or stopped)."""
    presentation = _manager(request.app).get(presentation_id)
    if presentation.report is None:
        raise Conflict("a presentation whose run ended", f"state {presentation.state!r}, no report yet",
                       "wait for the page to finish the run (or stop it)")
    return {"id": presentation.id, "state": presentation.state,
            "stopped_reason": presentation.stopped_reason, "report": presentation.report}


@api.get("/{presentation_id}/stimuli/{index}")
async def get_stimulus(presentation_id: str, index: int, request: Request) -> Response:
    """A stimulus of the design, by its index (the design's ``stimuli[k].url``)."""
    path = _manager(request.app).stimulus_path(presentation_id, index)
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/present", include_in_schema=False)
async def present_page() -> FileResponse:
    """The presentation page (web/present.html); it asks for the token when one is set."""
    return FileResponse(str(files("glimpse.web") / "present.html"), headers={"Cache-Control": "no-cache"})


@router.websocket("/ws/present/{presentation_id}")
async def ws_present(websocket: WebSocket, presentation_id: str) -> None:
    """The presentation page's connection: clock pings and the run's events."""
    if not websocket_token_ok(websocket):
        await _deny(websocket, 401, "the service's token in the ?token= query parameter or the "
                    "glimpse_token cookie", "a missing or wrong token",
                    "open /present from the service's address, or add ?token=<GLIMPSE_TOKEN>")
        return
    manager = _manager(websocket.app)
    try:
        presentation = manager.get(presentation_id)
    except InputError as error:
        await _deny(websocket, 404, error.expected, error.got, error.fix)
        return
    await websocket.accept()
    conn = object()  # this connection, as the presentation knows its owner
    try:
        await _serve(websocket, presentation, conn, manager.pong_delay_s,
                     websocket.app.state.settings.ws_max_message_bytes)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        await run_in_threadpool(presentation.disconnected, conn)


async def _serve(websocket: WebSocket, presentation, conn: object, pong_delay_s: float,
                 max_bytes: int) -> None:
    n_bad = 0
    while True:
        message = await websocket.receive()
        t2 = pylsl.local_clock()
        if message["type"] == "websocket.disconnect":
            return
        try:
            request = parse_message(message, max_bytes)
            if request["type"] == "ping":
                await _pong(websocket, request, t2, pong_delay_s)
                continue
            if request["type"] == "report":  # writes the trial table and report files
                reply = await run_in_threadpool(presentation.handle, request, conn, t2)
            else:
                reply = presentation.handle(request, conn, t2)
        except TooLarge as error:
            logger.info("presentation page sent %s: closed (1009)", error.got)
            await websocket.close(CLOSE_TOO_BIG, "message too big")
            return
        except InputError as error:
            if presentation.ended_by_service:  # a cancelled calibration, a lost stream
                await websocket.send_text(json.dumps({"type": "ended", "state": presentation.state,
                                                      "reason": presentation.stopped_reason}))
                await websocket.close(1000, "the presentation ended")
                return
            n_bad += 1
            logger.info("presentation %s: bad message: %s", presentation.id, error)
            await websocket.send_text(json.dumps(error_reply(error)))
            if n_bad > MAX_BAD_MESSAGES:
                await websocket.close(CLOSE_POLICY, f"more than {MAX_BAD_MESSAGES} bad messages")
                return
            continue
        if reply is not None:
            await websocket.send_text(json.dumps(reply, allow_nan=False))


async def _pong(websocket: WebSocket, request: dict, t2: float, delay_s: float) -> None:
    text = json.dumps({"type": "pong", "id": request["id"], "t1": request["t1"], "t2": t2,
                       "t3": pylsl.local_clock()})
    if delay_s > 0:  # tests: a slow way back, after t3, as a congested network makes it
        await asyncio.sleep(delay_s)
    await websocket.send_text(text)


async def _deny(websocket: WebSocket, status: int, expected: str, got: str, fix: str) -> None:
    if "websocket.http.response" not in websocket.scope.get("extensions", {}):
        await websocket.close(code=CLOSE_UNAUTHORIZED if status == 401 else CLOSE_POLICY, reason=got[:120])
        return
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    await websocket.send_denial_response(error_response(status, expected, got, fix, headers=headers))


router.include_router(api)
