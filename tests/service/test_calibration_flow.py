"""A new person's calibration end to end: a real uvicorn server, a simulated person on
loopback LSL (``LivePerson``: the stream with its SAMPLE_INDEX channel, answering the
images announced on ``<stream>-markers``), the presentation driven without a browser
by sending the page's WebSocket messages from here at 100 ms on / 100 ms off, a tiny
two-subject base brain encoder trained on the same simulated world, the adaptation at
tiny sizes, then the hot swap: frames go on and the session folder holds every sample.
And each bad input: too few trials, a base of another modality or channel set, the
stream dying mid-calibration (interrupted, recording kept, resumed), markers whose
stimulus is not in the presented design."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import numpy as np
import pylsl
import pytest
from starlette.routing import Mount
from threadpoolctl import threadpool_limits
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from glimpse.service.api import calibrations
from glimpse.service.api.app import create_app
from glimpse.service.calibration import CalibrationManager
from glimpse.service.calibration.simulated import FRESH_FOLDER, write_fresh_images
from glimpse.service.settings import Settings
from glimpse.streaming.errors import InputError
from glimpse.streaming.session_log import read_session_stream
from glimpse.streaming.simulate.live import LivePerson
from glimpse.streaming.simulate.person import load_world
from helpers import until

# A world, a base model, a server, a live person, sessions (two processes each, both
# import torch), adaptations in processes of their own: minutes on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(420)

FAST = {"image_ms": 100, "fixation_ms": 100, "jitter_ms": 0, "lead_in_ms": 200, "catch_rate": 0.05}
MINUTES = 0.14  # 42 calibration trials at 200 ms a trial: above the minimum of 30
TINY = dict(hidden=16, spatial_channels=16, n_blocks=2, epochs=3, batch_size=16, patience=5,
            model_options={"fourier_k": 4})


def build_world(root, modality: str):
    """A small simulated world of two subjects, a tiny base brain encoder trained on it
    (base/), the gallery of its test images and fresh calibration exemplars."""
    from glimpse.models.data import load_session
    from glimpse.models.embedders import load_embedder
    from glimpse.models.gallery import build_gallery
    from glimpse.models.train import TrainConfig, train
    from glimpse.streaming.simulate import SimulationConfig, simulate_session

    config = SimulationConfig(modality=modality, seed=0, subjects=2, concepts=8, exemplars=2, test_concepts=4,
                              test_exemplars=2, test_repeats=6, image_size=48)
    simulate_session(config, root, progress=False)
    train(load_session(root, progress=False), TrainConfig(val_concept_fraction=0.25, num_threads=1, **TINY),
          root / "base", progress=False)
    build_gallery(sorted((root / "stimuli" / "test").rglob("*.png")), load_embedder("handcrafted"),
                  root=root, progress=False).save(root / "gallery" / "test")
    write_fresh_images(root, per_concept=2)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The MEG world (275-channel CTF-like stream at 1200 Hz)."""
    return build_world(tmp_path_factory.mktemp("calibration") / "world", "meg")


@pytest.fixture(scope="module")
def eeg_world(tmp_path_factory):
    """The EEG world (64 channels)."""
    return build_world(tmp_path_factory.mktemp("calibration-eeg") / "world", "eeg")


def calibration_app(settings: Settings):
    """create_app with the calibrations router and manager, wired as app.py will (here, until
    it does)."""
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/api/calibrations" for route in app.routes):
        state = app.state
        state.calibrations = CalibrationManager(
            state.roots, state.catalog, state.sessions, state.presentations,
            lambda sid, message: state.hub.publish(sid, message),
            calibrations_dir=state.roots.sessions_dir(settings.sessions_dir) / "calibrations")
        app.include_router(calibrations.router)
        app.router.routes.sort(key=lambda route: isinstance(route, Mount))  # before the static mount
    return app


@pytest.fixture(scope="module")
def service(world, eeg_world, serving):
    app = calibration_app(Settings(data=[world, eeg_world], port=0))
    # The live person's renders are small matmuls every chunk: BLAS threads would only spin.
    with threadpool_limits(1, user_api="blas"), serving(app) as url:
        with httpx.Client(base_url=url, timeout=120.0) as client:
            yield app, url, client
    app.state.calibrations.close()


@pytest.fixture
def person(world):
    """start(name, world=MEG world) -> a LivePerson (subject seed 7) publishing ``name``;
    stopped after the test."""
    started: list[LivePerson] = []

    def start(name: str, root=world) -> LivePerson:
        live = LivePerson(load_world(root), subject_seed=7, name=name, source_id=f"{name}-person").start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()



