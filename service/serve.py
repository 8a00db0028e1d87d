"""``glimpse serve`` and the browser face of ``glimpse demo``: the app under uvicorn.

:func:`run_serve` runs :func:`~glimpse.service.api.app.create_app` with uvicorn
(WebSockets through the ``websockets`` implementation) until Ctrl-C / SIGTERM, or
for ``duration`` seconds; uvicorn's shutdown runs the app's lifespan, which stops
sessions, replays and the hub in that order. :func:`run_browser_demo` builds what
the demo needs (:func:`~glimpse.service.demo.run_demo`, cached), then serves it
with a looping replay of sub-01 and a session decoding it, and prints the URL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glimpse.streaming.errors import InputError

from .settings import Settings

logger = logging.getLogger("glimpse.service.serve")

__all__ = ["run_browser_demo", "run_serve"]


def run_serve(settings: Settings, *, on_started: Callable[[Any, str], None] | None = None,
              before_stop: Callable[[Any], None] | None = None, duration: float | None = None,
              echo: Callable[[str], None] = print):
    """Serve until Ctrl-C / SIGTERM (or ``duration`` s); returns the app (its state stays
    readable: the sessions' final status).

    ``on_started(app, url)`` runs in a thread once the server listens; ``before_stop(app)``
    runs (in that thread) when ``duration`` is over, before the shutdown.
    """
    import uvicorn

    from .api.app import create_app

    if duration is not None and not duration > 0:
        raise InputError("--duration a positive number of seconds", repr(duration),
                         "leave it out to serve until Ctrl-C")
    _check_port(settings.host, settings.port)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, ws="websockets-sansio",
                            lifespan="on", log_level="warning",
                            # uvicorn reads up to this before the hub's own size check
                            ws_max_size=4 * settings.ws_max_message_bytes,
                            timeout_graceful_shutdown=int(settings.stop_timeout_s))
    server = uvicorn.Server(config)

    def started() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        url = f"http://{host}:{port}/"
        try:
            if on_started is not None:
                on_started(app, url)
            else:
                echo(f"glimpse serve: {url} (data roots: {app.state.roots}); Ctrl-C stops")
        except Exception as err:  # noqa: BLE001 - report, then shut the server down
            echo(f"glimpse: error: {err}")
            logger.debug("start-up hook failed", exc_info=True)
            server.should_exit = True
            return
        if duration is not None:
            time.sleep(duration)
            if before_stop is not None:
                before_stop(app)
            server.should_exit = True

    threading.Thread(target=started, name="serve-started", daemon=True).start()
    server.run()
    return app


def _check_port(host: str, port: int) -> None:
    """A clear error, before anything starts, when the port is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise InputError(f"a free TCP port on {host}", f"port {port}: {err.strerror}",
                             "pass another --port (0 picks a free one), or stop what uses it") from None


def run_browser_demo(out: Path, *, port: int = 8000, modality: str = "meg",
                     open_browser: bool = True, duration: float | None = None,
                     fresh: bool = False, echo: Callable[[str], None] = print,
                     config=None, train_config=None) -> dict[str, Any]:
    """Build the demo (cached), then serve the viewer on a looping replay of sub-01.

    Returns what was decoded (the session's final status; empty if none ran).
    """
    from glimpse.streaming.simulate import SimulationConfig

    from .demo import GALLERY_DIR, MODEL_DIR, run_demo

    if modality not in ("meg", "eeg"):
        raise InputError("--modality meg or eeg", repr(modality), "pass --modality meg")
    config = config or SimulationConfig(modality=modality)
    echo(run_demo(out, fresh=fresh, config=config, train_config=train_config))
    recording = next((out / "sub-01").rglob("*_meg.fif"), None) or next((out / "sub-01").rglob("*.vhdr"))
    generator = _shipped_generator(out / MODEL_DIR)
    roots = [out.resolve()] + ([generator.parent] if generator is not None else [])
    settings = Settings.load(port=port, data=roots)
    final: dict[str, Any] = {}

    def on_started(app, url: str) -> None:
        state = app.state
        replay = state.replays.start(str(recording.resolve()), loop=True, name=f"glimpse-demo-{os.getpid()}")
        session = state.sessions.create({
            "streams": [{"name": replay["name"], "source_id": replay["source_id"]}],
            "checkpoint": str(out.resolve() / MODEL_DIR),
            "gallery": str(out.resolve() / GALLERY_DIR / "test.safetensors"),
            # The shipped generator draws beside retrieval (it loads while retrieval runs).
            **({"generator": str(generator), "mode": "generation"} if generator is not None else {})})
        final["session"] = session["id"]
        echo(f"glimpse demo: the viewer is at {url} (sub-01 replayed as LSL stream "
             f"{replay['name']!r}, looping; decoded by session {session['id']}). Ctrl-C stops.")
        if open_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            webbrowser.open(url)

    def before_stop(app) -> None:
        if "session" in final:
            final.update(app.state.sessions.stop(final["session"]))

    app = run_serve(settings, on_started=on_started, before_stop=before_stop, duration=duration,
                    echo=echo)
    if "session" in final and "n_decoded" not in final:  # Ctrl-C: the lifespan stopped it
        final.update(app.state.sessions.get(final["session"]).status())
    if final.get("n_decoded") is not None:
        echo(_summary(final))
    return final


def _shipped_generator(checkpoint: Path) -> Path | None:
    """The embedded generator shipped for the checkpoint's embedder, or None."""
    import json

    from glimpse.models.generators.embedded import default_folder

    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    return default_folder(config["embedder"]["name"])


def _summary(status: dict[str, Any]) -> str:
    total = status["latency_ms"]["total"]
    acc = status["accuracy"]
    line = (f"glimpse demo: {status['n_decoded']} windows decoded; latency p50 "
            f"{total['p50'] or float('nan'):.1f} ms, p99 {total['p99'] or float('nan'):.1f} ms; "
            f"{status['n_stale']} stale, {status['n_dropped']} dropped")
    if acc["frames_with_truth"]:
        line += (f"; true test image in the top-{acc['k']} for {100 * acc['topk']:.0f}% of "
                 f"{acc['frames_with_truth']} windows (chance {100 * acc['chance_topk']:.0f}%)")
    return line
