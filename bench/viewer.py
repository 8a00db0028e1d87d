"""Glass-to-glass latency of the browser viewer, in headless Chromium; prints JSON.

Glass-to-glass: from the LSL time of a window's newest sample to the browser
having painted its frame. The page maps its paint time onto the service's LSL
clock with an NTP-style offset estimated over the WebSocket (its uncertainty is
reported), so the figure covers acquisition, the process hop to the worker,
decoding, the hub, the WebSocket and the page's drawing.

``glimpse serve`` runs in a subprocess on the demo's data root (``glimpse demo``
builds it), sub-01 is replayed as LSL through the API, and for each scenario the
sessions are started through the API and the viewer is opened in Debian's Chromium
(Playwright, ``executable_path``):

``one``      one MEG session;
``four``     four sessions decoding the same stream, four panels on one screen;
``clients``  one session with 50 more WebSocket clients (one never reads), in
             another process;
``generation`` one session in mode generation with the shipped embedded
             generator: also generated images painted per second, their age
             (window's end to paint) and the worker's decode latency, to read
             beside ``one``'s (the live path's latency with generation running).

Per scenario: g2g p50/p95/p99 over the measured seconds (the first ``--warmup``
seconds left out), frames decoded (service) / received / painted / skipped as
stale (page; a frame replaced before it was painted) / still queued (received -
painted - skipped: must be 0), the offset uncertainty, and for ``clients`` the
share of frames each reading client got. Target (issue 10): p99 at most 50 ms
with one session on 2 cores, every frame painted or skipped, none queued.

    python bench/viewer.py --root glimpse-demo --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

CLIENTS_SCRIPT = r"""
import json, sys, threading, time
from websockets.sync.client import connect
url, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
counts = [0] * n
def read(i):
    with connect(url, max_size=2**22) as ws:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if json.loads(ws.recv(timeout=1.0))["type"] == "frame":
                    counts[i] += 1
            except TimeoutError:
                pass
stuck = connect(url)  # never reads: its buffers fill, the hub drops its frames
threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(counts))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values) -> dict:
    if not len(values):
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    p = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p[0]), 1), "p95": round(float(p[1]), 1),
            "p99": round(float(p[2]), 1), "n": len(values)}


def _scenario(http: httpx.Client, page, url: str, body: dict, *, sessions: int, clients: int,
              seconds: float, warmup: float) -> dict:
    ids = []
    for _ in range(sessions):
        r = http.post("/api/sessions", json=body)
        r.raise_for_status()
        ids.append(r.json()["id"])
    reader = None
    if clients:
        ws_url = url.replace("http", "ws") + f"/ws/sessions/{ids[0]}"
        reader = subprocess.Popen([sys.executable, "-c", CLIENTS_SCRIPT, ws_url, str(clients - 1),
                                   str(seconds + warmup)], stdout=subprocess.PIPE, text=True)
    page.goto(url)
    page.wait_for_function("() => window.glimpse && window.glimpse.stats().frames_painted > 0",
                           timeout=30_000)
    time.sleep(warmup)
    page.evaluate("() => window.glimpse.takeG2G()")  # drop the warm-up's measurements
    before = page.evaluate("() => window.glimpse.stats()")
    decoded0 = sum(http.get(f"/api/sessions/{i}").json()["status"]["n_decoded"] for i in ids)
    generated0 = before["sessions"][ids[0]]["generated_painted"] if ids[0] in before["sessions"] else 0
    time.sleep(seconds)
    g2g = page.evaluate("() => window.glimpse.takeG2G()")
    after = page.evaluate("() => window.glimpse.stats()")
    statuses = [http.get(f"/api/sessions/{i}").json()["status"] for i in ids]
    decoded = sum(st["n_decoded"] for st in statuses) - decoded0
    got = {k: after[k] - before[k] for k in ("frames_received", "frames_painted", "frames_skipped")}
    result = {"sessions": sessions, "ws_clients": clients + 1 if clients else 1, "seconds": seconds,
              "g2g_ms": _pct(g2g), "frames_decoded": decoded, **got,
              "frames_queued": after["frames_received"] - after["frames_painted"] - after["frames_skipped"],
              "offset_uncertainty_ms": round(after["offset_uncertainty_ms"], 2),
              "page_errors": after["errors"],
              # the worker's decode latency (window's newest sample to frame sent), its own stats
              "decode_total_ms": statuses[0]["latency_ms"]["total"]}
    if body.get("mode", "retrieval") != "retrieval":
        mine = after["sessions"][ids[0]]
        result["generated_per_s"] = round((mine["generated_painted"] - generated0) / seconds, 2)
        result["generated_age_ms"] = _pct(mine["generated_age_ms"])  # window end to paint, last 240
        result["generation"] = statuses[0]["generation"]
    if reader is not None:
        counts = json.loads(reader.communicate(timeout=seconds + warmup + 60)[0])
        expected = decoded * (seconds + warmup) / seconds
        result["reading_clients_min_share"] = round(min(counts) / expected, 3) if expected else None
    for i in ids:
        http.delete(f"/api/sessions/{i}")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("glimpse-demo"),
                        help="the demo's folder (run `glimpse demo` once first)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds left out at the start")
    parser.add_argument("--scenarios", default="one,four,clients",
                        help="comma-separated: one, four, clients, generation (one session in mode "
                             "generation with the shipped embedded generator; run it beside `one` "
                             "to compare the decode latency in one run)")
    parser.add_argument("--chromium", default=os.environ.get("GLIMPSE_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    root = args.root.resolve()
    if not (root / "model" / "config.json").is_file():
        sys.exit(f"bench/viewer.py: no trained demo in {root}; run `glimpse demo --duration 1` first")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    from glimpse.models.generators.embedded import default_folder

    generator = default_folder("handcrafted")
    server = subprocess.Popen([sys.executable, "-m", "glimpse.service.cli", "--quiet", "serve",
                               "--data", str(root), "--data", str(generator.parent), "--port", str(port)],
                              stdout=subprocess.DEVNULL)  # stdout is this bench's JSON
    try:
        with httpx.Client(base_url=url, timeout=120.0) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("bench/viewer.py: the service did not come up")
                time.sleep(0.2)
            fif = next((root / "sub-01").rglob("*_meg.fif"))
            replay = http.post("/api/replays", json={"recording": str(fif), "loop": True}).json()
            body = {"streams": [{"name": replay["name"], "source_id": replay["source_id"]}],
                    "checkpoint": str(root / "model"), "gallery": str(root / "gallery" / "test.safetensors"),
                    "record": False}
            shapes = {"one": (1, 0), "four": (4, 0), "clients": (1, 50), "generation": (1, 0)}
            results = {}
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                for name in args.scenarios.split(","):
                    page = browser.new_page(viewport={"width": 1920, "height": 1080})
                    sessions, clients = shapes[name]
                    mode = {"mode": "generation", "generator": str(generator)} if name == "generation" else {}
                    results[name] = _scenario(http, page, url, {**body, **mode}, sessions=sessions,
                                              clients=clients, seconds=args.seconds,
                                              warmup=args.warmup)
                    page.close()
                browser.close()
    finally:
        server.terminate()
        server.wait(60)
    print(json.dumps({"bench": "viewer", "cpus": os.cpu_count(), "scenarios": results}, indent=1))


if __name__ == "__main__":
    main()