def _body(stream: str, **fields) -> dict:
    return {"base": "base", "stream": stream, "images": FRESH_FOLDER, "test_images": "stimuli/test",
            "minutes": MINUTES, "test_repeats": 2, "subject": "p07", "epochs": 3, "presentation": FAST,
            **fields}


class Page:
    """The presentation page's messages, sent from here at the design's pace."""

    def __init__(self, url: str, presentation: dict):
        self.design = presentation["design"]
        self._connection = connect(url.replace("http", "ws") + f"/ws/present/{presentation['id']}")
        self.ws = self._connection.__enter__()
        self.replies: list[dict] = []

    def ask(self, message: dict, reply: bool = True) -> dict | None:
        """Send ``message``; its reply, or ``{"type": "closed"}`` where the service had
        ended the presentation and closed the socket (its "ended" reply may have answered
        an offset, which is not read)."""
        try:
            self.ws.send(json.dumps(message))
            if not reply:
                return None
            answer = json.loads(self.ws.recv(timeout=10))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000, closed  # ended, not an error
            answer = {"type": "closed"}
        self.replies.append(answer)
        return answer

    def run(self, *, until: int | None = None, before_each=None) -> int:
        """Show the trials (up to ``until``) as the page would; the number shown. Stops at the
        first onset not acknowledged with a marker (the service stopped the presentation)."""
        assert self.ask({"type": "start"})["type"] == "started"
        time.sleep(self.design["settings"]["lead_in_ms"] / 1000)
        for trial in self.design["trials"][:until]:
            if before_each is not None:
                before_each(trial)
            t = pylsl.local_clock()
            ack = self.ask({"type": "onset", "trial": trial["index"], "stim_id": trial["stim_id"], "t_lsl": t,
                            "t_browser_ms": 0.0, "offset_ms": 0.0, "uncertainty_ms": 0.2})
            if ack["type"] != "marker":
                return trial["index"]
            time.sleep(trial["image_ms"] / 1000)
            self.ask({"type": "offset", "trial": trial["index"], "t_lsl": pylsl.local_clock(),
                      "t_browser_ms": 0.0}, reply=False)
            time.sleep(trial["isi_ms"] / 1000)
        return len(self.design["trials"][:until])

    def report(self) -> dict:
        return self.ask({"type": "report", "report": {"sync": {"uncertainty_ms": 0.2}}})

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


class Events:
    """The hub's "event" messages to a session's clients, read in a thread."""

    def __init__(self, ws):
        self.got: list[dict] = []
        threading.Thread(target=self._read, args=(ws,), daemon=True).start()

    def _read(self, ws) -> None:
        try:
            for text in ws:
                message = json.loads(text) if isinstance(text, str) else {}
                if message.get("type") == "event":
                    self.got.append(message)
        except Exception:  # noqa: BLE001 - closed by the test
            pass

    def of(self, event: str) -> list[dict]:
        return [m for m in list(self.got) if m["event"] == event]


def _create(client, stream: str, live: LivePerson, **fields) -> dict:
    created = client.post("/api/calibrations", json=_body(stream, **fields))
    assert created.status_code == 201, created.text
    calibration = created.json()
    # The session's acquisition and the person follow <stream>-markers from its creation:
    # both must be subscribed before the first onset, as they are while a person reads
    # the instructions.
    until(lambda: live.stats()["markers_connected"], 20, "the person following the markers")
    time.sleep(1.5)
    return calibration


def _state(client, cid: str, states: tuple[str, ...], timeout: float) -> dict:
    return until(lambda: (c := client.get(f"/api/calibrations/{cid}").json())["state"] in states and c,
                  timeout, f"calibration {cid} in {states}", step=0.25)


