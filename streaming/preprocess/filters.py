"""Causal filter blocks of the preprocessing: rational resampling and IIR sections.

:class:`Resampler` is the anti-alias FIR with polyphase rational resampling;
:class:`SosBlock` runs second-order sections on short chunks in closed form.
Both keep their state across calls, so any chunking gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import signal

from ..errors import InputError

# Largest up or down factor of the rational resampler: it bounds the polyphase bank
# (up x taps-per-phase coefficients) while keeping the output rate within ~1e-6 of
# the request for awkward rates such as 300.3074951 Hz (Neuromag) or measured rates.
_MAX_FACTOR = 2000


def ratio(sfreq_in: float, sfreq_out: float) -> tuple[int, int]:
    """``up / down`` ~ ``sfreq_out / sfreq_in``, both at most ``_MAX_FACTOR``."""
    # Decimal strings make 300.3 exactly 3003/10 (binary floats would not).
    exact = Fraction(repr(float(sfreq_out))) / Fraction(repr(float(sfreq_in)))
    if exact <= 1:
        ratio = exact.limit_denominator(_MAX_FACTOR)
        up, down = ratio.numerator, ratio.denominator
    else:
        inv = (1 / exact).limit_denominator(_MAX_FACTOR)
        up, down = inv.denominator, inv.numerator
    if up == 0:
        raise InputError(f"an input rate at most {_MAX_FACTOR}x the output rate",
                         f"{sfreq_in:g} Hz for {sfreq_out:g} Hz", "decimate the input first")
    return up, down


@dataclass(frozen=True)
class Resampler:
    """Polyphase bank of a causal, linear-phase Kaiser FIR at rate ``sfreq_in * up``."""

    up: int
    down: int
    bank: np.ndarray  # (up, taps): row p is phase p, oldest input first
    delay_s: float  # (n_taps - 1) / 2 samples at sfreq_in * up: constant, exact

    @classmethod
    def design(cls, sfreq_in: float, sfreq_out: float, pass_frac: float, atten_db: float
               ) -> Resampler:
        up, down = ratio(sfreq_in, sfreq_out)
        if up == down == 1:  # same rate: nothing can alias, so no filter and no delay
            return cls(1, 1, np.ones((1, 1)), 0.0)
        rate = sfreq_in * up
        low = min(sfreq_in, sfreq_in * up / down)
        f_pass = pass_frac * low / 2
        # Only what folds into [0, f_pass] must go: stopping at low - f_pass instead
        # of at the Nyquist doubles the transition band and halves the delay.
        f_stop = low - f_pass
        n_taps, beta = signal.kaiserord(atten_db, (f_stop - f_pass) / (rate / 2))
        n_taps += 1 - n_taps % 2  # odd: the delay is a whole number of samples at `rate`
        proto = signal.firwin(n_taps, low / 2, window=("kaiser", beta), fs=rate)
        taps = -(-n_taps // up)
        proto = np.concatenate([proto, np.zeros(taps * up - n_taps)])
        bank = proto.reshape(taps, up)[::-1].T.copy()  # bank[p, i] = h[p + (taps-1-i) * up]
        # Each phase passes DC with gain exactly 1: MEG offsets are large, and a
        # per-phase gain error would turn them into a periodic artefact.
        bank /= bank.sum(axis=1, keepdims=True)
        return cls(up, down, bank, (n_taps - 1) / (2.0 * rate))


class SosBlock:
    """An SOS cascade applied to short blocks as matrix products, state carried.

    The cascade is linear, so for a block of ``m`` samples, with the state ``s``
    (scipy's ``zi`` per channel, flattened) and the input ``x``::

        y = s @ O + x @ T        s' = s @ A + x @ R

    The four matrices are scipy's own ``sosfilt`` applied to unit states and unit
    impulses, so this is the same recursion as ``sosfilt`` (to rounding). Built once
    per block length.
    """

    def __init__(self, sos: np.ndarray):
        self.sos, self.n_sec = sos, len(sos)
        self._mats: dict[int, tuple[np.ndarray, ...]] = {}

    def _build(self, m: int) -> tuple[np.ndarray, ...]:
        ns = 2 * self.n_sec
        zi = np.zeros((self.n_sec, ns, 2))
        for i in range(ns):
            zi[i // 2, i, i % 2] = 1.0
        o, a = signal.sosfilt(self.sos, np.zeros((ns, m)), axis=-1, zi=zi)
        t, r = signal.sosfilt(self.sos, np.eye(m), axis=-1, zi=np.zeros((self.n_sec, m, 2)))
        flat = (lambda z: z.transpose(1, 0, 2).reshape(z.shape[1], ns))
        mats = (o, t, flat(a), flat(r))
        self._mats[m] = mats
        return mats

    def __call__(self, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``sosfilt(sos, x, axis=-1, zi=zi)`` for ``x`` ``(n_chans, m)``, ``zi`` ``(n_sec, n_chans, 2)``."""
        m = x.shape[1]
        o, t, a, r = self._mats.get(m) or self._build(m)
        n = x.shape[0]
        state = zi.transpose(1, 0, 2).reshape(n, 2 * self.n_sec)
        y = state @ o
        y += x @ t
        state = state @ a
        state += x @ r
        return y, state.reshape(n, self.n_sec, 2).transpose(1, 0, 2)
