"""Presentations without a browser: designs, the REST API and the page's WebSocket on a
real uvicorn, markers on real LSL, the per-trial log on disk, and every bad input the
issue names (an empty folder, files that are not images, a stimulus not in the design,
an unknown presentation, bad WebSocket messages answered while the socket stays open)."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import numpy as np
import pylsl
import pytest
from PIL import Image
from pydantic import ValidationError
from starlette.routing import Mount
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from glimpse.service.api import present
from glimpse.service.api.app import create_app
from glimpse.service.catalog import Catalog
from glimpse.service.errors import Forbidden, InputError, NotFound
from glimpse.service.present import PresentationManager, PresentationRequest, build_design, read_presentation
from glimpse.service.present.records import TrialRecords
from glimpse.service.present.timing import build_report
from glimpse.service.roots import DataRoots
from glimpse.service.settings import Settings

# A server per module and LSL resolves: a hang must fail.
pytestmark = pytest.mark.timeout(120)

SHORT = {"image_ms": 100, "fixation_ms": 150, "jitter_ms": 30, "lead_in_ms": 300}


def _png(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """images/<concept>/*.png (6), catch/ (2), empty/, texts/ (no image), mixed/ (images +
    notes), fake/ (a .png that is text, an empty .jpg), renamed/ (a PNG named .jpg), a
    gallery of 4 of the images."""
    root = tmp_path_factory.mktemp("present-api")
    for k, concept in enumerate(("aardvark", "banana", "cello")):
        for j in range(2):
            _png(root / "images" / concept / f"{concept}_{j:02d}b.png", 10 * k + j)
    _png(root / "catch" / "catch_00.png", 99)
    _png(root / "catch" / "catch_01.png", 98)
    (root / "images" / ".DS_Store").write_bytes(b"hidden files are skipped")
    (root / "empty").mkdir()
    _png(root / "mixed" / "a_01.png", 5)
    (root / "mixed" / "notes.txt").write_text("not an image")
    (root / "mixed" / "events.tsv").write_text("onset\n")
    _png(root / "fake" / "real_01.png", 6)
    (root / "fake" / "broken_01.png").write_text("<html>not a png</html>")
    (root / "fake" / "zero_01.jpg").write_bytes(b"")
    (root / "texts").mkdir()
    (root / "texts" / "readme.md").write_text("only text here")
    _png(root / "renamed" / "png_named_01.jpg", 7)  # browsers sniff: still an image
    ids = ["aardvark/aardvark_00b.png", "banana/banana_00b.png", "cello/cello_00b.png", "cello/cello_01b.png"]
    (root / "gallery").mkdir()
    (root / "gallery" / "things.json").write_text(json.dumps(
        {"embedder": "handcrafted", "dim": 4, "ids": ids, "paths": [f"../images/{i}" for i in ids],
         "hashes": ["0" * 64] * len(ids)}))
    (root / "gallery" / "things.safetensors").write_bytes(b"never read to make a design")
    return root


def _app(root, **settings):
    """create_app with the presentations router and manager (here, until app.py wires them)."""
    app = create_app(Settings(data=[root], port=0, **settings))
    if not any(getattr(route, "path", None) == "/ws/present/{presentation_id}" for route in app.routes):
        state = app.state
        state.presentations = PresentationManager(state.roots, state.catalog,
                                                  state.roots.sessions_dir(None) / "presentations")
        app.include_router(present.router)
        app.router.routes.sort(key=lambda route: isinstance(route, Mount))  # before the static mount
    return app


@pytest.fixture(scope="module")
def service(root, serving):
    app = _app(root)
    with serving(app) as url:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            yield app, url, client
    app.state.presentations.close()


def _design(root, **fields):
    roots = DataRoots([root])
    request = PresentationRequest(stream="s", **{"folder": "images", **fields})
    return build_design(request, roots, Catalog(roots))


# --------------------------------------------------------------------------- designs


def test_defaults_are_things_meg_and_trials_follow_the_schedule(root):
    design = _design(root, catch_rate=0)
    s = design.request
    assert (s.image_ms, s.fixation_ms, s.jitter_ms, s.response_key) == (500, 1000, 200, "Space")
    assert sorted(t.stim_id for t in design.trials) == sorted(x.id for x in design.stimuli) \
        and len(design.trials) == 6
    assert {x.concept for x in design.stimuli} == {"aardvark", "banana", "cello"}
    assert all(800 <= t.isi_ms <= 1200 for t in design.trials)
    assert len({t.isi_ms for t in design.trials}) > 1  # jittered
    onsets = [t.planned_onset_ms for t in design.trials]
    assert onsets[0] == s.lead_in_ms
    for a, b in zip(design.trials, design.trials[1:]):
        assert b.planned_onset_ms == pytest.approx(a.planned_onset_ms + a.image_ms + a.isi_ms, abs=0.1)


def test_designs_are_seeded_and_repeats_never_follow_each_other(root):
    one, same, other = (_design(root, repeats=4, catch_rate=0, seed=s) for s in (3, 3, 4))
    assert [t.stim_id for t in one.trials] == [t.stim_id for t in same.trials]
    assert [t.stim_id for t in one.trials] != [t.stim_id for t in other.trials]
    assert len(one.trials) == 24
    assert all(a.stim_id != b.stim_id for a, b in zip(one.trials, one.trials[1:]))


def test_one_back_catch_trials_repeat_the_image_before_them(root):
    design = _design(root, repeats=2, catch_rate=0.25)
    trials = design.trials
    catch = [t for t in trials if t.catch]
    assert len(catch) == 3 and all(t.trial_type == "catch" for t in catch)
    assert not trials[0].catch
    for t in catch:
        before = trials[t.index - 1]
        assert not before.catch and before.stim_id == t.stim_id
    assert "repeats right away" in design.to_dict()["catch_task"]


def test_catch_images_come_from_the_catch_folder(root):
    design = _design(root, catch_rate=0.5, catch_folder="catch")
    catch = [t for t in design.trials if t.catch]
    assert len(catch) == 3 and {t.stim_id for t in catch} <= {"catch/catch_00.png", "catch/catch_01.png"}
    assert all(not design.stimuli[t.stimulus].catch for t in design.trials if not t.catch)


def test_a_gallery_a_subset_and_a_sample(root):
    roots = DataRoots([root])
    design = build_design(PresentationRequest(stream="s", gallery="gallery/things", catch_rate=0),
                          roots, Catalog(roots))
    assert [x.id for x in design.stimuli] == ["aardvark/aardvark_00b.png", "banana/banana_00b.png",
                                              "cello/cello_00b.png", "cello/cello_01b.png"]
    assert design.stimuli[0].path == (root / "images" / "aardvark" / "aardvark_00b.png").resolve()
    picked = _design(root, images=["banana/banana_01b.png", "cello/cello_00b.png"], catch_rate=0)
    assert sorted(x.id for x in picked.stimuli) == ["banana/banana_01b.png", "cello/cello_00b.png"]
    sampled = _design(root, max_images=3, catch_rate=0, seed=1)
    assert len(sampled.stimuli) == 3 and sampled.stimuli == _design(root, max_images=3, catch_rate=0, seed=1).stimuli


def test_bad_designs_say_what_is_wrong(root):
    with pytest.raises(InputError, match="holds no image"):
        _design(root, folder="empty")
    with pytest.raises(InputError, match=r"2 other file\(s\): events.tsv, notes.txt") as err:
        _design(root, folder="mixed")
    assert "ignore_other_files" in err.value.fix
    assert len(_design(root, folder="mixed", ignore_other_files=True, catch_rate=0).trials) == 1
    with pytest.raises(InputError, match="holds no image \\(only readme.md\\)"):
        _design(root, folder="texts")
    with pytest.raises(InputError, match=r"2 in fake that are not images: broken_01.png \(starts with "
                                         r"b'<html>no'\), zero_01.jpg \(empty\)"):
        _design(root, folder="fake")
    assert [x.id for x in _design(root, folder="renamed").stimuli] == ["png_named_01.jpg"]
    with pytest.raises(NotFound, match="nope.png"):
        _design(root, images=["nope.png"])
    with pytest.raises(Forbidden):
        _design(root, folder="../")
    with pytest.raises(InputError, match="which is a file"):
        _design(root, folder="images/cello/cello_00b.png")
    with pytest.raises(ValidationError, match="exactly one of folder or gallery"):
        PresentationRequest(stream="s", folder="images", gallery="gallery/things")
    with pytest.raises(ValidationError, match="jitter_ms"):
        PresentationRequest(stream="s", folder="images", fixation_ms=100, jitter_ms=200)
    with pytest.raises(ValidationError, match="Extra inputs"):
        PresentationRequest(stream="s", folder="images", image_duration=3)


def test_held_out_images_are_test_trials_interleaved_or_in_a_block(root):
    design = _design(root, test_folder="catch", test_repeats=3, catch_rate=0, seed=2)
    kinds = [t.trial_type for t in design.trials]
    assert kinds.count("exp") == 6 and kinds.count("test") == 6
    test_ids = {t.stim_id for t in design.trials if t.trial_type == "test"}
    assert test_ids == {"test/catch_00.png", "test/catch_01.png"}
    assert all(design.stimuli[t.stimulus].test == (t.trial_type == "test") for t in design.trials)
    assert all(a.stim_id != b.stim_id for a, b in zip(design.trials, design.trials[1:]))
    first_test = kinds.index("test")
    assert first_test < len(kinds) - 1 - kinds[::-1].index("exp")  # mixed in, not after
    data = design.to_dict()
    assert data["n_test"] == 6 and sum(s["test"] for s in data["stimuli"]) == 2
    assert type(design).from_dict(json.loads(json.dumps(data))).trials == design.trials
    blocks = _design(root, test_folder="catch", test_repeats=3, catch_rate=0, mix="blocks")
    assert [t.trial_type for t in blocks.trials] == ["exp"] * 6 + ["test"] * 6
    assert _design(root, test_folder="catch", test_max_images=1, catch_rate=0).to_dict()["n_test"] == 1
    with pytest.raises(ValidationError, match='trial_type "exp" with a test_folder'):
        PresentationRequest(stream="s", folder="images", test_folder="catch", trial_type="test")


def test_n_trials_cycles_the_images_and_excludes_repeats(root):
    design = _design(root, n_trials=14, catch_rate=0, seed=1)
    counts = {}
    for t in design.trials:
        counts[t.stim_id] = counts.get(t.stim_id, 0) + 1
    assert len(design.trials) == 14 and len(counts) == 6 and set(counts.values()) <= {2, 3}
    assert all(a.stim_id != b.stim_id for a, b in zip(design.trials, design.trials[1:]))
    with pytest.raises(ValidationError, match="either repeats"):
        PresentationRequest(stream="s", folder="images", n_trials=10, repeats=2)
    with pytest.raises(InputError, match="at most 20000 trials"):
        _design(root, test_folder="catch", test_repeats=100, n_trials=19_990)


def test_first_trial_keeps_the_rest_of_the_design_retimed(root):
    fields = dict(repeats=2, catch_rate=0.25, seed=5, test_folder="catch", test_repeats=2)
    full = _design(root, **fields).trials
    for k in range(1, len(full)):
        rest = _design(root, first_trial=k, **fields).trials
        expected = list(full[k:])
        while expected[0].catch:
            expected.pop(0)
        assert [(t.stim_id, t.trial_type, t.isi_ms) for t in rest] == \
            [(t.stim_id, t.trial_type, t.isi_ms) for t in expected]
        assert [t.index for t in rest] == list(range(len(rest))) and rest[0].planned_onset_ms == 1000.0
        assert not rest[0].catch
    with pytest.raises(InputError, match=f"first_trial below the design's {len(full)} trials"):
        _design(root, first_trial=len(full), **fields)


# --------------------------------------------------------------------------- trial records


def test_catch_responses_are_hits_misses_and_false_alarms(root):
    design = _design(root, repeats=2, catch_rate=0.25, response_window_ms=1000)
    records = TrialRecords(design)
    t = 100.0
    assert records.response(t - 1)["outcome"] == "false_alarm"  # before any image
    catch = [x.index for x in design.trials if x.catch]
    for trial in design.trials:
        onset = t + trial.planned_onset_ms / 1000
        records.onset(trial.index, trial.stim_id, onset, 0.0, 0.0, 0.5)
        if trial.index == catch[0]:
            assert records.response(onset + 0.45) == {"outcome": "hit", "trial": trial.index, "rt_ms": 450.0}
    summary = records.summary(final=True, now=t + 100)
    assert summary["catch"]["hits"] == 1 and summary["catch"]["misses"] == len(catch) - 1
    assert summary["catch"]["false_alarms"] == 1 and summary["catch"]["median_rt_ms"] == 450.0
    with pytest.raises(InputError, match="one onset per trial"):
        records.onset(0, design.trials[0].stim_id, t, 0.0, 0.0, 0.5)
    with pytest.raises(InputError, match="not in the design; its stimuli are"):
        records.onset(1, "ghost.png", t, 0.0, 0.0, 0.5)


def test_the_report_warns_when_the_clock_is_uncertain():
    quiet = build_report({"sync": {"uncertainty_ms": 0.8}}, [])
    assert quiet["sync_uncertain"] is False and quiet["warnings"] == []
    loud = build_report({"sync": {"uncertainty_ms": 14.2}, "warnings": ["1 missed frame(s)"]}, [])
    assert loud["sync_uncertain"] is True
    assert loud["warnings"][0] == "1 missed frame(s)" and "14.2 ms" in loud["warnings"][1]


# --------------------------------------------------------------------------- REST


def _create(client, stream=None, **fields) -> dict:
    body = {"stream": stream or f"api-{uuid.uuid4().hex[:8]}", "folder": "images", **SHORT, **fields}
    response = client.post("/api/presentations", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_rest_creates_a_presentation_serves_its_images_and_lists_it(service, root):
    app, url, client = service
    created = _create(client, catch_rate=0)
    assert created["state"] == "created" and created["folder"].startswith("sessions/presentations/")
    assert created["page"] == f"/present?id={created['id']}"
    stimulus = created["design"]["stimuli"][0]
    image = client.get(stimulus["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (root / "images" / stimulus["id"]).read_bytes()
    assert created["id"] in [p["id"] for p in client.get("/api/presentations").json()]
    assert "design" not in client.get("/api/presentations").json()[0]
    assert client.get(f"/api/presentations/{created['id']}").json()["design"] == created["design"]
    page = client.get("/present")
    assert page.status_code == 200 and "js/present/main.js" in page.text
    assert client.get("/js/present/main.js").status_code == 200  # the static mount still serves
    report = client.get(f"/api/presentations/{created['id']}/report")
    assert report.status_code == 409 and "no report yet" in report.json()["error"]["got"]


@pytest.mark.parametrize("body, status, words", [
    ({"folder": "empty"}, 400, "holds no image"),
    ({"folder": "mixed"}, 400, "events.tsv, notes.txt"),
    ({"folder": "fake"}, 400, "broken_01.png"),
    ({"folder": "../etc"}, 403, "data roots"),
    ({"folder": "nowhere"}, 404, "does not exist"),
    ({"folder": "images", "gallery": "gallery/things"}, 422, "exactly one of folder or gallery"),
    ({"folder": "images", "duration": 5}, 422, "duration"),
    ({"folder": "images", "stream": "no spaces please"}, 422, "stream"),
])
def test_rest_refuses_bad_designs_naming_the_problem(service, body, status, words):
    app, url, client = service
    response = client.post("/api/presentations", json={"stream": "s", **body})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_unknown_presentations_are_404_on_rest_and_websocket(service):
    app, url, client = service
    for path in ("/api/presentations/nope", "/api/presentations/nope/trials",
                 "/api/presentations/nope/stimuli/0"):
        response = client.get(path)
        assert response.status_code == 404 and "nope" in response.json()["error"]["got"]
    created = _create(client, catch_rate=0)
    assert client.get(f"/api/presentations/{created['id']}/stimuli/99").status_code == 404
    with pytest.raises(InvalidStatus) as refused:
        connect(url.replace("http", "ws") + "/ws/present/nope")
    assert refused.value.response.status_code == 404


# --------------------------------------------------------------------------- WebSocket


class Page:
    """The page's side of /ws/present/{id}, in a test: send one message, read its reply."""

    def __init__(self, ws):
        self.ws = ws

    def ask(self, message, *, reply: bool = True) -> dict | None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))
        return json.loads(self.ws.recv(timeout=10)) if reply else None


def _markers(name: str) -> pylsl.StreamInlet:
    found = pylsl.resolve_byprop("name", name, timeout=20)
    assert found, f"{name} is not on LSL"
    inlet = pylsl.StreamInlet(found[0], max_buflen=60, recover=False)
    inlet.open_stream(timeout=10)
    return inlet


def test_onsets_go_to_lsl_with_their_timestamps_and_bad_messages_keep_the_socket(service, root):
    app, url, client = service
    created = _create(client, catch_rate=0.34)
    pid, trials = created["id"], created["design"]["trials"]
    inlet = _markers(created["markers_stream"])
    with connect(url.replace("http", "ws") + f"/ws/present/{pid}") as ws:
        page = Page(ws)
        pong = page.ask({"type": "ping", "id": 7, "t1": 123.5})
        assert pong["type"] == "pong" and pong["id"] == 7 and pong["t1"] == 123.5
        assert pong["t2"] <= pong["t3"] <= pylsl.local_clock()
        for bad, words in ((b"\x00binary", "binary"), ("{not json", "not JSON"), ("[1]", "a JSON list"),
                           ({"type": "dance"}, "type 'dance'"), ({"type": "ping", "id": -1, "t1": 0}, '"id"'),
                           ({"type": "onset", "trial": 0}, '"stim_id"'),
                           ({"type": "offset", "trial": 0, "t_lsl": 1.0, "t_browser_ms": 1.0}, "start message")):
            error = page.ask(bad)
            assert error["type"] == "error" and words in error["message"], (bad, error)
        assert page.ask({"type": "start", "sync": {"uncertainty_ms": 0.4}})["type"] == "started"
        assert page.ask({"type": "start"})["got"] == "state 'running'"
        t0 = pylsl.local_clock()
        sent = []
        for trial in trials:
            stamp = t0 + trial["planned_onset_ms"] / 1000.0
            onset = {"type": "onset", "trial": trial["index"], "stim_id": trial["stim_id"], "t_lsl": stamp,
                     "t_browser_ms": 1.7e12, "offset_ms": -1.7e12, "uncertainty_ms": 0.4}
            if trial["index"] == 1:  # a stimulus that is not in the design: refused, named
                wrong = page.ask({**onset, "stim_id": "ghost/ghost.png"})
                assert wrong["type"] == "error" and "'ghost/ghost.png', which is not in the design" in wrong["message"]
                far = page.ask({**onset, "t_lsl": stamp + 1000})
                assert far["type"] == "error" and "within 60 s" in far["message"]
            ack = page.ask(onset)
            assert ack == {"type": "marker", "trial": trial["index"], "stim_id": trial["stim_id"], "t_lsl": stamp}
            sent.append(stamp)
            page.ask({"type": "offset", "trial": trial["index"], "t_lsl": stamp + 0.1, "t_browser_ms": 1.7e12},
                     reply=False)
            if trial["catch"]:
                hit = page.ask({"type": "response", "key": "Space", "t_lsl": stamp + 0.3, "t_browser_ms": 1.7e12})
                assert hit == {"type": "response", "outcome": "hit", "trial": trial["index"], "rt_ms": 300.0}
        assert page.ask({"type": "ping", "id": 8, "t1": 1.0})["type"] == "pong"  # the socket lived on
        summary = page.ask({"type": "report", "report": {"sync": {"uncertainty_ms": 0.4}}})
    assert summary["type"] == "summary" and summary["presentation"]["state"] == "done"
    assert app.state.presentations.get(pid).wait(5)
    got = []
    while len(got) < len(trials):
        sample, stamp = inlet.pull_sample(timeout=5)
        assert sample is not None, f"{len(got)} of {len(trials)} markers"
        got.append((stamp, json.loads(sample[0])))
    assert [s for s, _ in got] == pytest.approx(sent, abs=1e-9)  # the onset, not the arrival
    for (_, marker), trial in zip(got, trials):
        assert marker["stim_id"] == trial["stim_id"] and marker["trial"] == trial["index"]
        assert marker["stim_file"] == str((root / "images" / trial["stim_id"]).resolve())
        assert marker["concept"] == trial["stim_id"].split("/")[0] and marker["presentation"] == created["id"]
        assert marker["trial_type"] == ("catch" if trial["catch"] else "exp")
    folder = root / created["folder"]
    assert {p.name for p in folder.iterdir()} == {"design.json", "events.jsonl", "trials.tsv",
                                                  "trials.json", "report.json"}
    tsv = (folder / "trials.tsv").read_text().splitlines()
    assert len(tsv) == len(trials) + 1 and tsv[0].startswith("trial\tstim_id\tstim_file")
    assert client.get(f"/api/presentations/{created['id']}/trials", params={"format": "tsv"}).text \
        == (folder / "trials.tsv").read_text()
    back = read_presentation(folder)
    served = client.get(f"/api/presentations/{created['id']}/trials").json()["trials"]
    assert back["state"] == "done" and back["trials"] == served
    assert back["summary"]["catch"]["hits"] == sum(t["catch"] for t in trials)


def test_a_page_that_disconnects_mid_run_stops_it_and_a_killed_log_still_reads(service, root):
    app, url, client = service
    created = _create(client, catch_rate=0)
    trials = created["design"]["trials"]
    with connect(url.replace("http", "ws") + f"/ws/present/{created['id']}") as ws:
        page = Page(ws)
        page.ask({"type": "start"})
        t0 = pylsl.local_clock()
        for trial in trials[:2]:
            page.ask({"type": "onset", "trial": trial["index"], "stim_id": trial["stim_id"], "t_lsl": t0,
                      "t_browser_ms": 0.0, "offset_ms": 0.0, "uncertainty_ms": 0.3})
        # A second page may watch, but not send the run's events.
        with connect(url.replace("http", "ws") + f"/ws/present/{created['id']}") as other:
            error = Page(other).ask({"type": "offset", "trial": 1, "t_lsl": t0, "t_browser_ms": 0.0})
            assert "another connection" in error["got"]
        folder = root / created["folder"]
        # What a SIGKILLed service leaves: design.json and the events so far, no end.
        killed = read_presentation(folder)
        assert killed["state"] == "interrupted" and [r["valid"] for r in killed["trials"][:3]] == [True, False, False]
        assert killed["trials"][1]["invalid_reason"] == "interrupted"
    described = _until_stopped(client, created["id"])
    assert described["stopped_reason"] == "the page disconnected"
    rows = client.get(f"/api/presentations/{created['id']}/trials").json()["trials"]
    assert [(r["valid"], r["invalid_reason"]) for r in rows[:3]] == [
        (True, None), (False, "the page disconnected"), (False, "not shown")]
    assert read_presentation(folder)["trials"] == rows


def test_too_many_bad_messages_or_one_too_big_close_the_socket(service):
    app, url, client = service
    pid = _create(client, catch_rate=0)["id"]
    with connect(url.replace("http", "ws") + f"/ws/present/{pid}") as ws:
        ws.send("x" * 70_000)  # over ws_max_message_bytes (64 KiB)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 1009
    with connect(url.replace("http", "ws") + f"/ws/present/{pid}") as ws:
        page = Page(ws)
        for _ in range(present.MAX_BAD_MESSAGES + 1):
            assert page.ask("{")["type"] == "error"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 1008


def test_a_report_before_the_last_trial_stops_the_run(service, tmp_path):
    app, url, client = service
    created = _create(client, catch_rate=0)
    first = created["design"]["trials"][0]
    with connect(url.replace("http", "ws") + f"/ws/present/{created['id']}") as ws:
        page = Page(ws)
        page.ask({"type": "start"})
        page.ask({"type": "onset", "trial": 0, "stim_id": first["stim_id"], "t_lsl": pylsl.local_clock(),
                  "t_browser_ms": 0.0, "offset_ms": 0.0, "uncertainty_ms": 0.3})
        summary = page.ask({"type": "report", "report": {}})["presentation"]
        assert (summary["state"], summary["stopped_reason"]) == ("stopped", "the page ended the run early")
        assert summary["summary"]["n_invalid"] == 1 and summary["summary"]["n_valid"] == 0
        late = page.ask({"type": "offset", "trial": 0, "t_lsl": 1.0, "t_browser_ms": 0.0})
        assert "report in" in late["got"]
    with pytest.raises(InputError, match="a presentation folder"):
        read_presentation(tmp_path)


def _until_stopped(client, pid: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        described = client.get(f"/api/presentations/{pid}").json()
        if described["state"] == "stopped" and described["report"] is not None:
            return described
        time.sleep(0.05)
    raise AssertionError(f"presentation {pid} did not stop: {described['state']}")


def test_the_token_guards_rest_and_websocket(root, serving):
    app = _app(root, token="sesame")
    with serving(app) as url:
        assert httpx.post(url + "/api/presentations", json={"stream": "s", "folder": "images"}).status_code == 401
        ok = httpx.post(url + "/api/presentations", json={"stream": "s", "folder": "images"},
                        headers={"Authorization": "Bearer sesame"})
        assert ok.status_code == 201
        pid = ok.json()["id"]
        with pytest.raises(InvalidStatus) as refused:
            connect(url.replace("http", "ws") + f"/ws/present/{pid}")
        assert refused.value.response.status_code == 401
        with connect(url.replace("http", "ws") + f"/ws/present/{pid}?token=sesame") as ws:
            assert Page(ws).ask({"type": "ping", "id": 0, "t1": 0.0})["type"] == "pong"
        assert httpx.get(url + "/present").status_code == 200  # the page itself asks for the token
    app.state.presentations.close()