def test_a_new_person_from_the_presentation_to_decoding_with_the_swapped_model(service, person, world):
    app, url, client = service
    stream = f"cal-{uuid.uuid4().hex[:6]}"
    live = person(stream)
    started = time.monotonic()
    calibration = _create(client, stream, live)
    cid, sid = calibration["id"], calibration["session"]
    assert calibration["state"] == "presenting" and calibration["started_session"]
    assert calibration["present_url"] == f"/present?id={calibration['presentation_id']}"
    presentation = client.get(f"/api/presentations/{calibration['presentation_id']}").json()
    trials = presentation["design"]["trials"]
    kinds = [t["trial_type"] for t in trials]
    assert kinds.count("exp") == 42 and kinds.count("test") == 16  # 8 held-out images x 2
    assert presentation["design"]["settings"]["mix"] == "interleaved"
    bridge = app.state.presentations.bridge
    page = Page(url, presentation)
    foreign = {"stim_file": str(world / "stimuli" / "train" / "not-shown.png"), "concept": "x", "trial_type": "exp"}

    def misbehave(trial):
        if trial["index"] == 5:  # a page naming a stimulus that is not in the design: refused
            wrong = page.ask({"type": "onset", "trial": 5, "stim_id": "stimuli/elsewhere.png",
                              "t_lsl": pylsl.local_clock(), "t_browser_ms": 0.0, "offset_ms": 0.0,
                              "uncertainty_ms": 0.2})
            assert wrong["type"] == "error" and "not in the design" in wrong["message"]
        if trial["index"] == 9:  # another program's marker on the stream's markers, between images
            bridge.publish(stream, foreign, pylsl.local_clock() - 0.05)

    assert page.run(before_each=misbehave) == len(trials)
    assert page.report()["presentation"]["state"] == "done"
    page.close()
    with connect(url.replace("http", "ws") + f"/ws/sessions/{sid}") as ws:
        events = Events(ws)
        ready = _state(client, cid, ("ready", "swapped", "failed"), 240)
        assert ready["state"] != "failed", ready["error"]
        swapped = _state(client, cid, ("swapped",), 60)
        until(lambda: any(m.get("message", "").startswith("session ") for m in events.of("calibration")), 10,
               "the swap announced on the hub")
    loop_s = time.monotonic() - started
    result = swapped["result"]
    print(f"calibration loop at test sizes: {loop_s:.1f} s ({swapped['timings']}), adaptation "
          f"{result['wall_s']} s; held-out top-5 {result['held_out_before']['top5']:.3f} -> "
          f"{result['held_out_after']['top5']:.3f} (chance {result['held_out_after']['chance_top5']:.3f})")
    # The calibration's own trials only: the foreign marker was recorded, and left out.
    assert swapped["data"]["by_split"]["train"] == 42 and swapped["data"]["by_split"]["test"] == 16
    assert swapped["data"]["not_this_calibration"] >= 1
    assert [h["epoch"] for h in swapped["history"]][0] == 1 and "val_top5" in swapped["history"][0]
    for side in ("held_out_before", "held_out_after"):
        figures = result[side]
        assert figures["n_trials"] == 16 and 0 <= figures["top5"] <= 1 and figures["chance_top5"] > 0
    # A normal checkpoint folder with its lineage and the figures in its config.
    out = world / swapped["checkpoint"]
    config = json.loads((out / "config.json").read_text())
    assert config["subjects"][-1] == "p07" and config["lineage"]["base"] == str((world / "base").resolve())
    assert config["lineage"]["session_folder"] == str(world / swapped["session_folder"])
    assert config["lineage"]["presentations"][0]["id"] == calibration["presentation_id"]
    assert config["calibration"]["held_out_after"] == result["held_out_after"]
    assert (world / swapped["folder"] / "calibration.json").is_file()
    # Progress went out on the hub to the session's clients.
    epochs = [m["calibration"]["epoch"] for m in events.of("calibration_progress") if m["calibration"]["epoch"]]
    assert epochs and epochs == sorted(epochs)
    assert any("held-out top-5" in m["message"] for m in events.of("calibration"))
    # The live session decodes the new person with the adapted checkpoint.
    session = client.get(f"/api/sessions/{sid}").json()
    assert session["checkpoint"]["subject"] == "p07" and session["checkpoint"]["subjects"][-1] == "p07"
    assert swapped["swap"]["checkpoint"]["id"] == session["checkpoint"]["id"]
    # Frames go on after the swap, and the session folder holds every sample.
    before = client.get(f"/api/sessions/{sid}").json()["status"]["n_decoded"]
    until(lambda: client.get(f"/api/sessions/{sid}").json()["status"]["n_decoded"] > before + 10, 30,
           "frames after the swap")
    final = client.delete(f"/api/sessions/{sid}").json()
    raw, times, _ = read_session_stream(world / swapped["session_folder"])
    index = raw.get_data(picks=["SAMPLE_INDEX"])[0]
    assert len(index) == final["streams"][0]["n_samples"] and np.all(np.diff(index) == 1)


