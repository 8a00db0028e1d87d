"""The online face: chunks of any size in, preprocessed samples out, state carried."""

from __future__ import annotations

import logging

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from ..errors import InputError
from .config import PreprocessConfig
from .filters import Resampler, SosBlock

logger = logging.getLogger("glimpse.streaming.preprocess")

# Input samples handled per pass; bounds memory offline (272 chans: ~9 MB buffer).
BLOCK = 4096
# Live chunks are short (a hop: ~6 outputs, 60 inputs): up to this many samples, the
# FIR and the IIR filters run as one small matrix product each (_fir_band, SosBlock)
# instead of per-phase strided products and scipy's sosfilt, whose fixed costs dominate
# there (60 x 272 samples: 411 -> 176 us).
_SMALL = 64


class OnlinePreprocessor:
    """Chunk-by-chunk preprocessing with carried state; see the module docstring.

    ``process(chunk)`` takes ``(n_chans, n_samples)`` in the config's channel order
    (use :meth:`PreprocessConfig.pick_indices` on a stream) and returns float32
    ``(n_chans, n_out)``. Filters start in the steady state of the first sample, so
    DC offsets cause no start-up transient. Non-finite samples are replaced by the
    channel's last finite value so they cannot poison the filters' state forever;
    they are counted in ``n_nonfinite`` and the caller must mark the windows they
    touch as invalid.
    """

    def __init__(self, config: PreprocessConfig, sfreq_in: float, n_chans: int | None = None):
        config.validate(sfreq_in)
        if config.ch_names is not None:
            if n_chans is not None and n_chans != len(config.ch_names):
                raise InputError(f"n_chans={len(config.ch_names)} (the config's channels)",
                                 f"n_chans={n_chans}",
                                 "leave n_chans out or resolve the config again")
            n_chans = len(config.ch_names)
        if n_chans is None or n_chans < 1:
            raise InputError("a config with resolved channels, or n_chans >= 1",
                             f"n_chans={n_chans}", "call config.resolve(raw.info), or pass n_chans")
        self.config, self.sfreq_in, self.n_chans = config, float(sfreq_in), int(n_chans)

        rs = Resampler.design(self.sfreq_in, config.sfreq, config.antialias_pass,
                               config.antialias_atten_db)
        self.up, self.down, self._bank = rs.up, rs.down, rs.bank
        self.sfreq_out = self.sfreq_in * rs.up / rs.down
        self.group_delay = rs.delay_s  # seconds, constant (linear-phase FIR)
        if abs(self.sfreq_out / config.sfreq - 1) > 1e-9:
            logger.info("output rate %.9g Hz approximates %s Hz (ratio %d/%d)",
                        self.sfreq_out, config.sfreq, rs.up, rs.down)

        # Notch at the input rate: the fundamental and each harmonic that the
        # anti-alias filter would let through (above it, the FIR removes it anyway).
        self._notch_sos = None
        if config.notch is not None:
            reach = self.sfreq_in / 2
            if (rs.up, rs.down) != (1, 1):
                low = min(self.sfreq_in, self.sfreq_out)
                reach = min(reach, low * (1 - config.antialias_pass / 2))
            freqs = [f for f in np.arange(1, 1000) * config.notch if f < reach]
            if freqs:
                self._notch_sos = np.concatenate([
                    signal.tf2sos(*signal.iirnotch(f, config.notch_q, fs=self.sfreq_in))
                    for f in freqs])
            else:
                logger.info("notch %s Hz lies in the anti-alias stop band; nothing to notch",
                            config.notch)
        self._band_sos = None
        edges = [e for e in (config.l_freq, config.h_freq) if e is not None]
        if edges:
            btype = {2: "bandpass", 1: "highpass" if config.l_freq is not None else "lowpass"}
            self._band_sos = signal.butter(config.filter_order,
                                           edges if len(edges) == 2 else edges[0],
                                           btype=btype[len(edges)], fs=self.sfreq_out,
                                           output="sos")
        self._center = self._inv_scale = None
        if config.is_fitted:
            self._center = np.asarray(config.center, dtype=np.float64)[:, None]
            self._inv_scale = 1.0 / np.asarray(config.scale, dtype=np.float64)[:, None]

        # Working buffer: `taps - 1` samples of history, then room for a block. Windows
        # are views into it, so the hot path allocates only chunk-sized arrays.
        self._hist = self._bank.shape[1] - 1
        self._cap = max(BLOCK, 2 * self._hist)
        self._buf = np.zeros((self.n_chans, self._hist + self._cap))
        self._windows = sliding_window_view(self._buf, self._bank.shape[1], axis=1)
        self._notch_zi_unit = (None if self._notch_sos is None
                               else signal.sosfilt_zi(self._notch_sos))
        self._band_zi_unit = None if self._band_sos is None else signal.sosfilt_zi(self._band_sos)
        self._notch_small = None if self._notch_sos is None else SosBlock(self._notch_sos)
        self._band_small = None if self._band_sos is None else SosBlock(self._band_sos)
        self._fir_small: dict[tuple[int, int], np.ndarray] = {}
        logger.debug("preprocess %s -> %.6g Hz: up %d down %d, %d taps/phase, "
                     "FIR delay %.1f ms, %d notch sections",
                     self.sfreq_in, self.sfreq_out, self.up, self.down,
                     self._bank.shape[1], 1e3 * self.group_delay,
                     0 if self._notch_sos is None else len(self._notch_sos))
        self.reset()

    def reset(self) -> OnlinePreprocessor:
        """Forget all state; the next sample is input sample 0 again."""
        self.n_samples_in = 0  # input samples consumed since reset
        self.n_samples_out = 0  # output samples emitted since reset
        self.n_nonfinite = 0
        self._pos = self._hist
        self._last = np.zeros(self.n_chans)
        self._notch_zi = self._band_zi = None  # set from the first sample
        return self

    # --------------------------------------------------------------- timing
    def input_position(self, k: int | np.ndarray) -> float | np.ndarray:
        """Input-sample position of output ``k``; its time is ``t0 + position / sfreq_in``."""
        return np.asarray(k) * self.down / self.up

    def group_delay_at(self, freq: float) -> float:
        """Total delay (s) at ``freq`` Hz: the FIR's constant one plus the IIR filters'."""
        delay = self.group_delay
        for sos, fs in ((self._notch_sos, self.sfreq_in), (self._band_sos, self.sfreq_out)):
            for sec in [] if sos is None else sos:
                delay += signal.group_delay((sec[:3], sec[3:]), w=[freq], fs=fs)[1][0] / fs
        return float(delay)

    # ------------------------------------------------------------- hot path
    def process(self, chunk: np.ndarray, timestamps: np.ndarray | None = None):
        """Feed ``(n_chans, n)`` samples; return the float32 outputs they complete.

        With ``timestamps`` (``(n,)``, the LSL times of the chunk's samples), also
        return, per output, the timestamp of the newest input sample it depends on
        (``floor(k * down / up)``): the moment from which live latency counts. Its
        nominal time on the regular output grid is up to one input sample later,
        ``+ (input_position(k) % 1) / sfreq_in``.
        """
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.n_chans:
            raise InputError(f"a chunk of shape ({self.n_chans}, n_samples)",
                             f"shape {np.shape(chunk)}",
                             "pick the config's channels with config.pick_indices(ch_names), "
                             "samples on the last axis")
        n = x.shape[1]
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.float64)
            if timestamps.shape != (n,):
                raise InputError(f"one timestamp per sample, shape ({n},)",
                                 f"shape {timestamps.shape}", "pass the chunk's own timestamps")
        k_first = self.n_samples_out
        parts = []
        for start in range(0, n, self._cap):
            parts.append(self._process_block(x[:, start:start + self._cap]))
        out = parts[0] if len(parts) == 1 else (
            np.concatenate(parts, axis=1) if parts else np.empty((self.n_chans, 0), np.float32))
        if timestamps is None:
            return out
        k = np.arange(k_first, self.n_samples_out, dtype=np.int64)
        newest = k * self.down // self.up  # exact integer floor, no float rounding
        return out, timestamps[newest - (self.n_samples_in - n)]

    def _process_block(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        if not np.isfinite(x).all():
            x = self._hold_nonfinite(x)
        if self.n_samples_in == 0:  # first sample since reset: steady state, no transient
            if self._notch_sos is not None:
                self._notch_zi = self._notch_zi_unit[:, None, :] * x[None, :, 0, None]
            self._buf[:, :self._hist] = x[:, :1]
        self._last[:] = x[:, -1]
        if self._notch_sos is not None:
            if n <= _SMALL:
                x, self._notch_zi = self._notch_small(x, self._notch_zi)
            else:
                x, self._notch_zi = signal.sosfilt(self._notch_sos, x, axis=-1,
                                                   zi=self._notch_zi)

        if self._pos + n > self._buf.shape[1]:  # keep the history, make room (once a block)
            self._buf[:, :self._hist] = self._buf[:, self._pos - self._hist:self._pos]
            self._pos = self._hist
        self._buf[:, self._pos:self._pos + n] = x
        base = self._pos - self._hist - self.n_samples_in  # window index = base + input index
        self._pos += n
        self.n_samples_in += n

        # Outputs k whose last input floor(k * down / up) is now available.
        up, down = self.up, self.down
        k0, k1 = self.n_samples_out, -(-self.n_samples_in * up // down)
        m = k1 - k0
        if 0 < m <= _SMALL:
            band = self._fir_band(k0, m)
            s = base + k0 * down // up
            y = self._buf[:, s:s + len(band)] @ band
        else:
            y = np.empty((self.n_chans, m))
            for i in range(min(up, m)):  # outputs of one phase are `down` inputs apart
                k = k0 + i
                last, phase = divmod(k * down, up)
                count = len(range(i, m, up))
                s = base + last
                y[:, i::up] = (self._windows[:, s:s + (count - 1) * down + 1:down]
                               @ self._bank[phase])
        self.n_samples_out = k1
        if m == 0:
            return y.astype(np.float32)

        if self._band_sos is not None:
            if k0 == 0:
                self._band_zi = self._band_zi_unit[:, None, :] * y[None, :, 0, None]
            if m <= _SMALL:
                y, self._band_zi = self._band_small(y, self._band_zi)
            else:
                y, self._band_zi = signal.sosfilt(self._band_sos, y, axis=-1,
                                                  zi=self._band_zi)
        if self._center is not None:
            y -= self._center
            y *= self._inv_scale
            if self.config.clamp is not None:
                np.clip(y, -self.config.clamp, self.config.clamp, out=y)
        return y.astype(np.float32)

    def _fir_band(self, k0: int, m: int) -> np.ndarray:
        """The FIR for outputs ``k0 .. k0 + m - 1`` as one banded matrix over their inputs.

        Output ``k`` is ``window(floor(k down / up)) @ bank[k down % up]``; relative to
        output ``k0`` the offsets and phases depend on ``k0 % up`` only, so the matrix
        ``(span, m)`` is built once per ``(k0 % up, m)`` (at most 256 kept: awkward rates
        such as Neuromag's 300.3 Hz have ``up`` in the hundreds).
        """
        key = (k0 % self.up, m)
        if key not in self._fir_small:
            if len(self._fir_small) >= 256:
                self._fir_small.clear()
            taps = self._bank.shape[1]
            first = k0 * self.down // self.up
            lasts = [(k0 + j) * self.down // self.up - first for j in range(m)]
            band = np.zeros((lasts[-1] + taps, m))
            for j, off in enumerate(lasts):
                band[off:off + taps, j] = self._bank[(k0 + j) * self.down % self.up]
            self._fir_small[key] = band
        return self._fir_small[key]

    def _hold_nonfinite(self, x: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(x)
        self.n_nonfinite += int(bad.sum())
        logger.debug("held %d non-finite samples", int(bad.sum()))
        full = np.concatenate([self._last[:, None], x], axis=1)
        idx = np.where(np.concatenate([np.zeros((len(x), 1), bool), bad], axis=1), 0,
                       np.arange(full.shape[1]))
        np.maximum.accumulate(idx, axis=1, out=idx)
        return np.take_along_axis(full, idx, axis=1)[:, 1:]
