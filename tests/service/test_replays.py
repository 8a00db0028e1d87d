"""Replays from the dashboard: real `glimpse replay` processes on loopback LSL.

A replay is visible on LSL with the stream listing's fields, stops on request, is
reported "died" with its exit code when SIGKILLed, and comes back under the same
name and source_id on restart, so an inlet opened before the kill receives data
again. Bad input (a text file, a PNG, a missing path, a corrupt FIF) is refused
without spawning anything; bad speeds are 422s through the router.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import numpy as np
import pylsl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from glimpse.service import replays as replays_module
from glimpse.service.api.errors import install_error_handlers
from glimpse.service.api.replays import router
from glimpse.service.errors import Conflict, InputError, NotFound
from glimpse.service.replays import ReplayManager, default_name, list_streams
from glimpse.service.settings import Settings
from glimpse.streaming.session_log import SessionWriter

# Each real replay is a second interpreter that imports MNE (~1.5 s, several on 2
# busy cores); LSL resolves wait up to 20 s. A hang must fail, not stall CI.
pytestmark = pytest.mark.timeout(120)

EDF = "eeg_reduced.edf"  # 139 channels at 512 Hz, 6 s: the smallest real recording


def _name() -> str:
    return f"test-replays-{uuid.uuid4().hex[:8]}"


def _visible(source_id: str, timeout: float = 1.0) -> bool:
    return bool(pylsl.resolve_byprop("source_id", source_id, timeout=timeout))


def _pull(inlet: pylsl.StreamInlet, n: int, timeout: float = 20.0) -> int:
    """Samples pulled until ``n`` came or ``timeout`` passed."""
    got, deadline = 0, time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        got += len(inlet.pull_chunk(timeout=0.2, max_samples=4096)[1])
    return got


@pytest.fixture
def manager():
    manager = ReplayManager(start_timeout=60.0, stop_timeout=10.0)
    yield manager
    manager.stop_all(timeout=10.0)


@pytest.fixture
def no_spawn(monkeypatch):
    """Fail the test if a process is started."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a replay process was spawned: {args}")
    monkeypatch.setattr(replays_module.subprocess, "Popen", refuse)


def test_a_replay_is_visible_listed_and_stopped(manager, realdata):
    name = _name()
    replay = manager.start(realdata / EDF, speed=4.0, loop=True, name=name)
    assert replay["state"] == "running" and replay["name"] == name and replay["pid"] > 0
    assert replay["source_id"].startswith(f"{name}-") and replay["speed"] == 4.0
    streams = {s["source_id"]: s for s in list_streams(wait_time=1.0)}
    signal_stream = streams[replay["source_id"]]
    assert signal_stream["name"] == name and signal_stream["n_chans"] == 139
    assert signal_stream["sfreq"] == 512.0 and signal_stream["channel_format"] == "float32"
    markers = streams[f"{replay['source_id']}-markers"]
    assert markers["name"] == f"{name}-markers" and markers["channel_format"] == "string"
    assert [r["id"] for r in manager.list()] == [replay["id"]]

    stopped = manager.stop(replay["id"])
    assert stopped["state"] == "stopped" and stopped["exit_code"] == 0  # SIGTERM ends it cleanly
    assert stopped["pid"] is None and manager.list() == []
    assert not _visible(replay["source_id"])
    with pytest.raises(NotFound, match="valid ids: none"):
        manager.stop(replay["id"])


