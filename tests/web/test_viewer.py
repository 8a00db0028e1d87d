"""The viewer in a real headless Chromium against the fake service (tests/web/fake_service.py).

Each test opens the page in a fresh browser context and checks what a person would
see: panels with images, a topography, a glass-to-glass figure; the keyboard; the
reconnect; the token; service errors as readable toasts; four sessions at once.
Screenshots are saved as artefacts. The real service is tested end to end elsewhere.
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import NETWORK_NOISE

# Chromium's start, a dozen page loads and a server restart; generous for a loaded 2-core runner.
pytestmark = pytest.mark.timeout(180)

SHOWN_S = 15  # the brief's bound: panels show within 15 s

NON_BLANK = """(selector) => {
  const canvas = document.querySelector(selector);
  if (!canvas || !canvas.width) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
  return n;
}"""
IMAGE_SHOWN = "(img) => img.complete && img.naturalWidth > 0 && getComputedStyle(img).visibility !== 'hidden'"


def stats(page) -> dict:
    return page.evaluate("window.glimpse.stats()")


def wait_until(predicate, timeout: float = SHOWN_S, what: str = "a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_panels_live(page, n: int = 1) -> None:
    """n panels showing a decoded image, the truth, a topography, a hit rate (from the
    first status, up to 1 s after subscribing) and a glass-to-glass figure."""
    ms = SHOWN_S * 1000
    page.wait_for_function(f"document.querySelectorAll('#panels > .panel').length === {n}", timeout=ms)
    for i in range(1, n + 1):
        panel = f"#panels > .panel:nth-child({i})"
        page.wait_for_function(f"({IMAGE_SHOWN})(document.querySelector('{panel} .stage img.front'))", timeout=ms)
        page.wait_for_function(f"({IMAGE_SHOWN})(document.querySelector('{panel} .truth img'))", timeout=ms)
        page.wait_for_function(f"({NON_BLANK})('{panel} canvas.topo') > 1000", timeout=ms)
        page.wait_for_function(f"/\\d+ ms p50/.test(document.querySelector('{panel} .g2g').textContent)",
                               timeout=ms)
        page.wait_for_function(f"/^\\d+%$/.test(document.querySelector('{panel} .acc-value').textContent)",
                               timeout=ms)


def test_panels_show_with_honest_counters(fake, open_viewer, artefacts):
    service = fake()
    page, console = open_viewer(service.url)
    wait_panels_live(page)
    panel = page.locator("#panels > .panel")
    assert panel.locator(".topk li").count() == 5
    assert panel.locator(".topk img").evaluate_all(f"imgs => imgs.every({IMAGE_SHOWN})")
    assert page.locator("#conn").inner_text() == "connected"
    assert panel.locator(".panel-state").inner_text() == "running"
    assert re.fullmatch(r"\d+%", panel.locator(".acc-value").inner_text())
    assert "chance 42%" in panel.locator(".acc-chance").inner_text()  # 5 of 12 images
    assert panel.locator(".meter").get_attribute("aria-valuenow")
    assert "flat: MEG010" in panel.locator(".topo-legend").inner_text()
    for canvas in ("canvas.filmstrip", "canvas.traces", "canvas.stages", "canvas.spark-latency"):
        assert page.evaluate(NON_BLANK, f"#panels > .panel {canvas}") > 100, canvas
    # a truth image and a miss marker both come within the fake's 2.5 s cycle
    page.wait_for_function("document.querySelector('.hit').classList.contains('hit-miss')", timeout=5000)
    page.wait_for_function("document.querySelector('.hit').classList.contains('hit-top1')", timeout=5000)
    page.screenshot(path=artefacts / "one-session.png")

    s = stats(page)
    assert s["frames_painted"] > 0
    assert s["frames_painted"] + s["frames_skipped"] <= s["frames_received"]
    assert s["sessions"]["s1"]["frames_received"] == s["frames_received"]
    # The fake stamps windows 20 ms before sending: glass-to-glass is at least that,
    # less the clock's uncertainty (a wrong offset sign would be off by ~2 x 10^12 ms).
    # The median: the first frames were mapped with the first, rougher offsets (on a
    # loaded machine a first ping's round trip can be long), not today's uncertainty.
    assert s["offset_uncertainty_ms"] is not None and s["offset_uncertainty_ms"] < 1000
    g2g = sorted(s["g2g_ms"])
    assert g2g and 20 - s["offset_uncertainty_ms"] - 1 < g2g[len(g2g) // 2] < 5000
    assert all(abs(g) < 5000 for g in g2g)
    assert s["errors"] == []
    assert console.unexpected() == []


def test_keyboard_stops_starts_and_replays(fake, open_viewer, artefacts):
    service = fake()
    page, console = open_viewer(service.url)
    wait_panels_live(page)
    page.wait_for_function("document.querySelector('#checkpoint').options[0].value !== ''")
    page.keyboard.press("x")
    wait_until(lambda: ("DELETE", "/api/sessions/s1", None) in service.calls, what="DELETE /api/sessions/s1")
    page.wait_for_function("document.querySelector('.panel-state').textContent === 'stopped'")

    page.keyboard.press("s")
    posted = wait_until(lambda: [c for c in service.calls if c[:2] == ("POST", "/api/sessions")],
                        what="POST /api/sessions")
    assert posted[0][2] == {"streams": [{"name": "glimpse-sim-1", "source_id": "glimpse-sim-1-src"}],
                            "checkpoint": "meg-linear-0f1e2d3c", "gallery": "things-test-1a2b3c4d",
                            "mode": "retrieval"}
    page.wait_for_selector("#panels > .panel[data-session='s2'] .panel-state:text('running')")
    page.wait_for_selector("#panels > .panel.focused[data-session='s2']")

    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    assert page.locator("#help dl").inner_text().count("\n") >= 7
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()

    page.keyboard.press("r")  # recorded sessions: Enter replays the first
    assert page.locator("#recorded").is_visible()
    page.keyboard.press("Enter")
    wait_until(lambda: ("POST", "/api/replays", {"recording": "session-20250101-3c4d5e6f"}) in service.calls,
               what="POST /api/replays")
    page.wait_for_function("document.querySelector('#stream').selectedOptions[0].textContent"
                           ".startsWith('glimpse-replayed')")
    page.screenshot(path=artefacts / "keyboard.png")
    assert console.unexpected() == []


def test_reconnects_after_the_service_restarts(fake, open_viewer):
    service = fake()
    page, console = open_viewer(service.url)
    wait_panels_live(page)
    service.stop()
    page.wait_for_function("document.querySelector('#conn').textContent.startsWith('reconnecting')")
    before = stats(page)["frames_received"]
    time.sleep(1.0)
    assert stats(page)["frames_received"] == before  # nothing comes while it is away
    service.start()  # the same port
    page.wait_for_function("document.querySelector('#conn').textContent === 'connected'", timeout=20000)
    wait_until(lambda: stats(page)["frames_received"] > before + 20, what="frames after the restart")
    assert console.unexpected(NETWORK_NOISE) == []


def test_token_is_asked_once(fake, open_viewer, artefacts):
    service = fake(token="s3cret")
    page, console = open_viewer(service.url)
    dialog = page.locator("#token-dialog")
    dialog.wait_for(state="visible")
    page.screenshot(path=artefacts / "token.png")
    page.fill("#token-dialog input[type=password]", "wrong")  # a wrong token: asked again, saying so
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#token-dialog .reason').textContent.includes('refused')")
    page.fill("#token-dialog input[type=password]", "s3cret")
    page.keyboard.press("Enter")
    wait_panels_live(page)  # gallery <img>s load: the cookie carries the token
    assert stats(page)["token_prompts"] == 2
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    assert cookies["glimpse_token"] == "s3cret"

    page.reload()  # kept in localStorage: not asked again
    wait_panels_live(page)
    assert not dialog.is_visible()
    assert stats(page)["token_prompts"] == 0
    assert console.unexpected(NETWORK_NOISE) == []


def test_service_error_is_a_readable_toast(fake, open_viewer, artefacts):
    refusal = {"expected": "at most 4 sessions at once", "got": "a 5th session",
               "fix": "stop a session first", "message": "too many sessions"}
    service = fake(fail_start=refusal)
    page, console = open_viewer(service.url)
    wait_panels_live(page)
    page.wait_for_function("document.querySelector('#checkpoint').options[0].value !== ''")
    page.keyboard.press("s")
    toast = page.locator(".toast.error")
    toast.wait_for()
    text = toast.inner_text()
    for value in refusal.values():
        assert value in text
    page.screenshot(path=artefacts / "error-toast.png")
    assert any("too many sessions" in e for e in stats(page)["errors"])
    assert console.unexpected(NETWORK_NOISE) == []


def test_four_sessions_render(fake, open_viewer, artefacts):
    service = fake(sessions=4)
    page, console = open_viewer(service.url, width=1920, height=1080)
    wait_panels_live(page, 4)
    time.sleep(1.0)
    page.screenshot(path=artefacts / "four-sessions.png")
    s = stats(page)
    for sid in ("s1", "s2", "s3", "s4"):
        one = s["sessions"][sid]
        assert one["frames_painted"] > 0, sid
        assert one["frames_painted"] + one["frames_skipped"] <= one["frames_received"], sid
    page.keyboard.press("3")
    page.keyboard.press("z")  # zoom the focused panel
    page.wait_for_function("getComputedStyle(document.querySelector('#panels > .panel:nth-child(1)')).display"
                           " === 'none'")
    assert page.locator("#panels > .panel:nth-child(3)").is_visible()
    page.screenshot(path=artefacts / "zoomed.png")
    assert console.unexpected() == []


def test_pure_logic_in_the_browser(fake, open_viewer):
    """The viewer's pure functions, run where they run: clock filter, M4, IDW, trace merge,
    ranks, and the store's latest-wins slot (a hidden tab's rAF is paused; headless
    Chromium never hides a page, so the slot is checked directly)."""
    service = fake()
    page, _ = open_viewer(service.url)
    result = page.evaluate("""async () => {
      const clock = await import('/js/clock.js');
      const traces = await import('/js/traces.js');
      const topo = await import('/js/topo.js');
      const rings = await import('/js/rings.js');
      const state = await import('/js/state.js');
      const out = {};
      // service clock = browser + 1000 ms; a 2 ms and a 40 ms round trip
      const f = new clock.ClockFilter();
      f.add(0, 1.001, 1.001, 2);      // t2 = t3 = 1001 ms; rtt 2 ms -> offset 1000
      f.add(10, 1.030, 1.030, 50);    // rtt 40 ms, offset 1000 (symmetric) but kept second
      f.add(100, 1.140, 1.140, 120);  // rtt 20 ms, asymmetric: offset 1030
      out.offset = f.offsetMs; out.uncertainty = f.uncertaintyMs;
      for (let i = 0; i < 8; i++) f.add(200 + i, 1.3, 1.3, 240 + i);  // the best sample ages out
      out.offsetAfter = f.offsetMs;
      // M4 keeps a one-sample spike that mean decimation would flatten
      const buf = new rings.TraceBuffer();
      const data = Array.from({length: 1000}, (_, i) => (i === 250 ? 50 : 0));
      buf.merge({ch_names: ['Oz'], sfreq: 1000, t0: 10, data: [data]});
      buf.merge({ch_names: ['Oz'], sfreq: 1000, t0: 10.5, data: [data.slice(0, 500)]});  // overlaps
      out.length = buf.length;
      const cols = traces.m4(buf, 0, 10, 11, 100);
      out.spike = Math.max(...cols.filter(Number.isFinite));
      out.firstCol = Array.from(cols.slice(0, 4));
      // IDW: weights of a pixel sum to 1; constant levels interpolate to that constant
      const pos = [[0.2, 0.5], [0.8, 0.5], [0.5, 0.2], [0.5, 0.8], [0.5, 0.5]];
      const layout = topo.idwLayout(pos, 16, 4);
      let worst = 0;
      for (let p = 0; p < 256; p++) {
        if (layout.index[p * 4] < 0) continue;
        let s = 0; for (let j = 0; j < 4; j++) s += layout.weight[p * 4 + j];
        worst = Math.max(worst, Math.abs(s - 1));
      }
      out.weightError = worst;
      const values = topo.interpolate(layout, [2, 2, 2, null, 2], new Float32Array(256));
      out.constant = Array.from(values).filter(Number.isFinite).every((v) => Math.abs(v - 2) < 1e-5);
      out.outside = Number.isNaN(values[0]);
      const frame = (truth, ids) => ({truth: truth && {id: truth}, topk: ids.map((id) => ({id}))});
      // A page that could not paint (a hidden tab) paints the newest frame, not a backlog.
      const store = new state.Store();
      store.session('s1');
      for (let seq = 1; seq <= 40; seq++) {
        store.handle({type: 'frame', session: 's1', seq, t_window_end: seq, topk: [{id: 'a', url: '/a'}], truth: null});
      }
      const s1 = store.sessions.get('s1');
      out.backlog = [s1.pendingFrame.seq, s1.received, s1.skipped, s1.film.length];
      out.ranks = [state.truthRank(frame('a', ['a', 'b'])), state.truthRank(frame('b', ['a', 'b'])),
                   state.truthRank(frame('c', ['a', 'b'])), state.truthRank(frame(null, ['a']))];
      return out;
    }""")
    assert result["offset"] == pytest.approx(1000)
    assert result["uncertainty"] == pytest.approx(1.1)  # half of 2 ms + the timer's 0.1 ms
    assert result["offsetAfter"] != pytest.approx(1000)
    assert result["length"] == 1000  # the overlap replaced, not duplicated
    assert result["spike"] == 50
    assert result["firstCol"] == [0, 0, 0, 0]
    assert result["weightError"] < 1e-5
    assert result["constant"] and result["outside"]
    assert result["ranks"] == [0, 1, -1, None]
    assert result["backlog"] == [40, 40, 39, 40]  # one frame waits, the newest; the filmstrip keeps all


def test_generated_images_show_beside_the_retrieved_and_the_mode_switches(fake, open_viewer, artefacts):
    service = fake(generator=True)
    page, console = open_viewer(service.url)
    wait_panels_live(page)
    panel = "#panels > .panel"
    page.wait_for_function(f"({NON_BLANK})('{panel} .generated canvas') > 1000", timeout=SHOWN_S * 1000)
    page.wait_for_function(f"/^generation · age \\d+ ms$/.test(document.querySelector('{panel} .generated "
                           "figcaption').textContent)", timeout=SHOWN_S * 1000)
    page.screenshot(path=artefacts / "generated.png")
    one = stats(page)["sessions"]["s1"]
    assert one["mode"] == "generation" and one["generated_painted"] > 0
    assert one["generated_painted"] + one["generated_skipped"] <= one["generated_received"]
    # The service's age at sending and the painted age: from the window's end, at least
    # the fake's 20 ms, less the clock's uncertainty.
    age = int(re.search(r"age (\d+) ms", page.locator(f"{panel} .generated figcaption").inner_text())[1])
    assert 20 - stats(page)["offset_uncertainty_ms"] - 1 < age < 5000

    page.select_option(f"{panel} .panel-mode-select", "retrieval")
    wait_until(lambda: ("POST", "/api/sessions/s1/mode", {"mode": "retrieval"}) in service.calls,
               what="POST /api/sessions/s1/mode")
    page.wait_for_function(f"document.querySelector('{panel} .panel-mode-select').value === 'retrieval'")
    time.sleep(0.3)  # one in flight may still come
    before = stats(page)["sessions"]["s1"]["generated_received"]
    time.sleep(1.0)
    assert stats(page)["sessions"]["s1"]["generated_received"] == before  # retrieval: none come
    page.wait_for_function(f"document.querySelector('{panel} .generated').classList.contains('old')",
                           timeout=5000)  # the last one is dimmed, not passed off as live
    page.select_option(f"{panel} .panel-mode-select", "two_stage")
    page.wait_for_function(f"document.querySelector('{panel} .generated figcaption').textContent"
                           ".startsWith('two-stage')", timeout=SHOWN_S * 1000)
    assert page.evaluate(f"document.querySelector('{panel} .generated').classList.contains('old')") is False

    parsed = page.evaluate("""async () => {
      const { parseGenerated } = await import('/js/socket.js');
      const head = new TextEncoder().encode(JSON.stringify({type: 'generated', seq: 2 ** 40 + 1}));
      const buf = new ArrayBuffer(12 + head.length + 3);
      const view = new DataView(buf);
      view.setBigUint64(0, BigInt(2 ** 40 + 1), true);
      view.setUint32(8, head.length, true);
      new Uint8Array(buf, 12).set(head);
      new Uint8Array(buf, 12 + head.length).set([255, 216, 255]);
      const msg = parseGenerated(buf);
      return [msg.seq, msg.header.seq, msg.blob.size, msg.blob.type];
    }""")
    assert parsed == [2**40 + 1, 2**40 + 1, 3, "image/jpeg"]
    assert stats(page)["errors"] == []
    assert console.unexpected() == []


def test_a_session_without_a_generator_offers_retrieval_only(fake, open_viewer):
    service = fake()
    page, console = open_viewer(service.url)
    wait_panels_live(page)
    panel = "#panels > .panel"
    assert page.locator(f"{panel} .generated").is_hidden()
    disabled = page.eval_on_selector(f"{panel} .panel-mode-select",
                                     "s => [...s.options].map((o) => [o.value, o.disabled])")
    assert disabled == [["retrieval", False], ["generation", True], ["two_stage", True]]
    assert stats(page)["sessions"]["s1"]["generated_received"] == 0
    assert console.unexpected() == []


def test_the_generator_picker_offers_what_fits_the_checkpoint(fake, open_viewer):
    service = fake()
    page, console = open_viewer(service.url)
    wait_panels_live(page)
    page.wait_for_function("document.querySelector('#generator').options.length > 1")
    offered = page.eval_on_selector_all("#generator option", "os => os.map(o => [o.value, o.textContent])")
    # The checkpoints embed with clip-vit-b32 (512-d): the ViT-H-14 pipeline is not offered.
    assert offered == [["", "none"], ["embedded-handcrafted-77aa88bb", "embedded-handcrafted (embedded, 64 px)"]]
    assert page.eval_on_selector("#generator", "s => s.value") == ""  # retrieval needs none
    assert not page.is_visible("#generator")  # and does not show the field
    tops = page.eval_on_selector_all("#controls > *:not([hidden])", "els => els.map(e => e.offsetTop)")
    assert max(tops) - min(tops) < 10, tops  # one row of controls at 1600 px
    page.select_option("#mode", "generation")
    assert page.is_visible("#generator")
    assert page.eval_on_selector("#generator", "s => s.value") == "embedded-handcrafted-77aa88bb"
    page.click("#start")
    posted = wait_until(lambda: [c for c in service.calls if c[:2] == ("POST", "/api/sessions")],
                        what="POST /api/sessions")
    assert posted[0][2]["mode"] == "generation"
    assert posted[0][2]["generator"] == "embedded-handcrafted-77aa88bb"
    assert console.unexpected() == []
