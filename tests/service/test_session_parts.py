"""The pieces of a live session that need no process: the window wire format, the
window sender, and the signal monitor (levels, flags, traces) the viewer draws."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import Listener

import numpy as np
import pytest

from glimpse.service.sessions.signal import SignalMonitor, posterior_channels
from glimpse.service.sessions.wire import WindowSender, encode_header, recv_window
from glimpse.streaming.window import Window

pytestmark = pytest.mark.timeout(30)  # sockets and threads: a hang must fail

CH = ("a", "b", "c")


def _window(seq: int, *, stream: str = "s", data=None, mask=None) -> Window:
    data = np.arange(12, dtype=np.float32).reshape(3, 4) + seq if data is None else data
    return Window(data=data, t_end=10.0 + seq, t_pulled=10.01 + seq, t_cut=10.02 + seq,
                  stream_id=stream, ch_names=CH, seq=seq, chan_mask=mask)


def test_a_window_crosses_the_wire_intact():
    recv, send = Pipe(duplex=False)
    mask = np.array([True, False, True])
    for window in (_window(3), _window(4, mask=mask)):
        send.send_bytes(encode_header(window))
        send.send_bytes(window.data)
        got = recv_window(recv, CH)
        np.testing.assert_array_equal(got.data, window.data)
        assert got.data.dtype == np.float32 and got.data.shape == (3, 4)
        assert (got.t_end, got.t_pulled, got.t_cut, got.seq, got.stream_id) == \
            (window.t_end, window.t_pulled, window.t_cut, window.seq, window.stream_id)
        assert got.ch_names is CH
        if window.chan_mask is None:
            assert got.chan_mask is None
        else:
            np.testing.assert_array_equal(got.chan_mask, mask)


def _until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_sender_counts_what_no_worker_took_then_sends_the_newest_per_stream():
    address = os.path.join(tempfile.mkdtemp(prefix="glimpse-test-"), "w.sock")
    key = b"k" * 16
    sender = WindowSender(address, key).start()
    try:
        sender.submit(_window(0))  # no worker listens yet: dropped, counted, never blocks
        _until(lambda: sender.stats()["n_undelivered"] == 1)
        listener = Listener(address, family="AF_UNIX", authkey=key)
        got: list[Window] = []
        accepted = threading.Event()

        def take() -> None:
            conn = listener.accept()
            accepted.set()
            try:
                while True:
                    got.append(recv_window(conn, CH))
            except EOFError:
                pass

        threading.Thread(target=take, daemon=True).start()
        time.sleep(0.3)  # past the sender's retry interval
        sender.submit(_window(1))
        assert accepted.wait(5)
        _until(lambda: len(got) == 1)
        with sender._cond:  # hold its thread (the lock is re-entrant): 3 windows of "s", 1 of "t"
            for seq in (2, 3, 4):
                sender.submit(_window(seq))
            sender.submit(_window(9, stream="t"))
        _until(lambda: len(got) == 3)
        assert [(w.stream_id, w.seq) for w in got] == [("s", 1), ("s", 4), ("t", 9)]
        stats = sender.stats()
        assert stats["n_sent"] == 3 and stats["connected"] and stats["n_replaced"] >= 2
    finally:
        sender.stop()
        listener.close()


def test_posterior_channels_are_at_the_back_spread_left_to_right():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0.2, 1.0, (16, 2))  # the back quarter: the four planted below
    back = np.array([[0.1, 0.0], [0.4, 0.01], [0.6, 0.02], [0.9, 0.03]])
    pos[[3, 7, 11, 15]] = back[[2, 0, 3, 1]]
    picked = posterior_channels(pos, n=4)
    assert sorted(picked) == [3, 7, 11, 15]
    assert [pos[i, 0] for i in picked] == sorted(pos[i, 0] for i in picked)
    assert posterior_channels(pos[:3], n=4) == [0, 1, 2]


def test_levels_are_the_rms_of_the_last_second_and_the_trace_restarts():
    sfreq, hop, n_times = 100.0, 5, 25
    positions = np.array([[0.5, 0.9], [0.2, 0.1], [0.8, 0.1]])
    monitor = SignalMonitor(CH, positions, sfreq, hop, seconds=1.0, n_trace=2)
    assert monitor.message("s") is None
    amplitude = np.array([[1.0], [2.0], [0.0]], np.float32)
    for seq in range(40):  # 40 hops of 5 samples: 2 s, the ring keeps the last 1 s
        data = np.tile(amplitude, (1, n_times)) * (-1) ** np.arange(n_times, dtype=np.float32)
        monitor.update(_window(seq, data=data.astype(np.float32)))
    message = monitor.message("s", flat=["c"], saturated=[], missing=[])
    assert message["levels"] == pytest.approx([1.0, 2.0, 0.0])
    assert message["flags"] == [None, None, "flat"]
    trace = message["trace"]
    assert trace["ch_names"] == ["b", "c"] and trace["sfreq"] == sfreq
    assert len(trace["data"][0]) == 40 * hop
    monitor.update(_window(40, data=np.ones((3, n_times), np.float32)))
    again = monitor.message("s", missing=["a"])
    assert len(again["trace"]["data"][0]) == hop and again["flags"][0] == "missing"
    assert again["trace"]["t0"] == pytest.approx(50.0 - (hop - 1) / sfreq)
