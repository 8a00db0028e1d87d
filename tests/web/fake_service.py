"""A canned stand-in for the glimpse service, for the viewer's fast browser tests only.

It speaks the service's contract (the REST shapes and the /ws messages of issue 10)
with invented data: 2 checkpoints, 1 gallery of 12 generated PNGs, a recorded session,
sessions that decode at 20 frames/s. Timestamps are honest: frames carry
``t_window_end = pylsl.local_clock() - 0.02`` and pongs the service's LSL clock, so
the page's glass-to-glass figure is a real measurement. The real service is tested
end to end elsewhere.

With ``generator=True`` its sessions have a generator and start in mode
"generation": every other frame tick a generated image follows as a binary message
(``[seq uint64 LE][header length uint32 LE][JSON header][JPEG]``, written here
independently of the service's encoder), and ``POST /api/sessions/{id}/mode``
switches the mode.

``FakeService(web_dir, tmp_dir).start()`` serves ``web/`` at ``/`` with uvicorn on a
loopback port, in a thread; ``stop()`` and ``start()`` again reuse the port (the
viewer's reconnect test). ``calls`` records every POST and DELETE.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pylsl
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageDraw

FRAME_HZ = 20
STATUS_EVERY = 20  # frame ticks: 1 Hz
SIGNAL_EVERY = 5   # frame ticks: 4 Hz
TRACE_SFREQ = 100.0
GALLERY_ID = "things-test-1a2b3c4d"
CONCEPTS = ("aardvark", "banana", "cello", "dolphin", "easel", "ferret",
            "guitar", "hammock", "igloo", "jellyfish", "kettle", "lantern")
CHECKPOINTS = [
    {"id": "meg-linear-0f1e2d3c", "name": "meg-linear", "path": "ckpt/meg-linear", "model": "linear",
     "modality": "meg", "n_chans": 64, "sfreq": 200.0, "window_s": 0.25, "embedder": "clip-vit-b32",
     "dim": 512, "subjects": ["01"], "metrics": {"top5": 0.41}, "size_bytes": 123456, "has_onnx": False},
    {"id": "eeg-nice-9a8b7c6d", "name": "eeg-nice", "path": "ckpt/eeg-nice", "model": "nice",
     "modality": "eeg", "n_chans": 64, "sfreq": 100.0, "window_s": 0.25, "embedder": "clip-vit-b32",
     "dim": 512, "subjects": ["01", "02"], "metrics": {"top5": 0.33}, "size_bytes": 654321, "has_onnx": True},
]
RECORDINGS = [
    {"id": "sub-01-run-1-5e6f7a8b", "name": "sub-01_run-1", "path": "rec/sub-01_run-1.fif", "kind": "fif",
     "modality": "meg", "n_chans": 64, "sfreq": 200.0, "duration_s": 300.0, "n_trials": 240,
     "size_bytes": 9_000_000},
    {"id": "session-20250101-3c4d5e6f", "name": "session-2025-01-01T10-00", "path": "sessions/s1",
     "kind": "session", "modality": "meg", "n_chans": 64, "sfreq": 200.0, "duration_s": 62.5,
     "n_trials": 48, "size_bytes": 2_000_000},
]
STAGES = ("acquire", "preprocess", "queue", "encode", "retrieve", "total")
GENERATOR = {"name": "embedded-handcrafted", "path": "generators/embedded-handcrafted", "kind": "embedded",
             "embedder": "clip-vit-b32", "dim": 512, "size": 64}
GENERATORS = [{"id": "embedded-handcrafted-77aa88bb", **GENERATOR, "metrics": {}, "error": None},
              {"id": "sdxl-turbo-11cc22dd", "name": "sdxl-turbo", "path": "generators/sdxl-turbo",
               "kind": "ip_adapter", "embedder": "open_clip:ViT-H-14", "dim": 1024, "size": 512,
               "metrics": {}, "error": None}]
TRACE_CHANNELS = ("O1", "Oz", "O2", "POz")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_gallery(folder: Path) -> dict[str, str]:
    """12 distinct PNGs (a colour, a shape, the concept's initial): image id -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for i, concept in enumerate(CONCEPTS):
        hue = i / len(CONCEPTS)
        colour = tuple(int(255 * (0.5 + 0.45 * math.cos(2 * math.pi * (hue + s / 3)))) for s in range(3))
        image = Image.new("RGB", (160, 160), colour)
        draw = ImageDraw.Draw(image)
        inset = 30 + 4 * (i % 4)
        box = (inset, inset, 160 - inset, 160 - inset)
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=(20, 20, 30))
        draw.text((72, 70), concept[0].upper(), fill=(240, 240, 240))
        path = folder / f"{concept}.png"
        image.save(path)
        digests[f"{concept}.png"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def sensor_layout(n: int = 64) -> tuple[list[str], list[list[float]]]:
    """Channel names and 2-D positions in [0, 1]^2 on a disc (a sunflower spiral)."""
    names, positions = [], []
    golden = math.pi * (3 - math.sqrt(5))
    for i in range(n):
        r = 0.44 * math.sqrt((i + 0.5) / n)
        names.append(TRACE_CHANNELS[i] if i < len(TRACE_CHANNELS) else f"MEG{i:03d}")
        positions.append([0.5 + r * math.cos(i * golden), 0.5 + r * math.sin(i * golden)])
    return names, positions


@dataclass
class FakeSession:
    """One canned session: its description and the counters its status reports."""
    id: str
    state: str = "running"
    stream: str = "glimpse-sim"
    checkpoint: dict = field(default_factory=lambda: CHECKPOINTS[0])
    created: float = field(default_factory=time.time)
    n_decoded: int = 0
    n_truth: int = 0
    n_top1: int = 0
    n_topk: int = 0
    generator: dict | None = None
    mode: str = "retrieval"
    n_generated: int = 0

    def describe(self) -> dict[str, Any]:
        names, positions = sensor_layout(self.checkpoint["n_chans"])
        return {"id": self.id, "state": self.state,
                "streams": [{"name": self.stream, "source_id": f"{self.stream}-src"}],
                "checkpoint": {"id": self.checkpoint["id"], "name": self.checkpoint["name"],
                               "model": self.checkpoint["model"], "ch_names": names,
                               "positions": positions, "sfreq": self.checkpoint["sfreq"],
                               "n_times": 50, "modality": self.checkpoint["modality"]},
                "gallery": {"id": GALLERY_ID, "name": "things-test", "n": len(CONCEPTS),
                            "embedder": "clip-vit-b32"},
                "mode": self.mode, "generator": self.generator, "steps": 1, "strength": 0.6,
                "generator_state": "ready" if self.generator else None, "k": 5, "hop": 1 / FRAME_HZ,
                "record": True,
                "folder": f"sessions/{self.id}", "created": self.created}


class FakeService:
    """The app, its canned state, and a uvicorn server in a thread (restartable on its port)."""

    def __init__(self, web_dir: Path, tmp_dir: Path, *, sessions: int = 1, token: str | None = None,
                 fail_start: dict | None = None, generator: bool = False):
        self.web_dir = Path(web_dir)
        self.gallery_dir = Path(tmp_dir) / "gallery"
        self.digests = write_gallery(self.gallery_dir)
        self.token = token
        self.fail_start = fail_start  # an error body POST /api/sessions answers with (409)
        self.calls: list[tuple[str, str, Any]] = []
        gen = GENERATOR if generator else None
        self.sessions = {f"s{i + 1}": FakeSession(f"s{i + 1}", stream=f"glimpse-sim-{i + 1}",
                                                  checkpoint=CHECKPOINTS[i % 2], generator=gen,
                                                  mode="generation" if gen else "retrieval")
                         for i in range(sessions)}
        self.clients: set[asyncio.Queue] = set()
        self.port = free_port()
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- server lifecycle ---------------------------------------------------------
    def start(self) -> FakeService:
        """Serve on ``self.port``; returns once uvicorn listens."""
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                ws="websockets-sansio", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-glimpse", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the fake service did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving (open WebSockets are closed); the port is free again on return."""
        if self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError("the fake service did not stop within 10 s")
        self._server = self._thread = None
        self.clients.clear()

    # -- app ----------------------------------------------------------------------
    def _authorised(self, request: Request | WebSocket) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        offered = {header.removeprefix("Bearer ").strip(), request.cookies.get("glimpse_token"),
                   request.query_params.get("token")}
        return self.token in offered

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def token_check(request: Request, call_next):
            if request.url.path.startswith("/api") and not self._authorised(request):
                return JSONResponse(status_code=401, content={"error": {
                    "status": 401, "expected": "the service's token", "got": "no token or a wrong one",
                    "fix": "enter the token given to `glimpse serve --token`",
                    "message": "this service needs a token"}})
            return await call_next(request)

        self._add_catalog(app)
        self._add_sessions(app)
        app.add_api_websocket_route("/ws", self._ws)
        app.mount("/", StaticFiles(directory=self.web_dir, html=True), name="web")
        return app

    def _add_catalog(self, app: FastAPI) -> None:
        @app.get("/api/health")
        async def health():
            return {"status": "ok", "version": "0.1.0", "uptime_s": 1.0,
                    "sessions": len(self.sessions), "replays": 0}

        @app.get("/api/streams")
        async def streams():
            return [{"name": s.stream, "type": "MEG", "n_chans": 64, "sfreq": 200.0,
                     "source_id": f"{s.stream}-src", "hostname": "lab"} for s in self.sessions.values()] + [
                {"name": "glimpse-sub-01-run-1", "type": "MEG", "n_chans": 64, "sfreq": 200.0,
                 "source_id": "replay-src", "hostname": "lab"}]

        @app.get("/api/checkpoints")
        async def checkpoints():
            return CHECKPOINTS

        @app.get("/api/galleries")
        async def galleries():
            return [{"id": GALLERY_ID, "name": "things-test", "path": "galleries/things-test",
                     "embedder": "clip-vit-b32", "dim": 512, "n": len(CONCEPTS), "size_bytes": 49152}]

        @app.get("/api/recordings")
        async def recordings():
            return RECORDINGS

        @app.get("/api/generators")
        async def generators():
            return GENERATORS

        @app.post("/api/replays", status_code=201)
        async def start_replay(request: Request):
            body = await request.json()
            self.calls.append(("POST", "/api/replays", body))
            return {"id": "r1", "name": "glimpse-replayed", "source_id": "replay-r1",
                    "recording": body.get("recording"), "speed": 1.0, "loop": True,
                    "state": "running", "pid": 4242}

        @app.get("/api/gallery/{gallery_id}/{image_id:path}")
        async def gallery_image(gallery_id: str, image_id: str, request: Request):
            if gallery_id != GALLERY_ID or image_id not in self.digests:
                return JSONResponse(status_code=404, content={"error": {
                    "status": 404, "expected": "an image of the gallery", "got": image_id,
                    "fix": "use a URL from a frame", "message": "no such image"}})
            etag = f'"{self.digests[image_id]}"'
            headers = {"Cache-Control": "public, max-age=86400, immutable", "ETag": etag}
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            return FileResponse(self.gallery_dir / image_id, media_type="image/png", headers=headers)

    def _add_sessions(self, app: FastAPI) -> None:
        @app.get("/api/sessions")
        async def list_sessions():
            return [s.describe() for s in self.sessions.values()]

        @app.post("/api/sessions", status_code=201)
        async def start_session(request: Request):
            body = await request.json()
            self.calls.append(("POST", "/api/sessions", body))
            if self.fail_start is not None:
                return JSONResponse(status_code=409, content={"error": {"status": 409, **self.fail_start}})
            sid = f"s{len(self.sessions) + 1}"
            stream = body["streams"][0]
            ckpt = next(c for c in CHECKPOINTS if c["id"] == body["checkpoint"])
            self.sessions[sid] = FakeSession(sid, stream=stream if isinstance(stream, str) else stream["name"],
                                             checkpoint=ckpt)
            return self.sessions[sid].describe()

        @app.post("/api/sessions/{sid}/mode")
        async def set_mode(sid: str, request: Request):
            body = await request.json()
            self.calls.append(("POST", f"/api/sessions/{sid}/mode", body))
            session = self.sessions[sid]
            session.mode = body["mode"]
            self._broadcast({"type": "session", "session": session.describe()})
            return session.describe()

        @app.delete("/api/sessions/{sid}")
        async def stop_session(sid: str):
            self.calls.append(("DELETE", f"/api/sessions/{sid}", None))
            session = self.sessions[sid]
            session.state = "stopped"
            self._broadcast({"type": "session", "session": session.describe()})
            self._broadcast({"type": "event", "session": sid, "event": "session_stopped",
                             "message": f"session {sid} stopped", "t": time.time()})
            return self._status(session)

    def _broadcast(self, message: dict) -> None:
        for queue in self.clients:
            queue.put_nowait(message)

    # -- WebSocket ----------------------------------------------------------------
    async def _ws(self, websocket: WebSocket) -> None:
        if not self._authorised(websocket):
            await websocket.send_denial_response(Response(status_code=401))
            return
        await websocket.accept()
        outbox: asyncio.Queue = asyncio.Queue()
        self.clients.add(outbox)
        subscribed: list[str] = []
        await websocket.send_json({"type": "hello", "v": 1, "sessions": list(self.sessions)})
        sender = asyncio.create_task(self._send_loop(websocket, outbox, subscribed))
        try:
            while True:
                message = await websocket.receive_json()
                if message["type"] == "ping":
                    t2 = pylsl.local_clock()
                    await outbox.put({"type": "pong", "id": message["id"], "t1": message["t1"],
                                      "t2": t2, "t3": None})
                elif message["type"] == "subscribe":
                    for sid in message["sessions"]:
                        if sid in self.sessions and sid not in subscribed:
                            subscribed.append(sid)
                            await outbox.put({"type": "session", "session": self.sessions[sid].describe()})
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.clients.discard(outbox)
            sender.cancel()

    async def _send_loop(self, websocket: WebSocket, outbox: asyncio.Queue, subscribed: list[str]) -> None:
        tick = 0
        next_at = time.monotonic()
        try:
            while True:
                while not outbox.empty():
                    message = outbox.get_nowait()
                    if message["type"] == "pong":
                        message["t3"] = pylsl.local_clock()
                    await websocket.send_json(message)
                for sid in subscribed:
                    session = self.sessions[sid]
                    if session.state != "running":
                        continue
                    frame = self._frame(session, tick)
                    await websocket.send_json(frame)
                    if session.mode != "retrieval" and tick % 2 == 0:
                        await websocket.send_bytes(self._generated(session, frame))
                    if tick % STATUS_EVERY == 0:
                        await websocket.send_json({"type": "status", **self._status(session)})
                    if tick % SIGNAL_EVERY == 0:
                        await websocket.send_json(self._signal(session))
                tick += 1
                next_at += 1 / FRAME_HZ
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    # -- canned messages ------------------------------------------------------------
    def _frame(self, session: FakeSession, tick: int) -> dict[str, Any]:
        n = len(CONCEPTS)
        block = tick // 10  # a new stimulus every 0.5 s
        shown = block % n
        if block % 5 == 4:    # a miss: the stimulus is not in the top-5
            order = [(shown + d) % n for d in range(1, 6)]
        elif block % 3 == 0:  # in the top-5, not first
            order = [(shown + 1) % n, shown] + [(shown + d) % n for d in range(2, 5)]
        else:                 # right
            order = [(shown + d) % n for d in range(5)]
        ids = [f"{CONCEPTS[j]}.png" for j in order]
        truth_id = f"{CONCEPTS[shown]}.png"
        session.n_decoded += 1
        session.n_truth += 1
        session.n_top1 += ids[0] == truth_id
        session.n_topk += truth_id in ids
        now = pylsl.local_clock()
        return {"type": "frame", "v": 1, "session": session.id, "seq": session.n_decoded,
                "stream": f"{session.stream}-src", "window_seq": tick, "t_window_end": now - 0.02,
                "t_decoded": now - 0.005,
                "latency_ms": {"acquire": 2.0, "preprocess": 1.5, "queue": 0.4, "encode": 9.0,
                               "retrieve": 0.6, "generate": None, "total": 15.0},
                "topk": [{"id": i, "score": round(0.62 - 0.07 * r, 3), "url": self._url(i)}
                         for r, i in enumerate(ids)],
                "confidence": 0.5 + 0.45 * math.sin(tick / 15), "mode": "retrieval",
                "truth": {"stim_file": f"stimuli/{truth_id}", "concept": CONCEPTS[shown], "trial_type": "test",
                          "t": now - 0.1, "id": truth_id, "age_s": 0.1, "url": self._url(truth_id)},
                "hit": truth_id in ids, "t_sent": now}

    @staticmethod
    def _generated(session: FakeSession, frame: dict) -> bytes:
        """A generated image for ``frame``: a 64 px JPEG in the truth's hue, as the service sends it."""
        session.n_generated += 1
        hue = CONCEPTS.index(frame["truth"]["concept"]) / len(CONCEPTS)
        colour = tuple(int(255 * (0.5 + 0.45 * math.cos(2 * math.pi * (hue + s / 3)))) for s in range(3))
        image = Image.new("RGB", (64, 64), colour)
        ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(240, 240, 240))
        jpeg = io.BytesIO()
        image.save(jpeg, "JPEG", quality=85)
        now = pylsl.local_clock()
        header = json.dumps({"type": "generated", "session": session.id, "seq": frame["seq"],
                             "stream": frame["stream"], "t_window_end": frame["t_window_end"],
                             "age_ms": 1e3 * (now - frame["t_window_end"]), "mode": session.mode,
                             "format": "jpeg", "width": 64, "height": 64, "generate_ms": 30.0}).encode()
        return struct.pack("<QI", frame["seq"], len(header)) + header + jpeg.getvalue()

    @staticmethod
    def _url(image_id: str) -> str:
        return f"/api/gallery/{GALLERY_ID}/{image_id}"

    def _status(self, session: FakeSession) -> dict[str, Any]:
        latency = {stage: {"p50": 1.0 + 2 * i, "p95": 2.0 + 3 * i, "p99": 3.0 + 4 * i}
                   for i, stage in enumerate(STAGES)}
        truth = max(session.n_truth, 1)
        return {"session": session.id, "state": session.state,
                "worker": {"state": "running", "restarts": 0, "pid": 1234},
                "decode_rate": float(FRAME_HZ), "latency_ms": latency,
                "n_decoded": session.n_decoded, "n_dropped": 0, "n_stale": 0, "n_invalid": 0,
                "streams": [{"stream_id": f"{session.stream}-src", "state": "streaming",
                             "n_samples": 200 * session.n_decoded // FRAME_HZ, "n_gaps": 0, "n_lost": 0}],
                "accuracy": {"frames_with_truth": session.n_truth, "top1": session.n_top1 / truth,
                             "topk": session.n_topk / truth, "k": 5, "chance_topk": 5 / len(CONCEPTS),
                             "chance_top1": 1 / len(CONCEPTS)}, "clients": len(self.clients)}

    def _signal(self, session: FakeSession) -> dict[str, Any]:
        names, positions = sensor_layout(session.checkpoint["n_chans"])
        now = pylsl.local_clock()
        phase = now % 6.0
        levels = [1.0 + 0.8 * math.sin(3 * x + phase) * math.cos(2 * y) for x, y in positions]
        flags: list[str | None] = [None] * len(names)
        flags[10], flags[20], flags[30] = "flat", "saturated", "missing"
        levels[10], levels[20], levels[30] = 0.0, 4.0, None
        n = int(TRACE_SFREQ)  # the last 1 s
        t0 = now - (n - 1) / TRACE_SFREQ
        data = [[math.sin(2 * math.pi * (7 + c) * (t0 + i / TRACE_SFREQ)) + (3.0 if i == n // 2 and c == 0 else 0.0)
                 for i in range(n)] for c in range(len(TRACE_CHANNELS))]
        return {"type": "signal", "session": session.id, "stream": f"{session.stream}-src", "t": now,
                "levels": levels, "flags": flags,
                "trace": {"ch_names": list(TRACE_CHANNELS), "sfreq": TRACE_SFREQ, "t0": t0, "data": data}}
