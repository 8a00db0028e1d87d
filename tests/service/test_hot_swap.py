"""A running session's checkpoint swapped without losing a sample: a real uvicorn server,
a real replayed LSL stream with an index channel, the served ridge checkpoint and a
tiny brain encoder built in code (two subjects, its channels in another order, its own
scaler); plus the pure parts (the window map, the compatibility checks, the sender's
move to a new worker) on plain arrays and sockets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.connection import Listener
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from glimpse.models.generators import GENERATOR_FILE, Generator
from glimpse.service.api.app import create_app
from glimpse.service.sessions.generation import decode_generated
from glimpse.service.sessions.swap import WindowMap, check_swap, checkpoint_subject
from glimpse.service.sessions.wire import WindowSender, recv_window
from glimpse.service.settings import Settings
from glimpse.streaming.errors import InputError
from glimpse.streaming.session_log import read_session_stream
from glimpse.streaming.window import Window
from helpers import until

# Server, replay, worker processes that each import torch, three model loads per swap
# test on a shared 2-core machine: a hang must fail, not stall the suite.
pytestmark = pytest.mark.timeout(360)


# --------------------------------------------------------------------------- pure parts

NAMES = ["A1", "A2", "A3", "A4"]


def _pre(names, center, scale, clamp=20.0, **filters) -> dict:
    return {"picks": ["data"], "include": [], "exclude": [], "exclude_bads": True, "ch_names": list(names),
            "sfreq": 120.0, "l_freq": 0.1, "h_freq": 40.0, "filter_order": 2, "notch": None,
            "notch_q": 30.0, "antialias_pass": 0.75, "antialias_atten_db": 60.0,
            "center": None if center is None else list(center),
            "scale": None if scale is None else list(scale), "clamp": clamp, **filters}


def _window(data, mask=None) -> Window:
    return Window(data=np.asarray(data, np.float32), t_end=1.0, t_pulled=1.001, t_cut=1.002,
                  stream_id="s", ch_names=tuple(NAMES), seq=7, chan_mask=mask)


def test_the_window_map_gives_what_the_checkpoints_own_scaler_and_order_would():
    rng = np.random.default_rng(0)
    raw = rng.normal(0.0, 3.0, (4, 30))
    c_acq, s_acq = np.array([0.5, -1.0, 2.0, 0.0]), np.array([1.0, 2.0, 0.5, 4.0])
    order = [2, 0, 3, 1]  # the checkpoint's channel i is the acquisition's order[i]
    new_names = [NAMES[i] for i in order]
    c_new, s_new = np.array([1.0, 0.0, -0.5, 0.2]), np.array([0.7, 1.5, 2.0, 1.0])
    cut = np.clip((raw - c_acq[:, None]) / s_acq[:, None], -20, 20)
    mapping = WindowMap.between(NAMES, _pre(NAMES, c_acq, s_acq), new_names, _pre(new_names, c_new, s_new))
    got = mapping(_window(cut))
    want = np.clip((raw[order] - c_new[:, None]) / s_new[:, None], -20, 20)
    np.testing.assert_allclose(got.data, want, rtol=1e-5, atol=1e-5)
    assert got.ch_names == tuple(new_names) and (got.seq, got.t_end, got.t_cut) == (7, 1.0, 1.002)
    # A tighter clamp clips; a missing channel stays zeros, its mask follows the order.
    tight = WindowMap.between(NAMES, _pre(NAMES, c_acq, s_acq), new_names,
                              _pre(new_names, c_new, s_new, clamp=0.5))
    mask = np.array([True, False, True, True])
    masked = tight(_window(np.where(mask[:, None], cut, 0.0), mask))
    assert np.abs(masked.data).max() <= 0.5
    np.testing.assert_array_equal(masked.chan_mask, mask[order])
    assert not masked.data[list(order).index(1)].any()
    # The same order and scaler: nothing to map. No scaler on either side works too.
    assert WindowMap.between(NAMES, _pre(NAMES, c_acq, s_acq), NAMES, _pre(NAMES, c_acq, s_acq)) is None
    plain = WindowMap.between(NAMES, _pre(NAMES, None, None), NAMES, _pre(NAMES, c_new, s_new))
    np.testing.assert_allclose(plain(_window(raw)).data,
                               np.clip((raw - c_new[:, None]) / s_new[:, None], -20, 20), rtol=1e-5)


def _spec() -> dict:
    return {"ch_names": NAMES, "sfreq": 120.0, "n_times": 30,
            "preprocess": _pre(NAMES, [0.0] * 4, [1.0] * 4)}


def _config(names=NAMES, sfreq=120.0, n_times=30, embedder=("handcrafted", 64), **pre) -> dict:
    return {"channels": {"names": list(names)}, "sfreq": sfreq, "window": {"n_times": n_times},
            "preprocess": _pre(names, [1.0] * len(names), [2.0] * len(names), **pre),
            "embedder": {"name": embedder[0], "dim": embedder[1]}, "subjects": ["01", "02", "ada"]}


def test_a_checkpoint_that_cannot_take_the_sessions_windows_is_refused_naming_both():
    gallery = ("handcrafted", 64)
    check_swap(_spec(), _config(names=NAMES[::-1]), "ok", gallery)  # other order, other scaler: fine
    cases = [(_config(names=["A1", "A2", "A3", "B9"]), "4 channels", "missing ['A4']"),
             (_config(sfreq=100.0), "30 samples at 120 Hz", "30 samples at 100 Hz"),
             (_config(n_times=24), "30 samples", "24 samples"),
             (_config(h_freq=30.0), "h_freq=40.0", "h_freq=30.0"),
             (_config(embedder=("open_clip:ViT-B-32", 512)), "handcrafted, 64", "open_clip:ViT-B-32 (512")]
    for config, expected, got in cases:
        with pytest.raises(InputError) as err:
            check_swap(_spec(), config, "ckpt-x", gallery)
        assert expected in err.value.expected and got in err.value.got and "ckpt-x" in err.value.got
        assert err.value.fix
    config = _config()
    assert checkpoint_subject(config, None, "c") == "01"
    assert checkpoint_subject(config, "sub-ada", "c") == checkpoint_subject(config, "ada", "c") == "ada"
    with pytest.raises(InputError, match="ada"):
        checkpoint_subject(config, "bob", "c")


def test_the_sender_moves_to_a_new_worker_between_two_windows():
    address = os.path.join(tempfile.mkdtemp(prefix="glimpse-test-"), "w.sock")
    key = b"k" * 16
    got: dict[str, list[int]] = {"old": [], "new": []}

    def serve(listener: Listener, who: str, ended: threading.Event) -> None:
        conn = listener.accept()
        try:
            while True:
                got[who].append(recv_window(conn, tuple(NAMES)).seq)
        except EOFError:
            ended.set()

    old_listener, new_listener = Listener(address, family="AF_UNIX", authkey=key), None
    old_ended, new_ended = threading.Event(), threading.Event()
    threading.Thread(target=serve, args=(old_listener, "old", old_ended), daemon=True).start()
    sender = WindowSender(address, key).start()
    try:
        for seq in range(5):
            sender.submit(Window(np.zeros((4, 30), np.float32), 1.0, 1.0, 1.0, "s", tuple(NAMES), seq))
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while len(got["old"]) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.unlink(address)  # what a new worker does to the path before it listens
        new_listener = Listener(address, family="AF_UNIX", authkey=key)
        threading.Thread(target=serve, args=(new_listener, "new", new_ended), daemon=True).start()
        sender.reconnect()
        assert old_ended.wait(10)  # the old worker reads what it had, then EOF
        for seq in range(5, 10):
            sender.submit(Window(np.zeros((4, 30), np.float32), 1.0, 1.0, 1.0, "s", tuple(NAMES), seq))
            time.sleep(0.02)
        while len(got["new"]) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == {"old": [0, 1, 2, 3, 4], "new": [5, 6, 7, 8, 9]}
        assert sender.stats()["n_undelivered"] == 0 and sender.stats()["n_connects"] == 2
    finally:
        sender.stop()
        # Each listener unlinks the path when it closes: the old one's would remove the new
        # one's socket (why a retiring worker exits without finalizers). A file stands in.
        if new_listener is not None:
            new_listener.close()
            Path(address).touch()
        old_listener.close()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def root(served_root):
    return served_root


def _brain_encoder(root: Path) -> Path:
    """A tiny two-subject brain encoder that takes the served checkpoint's windows: its
    channels reversed, its own scaler (as a calibrated person's), random weights."""
    import torch

    from glimpse.models.brain_encoder import BrainEncoder, BrainEncoderConfig
    from glimpse.models.checkpoint import save_checkpoint

    config = json.loads((root / "served" / "ckpt" / "config.json").read_text())
    names = config["channels"]["names"][::-1]
    positions = config["channels"]["positions"][::-1]
    pre = dict(config["preprocess"])
    pre.update(ch_names=names, center=[c + 0.1 for c in pre["center"][::-1]],
               scale=[1.5 * s for s in pre["scale"][::-1]])
    torch.manual_seed(0)
    model = BrainEncoder(BrainEncoderConfig(
        n_chans=len(names), sfreq=config["sfreq"], n_times=config["window"]["n_times"],
        embed_dim=config["embedder"]["dim"], n_subjects=2, ch_names=names, positions=positions,
        hidden=8, spatial_channels=8, fourier_k=4, n_blocks=1)).eval()
    return save_checkpoint(root / "served" / "swap-be", model, {
        "ch_names": names, "positions": positions, "sfreq": config["sfreq"], "window": config["window"],
        "preprocess": pre, "subjects": ["01", "ada"], "embedder": config["embedder"],
        "data_fingerprint": config["data_fingerprint"], "retrieval_head": "clip"})


def _variant(root: Path, name: str, change) -> Path:
    """A copy of the served checkpoint with config.json changed by ``change(config)``."""
    folder = root / "served" / name
    shutil.copytree(root / "served" / "ckpt", folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def checkpoints(root):
    def fewer_channels(config):
        config["channels"]["names"] = config["channels"]["names"][:-2] + ["XX1", "XX2"]

    def other_embedder(config):
        config["embedder"] = {"name": "open_clip:ViT-B-32", "dim": 512}

    broken = _variant(root, "swap-broken", lambda config: None)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)  # config reads, the weights do not
    return {"ridge": root / "served" / "ckpt", "be": _brain_encoder(root),
            "channels": _variant(root, "swap-channels", fewer_channels),
            "embedder": _variant(root, "swap-embedder", other_embedder), "broken": broken}


def test_the_worker_decodes_with_the_subject_asked_for(root, checkpoints, one_thread):
    from glimpse.service.sessions.worker_proc import _load_decoder

    spec = {"checkpoint": str(checkpoints["be"]), "gallery": str(root / "served" / "gallery.safetensors"),
            "backend": "torch", "device": "cpu", "k": 5, "threads": 1, "allow_missing": False}
    assert _load_decoder(spec)[0].subject == 0
    decoder, backend = _load_decoder({**spec, "subject": "ada"})
    assert decoder.subject == 1 and backend == "torch"
    assert int(decoder._buffer(1)[2][0]) == 1  # the subject index each forward pass gets


@pytest.fixture
def service(root, tmp_path, serving):
    settings = Settings(data=[root], port=0, sessions_dir=root / "served" / f"sessions-{tmp_path.name}")
    with serving(create_app(settings)) as url:
        with httpx.Client(base_url=url, timeout=120.0) as client:
            yield url, client


def _replay(recording: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glimpse.service.cli", "--quiet", "replay",
                             str(recording), "--name", name, "--source-id", name, "--index-channel",
                             "--loop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)



class Messages:
    """Every message of one session's WebSocket, read in a thread."""

    def __init__(self, ws):
        self.got: list[dict] = []
        self.images: list[dict] = []  # generated images' headers
        threading.Thread(target=self._read, args=(ws,), daemon=True).start()

    def _read(self, ws) -> None:
        try:
            for message in ws:
                if isinstance(message, bytes):
                    self.images.append(decode_generated(message)[1])
                else:
                    self.got.append(json.loads(message))
        except ConnectionClosed:  # by the test, at the end
            pass

    def of(self, kind: str, **match) -> list[dict]:
        return [m for m in list(self.got) if m["type"] == kind
                and all(m.get(k) == v for k, v in match.items())]

    def frames_of(self, checkpoint_id: str, since: int = 0) -> list[dict]:
        """The frames of a checkpoint, from the ``since``-th frame on."""
        return [f for f in self.of("frame")[since:] if f["checkpoint"] == checkpoint_id]


def _swap(http, sid: str, ws: Messages, checkpoint: Path, **body) -> dict:
    """Swap, wait for 10 frames of the new checkpoint; the figures of the handover."""
    before = http.get(f"/api/sessions/{sid}").json()["status"]
    since = len(ws.of("frame"))
    response = http.post(f"/api/sessions/{sid}/checkpoint", json={"checkpoint": str(checkpoint), **body})
    assert response.status_code == 200, response.text
    desc = response.json()
    new, old = desc["checkpoint"]["id"], before["checkpoint"]["id"]
    until(lambda: len(ws.frames_of(new, since)) >= 10, 60, f"frames of {new}")
    old_frames, new_frames = ws.frames_of(old, since), ws.frames_of(new, since)
    assert old_frames, "the old checkpoint decoded while the new one loaded"
    # A clean cut: every window went to one worker, the old one's before the new one's.
    assert max(f["window_seq"] for f in old_frames) < min(f["window_seq"] for f in new_frames)
    pause = new_frames[0]["t_decoded"] - max(f["t_decoded"] for f in old_frames)
    time.sleep(1.5)  # the acquisition process's next stats report (1/s)
    after = http.get(f"/api/sessions/{sid}").json()["status"]
    return {"desc": desc, "pause_ms": 1e3 * max(pause, 0.0), "before": before, "after": after,
            "gap_windows": min(f["window_seq"] for f in new_frames)
            - max(f["window_seq"] for f in old_frames) - 1}


def test_a_running_session_swaps_its_checkpoint_without_losing_a_sample(root, service, checkpoints):
    url, http = service
    name = f"swap-{uuid.uuid4().hex[:8]}"
    replay = _replay(root / "sub-01" / "meg" / "sub-01_task-things_meg.fif", name)
    try:
        created = http.post("/api/sessions", json={
            "streams": [name], "checkpoint": str(checkpoints["ridge"]), "resolve_timeout": 30,
            "gallery": str(root / "served" / "gallery.safetensors")})
        assert created.status_code == 201, created.text
        session = created.json()
        sid, ridge = session["id"], session["checkpoint"]["id"]
        assert session["checkpoint"]["subject"] == "01"
        with connect(url.replace("http", "ws") + f"/ws/sessions/{sid}") as socket:
            ws = Messages(socket)
            until(lambda: len(ws.frames_of(ridge)) >= 20, 60, "20 frames of the first checkpoint")
            until(lambda: http.get(f"/api/sessions/{sid}").json()["status"]["worker"]["standby"]
                   == "ready", 120, "the standby worker loaded")
            first = _swap(http, sid, ws, checkpoints["be"], subject="ada")
            desc = first["desc"]
            be = desc["checkpoint"]["id"]
            assert be != ridge and desc["checkpoint"]["subject"] == "ada"
            assert desc["checkpoint"]["model"] == "brain_encoder" and desc["state"] == "running"
            # The sensors stay the acquisition's: the viewer's topography follows its signal.
            assert desc["checkpoint"]["ch_names"] == session["checkpoint"]["ch_names"]
            swapped = until(lambda: ws.of("event", event="checkpoint_swapped"), 10, "the event")
            assert "->" in swapped[0]["message"] and swapped[0]["swap"]["to"]["subject"] == "ada"
            until(lambda: [m for m in ws.of("session") if m["session"]["checkpoint"]["id"] == be], 10,
                   "the new description on the hub")
            # Other weights, other top-k: the frames are the new model's.
            old_scores = {f["topk"][0]["score"] for f in ws.frames_of(ridge)}
            assert not old_scores & {f["topk"][0]["score"] for f in ws.frames_of(be)}
            status = http.get(f"/api/sessions/{sid}").json()["status"]
            assert status["checkpoint"] == {"id": be, "name": desc["checkpoint"]["name"], "subject": "ada"}

            # Back to the ridge checkpoint (its first subject), then the new worker is killed:
            # its standby is of the checkpoint now in use.
            second = _swap(http, sid, ws, checkpoints["ridge"])
            assert second["desc"]["checkpoint"]["subject"] == "01"
            until(lambda: http.get(f"/api/sessions/{sid}").json()["status"]["worker"]["standby"]
                   == "ready", 120, "the standby of the swapped-in checkpoint")
            pid = http.get(f"/api/sessions/{sid}").json()["status"]["worker"]["pid"]
            n_frames = len(ws.of("frame"))
            os.kill(pid, signal.SIGKILL)
            until(lambda: len(ws.of("frame")) > n_frames + 10, 30, "frames after the kill")
            after_kill = ws.of("frame")[n_frames:]
            assert {f["checkpoint"] for f in after_kill} == {ridge}
            time.sleep(1.5)  # one more stats report from the acquisition process
            final = http.delete(f"/api/sessions/{sid}").json()
    finally:
        replay.terminate()
        replay.wait(20)
    print(f"\nswap 1 (ridge -> brain encoder): pause {first['pause_ms']:.0f} ms, "
          f"{first['gap_windows']} windows between; swap 2: pause {second['pause_ms']:.0f} ms, "
          f"{second['gap_windows']} windows between; n_undelivered {final['n_undelivered']}, "
          f"n_dropped {final['n_dropped']}, n_stale {final['n_stale']}; "
          f"load {[round(s['load_s'], 1) for s in final['swaps']]} s, "
          f"handover {[round(s['handover_ms']) for s in final['swaps']]} ms")
    # No window went undelivered in either swap (the kill may lose the ones in flight).
    assert [(s["before"]["n_undelivered"], s["after"]["n_undelivered"]) for s in (first, second)] \
        == [(0, 0), (0, 0)]
    assert [s["to"]["id"] for s in final["swaps"]] == [be, ridge] and final["worker"]["restarts"] == 1
    # Every sample is in the session folder: the index channel counts up by one throughout.
    folder = Path(session["folder"])
    raw, _, _ = read_session_stream(folder)
    index = raw.get_data(picks=["SAMPLE_INDEX"])[0]
    assert len(index) == final["streams"][0]["n_samples"] > 1000 and np.all(np.diff(index) == 1)
    # frames.jsonl: every frame, in session order, each naming its checkpoint, in three runs.
    recorded = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]
    assert len(recorded) == final["n_decoded"]
    assert [f["seq"] for f in recorded] == sorted(f["seq"] for f in recorded)
    names = [f["checkpoint"] for f in recorded]
    runs = [c for i, c in enumerate(names) if i == 0 or c != names[i - 1]]
    assert runs == [ridge, be, ridge]
    summary = json.loads((folder / "summary.json").read_text())
    assert [s["to"]["subject"] for s in summary["swaps"]] == ["ada", "01"]


def test_bad_swaps_get_clear_errors_and_the_session_decodes_on(root, service, checkpoints):
    url, http = service
    name = f"swap-{uuid.uuid4().hex[:8]}"
    replay = _replay(root / "sub-01" / "meg" / "sub-01_task-things_meg.fif", name)
    gallery = str(root / "served" / "gallery.safetensors")

    def error(response, status):
        assert response.status_code == status, response.text
        return response.json()["error"]

    try:
        body = {"streams": [name], "checkpoint": str(checkpoints["ridge"]), "gallery": gallery,
                "resolve_timeout": 30, "record": False}
        # A subject the checkpoint was not trained on: 400 listing its subjects, nothing started.
        err = error(http.post("/api/sessions", json={**body, "subject": "bob"}), 400)
        assert "'01'" in err["expected"] and "bob" in err["got"]
        created = http.post("/api/sessions", json=body)
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        path = f"/api/sessions/{sid}/checkpoint"
        with connect(url.replace("http", "ws") + f"/ws/sessions/{sid}") as socket:
            ws = Messages(socket)
            until(lambda: len(ws.of("frame")) >= 5, 60, "frames")
            assert "ckpt-" in error(http.post(path, json={"checkpoint": "no-such-ckpt"}), 404)["got"]
            assert error(http.post(path, json={"checkpoint": "/etc"}), 403)
            err = error(http.post(path, json={"checkpoint": str(checkpoints["channels"])}), 400)
            assert "274 channels" in err["expected"] and "missing" in err["got"] and "XX1" in err["got"]
            err = error(http.post(path, json={"checkpoint": str(checkpoints["embedder"])}), 400)
            assert "handcrafted" in err["expected"] and "open_clip" in err["got"]
            err = error(http.post(path, json={"checkpoint": str(checkpoints["be"]), "subject": "bob"}), 400)
            assert "'01', 'ada'" in err["expected"] and "'bob'" in err["got"]
            assert error(http.post(path, json={"checkpoint": str(checkpoints["be"]), "colour": 1}), 422)
            assert "sessions now" in error(http.post("/api/sessions/nope/checkpoint",
                                                     json={"checkpoint": "x"}), 404)["got"]
            # Weights that do not load: the new worker's error, and the old one decodes on.
            err = error(http.post(path, json={"checkpoint": str(checkpoints["broken"])}), 400)
            assert err["message"]
            until(lambda: ws.of("event", event="checkpoint_swap_failed"), 10, "the failure reported")
            n_frames = len(ws.of("frame"))
            until(lambda: len(ws.of("frame")) > n_frames + 5, 30, "frames after the failed swap")
            assert {f["checkpoint"] for f in ws.of("frame")} == {created.json()["checkpoint"]["id"]}
        assert http.delete(f"/api/sessions/{sid}").status_code == 200
        err = error(http.post(path, json={"checkpoint": str(checkpoints["be"])}), 409)
        assert "stopped" in err["got"]
    finally:
        replay.terminate()
        replay.wait(20)
    assert http.get("/api/health").json()["status"] == "ok"


class ColourGenerator(Generator):
    """One colour per image from the embedding's first three values: no weights, the
    plumbing is what is tested."""

    def _generate(self, embeddings, *, init_images, steps, strength, guidance, seed):
        colours = 255 / (1 + np.exp(-embeddings[:, :3]))
        return np.broadcast_to(colours[:, None, None, :], (len(embeddings), self.size, self.size, 3)
                               ).round().astype(np.uint8)


def load_colour(folder, *, device: str = "cpu") -> ColourGenerator:
    """What the worker loads generators with here (a module-level function: it pickles)."""
    config = json.loads((Path(folder) / GENERATOR_FILE).read_text())
    return ColourGenerator(embedder=config["embedder"], dim=config["dim"], size=config["size"], device=device)


def test_a_generating_session_keeps_its_mode_and_generator_through_a_swap(root, checkpoints, serving):
    config = json.loads((checkpoints["ridge"] / "config.json").read_text())
    folder = root / "served" / "swap-generator"
    folder.mkdir(exist_ok=True)
    (folder / GENERATOR_FILE).write_text(json.dumps({
        "kind": "test_colour", "embedder": config["embedder"]["name"], "dim": config["embedder"]["dim"],
        "size": 16}))
    settings = Settings(data=[root], port=0,
                        sessions_dir=root / "served" / f"sessions-{uuid.uuid4().hex[:6]}")
    app = create_app(settings)
    app.state.sessions.load_generator = load_colour
    name = f"swap-{uuid.uuid4().hex[:8]}"
    replay = _replay(root / "sub-01" / "meg" / "sub-01_task-things_meg.fif", name)
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=120.0) as http:
            created = http.post("/api/sessions", json={
                "streams": [name], "checkpoint": str(checkpoints["ridge"]), "record": False,
                "gallery": str(root / "served" / "gallery.safetensors"), "resolve_timeout": 30,
                "generator": str(folder), "mode": "generation"})
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            with connect(url.replace("http", "ws") + f"/ws/sessions/{sid}") as socket:
                ws = Messages(socket)
                until(lambda: ws.images, 60, "a generated image")
                n_events = len(ws.of("event"))
                desc = _swap(http, sid, ws, checkpoints["be"])["desc"]
                be = desc["checkpoint"]["id"]
                assert desc["mode"] == "generation" and desc["generator"]["kind"] == "test_colour"
                until(lambda: [e for e in ws.of("event")[n_events:] if e["event"] == "generator_ready"],
                       60, "the new worker's generator")
                # Images follow frames of the new checkpoint.
                frames = lambda: {f["seq"]: f for f in ws.of("frame")}  # noqa: E731
                until(lambda: [i for i in ws.images if i["seq"] in frames()
                                and frames()[i["seq"]]["checkpoint"] == be], 30,
                       "an image generated from the new checkpoint's embedding")
                assert {f["mode"] for f in ws.frames_of(be)} == {"generation"}
            assert http.delete(f"/api/sessions/{sid}").json()["generation"]["state"] == "ready"
    finally:
        replay.terminate()
        replay.wait(20)
