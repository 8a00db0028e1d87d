"""``/api/sessions``: start, list, inspect, stop and download live sessions; switch a running
one's mode or checkpoint."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from .auth import token_dependency

router = APIRouter(prefix="/api/sessions", tags=["sessions"], dependencies=[Depends(token_dependency)])

Ref = Annotated[str, Field(min_length=1, max_length=1024)]
Mode = Literal["retrieval", "generation", "two_stage"]
Subject = Annotated[str, Field(min_length=1, max_length=256)]


class StreamRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    source_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class SessionRequest(BaseModel):
    """A session to start: which streams, decoded by which checkpoint into which gallery."""

    model_config = ConfigDict(extra="forbid")
    streams: list[Annotated[str, Field(min_length=1, max_length=256)] | StreamRef] = Field(
        min_length=1, max_length=8, description="LSL stream names (or name and source id)")
    checkpoint: Ref = Field(description="a checkpoint id from GET /api/checkpoints, or its path")
    gallery: Ref = Field(description="a gallery id from GET /api/galleries, or its path")
    subject: Subject | None = Field(None, description="a training subject id of the checkpoint "
                                    "(its config.json subjects) whose subject layer decodes; "
                                    "default the first")
    mode: Mode = "retrieval"
    generator: Ref | None = Field(None, description="a generator folder inside the data roots "
                                  "(generator.json beside its weights); needed by the generation modes")
    steps: int = Field(1, ge=1, le=4, description="denoising steps per generated image")
    strength: float = Field(0.6, ge=0.0, le=1.0, description="two-stage: how far from the retrieved image")
    hop: float = Field(0.05, gt=0, le=1.0, description="seconds between windows")
    k: int = Field(5, ge=1, le=50, description="images retrieved per window")
    record: bool = Field(True, description="write the session folder")
    allow_missing: bool = False
    max_age: float | None = Field(None, gt=0, le=10.0, description="stale after (s); default two hops")
    resolve_timeout: float = Field(10.0, gt=0, le=120.0, description="wait for the streams (s)")


@router.post("", status_code=201)
async def create_session(body: SessionRequest, request: Request) -> dict:
    # Blocking: until the model is loaded and every stream found (or the clear error).
    return await run_in_threadpool(request.app.state.sessions.create, body.model_dump())


@router.get("")
async def list_sessions(request: Request) -> list[dict]:
    return request.app.state.sessions.list()


@router.get("/{session_id}")
async def get_session(session_id: str, request: Request) -> dict:
    session = request.app.state.sessions.get(session_id)
    return {**session.describe(), "status": session.status()}


@router.delete("/{session_id}")
async def stop_session(session_id: str, request: Request) -> dict:
    app = request.app
    return await run_in_threadpool(app.state.sessions.stop, session_id,
                                   app.state.settings.stop_timeout_s)


class ModeRequest(BaseModel):
    """A running session's new mode (generation and two_stage need its generator)."""

    model_config = ConfigDict(extra="forbid")
    mode: Mode


@router.post("/{session_id}/mode")
async def set_mode(session_id: str, body: ModeRequest, request: Request) -> dict:
    return await run_in_threadpool(request.app.state.sessions.set_mode, session_id, body.mode)


class CheckpointRequest(BaseModel):
    """A running session's new checkpoint: it must take the session's windows (channels,
    rate, window, filters; its scaler may differ) into the session's gallery."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: Ref = Field(description="a checkpoint id from GET /api/checkpoints, or its path")
    subject: Subject | None = Field(None, description="a training subject id of that checkpoint; "
                                    "default the first")


@router.post("/{session_id}/checkpoint")
async def swap_checkpoint(session_id: str, body: CheckpointRequest, request: Request) -> dict:
    # Blocking: until the new checkpoint is loaded beside the old one and has taken over.
    return await run_in_threadpool(request.app.state.sessions.swap_checkpoint, session_id,
                                   body.checkpoint, body.subject)


@router.get("/{session_id}/download")
async def download_session(session_id: str, request: Request) -> FileResponse:
    """The session folder as a zip (what is recorded so far, when it still runs)."""
    folder = request.app.state.sessions.folder(session_id)
    tmp = Path(tempfile.mkdtemp(prefix="glimpse-zip-"))
    archive = await run_in_threadpool(shutil.make_archive, str(tmp / folder.name), "zip",
                                      str(folder.parent), folder.name)
    return FileResponse(archive, media_type="application/zip", filename=f"{folder.name}.zip",
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))
