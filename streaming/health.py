"""Channel health of a live stream: flat and saturated channels, judged once a second.

Flat: peak-to-peak zero over the last second. Saturated: not flat, but a run of
identical values (at least one 50 ms block) at the channel's extreme over the last
second, as an amplifier at its rail. Both are reported (logged when the set
changes), not masked: the model decides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .channels import listing

logger = logging.getLogger("glimpse.streaming.health")

__all__ = ["ChannelHealth"]

_HEALTH_S = 1.0  # flat / saturated look-back
_BLOCK_S = 0.05  # statistics are kept per block of at least this long


class ChannelHealth:
    """Per-block min/max of raw chunks; flat / saturated judged once per look-back.

    ``names`` are the judged channels, at stream columns ``src``; chunks are
    time-major ``(n, n_stream_chans)``. :attr:`flat` and :attr:`saturated` list the
    channels judged so at the last look-back.
    """

    def __init__(self, names: Sequence[str], src: np.ndarray, n_stream_chans: int,
                 sfreq: float, stream_id: str = ""):
        self.names, self.stream_id = list(names), stream_id
        self._src = np.asarray(src, dtype=np.intp)
        self._block_len = max(1, int(round(_BLOCK_S * sfreq)))
        self._n_blocks = int(math.ceil(_HEALTH_S / _BLOCK_S))
        # Min / max per block over every stream channel (a cheap time-major reduction);
        # only the judged channels are kept.
        self._lo_hist = np.empty((len(self._src), self._n_blocks), dtype=np.float32)
        self._hi_hist = np.empty((len(self._src), self._n_blocks), dtype=np.float32)
        self._blk_lo = np.empty(n_stream_chans, dtype=np.float32)
        self._blk_hi = np.empty(n_stream_chans, dtype=np.float32)
        self.flat: list[str] = []
        self.saturated: list[str] = []
        self.reset()

    def reset(self) -> ChannelHealth:
        """Forget the blocks seen (a new epoch); the last verdicts stay until the next."""
        self._blk_lo.fill(np.inf)
        self._blk_hi.fill(-np.inf)
        self._blk_n = 0
        self._blocks_done = 0
        return self

    def update(self, data: np.ndarray) -> None:
        """Take a chunk ``(n, n_stream_chans)``; judge at the end of each look-back."""
        np.fmin(self._blk_lo, np.fmin.reduce(data, axis=0), out=self._blk_lo)
        np.fmax(self._blk_hi, np.fmax.reduce(data, axis=0), out=self._blk_hi)
        self._blk_n += len(data)
        if self._blk_n < self._block_len:
            return
        j = self._blocks_done % self._n_blocks
        self._lo_hist[:, j] = self._blk_lo[self._src]
        self._hi_hist[:, j] = self._blk_hi[self._src]
        self._blocks_done += 1
        self._blk_lo.fill(np.inf)
        self._blk_hi.fill(-np.inf)
        self._blk_n = 0
        if self._blocks_done % self._n_blocks:  # judged once per look-back (~77 us)
            return
        lo, hi = self._lo_hist, self._hi_hist
        low, high = lo.min(axis=1), hi.max(axis=1)
        flat = high <= low
        stuck = (lo == hi) & ((hi == high[:, None]) | (lo == low[:, None]))
        saturated = ~flat & stuck.any(axis=1)
        for attr, mask, what in (("flat", flat, "flat (peak-to-peak 0 over 1 s)"),
                                 ("saturated", saturated, "saturated (stuck at an extreme)")):
            names = [self.names[i] for i in np.flatnonzero(mask)]
            if names != getattr(self, attr):
                if names:
                    logger.warning("%s: %d channel(s) %s: %s", self.stream_id, len(names),
                                   what, listing(names))
                setattr(self, attr, names)
