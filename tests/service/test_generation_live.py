"""Generation live (issue 11, part 6): the worker's generation thread on its own, the
binary message and the hub's image slot, and the service end to end: a replayed
stream, a session whose worker generates from the newest embedding while retrieval
keeps its rate, the mode switch, a generator that raises (the session falls back to
retrieval and goes on) and the bad requests.

The generator is a test-local :class:`Generator` subclass that draws deterministic
images from the embeddings (no weights: the plumbing is what is tested here); the
worker process loads it through ``SessionManager.load_generator``, a module-level
function of this module, imported by the spawned worker.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from glimpse.models.generators import GENERATOR_FILE, Generator
from glimpse.models.generators.base import register_generator
from glimpse.service.api.app import create_app
from glimpse.service.api.hub import IMAGE, Client
from glimpse.service.sessions.session import LiveSession
from glimpse.service.sessions.generation import (Generation, InitImages, decode_generated,
                                                  encode_generated)
from glimpse.service.settings import Settings
from glimpse.streaming.errors import InputError
from helpers import until

# One replay and three sessions (two spawned processes each, importing torch) on 2 cores.
pytestmark = pytest.mark.timeout(150)

TEST_KIND = "test_tiny"


@register_generator(TEST_KIND)
class TinyGenerator(Generator):
    """Each image one colour from the embedding's first three values (init images blended
    in by ``1 - strength``); ``delay_s`` of sleep per call; raises a CUDA-like out of
    memory error once ``fail_after`` images were made."""

    def __init__(self, *, delay_s: float = 0.0, fail_after: int | None = None, **kw):
        super().__init__(**kw)
        self.delay_s, self.fail_after, self.n = delay_s, fail_after, 0
        self.norms: list[float] = []
        self.inits: list[bool] = []

    @classmethod
    def load(cls, folder: Path, *, device: str = "cpu", config: dict) -> TinyGenerator:
        if config.get("missing"):
            raise InputError("a generator folder with unet/", f"{folder} without {config['missing']}/",
                             "copy the whole folder")
        return cls(embedder=config["embedder"], dim=config["dim"], size=config["size"], device=device,
                   delay_s=config.get("delay_s", 0.0), fail_after=config.get("fail_after"))

    def warmup(self, steps: int = 1) -> TinyGenerator:
        super().warmup(steps)
        self.n, self.norms, self.inits = 0, [], []  # count live images only
        return self

    def _generate(self, embeddings, *, init_images, steps, strength, guidance, seed):
        time.sleep(self.delay_s)
        if self.fail_after is not None and self.n >= self.fail_after:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.n += len(embeddings)
        self.norms.extend(np.linalg.norm(embeddings, axis=1).tolist())
        self.inits.append(init_images is not None)
        colours = 255 / (1 + np.exp(-embeddings[:, :3]))
        images = np.broadcast_to(colours[:, None, None, :], (len(embeddings), self.size, self.size, 3))
        if init_images is not None:
            images = (1 - strength) * np.stack(init_images) + strength * images
        return images.round().astype(np.uint8)


def load_tiny(folder, *, device: str = "cpu") -> TinyGenerator:
    """What the worker loads generators with in these tests (pickles by name)."""
    config = json.loads((Path(folder) / GENERATOR_FILE).read_text())
    return TinyGenerator.load(Path(folder), device=device, config=config)



# ----------------------------------------------------------------- the thread alone


def _frame(stream: str, seq: int) -> dict:
    return {"seq": seq, "stream": stream, "t_window_end": 100.0 + seq}


def _thread(generator, **options):
    sent: list[tuple] = []
    gen = Generation(lambda: generator, send=sent.append, embedder=("handcrafted", 8),
                     **{"mode": "generation", **options}).start()
    until(lambda: gen.state != "loading", 5, "the generator loaded")
    return gen, sent


def test_the_newest_embedding_of_each_stream_is_generated_and_stale_ones_dropped():
    gen_model = TinyGenerator(embedder="handcrafted", dim=8, size=16, delay_s=0.2)
    gen, sent = _thread(gen_model, mean_norm=3.0)
    try:
        assert sent[0][0] == "generator_ready"
        rng = np.random.default_rng(0)
        for seq in range(12):  # 60 frames/s for two streams: faster than it generates
            gen.offer([_frame("a", seq), _frame("b", seq)], rng.standard_normal((2, 8)) * 7, [[3], [4]])
            time.sleep(1 / 60)
        until(lambda: gen.stats()["n_generated"] >= 4, 5, "images")
        # the newest of stream a comes through (a loaded machine may hold the thread a while)
        until(lambda: any(k == "generated" and b["stream"] == "a" and b["seq"] == 11
                           for k, b in list(sent)), 10, "the newest embedding's image")
        stats = gen.stats()
    finally:
        gen.stop()
    images = [body for kind, body in sent if kind == "generated"]
    assert stats["n_stale"] > 0 and stats["n_stale"] + stats["n_generated"] <= stats["n_offered"]
    assert stats["n_generated"] == len(images) < 24  # dropped, never queued
    assert {i["stream"] for i in images} == {"a", "b"}
    assert max(i["seq"] for i in images if i["stream"] == "a") == 11  # the newest came through
    assert np.allclose(gen_model.norms, 3.0, atol=1e-4)  # rescaled to the checkpoint's norm
    first = images[0]
    assert Image.open(io.BytesIO(first["image"])).size == (16, 16)
    assert first["format"] == "jpeg" and first["generate_ms"] >= 190 and first["mode"] == "generation"


def test_a_generator_that_raises_is_reported_and_generation_turns_off():
    gen, sent = _thread(TinyGenerator(embedder="handcrafted", dim=8, size=8, fail_after=1))
    try:
        emb = np.ones((1, 8), np.float32)
        gen.offer([_frame("a", 0)], emb, [[0]])
        until(lambda: gen.stats()["n_generated"] == 1, 5, "one image")
        gen.offer([_frame("a", 1)], emb, [[0]])
        failed = until(lambda: [b for k, b in sent if k == "generation_failed"], 5, "the failure")
        assert "GPU ran out of memory" in failed[0]["message"]
        assert gen.mode == "retrieval"
        gen.offer([_frame("a", 2)], emb, [[0]])  # off: nothing is taken
        assert gen.stats()["n_offered"] == 2
        gen.set_mode("generation")  # on again: tried again (and it fails again, reported)
        gen.offer([_frame("a", 3)], emb, [[0]])
        until(lambda: len([k for k, _ in sent if k == "generation_failed"]) == 2, 5, "the second failure")
    finally:
        gen.stop()
    assert gen.stats()["n_failed"] == 2


def test_a_generator_that_does_not_load_is_reported_naming_what_is_missing():
    def load():
        raise InputError("a generator folder with unet/", "gen/ without unet/", "copy the whole folder")

    sent: list[tuple] = []
    gen = Generation(load, send=sent.append, embedder=("handcrafted", 8), mode="generation").start()
    try:
        failed = until(lambda: [b for k, b in sent if k == "generation_failed"], 5, "the failure")
        assert "did not load" in failed[0]["message"] and "without unet/" in failed[0]["message"]
        assert gen.state == "failed" and gen.mode == "retrieval"
    finally:
        gen.stop()
    # A generator of another embedder than the checkpoint's is refused when it loads.
    other = TinyGenerator(embedder="open_clip:ViT-H-14", dim=1024, size=8)
    gen, sent = _thread(other)
    gen.stop()
    message = [b for k, b in sent if k == "generation_failed"][0]["message"]
    assert "open_clip:ViT-H-14" in message and "handcrafted" in message


def test_two_stage_starts_from_the_retrieved_image_inside_the_roots(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (40, 40), (250, 0, 0)).save(root / "red.png")
    Image.new("RGB", (40, 40), (0, 250, 0)).save(outside / "green.png")
    inits = InitImages(["red.png", str(outside / "green.png")], base=root, roots=[root])
    assert inits(0, 8).shape == (8, 8, 3) and inits(0, 8)[0, 0, 0] > 240
    assert inits(1, 8) is None  # outside the data roots: never read
    model = TinyGenerator(embedder="handcrafted", dim=8, size=8)
    gen, sent = _thread(model, mode="two_stage", strength=0.25, init_images=inits)
    try:
        gen.offer([_frame("a", 0)], np.full((1, 8), -20.0), [[0]])  # embedding colour: black
        image = until(lambda: [b for k, b in sent if k == "generated"], 5, "an image")[0]
        gen.offer([_frame("a", 1)], np.full((1, 8), -20.0), [[1]])  # no init image: from the embedding
        second = until(lambda: [b for k, b in sent if k == "generated"][1:], 5, "a second image")[0]
    finally:
        gen.stop()
    pixel = np.asarray(Image.open(io.BytesIO(image["image"])))[4, 4]
    assert image["mode"] == "two_stage" and 170 < pixel[0] < 205 and pixel[1] < 30  # 0.75 x red
    assert second["mode"] == "generation" and model.inits == [True, False]


def test_the_binary_message_and_the_hubs_image_slot():
    header = {"type": "generated", "session": "s1", "seq": 2**40 + 3, "age_ms": 12.5}
    data = encode_generated(2**40 + 3, header, b"\xff\xd8jpeg")
    assert int.from_bytes(data[:8], "little") == 2**40 + 3
    n = int.from_bytes(data[8:12], "little")
    assert json.loads(data[12:12 + n]) == header
    assert decode_generated(data) == (2**40 + 3, header, b"\xff\xd8jpeg")
    client = Client(queue_size=4)
    for i in range(3):
        client.push(IMAGE, bytes([i]), "s1")
    client.push(IMAGE, b"other", "s2")
    assert client.n_images_replaced == 2 and client.pending() == 2
    assert sorted([client.pop(), client.pop()]) == [b"\x02", b"other"] and client.pop() is None


# ----------------------------------------------------------------- the service


class Messages:
    """A WebSocket client keeping every text message and every binary one (read in a thread)."""

    def __init__(self, ws):
        self.got: list[dict] = []
        self.images: list[tuple[float, int, dict, bytes]] = []  # (arrival, seq, header, image)
        self.frame_times: list[float] = []
        threading.Thread(target=self._read, args=(ws,), daemon=True).start()

    def _read(self, ws) -> None:
        try:
            for message in ws:
                if isinstance(message, bytes):
                    self.images.append((time.monotonic(), *decode_generated(message)))
                else:
                    body = json.loads(message)
                    if body["type"] == "frame":
                        self.frame_times.append(time.monotonic())
                    self.got.append(body)
        except ConnectionClosed:
            pass

    def of(self, kind: str) -> list[dict]:
        return [m for m in list(self.got) if m["type"] == kind]

    def rate(self, seconds: float) -> tuple[float, float]:
        """(frames/s, generated images/s) over the next ``seconds``."""
        n_frames, n_images = len(self.frame_times), len(self.images)
        time.sleep(seconds)
        return (len(self.frame_times) - n_frames) / seconds, (len(self.images) - n_images) / seconds


def _write_generator(folder: Path, config: dict, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GENERATOR_FILE).write_text(json.dumps({"kind": TEST_KIND, **config, **extra}))
    return folder


@pytest.fixture(scope="module")
def live(served_root, serving, tmp_path_factory):
    """The service on served_root (worker loads generators with load_tiny), its HTTP
    client, a looping replay of the simulated session, and three generator folders."""
    import subprocess
    import sys

    config = json.loads((served_root / "served" / "ckpt" / "config.json").read_text())
    same = {"embedder": config["embedder"]["name"], "dim": config["embedder"]["dim"], "size": 32}
    gens = served_root / "served" / "generators"
    folders = {"ok": _write_generator(gens / "tiny", same, delay_s=0.1),
               "fails": _write_generator(gens / "fails", same, fail_after=3),
               "other": _write_generator(gens / "other", {**same, "embedder": "open_clip:ViT-H-14",
                                                          "dim": 1024})}
    (gens / "empty").mkdir(exist_ok=True)
    settings = Settings(data=[served_root], port=0,
                        sessions_dir=served_root / "served" / f"sessions-{uuid.uuid4().hex[:6]}")
    app = create_app(settings)
    app.state.sessions.load_generator = load_tiny
    name = f"gen-{uuid.uuid4().hex[:8]}"
    fif = served_root / "sub-01" / "meg" / "sub-01_task-things_meg.fif"
    replay = subprocess.Popen([sys.executable, "-m", "glimpse.service.cli", "--quiet", "replay", str(fif),
                               "--name", name, "--source-id", name, "--loop"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = {"streams": [name], "checkpoint": str(served_root / "served" / "ckpt"),
            "gallery": str(served_root / "served" / "gallery.safetensors"), "resolve_timeout": 30,
            "record": False}
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=60.0) as http:
            yield {"url": url, "http": http, "body": body, "folders": folders, "gens": gens}
    finally:
        replay.terminate()
        replay.wait(20)


def test_generated_frames_arrive_while_retrieval_keeps_its_rate_and_modes_switch(live):
    http, url = live["http"], live["url"]
    created = http.post("/api/sessions", json={**live["body"], "generator": str(live["folders"]["ok"]),
                                                "mode": "retrieval"})
    assert created.status_code == 201, created.text
    session = created.json()
    sid = session["id"]
    assert session["generator"]["kind"] == TEST_KIND and session["generator"]["size"] == 32
    assert session["mode"] == "retrieval" and "abspath" not in session["generator"]
    with connect(url.replace("http", "ws") + f"/ws/sessions/{sid}") as socket:
        ws = Messages(socket)
        until(lambda: http.get(f"/api/sessions/{sid}").json()["status"]["generation"]["state"] == "ready",
               30, "the generator loaded")
        until(lambda: len(ws.of("frame")) >= 10, 30, "frames")
        off, none = ws.rate(2.0)
        assert none == 0  # retrieval mode: nothing generated
        switched = http.post(f"/api/sessions/{sid}/mode", json={"mode": "generation"})
        assert switched.status_code == 200 and switched.json()["mode"] == "generation"
        until(lambda: ws.images, 10, "a generated image")
        on, generated = ws.rate(2.0)
        # Generation runs at its own pace (~10/s here, 0.1 s a call) and retrieval keeps its
        # rate (20/s): a generous bound for a loaded 2-core machine.
        assert off > 5 and on > 0.6 * off, (off, on)
        assert 0 < generated < on
        frames = {f["seq"]: f for f in ws.of("frame")}
        _, seq, header, jpeg = ws.images[-1]
        assert seq == header["seq"] and seq in frames  # the frame it came from was published
        assert header["t_window_end"] == frames[seq]["t_window_end"] and header["stream"] == frames[seq]["stream"]
        assert header["type"] == "generated" and header["session"] == sid and header["format"] == "jpeg"
        assert 0 < header["age_ms"] < 5000 and header["mode"] == "generation"
        assert Image.open(io.BytesIO(jpeg)).size == (header["width"], header["height"]) == (32, 32)
        assert frames[max(frames)]["mode"] == "generation"

        assert http.post(f"/api/sessions/{sid}/mode", json={"mode": "two_stage"}).status_code == 200
        until(lambda: ws.images[-1][2]["mode"] == "two_stage", 10, "a two-stage image")
        status = http.get(f"/api/sessions/{sid}").json()["status"]["generation"]
        assert status["state"] == "ready" and status["n_generated"] > 0 and status["n_stale"] > 0
        assert status["generate_ms"]["p50"] >= 90
        assert http.post(f"/api/sessions/{sid}/mode", json={"mode": "dream"}).status_code == 422
        assert http.post(f"/api/sessions/{sid}/mode", json={"mode": "retrieval"}).json()["mode"] == "retrieval"
        n = len(ws.images)
        time.sleep(0.5)
        assert len(ws.images) <= n + 1  # at most the one in flight
    assert http.delete(f"/api/sessions/{sid}").json()["state"] == "stopped"
    assert http.post(f"/api/sessions/{sid}/mode", json={"mode": "generation"}).status_code == 409


def test_a_failing_generator_is_reported_and_the_session_goes_on_retrieving(live):
    http, url = live["http"], live["url"]
    created = http.post("/api/sessions", json={**live["body"], "generator": str(live["folders"]["fails"]),
                                                "mode": "generation"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    with connect(url.replace("http", "ws") + f"/ws/sessions/{sid}") as socket:
        ws = Messages(socket)
        failed = until(lambda: [e for e in ws.of("event") if e["event"] == "generation_failed"], 30,
                        "the failure reported")
        assert "GPU ran out of memory" in failed[0]["message"] and "retrieval" in failed[0]["message"]
        until(lambda: [m for m in ws.of("session") if m["session"]["mode"] == "retrieval"], 5,
               "the session back in retrieval")
        n = len(ws.of("frame"))
        until(lambda: len(ws.of("frame")) > n + 10, 10, "frames after the failure")
        assert 0 < len(ws.images) <= 3
        # The worker's counters come with its stats, once a second.
        status = until(lambda: (lambda d: d["status"]["generation"]["n_failed"] and d)(
            http.get(f"/api/sessions/{sid}").json()), 5, "the failure counted")
        assert status["mode"] == "retrieval" and status["status"]["generation"]["n_failed"] == 1
        assert status["status"]["worker"]["restarts"] == 0
    assert http.delete(f"/api/sessions/{sid}").json()["state"] == "stopped"


def test_generators_are_listed_with_their_conditioning_space_and_named_by_id(live):
    http, body = live["http"], live["body"]
    listed = {g["name"]: g for g in http.get("/api/generators").json()}
    assert {"tiny", "fails", "other"} <= set(listed) and "empty" not in listed
    assert (listed["other"]["embedder"], listed["tiny"]["embedder"]) == ("open_clip:ViT-H-14", "handcrafted")
    assert listed["tiny"]["path"].endswith("generators/tiny") and listed["tiny"]["size"] > 0
    # An id from the listing names the folder as its path does: refused with both embedders.
    response = http.post("/api/sessions", json={**body, "generator": listed["other"]["id"]})
    assert response.status_code == 400 and "open_clip:ViT-H-14" in response.json()["error"]["expected"]


def test_bad_generation_requests_get_clear_errors(live):
    http, body, folders = live["http"], live["body"], live["folders"]

    def error(response, status):
        assert response.status_code == status, response.text
        return response.json()["error"]

    err = error(http.post("/api/sessions", json={**body, "generator": str(folders["other"])}), 400)
    assert "open_clip:ViT-H-14" in err["expected"] and "handcrafted" in err["got"]  # both names
    err = error(http.post("/api/sessions", json={**body, "mode": "generation"}), 400)
    assert "generator" in err["expected"]
    err = error(http.post("/api/sessions", json={**body, "generator": str(live["gens"] / "empty")}), 404)
    assert GENERATOR_FILE in err["expected"] and "not one" in err["got"]
    assert error(http.post("/api/sessions", json={**body, "generator": "/etc"}), 403)
    assert error(http.post("/api/sessions", json={**body, "generator": "no/such/folder"}), 404)
    for field, value in (("steps", 0), ("steps", 5), ("strength", -0.1), ("strength", 1.5),
                         ("mode", "dream")):
        assert field in error(http.post("/api/sessions", json={**body, field: value}), 422)["expected"]
    assert "sessions now" in error(http.post("/api/sessions/nope/mode", json={"mode": "generation"}), 404)["got"]
    # Nothing half-started is left behind (the other tests' sessions are stopped).
    assert [d["id"] for d in http.get("/api/sessions").json() if d["state"] != "stopped"] == []


def test_a_session_without_a_generator_refuses_the_generation_modes():
    session = LiveSession({"session": "s1", "k": 5, "mode": "retrieval", "generator": None, "folder": None},
                          publish=lambda message: None, describe={}, gallery_ids=["a.png"], gallery_size=1)
    session.state = "running"  # its processes are not needed to refuse
    with pytest.raises(InputError, match="started with a generator"):
        session.set_mode("two_stage")
    assert session.describe()["mode"] == "retrieval" and session.status()["generation"] is None
    session.stop()