def _cli(*args: str) -> tuple[int, str]:
    """``glimpse calibrate ARGS`` (the command alone, as cli.py registers it)."""
    import typer
    from typer.testing import CliRunner

    from glimpse.service.cli_calibrate import calibrate

    app = typer.Typer()
    app.command()(calibrate)
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_a_stream_that_dies_interrupts_keeps_the_recording_and_resumes(service, person, world, tmp_path):
    app, url, client = service
    stream = f"cal-{uuid.uuid4().hex[:6]}"
    live = person(stream)
    calibration = _create(client, stream, live, swap=False)
    cid, sid = calibration["id"], calibration["session"]
    presentation = client.get(f"/api/presentations/{calibration['presentation_id']}").json()
    page = Page(url, presentation)
    killer = threading.Timer(6.0, live.stop)  # the amplifier goes away 6 s into the 12 s run
    killer.start()
    shown = page.run()
    page.close()
    assert shown < len(presentation["design"]["trials"])
    assert page.replies[-1]["type"] in ("ended", "closed"), page.replies[-1]  # the page is told to stop
    interrupted = _state(client, cid, ("interrupted",), 30)
    assert "was lost" in interrupted["error"]["message"]
    assert interrupted["trials"]["presentation"]["state"] == "stopped"
    assert (world / interrupted["session_folder"] / "session.json").is_file()  # the recording is kept
    refused = client.post(f"/api/calibrations/{cid}/resume")
    assert refused.status_code == 409 and "restart the stream" in refused.json()["error"]["fix"]
    person(stream)  # the same person, the same source id: the session finds the stream again
    until(lambda: client.post(f"/api/calibrations/{cid}/resume").status_code == 200, 30, "a resume")
    resumed = client.get(f"/api/calibrations/{cid}").json()
    assert resumed["state"] == "presenting" and len(resumed["presentations"]) == 2
    # From the first trial not validly shown, less those of the last 4 s before the loss was
    # seen (their signal may be missing): the rest of the same design.
    first = resumed["presentations"][1]["first_trial"]
    assert 0 <= first <= shown
    rest = client.get(f"/api/presentations/{resumed['presentation_id']}").json()
    full = presentation["design"]["trials"]
    assert [t["stim_id"] for t in rest["design"]["trials"]] == [t["stim_id"] for t in full[first:]][-len(
        rest["design"]["trials"]):]
    time.sleep(1.5)  # the markers outlet is the same; the new person subscribes to it
    page = Page(url, rest)
    assert page.run() == len(rest["design"]["trials"])
    assert page.report()["presentation"]["state"] == "done"
    page.close()
    ready = _state(client, cid, ("ready", "failed"), 240)
    assert ready["state"] == "ready", ready["error"]
    # Both presentations' trials count, those over the gap do not.
    data = ready["data"]
    assert data["by_split"]["train"] >= 30 and data["kept"] > 0
    # The terminal follows it too: a ready calibration's result.
    code, output = _cli("--service", url, "--resume", cid)
    assert code == 0 and "adapted checkpoint: sessions/calibrations/" in output, output
    assert "held-out images, single-trial top-5" in output
    client.delete(f"/api/sessions/{sid}")
    # Offline, from the recorded folder (every trial its markers name).
    code, output = _cli(str(world / ready["session_folder"]), "--base", str(world / "base"), "--out",
                        str(tmp_path / "p08"), "--subject", "p08", "--epochs", "2", "--threads", "1")
    assert code == 0 and f"adapted checkpoint: {tmp_path / 'p08'} (subject p08" in output, output
    lineage = json.loads((tmp_path / "p08" / "config.json").read_text())["lineage"]
    assert lineage["session_folder"] == str(world / ready["session_folder"]) and lineage["subject"] == "p08"


def test_too_few_trials_are_refused_before_anything_starts_and_when_adapting(service, person):
    app, url, client = service
    stream = f"cal-{uuid.uuid4().hex[:6]}"
    live = person(stream)
    sessions_before = len(client.get("/api/sessions").json())
    short = client.post("/api/calibrations", json=_body(stream, minutes=0.05))
    assert short.status_code == 400
    error = short.json()["error"]
    assert "at least 30 calibration trials" in error["expected"] and "held out to pick the best epoch" in error["expected"]
    assert "15 trial(s)" in error["got"] and "minutes to 0.1 or more" in error["fix"]
    assert len(client.get("/api/sessions").json()) == sessions_before
    code, output = _cli("--help")
    assert code == 0 and "Examples" in output and "--fresh-images" in output
    with pytest.raises(InputError, match="SESSION_FOLDER --base CKPT --out DIR"):
        _cli("--base", "base")
    # Stopped after 8 trials and adapted on them: the adaptation's own refusal, surfaced.
    calibration = _create(client, stream, live)
    presentation = client.get(f"/api/presentations/{calibration['presentation_id']}").json()
    page = Page(url, presentation)
    page.run(until=8)
    page.report()
    page.close()
    interrupted = _state(client, calibration["id"], ("interrupted",), 30)
    assert "the page ended the run early" in interrupted["error"]["message"]
    assert client.post(f"/api/calibrations/{calibration['id']}/swap").status_code == 409
    client.post(f"/api/calibrations/{calibration['id']}/adapt")
    failed = _state(client, calibration["id"], ("failed",), 180)
    assert "at least 30 calibration trials" in failed["error"]["expected"]
    assert "training trials" in failed["error"]["got"]
    client.delete(f"/api/sessions/{calibration['session']}")


