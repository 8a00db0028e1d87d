"""Shared fixtures: the real recordings beside the project, quiet matplotlib."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]


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
