"""Small helpers the tests share (tests/ is on sys.path: pytest puts conftest folders there)."""

from __future__ import annotations

import time


def until(predicate, timeout: float, what: str = "a condition", step: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