def test_a_base_of_another_modality_or_channel_set_is_refused_before_anything_starts(service, person, eeg_world):
    app, url, client = service
    stream, eeg_stream = f"cal-{uuid.uuid4().hex[:6]}", f"cal-{uuid.uuid4().hex[:6]}"
    person(stream)
    person(eeg_stream, eeg_world)
    sessions_before = len(client.get("/api/sessions").json())
    presentations_before = len(client.get("/api/presentations").json())
    response = client.post("/api/calibrations", json=_body(stream, base=str(eeg_world / "base")))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "a base checkpoint of the stream's modality and channel set" in error["expected"]
    assert "MEG, 275 channels" in error["expected"] and "an EEG checkpoint of 64 channels" in error["got"]
    assert "64 of them not in the stream" in error["got"] and "GET /api/checkpoints" in error["fix"]
    response = client.post("/api/calibrations", json=_body(eeg_stream, images=str(eeg_world / FRESH_FOLDER)))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "EEG, 65 channels" in error["expected"] and "an MEG checkpoint of 274" in error["got"]
    assert "274 of them not in the stream" in error["got"]
    assert len(client.get("/api/sessions").json()) == sessions_before
    assert len(client.get("/api/presentations").json()) == presentations_before
    for body, status, words in (
            (_body(stream, base="gallery/test.safetensors"), 404, "checkpoint"),
            (_body(stream, images="stimuli/nowhere"), 404, "does not exist"),
            (_body(stream, presentation={"folder": "x"}), 422, "the calibration sets them"),
            (_body(stream, presentation={**FAST, "image_ms": 1}), 400, "image_ms"),
            (_body("no-such-stream"), 400, "no-such-stream"),
            (_body(stream, subject="has space"), 422, "subject")):
        response = client.post("/api/calibrations", json=body)
        assert response.status_code == status and words in response.json()["error"]["message"], response.text
    assert client.get("/api/calibrations/nope").status_code == 404


def test_an_eeg_person_is_calibrated_and_decoded_too(service, person, eeg_world):
    app, url, client = service
    stream = f"cal-{uuid.uuid4().hex[:6]}"
    live = person(stream, eeg_world)
    calibration = _create(client, stream, live, base=str(eeg_world / "base"), images=str(eeg_world / FRESH_FOLDER),
                          test_images=str(eeg_world / "stimuli" / "test"),
                          gallery=str(eeg_world / "gallery" / "test.safetensors"))
    presentation = client.get(f"/api/presentations/{calibration['presentation_id']}").json()
    page = Page(url, presentation)
    assert page.run() == len(presentation["design"]["trials"])
    page.report()
    page.close()
    swapped = _state(client, calibration["id"], ("swapped", "failed"), 240)
    assert swapped["state"] == "swapped", swapped["error"]
    assert swapped["base"]["modality"] == "eeg" and swapped["data"]["by_split"]["train"] == 42
    after = swapped["result"]["held_out_after"]
    assert after["n_trials"] == 16 and 0 <= after["top5"] <= 1
    session = client.get(f"/api/sessions/{calibration['session']}").json()
    assert session["checkpoint"]["subject"] == "p07"
    client.delete(f"/api/sessions/{calibration['session']}")


def test_the_automatic_swap_holds_back_a_clearly_worse_model():
    from glimpse.service.calibration.flow import _worse

    def figures(before, after, se=0.05):
        return {"held_out_before": {"top5": before, "se_top5": se}, "held_out_after": {"top5": after, "se_top5": se}}

    assert _worse(figures(0.40, 0.17)) == ("the adapted model decodes the held-out images worse (top-5 0.400 "
                                           "before, 0.170 after, s.e. 0.050)")
    assert _worse(figures(0.40, 0.36)) is None  # within a standard error: swapped
    assert _worse(figures(0.33, 0.42)) is None
    assert _worse({"held_out_before": None, "held_out_after": None}) is None  # nothing to compare
