"""Preallocated ring buffers for acquisition: pure numpy, no I/O, no locks.

* :class:`SampleRing` holds raw samples as they leave the LSL inlet, time-major
  ``(capacity, n_chans)`` like liblsl's own layout, with one timestamp per sample.
  :meth:`SampleRing.reserve` hands out a contiguous, writable slice so that the
  inlet writes straight into the ring (``pull_chunk(dest_obj=...)``): no
  per-pull allocation and no copy.
* :class:`WindowRing` holds preprocessed output, channel-major ``(n_chans, ...)``,
  mirrored: every sample is stored twice, ``capacity`` apart, so the newest
  ``n <= capacity`` samples are always one slice, whatever the write position.
  A window is then a single copy out of the ring.

Both belong to one thread (the acquisition thread); readers in other threads get
copies.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SampleRing", "WindowRing"]


class SampleRing:
    """Time-major raw samples plus their timestamps, written in place by the inlet.

    Usage per pull::

        data, times = ring.reserve(max_n)    # contiguous views, room for max_n rows
        n = <write up to max_n rows into data and times>
        ring.commit(n)                       # they are now the newest rows

    When fewer than ``max_n`` rows remain before the end, :meth:`reserve` starts
    the next lap at row 0 (the few rows skipped at the end are not part of the
    history); a chunk therefore never wraps.
    """

    def __init__(self, capacity: int, n_chans: int, dtype=np.float32):
        if capacity < 1 or n_chans < 1:
            raise ValueError(f"capacity and n_chans must be >= 1, got {capacity}, {n_chans}")
        self.capacity, self.n_chans = int(capacity), int(n_chans)
        self.data = np.zeros((self.capacity, self.n_chans), dtype=dtype)
        self.times = np.zeros(self.capacity, dtype=np.float64)
        self.clear()

    def clear(self) -> SampleRing:
        self.pos = 0  # next row to write
        self.lap_end = 0  # where the previous lap stopped (rows after it are stale)
        self.count = 0  # rows committed since clear (may exceed capacity)
        self._reserved = 0
        return self

    def reserve(self, max_n: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous writable views ``(max_n, n_chans)`` and ``(max_n,)`` at the write position."""
        if not 1 <= max_n <= self.capacity:
            raise ValueError(f"reserve between 1 and {self.capacity} rows, not {max_n}")
        if self.pos + max_n > self.capacity:
            self.lap_end, self.pos = self.pos, 0
        self._reserved = max_n
        return self.data[self.pos:self.pos + max_n], self.times[self.pos:self.pos + max_n]

    def commit(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Mark ``n`` reserved rows as written; return views of them."""
        if not 0 <= n <= self._reserved:
            raise ValueError(f"commit between 0 and the {self._reserved} reserved rows, not {n}")
        start = self.pos
        self.pos += n
        self.count += n
        self._reserved = 0
        if self.pos > self.lap_end:
            self.lap_end = self.pos
        return self.data[start:self.pos], self.times[start:self.pos]

    def write(self, data: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Copy ``(n, n_chans)`` rows in (for callers that do not pull in place)."""
        n = len(times)
        view, tview = self.reserve(n)
        view[:] = data
        tview[:] = times
        return self.commit(n)

    def latest(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the newest ``min(n, available)`` rows, oldest first."""
        # This lap's rows are [0, pos); the previous lap's survivors are [pos, lap_end).
        n = max(0, min(int(n), max(self.pos, self.lap_end)))
        first = min(n, self.pos)
        rest = n - first
        parts = [(self.data[self.pos - first:self.pos], self.times[self.pos - first:self.pos])]
        if rest:
            parts.insert(0, (self.data[self.lap_end - rest:self.lap_end],
                             self.times[self.lap_end - rest:self.lap_end]))
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


class WindowRing:
    """Channel-major mirrored ring of preprocessed samples, with one time per sample.

    :meth:`write` appends ``(n_chans, m)``; :meth:`window` returns a view of the
    ``n`` samples ending ``lag`` samples before the newest, contiguous along time,
    for any ``n + lag <= capacity``.
    """

    def __init__(self, n_chans: int, capacity: int, dtype=np.float32):
        if capacity < 1 or n_chans < 1:
            raise ValueError(f"capacity and n_chans must be >= 1, got {capacity}, {n_chans}")
        self.n_chans, self.capacity = int(n_chans), int(capacity)
        self.data = np.zeros((self.n_chans, 2 * self.capacity), dtype=dtype)
        self.times = np.zeros(2 * self.capacity, dtype=np.float64)
        self.clear()

    def clear(self) -> WindowRing:
        self.count = 0  # samples written since clear
        return self

    def write(self, block: np.ndarray, times: np.ndarray) -> None:
        m = block.shape[1]
        if m == 0:
            return
        if m > self.capacity:  # only the newest capacity samples can matter
            self.count += m - self.capacity
            block, times = block[:, -self.capacity:], times[-self.capacity:]
            m = self.capacity
        cap = self.capacity
        p = self.count % cap
        first = min(m, cap - p)
        for dst in (p, p + cap):  # both copies of slots p .. p+first
            self.data[:, dst:dst + first] = block[:, :first]
            self.times[dst:dst + first] = times[:first]
        if first < m:  # the rest wraps to slot 0
            rest = m - first
            for dst in (0, cap):
                self.data[:, dst:dst + rest] = block[:, first:]
                self.times[dst:dst + rest] = times[first:]
        self.count += m

    def window(self, n: int, lag: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Views ``(n_chans, n)`` and ``(n,)`` of the samples ``[count-lag-n, count-lag)``."""
        if n < 1 or lag < 0 or n + lag > self.capacity:
            raise ValueError(f"n + lag must be at most capacity {self.capacity}, got n={n}, "
                             f"lag={lag}")
        if n + lag > self.count:
            raise ValueError(f"only {self.count} samples written, need {n + lag}")
        end = (self.count - lag) % self.capacity + self.capacity
        return self.data[:, end - n:end], self.times[end - n:end]
