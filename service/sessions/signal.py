"""What the viewer's topography and traces draw: per-channel level and a few live traces.

:class:`SignalMonitor` runs in the acquisition process beside the window sender. It
keeps the newest second of every stream's preprocessed samples (each window adds its
newest hop; the decoder sees exactly these values) and makes the ``signal`` message
of the WebSocket contract: the RMS of each channel over that second, in checkpoint
order, each channel's flag (flat, saturated, missing: the windower's channel health),
and the samples of a few posterior channels since the last message.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from glimpse.streaming.window import Window

__all__ = ["SignalMonitor", "posterior_channels"]


def posterior_channels(positions: np.ndarray, n: int = 4) -> list[int]:
    """``n`` channels at the back of the head, spread from left to right.

    Positions are the checkpoint's 2-D sensor coordinates (MNE's topomap layout, nose
    up): the back is the smallest y. Among the quarter of channels furthest back, the
    ones at evenly spaced x.
    """
    pos = np.asarray(positions, float)
    if len(pos) <= n:
        return list(range(len(pos)))
    back = np.argsort(pos[:, 1], kind="stable")[:max(n, len(pos) // 4)]
    back = back[np.argsort(pos[back, 0], kind="stable")]
    return [int(back[i]) for i in np.linspace(0, len(back) - 1, n).round().astype(int)]


class _Stream:
    def __init__(self, n_chans: int, n_keep: int):
        self.ring = np.zeros((n_chans, n_keep), np.float32)
        self.n = 0  # samples ever written
        self.t_end = 0.0
        self.trace: list[np.ndarray] = []
        self.trace_t0: float | None = None


class SignalMonitor:
    """Levels and traces of each stream, from its windows; ``update`` (acquisition
    threads) and ``message`` (a reporter) from any thread."""

    def __init__(self, ch_names: Sequence[str], positions: np.ndarray, sfreq: float,
                 hop_samples: int, *, seconds: float = 1.0, n_trace: int = 4):
        self.ch_names = list(ch_names)
        self.sfreq, self.hop = float(sfreq), int(hop_samples)
        self.n_keep = max(1, int(round(seconds * self.sfreq)))
        self.trace_idx = posterior_channels(positions, n_trace)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    def update(self, window: Window) -> None:
        """Take the window's newest hop of samples."""
        with self._lock:
            self._update(window)

    def _update(self, window: Window) -> None:
        s = self._streams.get(window.stream_id)
        if s is None:
            s = self._streams[window.stream_id] = _Stream(len(self.ch_names), self.n_keep)
        new = window.data[:, -min(self.hop, window.data.shape[1], self.n_keep):]
        k = new.shape[1]
        s.ring = np.roll(s.ring, -k, axis=1)
        s.ring[:, -k:] = new
        s.n += k
        s.t_end = window.t_end
        if s.trace_t0 is None:
            s.trace_t0 = window.t_end - (k - 1) / self.sfreq
        s.trace.append(new[self.trace_idx].copy())

    def message(self, stream_id: str, *, flat: Sequence[str] = (), saturated: Sequence[str] = (),
                missing: Sequence[str] = ()) -> dict[str, Any] | None:
        """The ``signal`` message of ``stream_id`` (None before its first window); the
        trace restarts after each message."""
        with self._lock:
            return self._message(stream_id, flat, saturated, missing)

    def _message(self, stream_id, flat, saturated, missing) -> dict[str, Any] | None:
        s = self._streams.get(stream_id)
        if s is None or s.n == 0:
            return None
        seen = s.ring[:, -min(s.n, self.n_keep):]
        levels = np.sqrt(np.mean(np.square(seen, dtype=np.float64), axis=1))
        flag_of = {**{c: "flat" for c in flat}, **{c: "saturated" for c in saturated},
                   **{c: "missing" for c in missing}}
        trace = np.concatenate(s.trace, axis=1) if s.trace else np.zeros((len(self.trace_idx), 0))
        message = {"type": "signal", "stream": stream_id, "t": float(s.t_end),
                   "levels": [round(float(v), 4) for v in levels],
                   "flags": [flag_of.get(c) for c in self.ch_names],
                   "trace": {"ch_names": [self.ch_names[i] for i in self.trace_idx],
                             "sfreq": self.sfreq, "t0": float(s.trace_t0 or s.t_end),
                             "data": np.round(trace, 4).tolist()}}
        s.trace, s.trace_t0 = [], None
        return message
