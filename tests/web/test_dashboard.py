"""The viewer against the REAL service, end to end, in headless Chromium: from the page,
replay a recording and start a session on it; within 15 s the decoded image, the true
stimulus, the topography and a glass-to-glass figure are on screen, with no console
error. Screenshots are saved as artefacts."""

from __future__ import annotations

import pytest

from glimpse.service.api.app import create_app
from glimpse.service.settings import Settings

from test_viewer import IMAGE_SHOWN, NON_BLANK, stats

# A server, a replay process, a session's two processes (torch imports), a browser.
pytestmark = pytest.mark.timeout(240)

SHOWN_MS = 15_000  # the bound, counted from the session's start
START_MS = 90_000  # a session starts when its model is loaded and its stream found


def _pick(page, select: str, text: str) -> None:
    """Choose the option of ``select`` whose label contains ``text``."""
    page.wait_for_function(f"[...document.querySelector('{select}').options].some("
                           f"o => o.value && o.textContent.includes({text!r}))", timeout=SHOWN_MS)
    value = page.evaluate(f"[...document.querySelector('{select}').options].find("
                          f"o => o.value && o.textContent.includes({text!r})).value")
    page.select_option(select, value)


def test_replay_and_session_started_from_the_page_show_live_decoding(
        served_root, serving, open_viewer, artefacts, tmp_path):
    settings = Settings(data=[served_root], port=0, sessions_dir=served_root / "served" / tmp_path.name)
    app = create_app(settings)
    with serving(app) as url:
        page, console = open_viewer(url)
        page.wait_for_function("document.querySelector('#conn').textContent === 'connected'",
                               timeout=SHOWN_MS)
        _pick(page, "#recording", "sub-01")
        page.click("#replay")
        page.wait_for_function("document.querySelector('#stream').selectedOptions[0]"
                               ".textContent.startsWith('glimpse-')", timeout=START_MS)
        _pick(page, "#checkpoint", "ckpt")
        _pick(page, "#gallery", "gallery")
        page.keyboard.press("s")
        page.wait_for_selector("#panels > .panel .panel-state:text('running')", timeout=START_MS)
        panel = "#panels > .panel:nth-child(1)"
        page.wait_for_function(f"({IMAGE_SHOWN})(document.querySelector('{panel} .stage img.front'))",
                               timeout=SHOWN_MS)
        page.wait_for_function(f"({IMAGE_SHOWN})(document.querySelector('{panel} .truth img'))",
                               timeout=SHOWN_MS)
        page.wait_for_function(f"({NON_BLANK})('{panel} canvas.topo') > 1000", timeout=SHOWN_MS)
        page.wait_for_function(f"/\\d+ ms p50/.test(document.querySelector('{panel} .g2g').textContent)",
                               timeout=SHOWN_MS)
        page.screenshot(path=artefacts / "dashboard.png")
        s = stats(page)
        assert s["frames_painted"] > 0 and s["frames_painted"] + s["frames_skipped"] <= s["frames_received"]
        assert all(0 < g < 5000 for g in s["g2g_ms"])  # on the service's LSL clock, not 10^12 off
        assert s["offset_uncertainty_ms"] < 50
        (replay,) = app.state.replays.list()
        assert replay["state"] == "running"
        assert console.unexpected() == []
        page.keyboard.press("x")  # stop from the keyboard
        page.wait_for_selector("#panels > .panel .panel-state:text('stopped')", timeout=START_MS)
    assert [s.state for s in map(app.state.sessions.get, app.state.sessions.ids())] == ["stopped"]
