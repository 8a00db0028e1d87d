"""The catalog and its REST face: listings, lookups, gallery images, tokens, error JSON.

Real files: a ridge checkpoint trained on the small simulated MEG session, a gallery of
its test images (handcrafted embedder), a recorded session folder, and bad ones (a
corrupt sidecar, a damaged FIF, symlinks out of the roots). The app is assembled here
from the routers, handlers and middleware (the lead's create_app comes later). URL
escapes go to a real uvicorn server on loopback through http.client, which sends the
path as written (TestClient and httpx normalise some of them away).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import Depends, FastAPI, WebSocket
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from glimpse.service.api.auth import BodyLimit, token_dependency, websocket_token_ok
from glimpse.service.api.catalog import CACHE_CONTROL, router
from glimpse.service.api.errors import install_error_handlers
from glimpse.service.catalog import Catalog
from glimpse.service.errors import Forbidden, InputError, NotFound, status_of
from glimpse.service.roots import DataRoots
from glimpse.service.settings import Settings
from glimpse.streaming.session_log import SessionWriter

# A ridge fit and a simulated session (~10 s on 2 cores, shared with other modules) and a
# uvicorn server on loopback: a hang must fail.
pytestmark = pytest.mark.timeout(120)

ERROR_KEYS = {"status", "expected", "got", "fix", "message"}
TOKEN = "t0ken-for-tests"
MAX_BODY = 1024


class ReplayBody(BaseModel):
    recording: str
    speed: float = Field(1.0, gt=0)
    loop: bool = True


def make_app(roots: DataRoots, catalog: Catalog, token: str | None = None) -> FastAPI:
    """What create_app will assemble, plus routes that exercise bodies, crashes and WS."""
    settings = Settings(data=list(roots.paths), token=token, max_body_bytes=MAX_BODY)
    app = FastAPI()
    app.state.settings, app.state.roots, app.state.catalog = settings, roots, catalog
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.include_router(router)

    @app.post("/api/echo", dependencies=[Depends(token_dependency)])
    async def echo(body: ReplayBody) -> ReplayBody:
        return body

    @app.get("/api/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail /home/someone/.ssh")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        if not websocket_token_ok(websocket):
            await websocket.close(code=1008)
            return
        await websocket.accept()
        await websocket.send_json({"type": "hello"})
        await websocket.close()

    return app


@pytest.fixture(scope="module")
def data(small_meg_session, tmp_path_factory):
    """Roots (data, the simulated session) and an outside folder, with good and bad entries."""
    from glimpse.models.data import load_session
    from glimpse.models.embedders import load_embedder
    from glimpse.models.gallery import build_gallery
    from glimpse.models.train import TrainConfig, train

    sim = small_meg_session[0]
    base = tmp_path_factory.mktemp("catalog")
    root, outside, cache = base / "data", base / "outside", base / "embed-cache"
    outside.mkdir()
    train(load_session(sim, progress=False),
          TrainConfig(model="ridge", ridge_draws=1, presence_draws=1, cache_dir=str(cache)),
          root / "models" / "ridge", progress=False)
    images = sorted((sim / "stimuli" / "test").rglob("*.png"))
    build_gallery(images, load_embedder("handcrafted"), root=sim, cache_dir=cache,
                  progress=False).save(root / "galleries" / "test")
    galleries = root / "galleries"
    sidecar = json.loads((galleries / "test.json").read_text())
    # Corrupt sidecar; a sidecar whose image paths lead out; a gallery linked in from outside.
    shutil.copy(galleries / "test.safetensors", galleries / "broken.safetensors")
    (galleries / "broken.json").write_text('{"ids": [1, 2')
    shutil.copy(galleries / "test.safetensors", galleries / "leaky.safetensors")
    (outside / "secret.png").write_bytes(b"\x89PNG secret")
    leaky = {**sidecar, "paths": [str(outside / "secret.png")] * len(sidecar["ids"])}
    (galleries / "leaky.json").write_text(json.dumps(leaky))
    shutil.copy(galleries / "test.safetensors", outside / "escape.safetensors")
    shutil.copy(galleries / "test.json", outside / "escape.json")
    (root / "escape.safetensors").symlink_to(outside / "escape.safetensors")
    (root / "escape.json").symlink_to(outside / "escape.json")
    (root / "secret-link.fif").symlink_to(outside / "secret.png")
    # A recorded session: 2 EEG channels at 100 Hz for 2 s, 3 trial markers of 5.
    with SessionWriter(root / "sessions" / "s1") as session:
        session.add_stream("eeg", "src", 100.0, ["Fz", "Cz"], ["eeg", "eeg"], ["V", "V"]).write(
            np.zeros((200, 2), np.float32), 10.0 + np.arange(200) / 100.0)
        for i, valid in enumerate([True, True, True, False]):
            session.write_marker(10.2 + i * 0.3, "eeg-markers", {"stim_file": f"a{i}.png",
                                 "concept": "a", "trial_type": "test"}, valid)
        session.write_marker(11.5, "eeg-markers", "not a trial", True)
    (root / "damaged.fif").write_bytes(b"not a fif file at all")
    # Generators: the shipped embedded one, and one whose generator.json lacks its facts.
    from glimpse.models.generators.embedded import default_folder

    shutil.copytree(default_folder("handcrafted"), root / "generators" / "embedded")
    (root / "generators" / "half").mkdir()
    (root / "generators" / "half" / "generator.json").write_text('{"kind": "embedded"}')
    # Folders the scan skips: hidden, caches, virtual environments.
    for skipped in (".hidden/ckpt", "cache/ckpt", ".venv/ckpt", "node_modules/ckpt"):
        (root / skipped).mkdir(parents=True)
        shutil.copy(root / "models" / "ridge" / "config.json", root / skipped / "config.json")
        shutil.copy(root / "models" / "ridge" / "model.safetensors", root / skipped / "model.safetensors")
    roots = DataRoots([root, sim])
    return {"roots": roots, "root": root.resolve(), "sim": sim.resolve(),
            "outside": outside.resolve(), "images": images, "sidecar": sidecar}


@pytest.fixture(scope="module")
def catalog(data):
    return Catalog(data["roots"])


@pytest.fixture(scope="module")
def client(data, catalog):
    with TestClient(make_app(data["roots"], catalog), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def server(data, catalog):
    """``(host, port)`` of a real uvicorn serving the app on loopback."""
    config = uvicorn.Config(make_app(data["roots"], catalog), host="127.0.0.1", port=0,
                            log_level="warning", lifespan="off", ws="none")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield "127.0.0.1", srv.servers[0].sockets[0].getsockname()[1]
    srv.should_exit = True
    thread.join(timeout=30)


def raw_request(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict, bytes]:
    """One request with the path sent exactly as written."""
    conn = http.client.HTTPConnection(*server, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["status"] == response.status_code
    return body["error"]


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


# --------------------------------------------------------------------------- listings


def test_checkpoints_are_listed_from_config_json(client, data):
    response = client.get("/api/checkpoints")
    assert response.status_code == 200
    (ckpt,) = response.json()  # the copies in hidden, cache and venv folders are skipped
    config = json.loads((data["root"] / "models" / "ridge" / "config.json").read_text())
    assert ckpt["path"] == "models/ridge" and ckpt["name"] == "ridge" and ckpt["error"] is None
    assert (ckpt["model"], ckpt["modality"], ckpt["embedder"]) == ("ridge", "meg", "handcrafted")
    assert ckpt["n_chans"] == len(config["channels"]["names"]) and ckpt["sfreq"] == config["sfreq"]
    assert ckpt["window_s"] == config["window"]["seconds"] and ckpt["dim"] == config["embedder"]["dim"]
    assert ckpt["subjects"] == config["subjects"] and ckpt["has_onnx"] is False
    assert ckpt["size_bytes"] > (data["root"] / "models" / "ridge" / "model.safetensors").stat().st_size
    assert ckpt["metrics"] and all(not isinstance(v, (dict, list)) for v in ckpt["metrics"].values())
    assert "abspath" not in ckpt


def test_galleries_are_listed_and_a_corrupt_sidecar_is_an_error_not_a_crash(client, data):
    response = client.get("/api/galleries")
    assert response.status_code == 200
    galleries = by_name(response.json())
    assert set(galleries) == {"test", "broken", "leaky"}  # the symlink from outside is not listed
    test = galleries["test"]
    assert test["path"] == "galleries/test.safetensors" and test["error"] is None
    assert (test["embedder"], test["dim"], test["n"]) == ("handcrafted", data["sidecar"]["dim"],
                                                         len(data["images"]))
    broken = galleries["broken"]
    assert broken["embedder"] is None and broken["n"] is None and broken["size_bytes"] > 0
    assert "broken.json" in broken["error"] and "glimpse gallery build" in broken["error"]


def test_generators_are_listed_from_generator_json(client, catalog, data):
    generators = by_name(client.get("/api/generators").json())
    assert set(generators) == {"embedded", "half"}
    embedded = generators["embedded"]
    assert (embedded["kind"], embedded["embedder"], embedded["dim"], embedded["size"]) == \
        ("embedded", "handcrafted", 256, 64)
    assert embedded["path"] == "generators/embedded" and embedded["metrics"]["two_way"] > 0.9
    assert "generator.json" in generators["half"]["error"] and generators["half"]["embedder"] is None
    assert catalog.generator(embedded["id"])["abspath"] == data["root"] / "generators" / "embedded"
    with pytest.raises(InputError, match="half"):
        catalog.generator("generators/half")  # listed with its error, never loaded


def test_recordings_list_raw_files_bids_and_sessions_with_their_facts(client, data):
    response = client.get("/api/recordings")
    assert response.status_code == 200
    recordings = by_name(response.json())
    fif = recordings["sub-01_task-things_meg"]
    assert fif["kind"] == "bids" and fif["modality"] == "meg" and fif["sfreq"] == 1200.0
    assert fif["n_chans"] > 200 and fif["duration_s"] > 10 and fif["n_trials"] > 50
    assert fif["path"] == "sub-01/meg/sub-01_task-things_meg.fif" and fif["error"] is None
    session = recordings["s1"]
    assert (session["kind"], session["modality"], session["n_chans"], session["sfreq"]) == \
        ("session", "eeg", 2, 100.0)
    assert session["duration_s"] == pytest.approx(2.0) and session["n_trials"] == 3
    damaged = recordings["damaged"]
    assert damaged["kind"] == "fif" and damaged["n_chans"] is None and "damaged.fif" in damaged["error"]
    assert "secret-link" not in recordings  # a symlink pointing out of the roots


def test_ids_are_stable_url_safe_and_shared_by_lookups(catalog, data):
    first = {e["path"]: e["id"] for k in ("checkpoints", "galleries", "recordings")
             for e in getattr(catalog, k)()}
    again = Catalog(data["roots"])
    assert first == {e["path"]: e["id"] for k in ("checkpoints", "galleries", "recordings")
                     for e in getattr(again, k)()}
    assert all(re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{8}", i) for i in first.values())
    assert len(set(first.values())) == len(first)


def test_entries_are_found_by_id_or_by_path_inside_the_roots(catalog, data):
    root = data["root"]
    ckpt = catalog.checkpoints()[0]
    for ref in (ckpt["id"], "models/ridge", str(root / "models" / "ridge"), "models/ridge/"):
        found = catalog.checkpoint(ref)
        assert found["id"] == ckpt["id"] and found["abspath"] == root / "models" / "ridge"
    test = by_name(catalog.galleries())["test"]
    for ref in ("galleries/test", "galleries/test.safetensors", "galleries/test.json", test["id"]):
        assert catalog.gallery(ref)["abspath"] == root / "galleries" / "test.safetensors"
    fif = catalog.recording("sub-01/meg/sub-01_task-things_meg.fif")
    assert fif["kind"] == "bids" and fif["abspath"] == data["sim"] / "sub-01/meg/sub-01_task-things_meg.fif"
    assert catalog.recording(str(root / "sessions" / "s1"))["kind"] == "session"
    bids_root = catalog.recording(str(data["sim"]))  # a BIDS root by path: one recording
    assert bids_root["kind"] == "bids" and bids_root["n_trials"] == fif["n_trials"]


def test_unknown_ids_are_404_listing_the_valid_ones(catalog, client):
    ckpt_id = catalog.checkpoints()[0]["id"]
    with pytest.raises(NotFound, match=ckpt_id):
        catalog.checkpoint("no-such-checkpoint")
    with pytest.raises(NotFound, match="s1-"):
        catalog.recording("no-such-recording")
    test = by_name(catalog.galleries())["test"]
    response = client.get("/api/gallery/no-such-gallery/x.png")
    assert response.status_code == 404 and test["id"] in error_of(response)["got"]
    response = client.get(f"/api/gallery/{test['id']}/stimuli/test/nothing.png")
    error = error_of(response)
    assert response.status_code == 404 and "stimuli/test/" in error["got"]
    with pytest.raises(NotFound):  # exists, in the roots, but is no checkpoint
        catalog.checkpoint("galleries/test.json")


def test_entries_whose_files_do_not_read_are_refused_by_lookups(catalog):
    broken = by_name(catalog.galleries())["broken"]["id"]
    for lookup, ref in [(catalog.gallery, broken), (catalog.gallery, "galleries/broken"),
                        (catalog.recording, "damaged.fif")]:
        with pytest.raises(InputError, match="readable entry") as err:
            lookup(ref)
        assert status_of(err.value) == 400 and "ids are" not in err.value.got


def test_paths_out_of_the_roots_are_forbidden(catalog, data):
    outside = data["outside"]
    for lookup, ref in [(catalog.checkpoint, "../outside"), (catalog.gallery, "../outside/escape"),
                        (catalog.recording, str(outside / "secret.png")), (catalog.gallery, "/etc/passwd"),
                        (catalog.gallery, "..%2Foutside%2Fescape"), (catalog.gallery, "escape"),
                        (catalog.gallery, "escape.safetensors"), (catalog.recording, "secret-link.fif")]:
        with pytest.raises(Forbidden):
            lookup(ref)


# --------------------------------------------------------------------------- over real HTTP


def test_url_escapes_are_refused_over_real_http(server, catalog, data):
    test = by_name(catalog.galleries())["test"]["id"]
    for path in ("/api/gallery/..%2F..%2Foutside%2Fescape/x.png", "/api/gallery/%2E%2E/outside/x.png",
                 "/api/gallery/..%252Foutside%252Fescape/x.png", "/api/gallery/escape/x.png",
                 "/api/gallery/..%5Coutside%5Cescape/x.png"):
        status, _, body = raw_request(server, "GET", path)
        assert status == 403, (path, body)
        assert json.loads(body)["error"]["status"] == 403 and b"secret" not in body
    # Image ids are keys of the sidecar, never paths: an escape in one names nothing.
    status, _, body = raw_request(server, "GET", f"/api/gallery/{test}/..%2F..%2F..%2Foutside%2Fsecret.png")
    assert status == 404 and b"PNG secret" not in body
    # A sidecar whose image paths lead out of the roots.
    leaky = by_name(catalog.galleries())["leaky"]["id"]
    image_id = data["sidecar"]["ids"][0]
    status, _, body = raw_request(server, "GET", f"/api/gallery/{leaky}/{image_id}")
    assert status == 403 and b"PNG secret" not in body


def test_a_chunked_body_over_the_limit_is_413_over_real_http(server):
    chunks = (b'{"recording": "' + b"x" * 200 for _ in range(10))  # no Content-Length: chunked
    status, _, body = raw_request(server, "POST", "/api/echo", body=chunks,
                                  headers={"Content-Type": "application/json"})
    assert status == 413 and json.loads(body)["error"]["expected"].startswith("a request body of at most")
    status, _, body = raw_request(server, "POST", "/api/echo", body=iter([b'{"recording": "r"}']),
                                  headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["recording"] == "r"


# --------------------------------------------------------------------------- images


def test_images_are_served_with_caching_headers_and_304(client, catalog, data):
    gallery = by_name(catalog.galleries())["test"]["id"]
    image_id, path, sha = data["sidecar"]["ids"][3], data["sidecar"]["paths"][3], data["sidecar"]["hashes"][3]
    assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    response = client.get(f"/api/gallery/{gallery}/{image_id}")
    assert response.status_code == 200 and response.content == Path(path).read_bytes()
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == CACHE_CONTROL == "public, max-age=86400, immutable"
    assert response.headers["etag"] == f'"{sha}"'
    quoted = image_id.replace("/", "%2F")  # as the frame's url quotes it
    assert client.get(f"/api/gallery/{gallery}/{quoted}").content == response.content
    for tag in (f'"{sha}"', f'W/"{sha}"', f'"other", "{sha}"', "*"):
        again = client.get(f"/api/gallery/{gallery}/{image_id}", headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == f'"{sha}"'
    stale = client.get(f"/api/gallery/{gallery}/{image_id}", headers={"If-None-Match": '"old"'})
    assert stale.status_code == 200
    broken = by_name(catalog.galleries())["broken"]["id"]
    response = client.get(f"/api/gallery/{broken}/{image_id}")
    assert response.status_code == 400 and "broken.json" in error_of(response)["got"]


# --------------------------------------------------------------------------- tokens


def test_a_token_is_checked_on_every_call_when_set(data, catalog):
    app = make_app(data["roots"], catalog, token=TOKEN)
    gallery = by_name(catalog.galleries())["test"]["id"]
    image = f"/api/gallery/{gallery}/{data['sidecar']['ids'][0]}"
    with TestClient(app) as client:
        for url in ("/api/checkpoints", "/api/galleries", "/api/recordings", image):
            response = client.get(url)
            assert response.status_code == 401 and error_of(response)["got"] == "no token"
            assert response.headers["www-authenticate"] == "Bearer"
            response = client.get(url, headers={"Authorization": "Bearer wrong"})
            assert response.status_code == 401 and error_of(response)["got"] == "a wrong token"
            assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            assert client.get(url, params={"token": TOKEN}).status_code == 200
        assert client.get(image, params={"token": TOKEN + "x"}).status_code == 401
        response = client.post("/api/echo", json={"recording": "r"})
        assert response.status_code == 401
        client.cookies.set("glimpse_token", TOKEN)
        assert client.get("/api/galleries").status_code == 200
        with client.websocket_connect("/ws") as ws:  # the cookie goes with the handshake
            assert ws.receive_json() == {"type": "hello"}
        client.cookies.clear()
        with client.websocket_connect(f"/ws?token={TOKEN}") as ws:
            assert ws.receive_json() == {"type": "hello"}
        for url in ("/ws", "/ws?token=wrong"):
            with pytest.raises(WebSocketDisconnect), client.websocket_connect(url) as ws:
                ws.receive_json()


def test_without_a_token_set_no_token_is_asked(client):
    assert client.get("/api/checkpoints").status_code == 200
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"type": "hello"}


# --------------------------------------------------------------------------- bodies and errors


def test_malformed_json_and_invalid_fields_are_422_in_the_error_shape(client):
    response = client.post("/api/echo", content=b'{"recording": ', headers={"Content-Type": "application/json"})
    error = error_of(response)
    assert response.status_code == 422 and error["expected"] == "a JSON request body"
    assert "malformed JSON" in error["got"]
    response = client.post("/api/echo", json={"speed": -1, "loop": "maybe"})
    error = error_of(response)
    assert response.status_code == 422
    assert error["expected"].count(";") == 2  # one clause per field, joined
    assert "recording: required" in error["expected"] and "speed: greater than 0" in error["expected"]
    assert "speed=-1 (int)" in error["got"] and "recording missing" in error["got"]
    assert error["fix"] == "correct recording, speed, loop and send the request again"


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(client):
    response = client.post("/api/echo", content=b"x" * (MAX_BODY + 1),
                           headers={"Content-Type": "application/json"})
    error = error_of(response)
    assert response.status_code == 413 and f"Content-Length {MAX_BODY + 1}" == error["got"]
    assert client.post("/api/echo", json={"recording": "y" * (MAX_BODY - 20)}).status_code == 200


def test_unexpected_errors_are_500_without_details_and_unknown_urls_404(client, caplog):
    with caplog.at_level("ERROR", logger="glimpse.service.api.errors"):
        response = client.get("/api/boom")
    assert response.status_code == 500
    text = response.text
    assert "secret detail" not in text and "Traceback" not in text and ".ssh" not in text
    error_of(response)
    assert "secret detail" in caplog.text  # logged for the operator
    response = client.get("/api/nothing-here")
    assert response.status_code == 404 and "/api/nothing-here" in error_of(response)["got"]
    response = client.delete("/api/checkpoints")
    assert response.status_code == 405 and error_of(response)["status"] == 405


def test_facts_are_read_again_when_a_file_changes(data, tmp_path):
    root = tmp_path / "root"
    (root / "g").mkdir(parents=True)
    shutil.copy(data["root"] / "galleries" / "test.safetensors", root / "g" / "x.safetensors")
    (root / "g" / "x.json").write_text("{")
    catalog = Catalog(DataRoots([root]), ttl_s=60.0)
    (entry,) = catalog.galleries()
    assert entry["error"]
    shutil.copy(data["root"] / "galleries" / "test.json", root / "g" / "x.json")
    assert catalog.galleries()[0]["error"]  # within the ttl: the last scan stands
    catalog.refresh()
    (entry,) = catalog.galleries()
    assert entry["error"] is None and entry["n"] == len(data["images"])
    shutil.copytree(root / "g", root / "deeper" / "a" / "b" / "c" / "d" / "e")
    catalog.refresh()
    assert len(catalog.galleries()) == 1  # deeper than max_depth
