"""The guided calibration page (/calibrate) in headless Chromium against the real service.

A real uvicorn serves the app with the calibrations router; a simulated person
(``LivePerson``) publishes its stream on loopback LSL. The page is used as a lab would:
step 1 refuses too short a calibration in the service's words, then starts one; step 2
opens /present in a second window, where the run is started (100 ms on, 100 ms off);
step 3 shows the trials and the adaptation's epochs; step 4 shows held-out top-5 before
and after against chance, and its button switches the live session to the adapted
checkpoint; the viewer then shows that session. Screenshots of each step are saved as
artefacts (the documentation's come from here).
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from starlette.routing import Mount
from threadpoolctl import threadpool_limits

from glimpse.service.api import calibrations
from glimpse.service.api.app import create_app
from glimpse.service.calibration import CalibrationManager
from glimpse.service.calibration.simulated import FRESH_FOLDER, write_fresh_images
from glimpse.service.settings import Settings
from glimpse.streaming.simulate.live import LivePerson
from glimpse.streaming.simulate.person import load_world

# A world, a base model, a session (two processes that import torch), an adaptation
# process and two browser windows: minutes on a loaded 2-core runner.
pytestmark = pytest.mark.timeout(420)

TINY = dict(hidden=16, spatial_channels=16, n_blocks=2, epochs=3, batch_size=16, patience=5,
            model_options={"fourier_k": 4})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small simulated MEG world of two subjects, a tiny base brain encoder (base/), the
    gallery of its test images, fresh calibration exemplars."""
    from glimpse.models.data import load_session
    from glimpse.models.embedders import load_embedder
    from glimpse.models.gallery import build_gallery
    from glimpse.models.train import TrainConfig, train
    from glimpse.streaming.simulate import SimulationConfig, simulate_session

    root = tmp_path_factory.mktemp("calibrate-page") / "world"
    config = SimulationConfig(modality="meg", seed=0, subjects=2, concepts=8, exemplars=2, test_concepts=4,
                              test_exemplars=2, test_repeats=6, image_size=48)
    simulate_session(config, root, progress=False)
    train(load_session(root, progress=False), TrainConfig(val_concept_fraction=0.25, num_threads=1, **TINY),
          root / "base", progress=False)
    build_gallery(sorted((root / "stimuli" / "test").rglob("*.png")), load_embedder("handcrafted"),
                  root=root, progress=False).save(root / "gallery" / "test")
    write_fresh_images(root, per_concept=2)
    return root


@pytest.fixture(scope="module")
def service(world, serving):
    app = create_app(Settings(data=[world], port=0))
    if not any(getattr(route, "path", None) == "/api/calibrations" for route in app.routes):
        state = app.state  # wired here until app.py does
        state.calibrations = CalibrationManager(
            state.roots, state.catalog, state.sessions, state.presentations,
            lambda sid, message: state.hub.publish(sid, message),
            calibrations_dir=state.roots.sessions_dir(None) / "calibrations")
        app.include_router(calibrations.router)
        app.router.routes.sort(key=lambda route: isinstance(route, Mount))
    with threadpool_limits(1, user_api="blas"), serving(app) as url:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            yield app, url, client
    app.state.calibrations.close()


def _fill(page, stream: str, minutes: str) -> None:
    page.select_option("select[name=base]", label=page.eval_on_selector(
        "select[name=base]", "(s) => [...s.options].find((o) => o.text.startsWith('base ')).text"))
    page.select_option("select[name=stream]", label=page.eval_on_selector(
        "select[name=stream]", f"(s) => [...s.options].find((o) => o.text.startsWith('{stream} ')).text"))
    page.fill("input[name=subject]", "p07")
    page.fill("input[name=images]", FRESH_FOLDER)
    page.fill("input[name=test_images]", "stimuli/test")
    page.click("details summary")
    page.fill("input[name=image_ms]", "100")
    page.fill("input[name=fixation_ms]", "100")
    page.fill("input[name=jitter_ms]", "0")
    page.fill("input[name=epochs]", "3")
    page.uncheck("input[name=swap]")  # switched with the result's button
    page.fill("input[name=minutes]", minutes)


