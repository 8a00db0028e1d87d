"""The hub behind a real uvicorn server with a client that never reads: closed after
``slow_after_s`` while another keeps receiving; and under load, 50 clients on one
session at 20 Hz, one of which never reads, then 500 connect/disconnect cycles.

The 49 reading clients run in a subprocess (asyncio, one thread), so that this
process holds only the server and the publisher: its RSS is the server's, and the
clients do not compete with the server for its GIL.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from websockets.sync.client import connect

from glimpse.service.api.hub import Hub
from test_hub import SESSIONS, Publisher, Server, describe, wait_for  # the harness beside this file

# ~15 s of load, a client subprocess and 500 handshakes: a hang must fail, not stall CI.
pytestmark = pytest.mark.timeout(90)

N_READERS = 49
LOAD_S = 10.0
N_CYCLES, CYCLES_AT_ONCE = 500, 10

# The readers record the frames that arrive after "go" and read on after "stop" until a
# frame published after it arrives (t_sent, LSL clock): a reader that lags behind (a
# starved client process) still counts every frame that was delivered to it.
CLIENTS = r"""
import asyncio, json, sys, time
import pylsl
from websockets.asyncio.client import connect

url, mode, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
t_stop_lsl = float("inf")

async def reader(ready, go, out):
    async with connect(url, max_size=None) as ws:
        seqs = []
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "frame":
                if not ready.done():
                    ready.set_result(None)
                if message["t_sent"] > t_stop_lsl:
                    break
                if go.is_set():
                    seqs.append(message["seq"])
        out.append(seqs)

async def load():
    global t_stop_lsl
    go, out = asyncio.Event(), []
    readies = [asyncio.get_running_loop().create_future() for _ in range(n)]
    tasks = [asyncio.create_task(reader(r, go, out)) for r in readies]
    await asyncio.wait_for(asyncio.gather(*readies), 30)
    t_go = time.monotonic()
    go.set()
    await asyncio.sleep(seconds)
    t_stop, t_stop_lsl = time.monotonic(), pylsl.local_clock()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return {"t_go": t_go, "t_stop": t_stop, "seqs": out}

async def cycles():
    async def some(k):
        for _ in range(k):
            async with connect(url) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
    await asyncio.gather(*(some(n // 10) for _ in range(10)))
    return {"cycles": n}

print(json.dumps(asyncio.run(load() if mode == "load" else cycles())))
"""


def open_silent_socket(port: int, path: str) -> socket.socket:
    """A WebSocket handshake on a socket with a tiny receive buffer that is never read again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def test_a_client_that_never_reads_is_closed_and_the_others_keep_receiving():
    hub = Hub(queue_size=4, slow_after_s=1.0, known_sessions=lambda: list(SESSIONS), describe=describe)
    with Server(hub) as server:
        publisher = Publisher(hub, pad=200_000)  # 4 MB/s: the silent client's buffers fill in seconds
        publisher.start()
        silent = open_silent_socket(server.port, "/ws/sessions/s1")
        try:
            with connect(server.url("/ws/sessions/s1"), max_size=None) as ws:
                wait_for(lambda: hub.stats()["n_slow_disconnects"] == 1, timeout=30,
                         what="closing the client that never reads")
                seqs = []
                t_end = time.monotonic() + 1.0
                while time.monotonic() < t_end:
                    message = json.loads(ws.recv(timeout=2))
                    if message["type"] == "frame":
                        seqs.append(message["seq"])
                assert len(seqs) >= 10  # 20 Hz for 1 s, reading all along
                assert hub.clients_of("s1") == 1
        finally:
            silent.close()
            publisher.stop()
        assert hub.stats()["n_dropped"] > 0  # the silent client's frames, counted


def run_clients(url: str, mode: str, n: int, seconds: float = 0.0) -> dict:
    done = subprocess.run([sys.executable, "-c", CLIENTS, url, mode, str(n), str(seconds)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fifty_clients_one_never_reading_then_500_connections_leave_nothing_behind():
    # slow_after_s longer than the test: the silent client stays stuck all along
    hub = Hub(queue_size=4, slow_after_s=60.0, known_sessions=lambda: list(SESSIONS), describe=describe)
    with Server(hub) as server:
        loop_tasks = server.n_loop_tasks()
        silent = open_silent_socket(server.port, "/ws/sessions/s1")
        publisher = Publisher(hub, pad=2000)  # ~2 kB frames, about a real one with its top-k URLs
        try:
            wait_for(lambda: hub.clients_of("s1") == 1, what="the silent client's subscription")
            # The silent client's TCP buffers take a few MB; once full, its writer waits in send
            # and its queue overflows: 25 drops, 5 MB beyond its queue, is past a busy loop's hiccup.
            for _ in range(200):
                hub.publish("s1", {"type": "frame", "seq": -1, "pad": "x" * 200_000})
                time.sleep(0.005)
                if hub.stats()["n_dropped"] >= 25:
                    break
            wait_for(lambda: hub.stats()["n_dropped"] >= 25, what="the silent client's queue overflowing")
            dropped_before = hub.stats()["n_dropped"]
            publisher.start()
            rss_before = rss_bytes()

            load = run_clients(server.url("/ws/sessions/s1"), "load", N_READERS, LOAD_S)
            rss_after_load = rss_bytes()
            window = [seq for seq, t in publisher.published if load["t_go"] <= t <= load["t_stop"]]
            # the decode rate held: the publisher kept its 20 Hz schedule...
            assert len(window) >= 0.95 * 20 * (load["t_stop"] - load["t_go"]) - 1
            # ...and never waited for a client (a wait would last as long as the silent client's)
            assert max(publisher.durations) < 0.5, sorted(publisher.durations)[-5:]
            # the silent client stayed stuck: its frames were dropped, the newest kept
            assert hub.stats()["n_dropped"] - dropped_before >= 0.9 * len(window)
            assert len(load["seqs"]) == N_READERS
            received = [len(set(window) & set(seqs)) / len(window) for seqs in load["seqs"]]
            assert min(received) >= 0.95, sorted(received)[:5]

            wait_for(lambda: hub.clients_of("s1") <= 1, what="the readers' disconnects")
            run_clients(server.url(), "cycles", N_CYCLES)
            wait_for(lambda: hub.stats()["clients"] <= 1, what="the cycles' disconnects")
            stats = hub.stats()
            assert stats["n_connected_total"] == 1 + N_READERS + N_CYCLES
            assert stats["clients"] == hub.clients_of("s1") == 1 and stats["tasks"] == 2  # the silent one
            silent.close()
            wait_for(lambda: hub.stats()["tasks"] == 0, what="the silent client's tasks ending")
            wait_for(lambda: server.n_loop_tasks() == loop_tasks, what="the server loop's tasks ending")
            growth = rss_bytes() - rss_before
            assert growth < 64 << 20, f"server RSS grew {growth / 2**20:.1f} MiB " \
                                     f"({(rss_after_load - rss_before) / 2**20:.1f} MiB during the load)"
        finally:
            silent.close()
            publisher.stop()
