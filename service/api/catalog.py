"""``/api/checkpoints``, ``/api/galleries``, ``/api/recordings``, gallery and stimulus images.

Listings come from ``app.state.catalog`` (scanned in a thread: a scan reads files).
Images are immutable once a gallery is built (the sidecar holds their sha256), so the
browser caches them for a day and revalidates with the hash as ETag (304).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from glimpse.models.gallery import IMAGE_SUFFIXES

from ..errors import NotFound
from .auth import token_dependency

__all__ = ["CACHE_CONTROL", "router"]

CACHE_CONTROL = "public, max-age=86400, immutable"

router = APIRouter(prefix="/api", tags=["catalog"], dependencies=[Depends(token_dependency)])


@router.get("/checkpoints")
async def list_checkpoints(request: Request) -> list[dict[str, Any]]:
    """Checkpoint folders in the data roots, with the facts from their config.json."""
    return await run_in_threadpool(request.app.state.catalog.checkpoints)


@router.get("/galleries")
async def list_galleries(request: Request) -> list[dict[str, Any]]:
    """Galleries in the data roots, with the facts from their sidecars."""
    return await run_in_threadpool(request.app.state.catalog.galleries)


@router.get("/generators")
async def list_generators(request: Request) -> list[dict[str, Any]]:
    """Generator folders (generator.json): kind, embedder, dim and size, to pick one that fits
    the checkpoint's embedder."""
    return await run_in_threadpool(request.app.state.catalog.generators)


@router.get("/recordings")
async def list_recordings(request: Request) -> list[dict[str, Any]]:
    """Recordings, BIDS recordings and session folders in the data roots."""
    return await run_in_threadpool(request.app.state.catalog.recordings)


@router.get("/gallery/{gallery_id}/{image_id:path}")
async def gallery_image(gallery_id: str, image_id: str, request: Request) -> Response:
    """The image ``image_id`` of a gallery (its id in the sidecar, URL-quoted)."""
    path, sha256 = await run_in_threadpool(request.app.state.catalog.gallery_image,
                                           gallery_id, image_id)
    etag = f'"{sha256}"'
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, headers=headers)


@router.get("/stimuli")
async def stimulus(path: str, request: Request) -> Response:
    """A stimulus image by its path (absolute, or relative to a data root): the true
    stimulus of a frame when it is not in the session's gallery (a training image)."""
    file = await run_in_threadpool(request.app.state.roots.resolve, path)
    if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
        raise NotFound(f"an image file ({', '.join(IMAGE_SUFFIXES)}) inside the data roots",
                       repr(path), "name a stimulus image")
    return FileResponse(file, headers={"Cache-Control": "public, max-age=3600"})


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match list with the image's ETag."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags
