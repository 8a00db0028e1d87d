"""The live wiring, once: acquisitions -> one worker -> frames, with the session
recorded and each window's true stimulus matched from the markers.

``glimpse decode`` (:mod:`glimpse.service.decode`) and the latency bench
(``bench/latency.py``) both run the live path through :class:`LivePath`, so what
the bench measures is what a user runs. One
:class:`~glimpse.streaming.acquisition.StreamAcquisition` per stream feeds one
:class:`~glimpse.service.worker.Worker` (its default queue policy: the newest
window of each stream); with a
:class:`~glimpse.streaming.session_log.SessionWriter`, every sample (with its LSL
timestamp), every marker and every frame is recorded as it happens.

Truth: a frame's window "knows" its true stimulus when a marker came at most
``TRUTH_MAX_AGE`` s before the window ended (:func:`truth_of`); the offline face
(``glimpse decode --recording``) matches its windows the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import PurePath
from typing import Any

from glimpse.streaming.acquisition import StreamAcquisition
from glimpse.streaming.markers import MarkerLog
from glimpse.streaming.recorder import recorded_acquisition

from .decoder import Decoder
from .worker import Worker, freeze_heap

logger = logging.getLogger("glimpse.service.live")

__all__ = ["TRUTH_MAX_AGE", "GalleryIds", "LivePath", "truth_of"]

#: Largest age (s) of a marker that still names a window's stimulus.
TRUTH_MAX_AGE = 1.0


class GalleryIds:
    """Match a marker's ``stim_file`` (absolute on the sender's machine) to a gallery id.

    Gallery ids are paths relative to the dataset root (``stimuli/test/x/x_01.png``);
    markers name files as the replaying machine saw them. The longest path suffix
    that is an id wins.
    """

    def __init__(self, ids: Sequence[str]):
        self._ids = {str(i): n for n, i in enumerate(ids)}
        self._cache: dict[str, str | None] = {}

    def match(self, stim_file: Any) -> str | None:
        if not isinstance(stim_file, str) or not stim_file:
            return None
        if stim_file not in self._cache:
            parts = PurePath(stim_file.replace("\\", "/")).parts
            self._cache[stim_file] = next(
                (cand for cand in ("/".join(parts[i:]) for i in range(len(parts)))
                 if cand in self._ids), None)
        return self._cache[stim_file]


def truth_of(markers: MarkerLog | StreamAcquisition | None, t_end: float,
             ids: GalleryIds | None = None) -> dict | None:
    """The marker naming the stimulus of a window ending at ``t_end``, with its gallery
    ``id`` (None when not in the gallery) and ``age_s`` (window end - onset), or None."""
    marker = markers.truth_at(t_end, TRUTH_MAX_AGE) if markers is not None else None
    if marker is None:
        return None
    return {**marker, "id": ids.match(marker.get("stim_file")) if ids is not None else None,
            "age_s": float(t_end - marker["t"])}


class LivePath:
    """Acquire ``streams`` (names, or ``(name, source_id)`` pairs) into one worker.

    ``on_frame``: callbacks of every frame (the writer's is added when ``writer`` is
    given). ``on_samples(i)``: optional, an extra ``on_samples`` callback for stream
    ``i`` (the bench's sample-index check). Other keywords go to every
    :class:`StreamAcquisition` (``hop``, ``grid``, ``max_age``, ``allow_missing``,
    ``resolve_timeout``, ``lost_after``, ``profile``...). :meth:`start` freezes the
    heap (:func:`freeze_heap`), starts the worker, then each acquisition; :meth:`stop`
    (or leaving the ``with`` block) stops them in reverse order, also when a start
    failed half-way.
    """

    def __init__(self, decoder: Decoder, streams: Sequence[str | tuple[str | None, str | None]],
                 *, session: str, writer=None, ids: GalleryIds | None = None,
                 on_frame: Sequence[Callable[[dict], None]] = (),
                 on_samples: Callable[[int], Callable | None] | None = None,
                 **acquisition: Any):
        self.decoder, self.writer, self.ids = decoder, writer, ids
        self.streams = [(s, None) if isinstance(s, str) else tuple(s) for s in streams]
        self._on_samples, self._options = on_samples, acquisition
        self.acquisitions: list[StreamAcquisition] = []
        frames = list(on_frame) + ([writer.write_frame] if writer is not None else [])
        # One window per stream per batch at most (the worker's queue policy).
        self.worker = Worker(decoder, session=session, truth=self.truth, on_frame=frames,
                             max_batch=max(1, len(self.streams)))
        self._stack = ExitStack()

    def truth(self, stream_id: str, t_end: float) -> dict | None:
        # By the current id: a stream that came back from another outlet has a new one.
        acq = next((a for a in self.acquisitions if a.stream_id == stream_id), None)
        return truth_of(acq, t_end, self.ids)

    def start(self) -> LivePath:
        """Freeze the heap, start the worker and every acquisition; returns self."""
        # Before any stream flows: no 100 ms garbage-collector pauses once decoding.
        freeze_heap()
        with ExitStack() as stack:
            self.worker.start()
            stack.callback(self.worker.stop)
            for i, (name, source_id) in enumerate(self.streams):
                acq = self._acquisition(i, name, source_id).start()
                self.acquisitions.append(acq)
                stack.callback(acq.stop)
            self._stack = stack.pop_all()  # all started: stop() unwinds them
        return self

    def stop(self) -> None:
        """Stop the acquisitions (newest first), then the worker; safe to call twice."""
        self._stack.close()

    def __enter__(self) -> LivePath:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        return {"worker": self.worker.stats(), "streams": [a.stats() for a in self.acquisitions]}

    def _acquisition(self, i: int, name: str | None, source_id: str | None) -> StreamAcquisition:
        """Stream ``i``'s acquisition: it records to the writer and feeds the worker."""
        ckpt = self.decoder.checkpoint
        return recorded_acquisition(
            name, source_id, ch_names=ckpt.ch_names, preprocess=ckpt.preprocess,
            n_times=ckpt.n_times, on_window=self.worker.submit, writer=self.writer,
            on_samples=self._on_samples(i) if self._on_samples is not None else None,
            **self._options)

