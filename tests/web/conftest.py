"""Fixtures for the viewer's browser tests: a headless Chromium, the fake service, artefacts.

Chromium is Debian's (``apt-get install chromium``), driven by Playwright through
``executable_path``: Playwright's own browser download is not used. Without it the
browser tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fake_service import FakeService

WEB = Path(__file__).resolve().parents[2] / "web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# What a browser logs on its own when a server is away or refuses a request: expected
# in the reconnect, token and error tests, never in the others.
NETWORK_NOISE = ("WebSocket connection to", "Failed to load resource")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary ($GLIMPSE_CHROMIUM, else `chromium` on PATH)."""
    path = os.environ.get("GLIMPSE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        message = "Chromium not found: install it with `apt-get install chromium` (or set GLIMPSE_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    """One headless Chromium per test module (a context per test keeps them apart)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def artefacts(tmp_path) -> Path:
    """Where screenshots go: $GLIMPSE_ARTEFACTS/web if set (CI keeps it), else tmp_path."""
    root = os.environ.get("GLIMPSE_ARTEFACTS")
    path = Path(root) / "web" if root else tmp_path / "artefacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def fake(tmp_path):
    """A factory of started fake services (stopped after the test): fake(sessions=4, token=...)."""
    started = []

    def start(**options) -> FakeService:
        service = FakeService(WEB, tmp_path / f"fake{len(started)}", **options).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


class Console:
    """A page's console errors and uncaught exceptions, collected as they happen."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def unexpected(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """The errors that are not network noise named in ``allowed``."""
        return [e for e in self.errors if not any(e.startswith(a) for a in allowed)]


@pytest.fixture
def open_viewer(browser):
    """open_viewer(url, width=1600, height=900) -> (page, console), in a fresh browser context."""
    contexts = []

    def open_(url: str, *, width: int = 1600, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        console = Console(page)
        page.goto(url)
        return page, console

    yield open_
    for context in contexts:
        context.close()
