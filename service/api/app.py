"""``create_app(settings)``: the FastAPI app that ``glimpse serve`` runs with uvicorn.

The app's state holds the parts, built here and owned by the lifespan:
``settings``, ``roots`` (the data roots: nothing outside them is served or loaded),
``catalog`` (checkpoints, galleries, recordings in the roots), ``hub`` (WebSocket
fan-out), ``replays`` (recordings played as LSL streams, one process each) and
``sessions`` (live sessions, each an acquisition process and a worker process),
``presentations`` (stimulus presentations in the browser, their markers on
``<stream>-markers``) and ``calibrations`` (present, record, adapt, hot-swap: a new
person's calibration). At shutdown the lifespan stops them in reverse order, each
within ``settings.stop_timeout_s``: calibrations, presentations (a running one stopped, its files
written, the markers outlets withdrawn), sessions (their folders closed with every
sample), replays, then the hub's clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from glimpse.streaming.version import glimpse_version

from ..calibration import CalibrationManager
from ..catalog import Catalog
from ..present import PresentationManager
from ..replays import ReplayManager
from ..roots import DataRoots
from ..sessions.manager import SessionManager
from ..settings import Settings
from . import calibrations, catalog, metrics, present, replays, sessions, ws
from .auth import BodyLimit
from .errors import install_error_handlers
from .hub import Hub

logger = logging.getLogger("glimpse.service.api")

__all__ = ["create_app"]


def _child_log_level() -> int:
    """The session processes log warnings, or everything with --verbose."""
    level = logging.getLogger("glimpse").getEffectiveLevel()
    return level if level <= logging.DEBUG else max(level, logging.WARNING)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's app; ``settings`` default to :meth:`Settings.load` (environment)."""
    settings = (settings if settings is not None else Settings.load()).check()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.hub.bind(asyncio.get_running_loop())
        logger.info("glimpse %s serving data roots %s", glimpse_version(), state.roots)
        yield
        timeout = settings.stop_timeout_s
        for what, stop in (("calibrations", state.calibrations.close),
                           ("presentations", lambda _: state.presentations.close()),
                           ("sessions", state.sessions.stop_all), ("replays", state.replays.stop_all)):
            try:
                await asyncio.wait_for(run_in_threadpool(stop, timeout), timeout + 5.0)
            except Exception:  # noqa: BLE001 - the rest must still stop
                logger.exception("stopping the %s", what)
        await state.hub.close(timeout)

    # No /docs or /redoc: their pages load scripts from a CDN, which a lab network may
    # not reach; the schema itself is /openapi.json.
    app = FastAPI(title="glimpse", version=glimpse_version(), lifespan=lifespan,
                  summary="Live decoding of what a person sees, from MEG or EEG.",
                  docs_url=None, redoc_url=None)
    state = app.state
    state.settings, state.started = settings, time.monotonic()
    state.roots = DataRoots(settings.data)
    state.catalog = Catalog(state.roots)
    state.sessions = SessionManager(settings, state.catalog, lambda sid, m: state.hub.publish(sid, m),
                                    sessions_dir=state.roots.sessions_dir(settings.sessions_dir),
                                    log_level=_child_log_level(),
                                    clients_of=lambda sid: state.hub.clients_of(sid))
    state.hub = Hub(queue_size=settings.ws_queue, slow_after_s=settings.ws_slow_after_s,
                    max_message_bytes=settings.ws_max_message_bytes,
                    known_sessions=state.sessions.ids, describe=state.sessions.describe)
    state.replays = ReplayManager(lambda ref: state.catalog.recording(ref)["abspath"],
                                  stop_timeout=settings.stop_timeout_s)
    state.presentations = PresentationManager(
        state.roots, state.catalog, state.roots.sessions_dir(settings.sessions_dir) / "presentations")
    state.calibrations = CalibrationManager(
        state.roots, state.catalog, state.sessions, state.presentations,
        lambda sid, m: state.hub.publish(sid, m),
        calibrations_dir=state.roots.sessions_dir(settings.sessions_dir) / "calibrations",
        threads=settings.threads, log_level=_child_log_level())
    state.metrics = metrics.make_registry(state)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    for module in (metrics, catalog, replays, sessions, present, calibrations, ws):
        app.include_router(module.router)
    # The viewer: static files, no build step; after the routers so /api wins.
    app.mount("/", StaticFiles(directory=str(files("glimpse.web")), html=True), name="web")
    return app
