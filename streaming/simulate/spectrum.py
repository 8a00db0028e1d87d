"""The aperiodic (1/f) slope of a recording's power spectrum: one definition for tests and benches.

The slope is the exponent of a power law ``P(f) ~ f**slope`` fitted to the
background of MEG or EEG between ``FIT_BAND`` = 2-40 Hz, leaving out the alpha
band ``ALPHA_BAND`` = 7-14 Hz (wide enough for alpha peaks from 8 to 13 Hz and
their Welch leakage) and line-noise harmonics +- 2 Hz. Steps:

1. Welch PSD of each channel (Hann windows of ``segment_s`` = 1 s, 50 % overlap,
   linear detrend per segment so slow drift does not leak into the fit band).
2. Mean over channels of ``log10`` power: a fit on the geometric mean spectrum,
   so channels of different gain weigh alike and no channel dominates.
3. Least squares line of ``log10 P`` against ``log10 f`` over the kept bins;
   the slope of that line is the result.

The 1 s Hann window smooths the spectrum over +-2 Hz, which reads steep spectra a
few per cent steeper (a pure 1/f**2 gives about -2.05); the bias is the same on
every recording, so comparisons hold. On the real files in ``shared/realdata``:
MEG -1.32 (Neuromag planar gradiometers) to -1.57 (Neuromag magnetometers), CTF
axial gradiometers -1.40; EEG -1.13 to -2.36.

Pass the data channels of one type only (CTF axial gradiometers, Neuromag
magnetometers or planar gradiometers, EEG): their spectra differ, and a mix
fits neither.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from ..errors import InputError

FIT_BAND = (2.0, 40.0)  # Hz
ALPHA_BAND = (7.0, 14.0)  # Hz, left out of the fit
LINE_HALF_WIDTH = 2.0  # Hz left out either side of each line harmonic
MIN_BINS = 8  # frequency bins a fit needs to mean anything
CHANNEL_CHUNK = 16


def log_spectrum(data: np.ndarray, sfreq: float, *, segment_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Welch spectrum of each channel, averaged over channels in ``log10``.

    Parameters
    ----------
    data : ndarray, shape (n_chans, n_times)
        Channels of one type, in any unit (the slope does not depend on it).
    sfreq : float
        Sampling rate in Hz.
    segment_s : float
        Welch segment length in s (frequency resolution ``1 / segment_s``).

    Returns
    -------
    freqs : ndarray, shape (n_freqs,)
        Frequencies in Hz.
    log_power : ndarray, shape (n_freqs,)
        Mean over channels of ``log10`` of the power spectral density.
    """
    data = np.asarray(data, dtype=float)
    if data.ndim != 2 or data.shape[0] < 1:
        raise InputError("data of shape (n_chans, n_times)", f"shape {data.shape}", "pass a 2-D array, channels first")
    if not np.isfinite(data).all():
        raise InputError("finite samples", "NaN or infinite values", "drop or interpolate the bad samples first")
    if not (np.isfinite(sfreq) and sfreq > 0 and np.isfinite(segment_s) and segment_s * sfreq >= 8):
        raise InputError("a positive sfreq and a segment_s of at least 8 samples",
                         f"sfreq={sfreq!r}, segment_s={segment_s!r}", "pass e.g. segment_s=1.0")
    nperseg = int(round(segment_s * sfreq))
    if data.shape[1] < nperseg:
        raise InputError(
            f"at least one Welch segment ({segment_s:g} s = {nperseg} samples at {sfreq:g} Hz)",
            f"{data.shape[1]} samples", "pass a longer recording or a shorter segment_s")
    # Flat: no variance, or rounding noise 1e10 times below the typical channel's.
    std = data.std(axis=1)
    flat = (std == 0) | (std < 1e-10 * np.median(std))
    if flat.any():
        raise InputError("channels that carry signal", f"{int(flat.sum())} flat channel(s)",
                         "drop flat channels before the fit")
    # Linear detrend as a projection (scipy's "linear" solves a least-squares problem
    # per segment, ten times slower), over a few channels at a time so the
    # segmented copy Welch makes stays small.
    basis = np.linalg.qr(np.vstack([np.ones(nperseg), np.arange(nperseg)]).T)[0].T

    def detrend(segments: np.ndarray) -> np.ndarray:
        return segments - (segments @ basis.T) @ basis

    log_sum = 0.0
    for start in range(0, data.shape[0], CHANNEL_CHUNK):
        freqs, psd = signal.welch(data[start : start + CHANNEL_CHUNK], fs=sfreq, window="hann",
                                  nperseg=nperseg, detrend=detrend, axis=-1)
        log_sum = log_sum + np.log10(np.maximum(psd, np.finfo(float).tiny)).sum(axis=0)
    return freqs, log_sum / data.shape[0]


def fit_mask(freqs: np.ndarray, *, line_freq: float | None = None,
             band: tuple[float, float] = FIT_BAND, exclude: tuple[float, float] = ALPHA_BAND) -> np.ndarray:
    """The bins the slope is fitted on: inside ``band``, outside ``exclude`` and line harmonics."""
    keep = (freqs >= band[0]) & (freqs <= band[1]) & ~((freqs >= exclude[0]) & (freqs <= exclude[1]))
    if line_freq:
        for harmonic in np.arange(line_freq, band[1] + LINE_HALF_WIDTH + line_freq, line_freq):
            keep &= np.abs(freqs - harmonic) > LINE_HALF_WIDTH
    return keep


def aperiodic_slope(data: np.ndarray, sfreq: float, *, line_freq: float | None = 50.0,
                    segment_s: float = 1.0) -> float:
    """Slope of the log-log power spectrum, 2-40 Hz without alpha (7-14 Hz) and line harmonics.

    Parameters
    ----------
    data : ndarray, shape (n_chans, n_times)
        Data channels of one type (see the module docstring).
    sfreq : float
        Sampling rate in Hz; must exceed twice the top of the fit band (80 Hz).
    line_freq : float or None
        Mains frequency whose harmonics are left out (None keeps every bin).
    segment_s : float
        Welch segment length in s; the recording must be at least this long.

    Returns
    -------
    float
        The fitted exponent (negative: power falls with frequency).
    """
    if not (np.isfinite(sfreq) and sfreq > 2 * FIT_BAND[1]):
        raise InputError(f"a sampling rate above {2 * FIT_BAND[1]:g} Hz", f"{sfreq!r}",
                         "the fit band reaches 40 Hz; resample less aggressively")
    freqs, log_power = log_spectrum(data, sfreq, segment_s=segment_s)
    keep = fit_mask(freqs, line_freq=line_freq)
    if keep.sum() < MIN_BINS:
        raise InputError(f"at least {MIN_BINS} frequency bins in the fit", f"{int(keep.sum())}",
                         "lengthen segment_s (finer frequency resolution)")
    slope, _ = np.polyfit(np.log10(freqs[keep]), log_power[keep], 1)
    return float(slope)