def test_the_guided_page_takes_a_new_person_to_live_decoding(service, world, browser, artefacts):
    app, url, client = service
    stream = f"page-{uuid.uuid4().hex[:6]}"
    person = LivePerson(load_world(world), subject_seed=7, name=stream, source_id=f"{stream}-person").start()
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.goto(f"{url}/calibrate")
        page.wait_for_function("window.glimpseCalibrate.state === 'setup'", timeout=30_000)
        page.wait_for_function(f"[...document.querySelector('select[name=stream]').options]"
                               f".some((o) => o.text.startsWith('{stream} '))", timeout=30_000)
        # Step 1: too short is refused as the service words it, the minimum and why.
        _fill(page, stream, "0.05")
        assert "at least 30 are needed" in page.inner_text("#estimate")
        page.click("#setup-form button[type=submit]")
        problem = page.locator("#setup-error")
        problem.wait_for(state="visible", timeout=30_000)
        assert "at least 30 calibration trials" in problem.inner_text() and "held out" in problem.inner_text()
        page.screenshot(path=artefacts / "calibration-refused.png", full_page=True)
        page.fill("input[name=minutes]", "0.14")
        assert "≈ 42 calibration trials" in page.inner_text("#estimate") and page.is_hidden("#setup-error")
        page.screenshot(path=artefacts / "calibration-setup.png", full_page=True)
        page.click("#setup-form button[type=submit]")
        # Step 2: the presentation to open on the person's screen.
        page.wait_for_function("window.glimpseCalibrate.state === 'presenting'", timeout=60_000)
        assert "/present?id=" in page.inner_text("#present-url")
        page.screenshot(path=artefacts / "calibration-present-step.png", full_page=True)
        with context.expect_page() as opened:
            page.click("#open-present")
        screen = opened.value
        screen.on("pageerror", lambda exc: errors.append(f"uncaught (present): {exc}"))
        screen.set_viewport_size({"width": 1100, "height": 700})
        screen.wait_for_function("window.glimpsePresent && window.glimpsePresent.state === 'ready'",
                                 timeout=30_000)
        deadline = time.monotonic() + 20
        while not person.stats()["markers_connected"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the session's acquisition follows <stream>-markers too
        screen.screenshot(path=artefacts / "calibration-present.png")
        screen.click("#start")
        screen.wait_for_function("['done', 'stopped'].includes(window.glimpsePresent.state)", timeout=120_000)
        assert screen.evaluate("window.glimpsePresent.state") == "done"
        # Step 3: the adaptation's epochs, with the validation top-5 chart.
        page.wait_for_function("window.glimpseCalibrate.calibration.history.length >= 1", timeout=180_000)
        assert page.is_visible("#epoch-chart")
        if page.evaluate("window.glimpseCalibrate.state") == "adapting":
            page.screenshot(path=artefacts / "calibration-progress.png", full_page=True)
        page.wait_for_function("window.glimpseCalibrate.state === 'ready'", timeout=180_000)
        page.wait_for_function("document.querySelectorAll('#result-bars b').length === 3", timeout=10_000)
        figures = page.eval_on_selector_all("#result-bars b", "(bs) => bs.map((b) => [b.dataset.kind, b.textContent])")
        assert [kind for kind, _ in figures] == ["before", "after", "chance"]
        assert all(0 <= float(value) <= 1 for _, value in figures)
        assert "adapted checkpoint" in page.inner_text("#result-table")
        assert "still decodes with the base checkpoint" in page.inner_text("#swap-text")
        page.screenshot(path=artefacts / "calibration-result.png", full_page=True)
        # Step 4: switch the live session; the viewer shows it decoding the new person.
        page.click("#swap")
        page.wait_for_function("window.glimpseCalibrate.state === 'swapped'", timeout=120_000)
        assert "now decodes p07" in page.inner_text("#swap-text") and page.is_hidden("#swap")
        calibration = page.evaluate("window.glimpseCalibrate.calibration")
        session = client.get(f"/api/sessions/{calibration['session']}").json()
        assert session["checkpoint"]["subject"] == "p07"
        page.screenshot(path=artefacts / "calibration-swapped.png", full_page=True)
        _viewer_decodes(context, page, calibration["session"], artefacts, errors)
        assert not errors, errors
        client.delete(f"/api/sessions/{calibration['session']}")
    finally:
        context.close()
        person.stop()


def _viewer_decodes(context, page, session_id: str, artefacts, errors: list[str]) -> None:
    """The result's "Open the viewer": the session's panel paints frames (of the adapted model)."""
    with context.expect_page() as opened:
        page.click("#open-viewer")
    viewer = opened.value
    viewer.on("pageerror", lambda exc: errors.append(f"uncaught (viewer): {exc}"))
    viewer.set_viewport_size({"width": 1400, "height": 850})
    viewer.wait_for_load_state()
    viewer.wait_for_function("document.querySelectorAll('#panels > .panel').length >= 1", timeout=30_000)
    viewer.wait_for_function("(() => { const s = window.glimpse.stats().sessions; "
                             f"return s['{session_id}'] && s['{session_id}'].frames_painted > 20; }})()",
                             timeout=30_000)
    assert viewer.is_visible("#calibrate-link")
    viewer.screenshot(path=artefacts / "calibration-viewer.png")
