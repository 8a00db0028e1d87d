"""Shared fixtures: the real recordings beside the project, quiet matplotlib."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _glimpse_logger_restored():
    """Undo what a CLI call does to the ``glimpse`` logger (a handler on the test's
    captured stderr, no propagation): left behind, a later test's threads log into
    a closed stream and caplog misses their records."""
    logger = logging.getLogger("glimpse")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``../shared/realdata`` (or ``$GLIMPSE_REALDATA``): small real recordings.

    In CI their absence is a failure, not a skip, so that the reader tests can
    never pass by not running.
    """
    path = Path(os.environ.get("GLIMPSE_REALDATA", REPO.parent / "shared" / "realdata"))
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real recordings not found at {path}; set GLIMPSE_REALDATA")
        pytest.skip(f"real recordings not found at {path}; set GLIMPSE_REALDATA")
    return path


@pytest.fixture(scope="session")
def things_meg() -> Path:
    """``../shared/things-meg/ds004212`` (or ``$GLIMPSE_THINGS_MEG``): THINGS-MEG's real
    text files (events, channels, sidecars of sub-BIGMEG1 ses-01), without the signal.

    Absent in CI is a failure, as for ``realdata``.
    """
    path = Path(os.environ.get("GLIMPSE_THINGS_MEG",
                               REPO.parent / "shared" / "things-meg" / "ds004212"))
    if not (path / "dataset_description.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"THINGS-MEG text files not found at {path}; set GLIMPSE_THINGS_MEG")
        pytest.skip(f"THINGS-MEG text files not found at {path}; set GLIMPSE_THINGS_MEG")
    return path


@pytest.fixture(scope="session")
def small_meg_session(tmp_path_factory):
    """A small simulated MEG session, written once per test run: (root, config, result)."""
    from glimpse.streaming.simulate import SimulationConfig, simulate_session

    # The test size ("--subjects 1 --concepts 8 --exemplars 2", under 15 s); small
    # images keep the stimuli cheap. Other sessions in the tests derive from it.
    config = SimulationConfig(modality="meg", seed=0, subjects=1, concepts=8, exemplars=2,
                              test_concepts=4, test_exemplars=2, test_repeats=6, image_size=48)
    root = tmp_path_factory.mktemp("meg") / "sim"
    return root, config, simulate_session(config, root, progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: on a shared 2-core runner, OpenMP spin-waits cost more than a second thread saves."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def served_root(small_meg_session, tmp_path_factory):
    """One data root for the service's tests: a copy of the small simulated session (the
    shared one stays as other tests expect it), a ridge checkpoint (served/ckpt), the
    test gallery (served/gallery) and a gallery that says it has another embedder
    (served/other)."""
    from glimpse.models.data import load_session
    from glimpse.models.embedders import load_embedder
    from glimpse.models.gallery import build_gallery
    from glimpse.models.train import TrainConfig, train

    import json
    import shutil

    sim = tmp_path_factory.mktemp("served") / "sim"
    shutil.copytree(small_meg_session[0], sim)
    out = sim / "served"
    cache = tmp_path_factory.mktemp("cache")
    train(load_session(sim, progress=False),
          TrainConfig(model="ridge", ridge_draws=1, presence_draws=1, cache_dir=str(cache)),
          out / "ckpt", progress=False)
    build_gallery(sorted((sim / "stimuli" / "test").rglob("*.png")), load_embedder("handcrafted"),
                  root=sim, cache_dir=cache, progress=False).save(out / "gallery")
    other = json.loads((out / "gallery.json").read_text())
    other["embedder"] = "open_clip:ViT-B-32"
    (out / "other.json").write_text(json.dumps(other))
    (out / "other.safetensors").write_bytes((out / "gallery.safetensors").read_bytes())
    return sim


@pytest.fixture(scope="session")
def serving():
    """``serving(app)``: a context manager serving the app with a real uvicorn on a free
    loopback port, in a thread; yields the base URL. Leaving it runs the lifespan's
    shutdown."""
    import threading
    import time
    from contextlib import contextmanager

    import uvicorn

    @contextmanager
    def serve(app, *, timeout: float = 30.0):
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

    return serve
