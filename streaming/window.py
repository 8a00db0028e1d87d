"""The window contract between acquisition and the decoding worker (ARCHITECTURE.md, 2).

A :class:`Window` is what acquisition emits every hop and what the worker decodes:
preprocessed samples in the checkpoint's channel order, plus the clock readings
that let the worker report latency per stage. Every time is on the LSL clock
(``pylsl.local_clock()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """One sliding window, ready for the brain encoder.

    Attributes
    ----------
    data : numpy.ndarray
        float32 ``(n_chans, n_times)``, preprocessed, checkpoint channel order;
        missing channels are zeros and ``False`` in ``chan_mask``.
    t_end : float
        LSL timestamp of the newest input sample the window depends on
        (latency counts from here).
    t_pulled : float
        ``local_clock()`` when the chunk that completed the window left the inlet
        (the ``now`` given to the windower; offline, the chunk's newest timestamp).
    t_cut : float
        ``local_clock()`` when the window was cut (preprocessing done); offline, ``t_pulled``.
    stream_id : str
        The stream's source id (or its name when it has none).
    ch_names : tuple of str
        The window's channel names (the checkpoint's).
    seq : int
        Per-stream window counter, from 0; a jump means windows were skipped
        (invalid or stale).
    chan_mask : numpy.ndarray or None
        bool ``(n_chans,)``, or None when every channel is present.
    """

    data: np.ndarray
    t_end: float
    t_pulled: float
    t_cut: float
    stream_id: str
    ch_names: tuple[str, ...]
    seq: int
    chan_mask: np.ndarray | None = None

    @property
    def acquire_ms(self) -> float:
        """From the last sample's push to its chunk leaving the inlet (transport + polling)."""
        return 1e3 * (self.t_pulled - self.t_end)

    @property
    def preprocess_ms(self) -> float:
        """From the pull to the cut window (online preprocessing and windowing)."""
        return 1e3 * (self.t_cut - self.t_pulled)
