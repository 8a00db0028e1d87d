"""Ctrl-C and SIGTERM as a request to stop, for the commands that run until stopped.

``glimpse replay`` and ``glimpse simulate --live`` stream until their source ends or
someone stops them; either way they must stop their threads and print a summary, so
the signals set an event instead of raising wherever the main thread happens to be.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals"]


class StopSignals:
    """While inside, SIGINT and SIGTERM set :attr:`requested` and name themselves in :attr:`by`.

    The handlers are installed only in the main thread (Python's rule) and the previous
    ones come back on exit. A ``KeyboardInterrupt`` raised inside anyway (SIGINT while
    another handler was in place) ends the block as a stop by "SIGINT".
    """

    def __init__(self, default: str):
        self.requested = threading.Event()
        self.by = default  # what ended the run when no signal did
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum, _frame) -> None:
        self.by = signal.Signals(signum).name
        self.requested.set()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if exc_type is KeyboardInterrupt:
            self.by = "SIGINT"
            return True
        return False
