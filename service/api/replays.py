"""Router: replays started from the dashboard (/api/replays) and the LSL streams visible now
(/api/streams).

The work blocks (a replay's start waits until its stream is on LSL, a stop until
its process ended, a stream listing for the resolve's wait), so it runs in the
thread pool, never on the event loop. The manager is ``app.state.replays``
(:class:`glimpse.service.replays.ReplayManager`); a request names its recording
as the catalog does (an id, or a path inside a data root), which the manager
resolves with the ``roots_resolve`` the app gave it (the catalog's lookup).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..replays import MAX_SPEED, NAME_PATTERN, list_streams
from .auth import token_dependency

__all__ = ["ReplayRequest", "router"]

router = APIRouter(prefix="/api", tags=["replays"], dependencies=[Depends(token_dependency)])

_STREAMS_WAIT_S = 0.5  # one LSL resolve round: streams on this host answer well within it


class ReplayRequest(BaseModel):
    """POST /api/replays: what to replay, how fast, and under which LSL name."""

    model_config = ConfigDict(extra="forbid")

    recording: str = Field(min_length=1, max_length=4096,
                           description="A recording's catalog id, or its path inside a data root.")
    speed: float = Field(1.0, gt=0, le=MAX_SPEED,
                         description="1 is real time, 10 ten times faster.")
    loop: bool = Field(True, description="Start again at the end, until stopped.")
    name: str | None = Field(None, pattern=NAME_PATTERN,
                             description="LSL stream name (markers go to NAME-markers); "
                                         "default glimpse-<recording slug>.")


@router.post("/replays", status_code=status.HTTP_201_CREATED)
async def start_replay(body: ReplayRequest, request: Request) -> dict[str, Any]:
    """Replay a recording or a recorded session as LSL; answers once its stream is visible."""
    return await run_in_threadpool(request.app.state.replays.start, body.recording,
                                   speed=body.speed, loop=body.loop, name=body.name)


@router.get("/replays")
async def list_replays(request: Request) -> list[dict[str, Any]]:
    """Every replay, with its state: starting, running, died (exit_code, error) or stopped."""
    return request.app.state.replays.list()


@router.get("/replays/{replay_id}")
async def get_replay(replay_id: str, request: Request) -> dict[str, Any]:
    """One replay; 404 listing the valid ids."""
    return request.app.state.replays.get(replay_id)


@router.delete("/replays/{replay_id}")
async def stop_replay(replay_id: str, request: Request) -> dict[str, Any]:
    """Stop a replay (SIGTERM, SIGKILL after the timeout); its final description."""
    return await run_in_threadpool(request.app.state.replays.stop, replay_id)


@router.post("/replays/{replay_id}/restart")
async def restart_replay(replay_id: str, request: Request) -> dict[str, Any]:
    """Start a died or ended replay again under the same name and source_id."""
    return await run_in_threadpool(request.app.state.replays.restart, replay_id)


@router.get("/streams")
async def streams() -> list[dict[str, Any]]:
    """LSL streams visible now: name, type, n_chans, sfreq, source_id, hostname, channel_format."""
    return await run_in_threadpool(list_streams, _STREAMS_WAIT_S)
