"""The service end to end: a real uvicorn server, a real replayed LSL stream, a tiny
checkpoint; sessions through the REST API, frames through the WebSocket, and the
faults the issue names (the worker SIGKILLed, the replay's outlet SIGKILLed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
import zipfile
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from glimpse.service.api.app import create_app
from glimpse.service.settings import Settings
from glimpse.streaming.session_log import read_session_stream
from helpers import until


# Server, replays, two processes per session (each imports torch): a hang must fail.
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def root(served_root):
    return served_root


def _replay(recording: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glimpse.service.cli", "--quiet", "replay",
                             str(recording), "--name", name, "--source-id", name, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)



class Messages:
    """A WebSocket client that keeps every message it gets (read in a thread)."""

    def __init__(self, ws):
        import threading

        self.ws = ws
        self.got: list[dict] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for text in self.ws:
                self.got.append(json.loads(text))
        except ConnectionClosed:  # by the test, at the end
            pass

    def of(self, kind: str) -> list[dict]:
        return [m for m in list(self.got) if m["type"] == kind]


@pytest.fixture
def service(root, tmp_path, serving):
    settings = Settings(data=[root], port=0, sessions_dir=root / "served" / f"sessions-{tmp_path.name}")
    app = create_app(settings)
    with serving(app) as url:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            yield app, url, client


def test_a_session_decodes_survives_a_worker_kill_and_records_every_sample(root, service):
    app, url, http = service
    name = f"api-{uuid.uuid4().hex[:8]}"
    fif = root / "sub-01" / "meg" / "sub-01_task-things_meg.fif"
    replay = _replay(fif, name, "--index-channel", "--loop", "--speed", "2")
    try:
        body = {"streams": [name], "checkpoint": str(root / "served" / "ckpt"),
                "gallery": str(root / "served" / "gallery.safetensors"), "resolve_timeout": 30}
        created = http.post("/api/sessions", json=body)
        assert created.status_code == 201, created.text
        session = created.json()
        sid = session["id"]
        assert session["state"] == "running" and len(session["checkpoint"]["positions"]) == 274
        # A second session on the same stream is allowed: its own inlet, worker and folder.
        second = http.post("/api/sessions", json={**body, "record": False})
        assert second.status_code == 201 and second.json()["id"] != sid
        with connect(url.replace("http", "ws") + f"/ws/sessions/{sid}") as socket:
            ws = Messages(socket)
            frames = until(lambda: len(ws.of("frame")) >= 20 and ws.of("frame"), 30, "20 frames")
            frame = frames[-1]
            assert frame["session"] == sid and frame["v"] == 1 and len(frame["topk"]) == 5
            assert frame["latency_ms"]["total"] > 0 and "t_sent" in frame
            image = http.get(frame["topk"][0]["url"])
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert "max-age" in image.headers["cache-control"]
            until(lambda: any(m.get("truth") and m["truth"]["url"] for m in ws.of("frame")), 30,
                   "a frame that knows its true stimulus")
            # A true stimulus outside the gallery (a training image) is served from the roots.
            outside = until(lambda: [m["truth"] for m in ws.of("frame") if m.get("truth")
                                      and m["truth"]["id"] is None and m["truth"]["url"]], 30,
                             "a true stimulus that is not in the gallery")
            assert http.get(outside[0]["url"]).headers["content-type"] == "image/png"
            until(lambda: ws.of("signal"), 10, "a signal message")
            signal_message = ws.of("signal")[-1]
            assert len(signal_message["levels"]) == 274 and len(signal_message["trace"]["ch_names"]) == 4
            status = http.get(f"/api/sessions/{sid}").json()["status"]
            assert status["worker"]["state"] == "running" and status["decode_rate"] > 0
            assert "glimpse_decode_rate" in http.get("/metrics").text

            # SIGKILL the worker once its standby is loaded: the service stays up, the
            # standby takes over, frames resume within 10 s.
            until(lambda: http.get(f"/api/sessions/{sid}").json()["status"]["worker"]["standby"]
                   == "ready", 120, "the standby worker loaded")
            os.kill(status["worker"]["pid"], signal.SIGKILL)
            killed_at = len(ws.of("frame"))
            until(lambda: [e for e in ws.of("event") if e["event"] == "worker_crashed"], 10,
                   "the crash reported")
            resumed = until(lambda: len(ws.of("frame")) > killed_at + 5, 10, "frames after the kill")
            assert resumed and http.get("/api/health").json()["status"] == "ok"
            seqs = [f["seq"] for f in ws.of("frame")]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # per session, across restarts

            final = http.delete(f"/api/sessions/{sid}").json()
            assert final["state"] == "stopped" and final["worker"]["restarts"] == 1
            assert http.delete(f"/api/sessions/{sid}").status_code == 409
    finally:
        replay.terminate()
        replay.wait(20)
    # Every sample is in the session folder, the kill notwithstanding: the index channel
    # counts up by one from the first recorded sample to the last.
    folder = Path(session["folder"])
    raw, times, markers = read_session_stream(folder)
    index = raw.get_data(picks=["SAMPLE_INDEX"])[0]
    assert len(index) == final["streams"][0]["n_samples"] > 1000
    assert np.all(np.diff(index) == 1) and len(markers) > 0
    recorded = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]
    assert len(recorded) == final["n_decoded"] and (folder / "summary.json").is_file()
    zipped = http.get(f"/api/sessions/{sid}/download")
    assert zipped.status_code == 200
    names = zipfile.ZipFile(BytesIO(zipped.content)).namelist()
    assert f"{folder.name}/frames.jsonl" in names and f"{folder.name}/session.json" in names


def test_a_killed_replay_is_reported_lost_and_decoding_resumes_when_it_returns(root, service):
    app, url, http = service
    name = f"api-{uuid.uuid4().hex[:8]}"
    fif = root / "sub-01" / "meg" / "sub-01_task-things_meg.fif"
    replay = _replay(fif, name, "--loop")
    try:
        created = http.post("/api/sessions", json={
            "streams": [name], "checkpoint": str(root / "served" / "ckpt"), "record": False,
            "gallery": str(root / "served" / "gallery.safetensors"), "resolve_timeout": 30})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        with connect(url.replace("http", "ws") + "/ws") as socket:
            ws = Messages(socket)
            socket.send(json.dumps({"type": "subscribe", "sessions": [sid]}))
            until(lambda: len(ws.of("frame")) >= 5, 30, "frames")
            replay.send_signal(signal.SIGKILL)  # the outlet dies without closing anything
            replay.wait(10)
            until(lambda: [e for e in ws.of("event") if e["event"] == "stream_lost"], 15,
                   "the lost stream reported")
            assert http.get("/api/health").status_code == 200
            lost_at = len(ws.of("frame"))
            replay = _replay(fif, name, "--loop")  # the same source id comes back
            until(lambda: [e for e in ws.of("event") if e["event"] == "stream_back"], 30,
                   "the stream back")
            until(lambda: len(ws.of("frame")) > lost_at + 5, 15, "frames after the return")
        assert http.delete(f"/api/sessions/{sid}").json()["streams"][0]["n_reconnects"] >= 1
    finally:
        replay.kill()
        replay.wait(10)


def test_bad_session_requests_get_clear_errors_and_the_service_keeps_running(root, service, realdata):
    app, url, http = service
    ckpt, gallery = str(root / "served" / "ckpt"), str(root / "served" / "gallery.safetensors")
    body = {"streams": ["nothing-here"], "checkpoint": ckpt, "gallery": gallery, "resolve_timeout": 1}

    def error(response, status):
        assert response.status_code == status, response.text
        return response.json()["error"]

    # Unknown ids: 404 naming the valid ones.
    err = error(http.post("/api/sessions", json={**body, "checkpoint": "no-such-ckpt"}), 404)
    assert "ckpt-" in err["got"]
    err = error(http.post("/api/sessions", json={**body, "gallery": "no-such-gallery"}), 404)
    assert "gallery-" in err["got"]
    for method in (http.get, http.delete):
        assert "sessions now" in error(method("/api/sessions/nope"), 404)["got"]
    # Outside the data roots: 403; stimuli are image files only.
    assert error(http.post("/api/sessions", json={**body, "checkpoint": "/etc"}), 403)
    assert error(http.get("/api/stimuli", params={"path": "/etc/passwd"}), 403)
    assert error(http.get("/api/stimuli", params={"path": "../../etc/passwd"}), 403)
    assert error(http.get("/api/stimuli", params={"path": ckpt + "/config.json"}), 404)
    # A gallery of another embedder than the checkpoint's.
    err = error(http.post("/api/sessions", json={
        **body, "gallery": str(root / "served" / "other.safetensors")}), 400)
    assert "embedder" in err["expected"] and "open_clip" in err["got"]
    # Malformed JSON, a wrong type, an unknown mode or field: 422.
    bad = http.post("/api/sessions", content=b'{"streams": [', headers={"content-type": "application/json"})
    assert error(bad, 422)
    assert "hop" in error(http.post("/api/sessions", json={**body, "hop": -1}), 422)["expected"]
    assert error(http.post("/api/sessions", json={**body, "mode": "dream"}), 422)
    assert error(http.post("/api/sessions", json={**body, "colour": "red"}), 422)
    # A stream that is not there: the same words as glimpse decode.
    err = error(http.post("/api/sessions", json=body), 400)
    assert "nothing-here" in err["message"] and "stream" in err["expected"]
    # A stream whose channels are not the checkpoint's (real EEG into a MEG model).
    name = f"eeg-{uuid.uuid4().hex[:8]}"
    eeg = _replay(realdata / "eeg_reduced.edf", name, "--loop")
    try:
        err = error(http.post("/api/sessions", json={**body, "streams": [name],
                                                     "resolve_timeout": 30}), 400)
        assert "channel" in err["expected"] and err["fix"]
    finally:
        eeg.kill()
        eeg.wait(10)
    assert http.get("/api/sessions").json() == []  # nothing half-started is left behind
    assert http.get("/api/health").json()["status"] == "ok"
