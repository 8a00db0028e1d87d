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
