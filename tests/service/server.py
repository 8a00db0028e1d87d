"""A real uvicorn server on loopback, in a thread, for the service's tests."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import uvicorn


@contextmanager
def serving(app, *, timeout: float = 30.0):
    """Serve ``app`` on a free loopback port; yields its base URL ("http://127.0.0.1:PORT").

    Leaving the block shuts uvicorn down, which runs the app's lifespan shutdown.
    """
    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws="websockets-sansio",
                            lifespan="on", log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
