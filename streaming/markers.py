"""The markers a stream has seen, and the true stimulus of a window from them.

Markers (ARCHITECTURE.md, contract 7) arrive in time order, give or take; the
acquisition's markers thread adds them, the decoding worker asks for the marker
of a window's end. One lock guards the two.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["MarkerLog"]

_KEPT = 4096


class MarkerLog:
    """The newest ``kept`` markers ``(t, dict)``; :meth:`truth_at` from any thread."""

    def __init__(self, kept: int = _KEPT):
        self._markers: deque[tuple[float, dict]] = deque(maxlen=kept)
        self._lock = threading.Lock()

    def add(self, t: float, marker: dict) -> None:
        with self._lock:
            self._markers.append((float(t), marker))

    def __len__(self) -> int:
        return len(self._markers)

    def truth_at(self, t: float, max_age: float = 1.0) -> dict | None:
        """The newest marker with ``t - max_age <= marker time <= t``, plus its ``t``."""
        with self._lock:
            for mt, marker in reversed(self._markers):
                if t - max_age <= mt <= t:
                    return {**marker, "t": mt}
                if mt < t - max_age - 60.0:  # markers arrive in time order, give or take
                    break
        return None
