"""One acquisition wired to a session recording: the samples and markers of a stream
are written as they come (:mod:`glimpse.streaming.session_log`), then go on.

``glimpse decode`` (:class:`glimpse.service.live.LivePath`) and the service's
acquisition process both acquire through :func:`recorded_acquisition`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pylsl

from .acquisition import StreamAcquisition
from .lsl import channel_info

__all__ = ["recorded_acquisition"]


def recorded_acquisition(name: str | None, source_id: str | None, *, ch_names, preprocess,
                         n_times: int, on_window: Callable, writer=None,
                         on_samples: Callable | None = None,
                         on_marker: Callable[[float, object, bool], None] | None = None,
                         **options: Any) -> StreamAcquisition:
    """A :class:`StreamAcquisition` whose samples and markers go to ``writer`` (a
    :class:`~glimpse.streaming.session_log.SessionWriter`, or None) as they come.

    The stream is (re-)added to the writer at each (re)connect, as its layout may
    change; ``on_samples`` / ``on_marker``: extra callbacks, called before the writer's.
    """
    sinks: dict[str, Any] = {}

    def on_stream(info: pylsl.StreamInfo) -> None:
        labels, types, units = channel_info(info)
        sinks["writer"] = writer.add_stream(info.name(), info.source_id(),
                                            info.nominal_srate(), labels, types, units)
        sinks["markers"] = f"{info.name()}-markers"

    def record_samples(data: np.ndarray, times: np.ndarray) -> None:
        if on_samples is not None:
            on_samples(data, times)
        if writer is not None:
            sinks["writer"].write(data, times)  # written before the callback returns

    def record_marker(t: float, marker: object, valid: bool) -> None:
        if on_marker is not None:
            on_marker(t, marker, valid)
        if writer is not None:
            writer.write_marker(t, sinks.get("markers", ""), marker, valid)

    recorded = writer is not None
    return StreamAcquisition(
        name, source_id, ch_names=ch_names, preprocess=preprocess, n_times=n_times,
        on_window=on_window,
        on_samples=record_samples if recorded or on_samples is not None else None,
        on_marker=record_marker if recorded or on_marker is not None else None,
        on_stream=on_stream if recorded else None, **options)
