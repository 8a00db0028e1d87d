"""Ring buffers on plain arrays: in-place writes, wrap-around, mirrored windows."""

from __future__ import annotations

import numpy as np
import pytest

from glimpse.streaming.ring import SampleRing, WindowRing


def test_sample_ring_reserve_commit_in_place():
    ring = SampleRing(10, 3)
    data, times = ring.reserve(4)
    assert np.shares_memory(data, ring.data) and data.flags.c_contiguous
    data[:2] = [[1, 2, 3], [4, 5, 6]]
    times[:2] = [0.1, 0.2]
    view, tview = ring.commit(2)
    assert np.shares_memory(view, ring.data)
    np.testing.assert_array_equal(view, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(tview, [0.1, 0.2])
    assert (ring.pos, ring.count) == (2, 2)
    with pytest.raises(ValueError, match="commit"):
        ring.reserve(3)
        ring.commit(4)


def test_sample_ring_never_splits_a_chunk_and_keeps_history():
    ring = SampleRing(10, 1)
    index = 0
    for n in (4, 4, 3, 4, 1, 4, 2):  # the third reserve(4) no longer fits: new lap
        data, times = ring.reserve(4)
        data[:n, 0] = np.arange(index, index + n)
        times[:n] = np.arange(index, index + n) / 100
        view, _ = ring.commit(n)
        assert view.shape == (n, 1) and view.flags.c_contiguous
        index += n
        got, t = ring.latest(6)
        want = np.arange(max(0, index - 6), index)
        np.testing.assert_array_equal(got[-len(want):, 0], want[-len(got):])
        np.testing.assert_allclose(t, got[:, 0] / 100)
        assert np.all(np.diff(got[:, 0]) == 1)  # oldest first, contiguous
    assert ring.count == index
    with pytest.raises(ValueError):
        ring.reserve(11)


def test_sample_ring_write_copies():
    ring = SampleRing(5, 2, dtype=np.float64)
    block = np.ones((3, 2))
    ring.write(block, np.zeros(3))
    block[:] = 7
    assert ring.latest(3)[0].max() == 1


def test_window_ring_matches_a_plain_concatenation():
    rng = np.random.default_rng(0)
    ring = WindowRing(3, capacity=17)
    history, stamps = np.empty((3, 0), np.float32), np.empty(0)
    for _ in range(200):
        m = int(rng.integers(0, 9))
        block = rng.standard_normal((3, m)).astype(np.float32)
        t = np.arange(history.shape[1], history.shape[1] + m) * 0.01
        ring.write(block, t)
        history = np.concatenate([history, block], axis=1)
        stamps = np.concatenate([stamps, t])
        for n, lag in ((5, 0), (10, 7), (17, 0), (1, 16)):
            if n + lag > ring.count:
                with pytest.raises(ValueError, match="written"):
                    ring.window(n, lag)
                continue
            data, times = ring.window(n, lag)
            end = history.shape[1] - lag
            np.testing.assert_array_equal(data, history[:, end - n:end])
            np.testing.assert_array_equal(times, stamps[end - n:end])
            assert np.shares_memory(data, ring.data)  # a view: the caller copies once
    assert ring.count == history.shape[1]


def test_window_ring_oversized_block_and_limits():
    ring = WindowRing(2, capacity=4)
    block = np.arange(20, dtype=np.float32).reshape(2, 10)
    ring.write(block, np.arange(10.0))
    assert ring.count == 10
    np.testing.assert_array_equal(ring.window(4)[0], block[:, -4:])
    with pytest.raises(ValueError, match="capacity"):
        ring.window(4, lag=1)
    ring.clear()
    with pytest.raises(ValueError, match="written"):
        ring.window(1)