def test_sigkill_is_reported_and_restart_brings_the_same_source_back(manager, realdata):
    replay = manager.start(realdata / EDF, name=_name())
    inlet = pylsl.StreamInlet(pylsl.resolve_byprop("source_id", replay["source_id"], timeout=20)[0],
                              max_buflen=10)  # recover=True: the way a session's inlet waits
    inlet.open_stream(timeout=10)
    assert _pull(inlet, 100) >= 100

    os.kill(replay["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while manager.get(replay["id"])["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    died = manager.get(replay["id"])
    assert died["state"] == "died" and died["exit_code"] == -signal.SIGKILL
    assert died["error"] == "killed by SIGKILL" and died["pid"] is None
    assert manager.list()[0]["state"] == "died"
    with pytest.raises(Conflict, match="held by replay"):  # a died replay keeps its name
        manager.start(realdata / EDF, name=replay["name"])
    while inlet.pull_chunk(timeout=0.5)[1]:  # what was in flight before the kill
        pass

    back = manager.restart(replay["id"])
    assert back["state"] == "running" and back["restarts"] == 1
    assert (back["name"], back["source_id"]) == (replay["name"], replay["source_id"])
    assert back["pid"] not in (None, replay["pid"])
    assert _pull(inlet, 100, timeout=30) >= 100  # the old inlet reconnected by source_id
    inlet.close_stream()


def test_a_recorded_session_folder_replays_under_its_default_name(manager, tmp_path):
    folder = tmp_path / "session"
    data = (np.sin(np.arange(500)[:, None] / 7.0 + np.arange(3)) * 1e-5).astype(np.float32)
    with SessionWriter(folder) as session:
        stream = session.add_stream("eeg", "src", 250.0, ["Fz", "Cz", "Pz"], ["eeg"] * 3, ["V"] * 3)
        stream.write(data, 1000.0 + np.arange(500) / 250.0)
    replay = manager.start(folder, speed=2.0)
    assert replay["name"] == default_name(folder) == "glimpse-session"
    found = [s for s in list_streams(wait_time=1.0) if s["source_id"] == replay["source_id"]]
    assert [(s["name"], s["n_chans"], s["sfreq"]) for s in found] == [("glimpse-session", 3, 250.0)]


def test_default_names_are_slugs_of_the_file_stem(tmp_path):
    assert default_name(tmp_path / "sub-01_task-things_meg.fif") == "glimpse-sub-01-task-things-meg"
    assert default_name(tmp_path / "Ünïcode ___.vhdr") == "glimpse-n-code"
    assert len(default_name(tmp_path / ("x" * 200 + ".edf"))) == 64


def _not_recordings(tmp_path):
    from PIL import Image

    text, png, fif = tmp_path / "notes.txt", tmp_path / "stimulus.png", tmp_path / "broken.fif"
    text.write_text("not a recording\n")
    Image.new("RGB", (8, 8)).save(png)
    fif.write_bytes(b"\x00" * 1024)  # a FIF name, no FIF inside
    return {"text": (text, "MEG/EEG recording"), "png": (png, "MEG/EEG recording"),
            "fif": (fif, "readable FIF"), "missing": (tmp_path / "missing.fif", "does not exist")}


@pytest.mark.parametrize("kind", ["text", "png", "fif", "missing"])
def test_a_file_that_is_not_a_recording_is_refused_before_spawning(kind, tmp_path, no_spawn):
    path, message = _not_recordings(tmp_path)[kind]
    manager = ReplayManager()
    with pytest.raises(InputError, match=message):
        manager.start(path, name=_name())
    assert manager.list() == []


def test_a_replay_that_exits_at_start_reports_its_error_line(manager, tmp_path, monkeypatch):
    # Past the in-process check (skipped here), the replay's own error line is the message.
    monkeypatch.setattr(replays_module, "open_recording", lambda *a, **k: None)
    text = tmp_path / "notes.txt"
    text.write_text("not a recording\n")
    with pytest.raises(InputError, match=r"exited with status 2: glimpse: error: expected a "
                                         r"MEG/EEG recording") as err:
        manager.start(text, name=_name())
    assert "glimpse info" in err.value.fix and manager.list() == []


@pytest.mark.parametrize("speed", [0, -1.0, float("nan"), 101.0])
def test_bad_speeds_and_names_are_refused_by_the_manager(speed, realdata, no_spawn):
    with pytest.raises(InputError, match="speed above 0"):
        ReplayManager().start(realdata / EDF, speed=speed)
    with pytest.raises(InputError, match="stream name of letters"):
        ReplayManager().start(realdata / EDF, name="../etc passwd")


def test_roots_resolve_guards_the_path(realdata, no_spawn):
    def roots_resolve(ref: str):
        raise NotFound("a recording inside the data roots", ref, "pick one from /api/recordings")

    with pytest.raises(NotFound, match="inside the data roots"):
        ReplayManager(roots_resolve).start(realdata / EDF)


# --------------------------------------------------------------------------- router


class _Catalog:
    """The catalog's face that the router uses: recording(ref) -> {"abspath": ...}."""

    def __init__(self, recordings: dict):
        self.recordings = recordings

    def recording(self, ref: str) -> dict:
        if ref not in self.recordings:
            raise NotFound("a recording id", f"{ref!r}; valid ids: {', '.join(self.recordings)}",
                           "list them with GET /api/recordings")
        return {"id": ref, "abspath": self.recordings[ref]}


TOKEN = "replay-test-token"


@pytest.fixture
def client(realdata, tmp_path):
    """The router in an app wired as create_app wires it: the manager resolves through
    the catalog."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.settings = Settings(token=TOKEN)
    catalog = app.state.catalog = _Catalog({"edf": realdata / EDF, "notes": tmp_path / "notes.txt"})
    app.state.replays = ReplayManager(lambda ref: catalog.recording(ref)["abspath"])
    (tmp_path / "notes.txt").write_text("not a recording\n")
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client
    app.state.replays.stop_all(timeout=10.0)


@pytest.mark.parametrize("body", [{"speed": 0}, {"speed": -2}, {"speed": 100.5},
                                  {"speed": "fast"}, {"name": "a b"}, {"name": "-x"},
                                  {"loop": "sometimes"}, {"volume": 11}])
def test_the_router_refuses_bad_requests_with_422(client, body, no_spawn):
    response = client.post("/api/replays", json={"recording": "edf", **body})
    assert response.status_code == 422, response.text
    field = next(iter(body))
    assert response.json()["error"]["expected"].startswith(field)  # names the field
    assert client.post("/api/replays", json={}).status_code == 422  # no recording


def test_the_router_starts_lists_and_stops_a_replay(client):
    name = _name()
    created = client.post("/api/replays", json={"recording": "edf", "speed": 4, "name": name})
    assert created.status_code == 201, created.text
    replay = created.json()
    assert {"id", "name", "source_id", "recording", "speed", "loop", "state", "pid"} <= set(replay)
    assert replay["state"] == "running" and replay["loop"] is True and replay["name"] == name
    streams = client.get("/api/streams").json()
    assert {"name": name, "source_id": replay["source_id"], "n_chans": 139, "sfreq": 512.0} \
        .items() <= next(s for s in streams if s["source_id"] == replay["source_id"]).items()
    assert [r["id"] for r in client.get("/api/replays").json()] == [replay["id"]]
    assert client.get(f"/api/replays/{replay['id']}").json()["state"] == "running"
    again = client.post("/api/replays", json={"recording": "edf", "name": name})
    assert again.status_code == 409 and replay["id"] in again.json()["error"]["message"]

    stopped = client.delete(f"/api/replays/{replay['id']}")
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert client.get("/api/replays").json() == []
    for response in (client.delete(f"/api/replays/{replay['id']}"),
                     client.post(f"/api/replays/{replay['id']}/restart")):
        assert response.status_code == 404 and "valid ids" in response.json()["error"]["message"]


def test_the_router_wants_the_token(client, no_spawn):
    for method, url in [("GET", "/api/replays"), ("GET", "/api/streams"),
                        ("POST", "/api/replays"), ("DELETE", "/api/replays/x"),
                        ("POST", "/api/replays/x/restart")]:
        response = client.request(method, url, headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401, (method, url, response.text)
        assert response.json()["error"]["got"] == "a wrong token"


def test_the_router_reports_unknown_and_bad_recordings(client, no_spawn):
    unknown = client.post("/api/replays", json={"recording": "nope"})
    assert unknown.status_code == 404
    assert "valid ids: edf, notes" in unknown.json()["error"]["message"]
    bad = client.post("/api/replays", json={"recording": "notes"})
    assert bad.status_code == 400 and "MEG/EEG recording" in bad.json()["error"]["message"]
