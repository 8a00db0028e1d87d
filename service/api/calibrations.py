"""``/api/calibrations``: a new person's calibration, from the presentation to the hot swap.

REST (token as everywhere, ``auth.token_dependency``)::

    POST   /api/calibrations               a CalibrationRequest -> 201, the calibration (present_url)
    GET    /api/calibrations               every calibration, newest last
    GET    /api/calibrations/{id}          one: state, progress (trials, epochs), result, messages
    POST   /api/calibrations/{id}/resume   interrupted -> presenting (the rest of the design)
    POST   /api/calibrations/{id}/adapt    interrupted -> adapting (on what was recorded)
    POST   /api/calibrations/{id}/swap     ready -> swapped (the live session decodes the person)
    DELETE /api/calibrations/{id}          cancel (the recording goes on in its session)

and the guided page ``/calibrate`` (``web/calibrate.html``; ``?id=ID`` follows one).

Progress also goes out on the hub, to the clients of the calibration's session, as
"event" messages ("calibration" on each step, "calibration_progress" as trials and
epochs come). The app holds a :class:`~glimpse.service.calibration.CalibrationManager`
as ``app.state.calibrations``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ..calibration import CalibrationManager, CalibrationRequest
from .auth import token_dependency

__all__ = ["router"]

router = APIRouter()
api = APIRouter(prefix="/api/calibrations", tags=["calibrations"], dependencies=[Depends(token_dependency)])


def _manager(request: Request) -> CalibrationManager:
    return request.app.state.calibrations


@api.post("", status_code=201)
async def create_calibration(body: CalibrationRequest, request: Request) -> dict[str, Any]:
    """Check the request, start the recording session (unless named) and the presentation."""
    calibration = await run_in_threadpool(_manager(request).create, body)
    return calibration.describe()


@api.get("")
async def list_calibrations(request: Request) -> list[dict[str, Any]]:
    return [c.describe() for c in _manager(request).list()]


@api.get("/{calibration_id}")
async def get_calibration(calibration_id: str, request: Request) -> dict[str, Any]:
    return _manager(request).get(calibration_id).describe()


@api.post("/{calibration_id}/resume")
async def resume_calibration(calibration_id: str, request: Request) -> dict[str, Any]:
    """Show the rest of an interrupted calibration's design (the stream must be back)."""
    return await run_in_threadpool(_manager(request).get(calibration_id).resume)


@api.post("/{calibration_id}/adapt")
async def adapt_calibration(calibration_id: str, request: Request) -> dict[str, Any]:
    """Adapt an interrupted calibration on the trials recorded so far."""
    return await run_in_threadpool(_manager(request).get(calibration_id).adapt_now)


@api.post("/{calibration_id}/swap")
async def swap_calibration(calibration_id: str, request: Request) -> dict[str, Any]:
    """Switch the live session to the adapted checkpoint and the new subject."""
    return await run_in_threadpool(_manager(request).get(calibration_id).swap)


@api.delete("/{calibration_id}")
async def cancel_calibration(calibration_id: str, request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_manager(request).get(calibration_id).cancel)


@router.get("/calibrate", include_in_schema=False)
async def calibrate_page() -> FileResponse:
    """The guided calibration page; it asks for the token when one is set."""
    return FileResponse(str(files("glimpse.web") / "calibrate.html"), headers={"Cache-Control": "no-cache"})


router.include_router(api)
