"""Background activity and artefacts, generated block by block with carried filter state.

Scaled by ``snr_db`` (see the package docstring for the definition):
1/f brain background (random dipoles whose time courses have 1/f**1.5 power,
``BACKGROUND_EXPONENT``, through the leadfield), alpha bursts (8-12 Hz posterior
dipoles with a bursty envelope) and white sensor noise. At fixed physical
amplitudes, because preprocessing removes them and they should not change with
the SNR knob: line noise (+ harmonics), slow drift, and for EEG blinks on the
frontal channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import signal

from .physics import HeadModel, _orientations, frontal_channels

#: Exponent of the brain background's power spectrum, P(f) ~ 1/f**exponent above
#: BACKGROUND_KNEE. Pink noise (exponent 1) made simulated MEG fall at -1.1 between
#: 2 and 40 Hz (spectrum.aperiodic_slope), with too much power at high frequencies;
#: the real files in shared/realdata fall at -1.32 to -1.57 (MEG: CTF axial
#: gradiometers -1.40) and -1.13 to -2.36 (EEG). With 1.5, simulated MEG falls at
#: about -1.45 and EEG at about -1.7 (blinks steepen it). One exponent for both:
#: it is the same brain, and the forward model (quasi-static) does not depend on
#: frequency. White sensor noise keeps its share (noise_mix): spread evenly up to
#: Nyquist, it is a small part of the 2-40 Hz power and barely moves the slope.
BACKGROUND_EXPONENT = 1.5
BACKGROUND_KNEE = 0.5  # Hz: flat below, as the former pink filter was below ~0.5 Hz
N_BACKGROUND = 80  # background dipoles: enough for a smooth, spatially rich 1/f field
N_ALPHA = 4
N_DRIFT = 3
DRIFT_TAU = 20.0  # s
#: Artefact amplitudes in T (MEG) or V (EEG): line noise per channel at the
#: fundamental, drift standard deviation, blink peak at Fp1/Fp2.
ARTEFACTS = {
    "meg": {"line": 30e-15, "drift": 300e-15, "blink": 0.0},
    "eeg": {"line": 1.5e-6, "drift": 10e-6, "blink": 100e-6},
}
BLINK_DURATION = 0.3  # s


def _energy(impulse_response: np.ndarray) -> float:
    return float((impulse_response**2).sum())


def background_sos(sfreq: float, exponent: float = BACKGROUND_EXPONENT) -> np.ndarray:
    """Filter that turns white noise into 1/f**exponent noise from BACKGROUND_KNEE up.

    A log-periodic ladder of first-order pole-zero pairs, three per decade (the sum
    of relaxation processes behind 1/f-like spectra): between a pole and its zero
    the power falls as 1/f**2, between the zero and the next pole it is flat, so a
    zero placed ``r**(exponent / 2)`` above its pole, with poles ``r`` apart, averages
    to 1/f**exponent: over 2-40 Hz, a slope within 0.06 of ``-exponent`` and within
    0.2 dB of a straight line, at any sampling rate from 200 to 5000 Hz.

    Parameters
    ----------
    sfreq : float
        Sampling rate in Hz.
    exponent : float
        Spectral exponent in (0, 2]; 1 is pink noise.

    Returns
    -------
    ndarray, shape (n_sections, 6)
        Second-order sections for :func:`scipy.signal.sosfilt` (not normalised).
    """
    ratio = 10 ** (1 / 3)
    n_pairs = int(np.ceil(np.log(sfreq / 2 / BACKGROUND_KNEE) / np.log(ratio)))
    poles = BACKGROUND_KNEE * ratio ** np.arange(n_pairs)
    zeros = poles * ratio ** (exponent / 2)
    # Matched z-transform: exact where it matters (f << sfreq), no pre-warping needed.
    return signal.zpk2sos(np.exp(-2 * np.pi * zeros / sfreq), np.exp(-2 * np.pi * poles / sfreq), 1.0)


def _sos_variance(sos: np.ndarray, n: int) -> float:
    impulse = np.zeros(n)
    impulse[0] = 1
    return _energy(signal.sosfilt(sos, impulse))


@dataclass
class NoiseModel:
    """Static part of one subject's noise: leadfields, scales, artefact patterns."""

    sfreq: float
    bg_leadfield: np.ndarray  # (n_chans, N_BACKGROUND), unit-variance sources -> sensors, scaled
    alpha_leadfield: np.ndarray  # (n_chans, N_ALPHA)
    alpha_freqs: np.ndarray
    sensor_sd: np.ndarray  # (n_chans,)
    line_coefs: np.ndarray  # (n_chans, 2 * n_harmonics): cos and sin weights
    line_freqs: np.ndarray
    drift_mix: np.ndarray  # (n_chans, N_DRIFT)
    blink_onsets: np.ndarray  # samples
    blink_amps: np.ndarray
    blink_pattern: np.ndarray  # (n_chans,)
    scales: dict[str, float] = field(default_factory=dict)


def build_noise_model(
    head: HeadModel,
    groups: dict[str, np.ndarray],
    *,
    sfreq: float,
    line_freq: float,
    signal_power: float,
    snr_db: float,
    mix: tuple[float, float, float],
    rng: np.random.Generator,
    n_times: int,
) -> NoiseModel:
    """Scale the SNR-governed noise so its posterior power is ``signal_power / 10**(snr_db/10)``."""
    n_chans = head.gain.shape[0]
    post = head.posterior
    bg_idx = rng.choice(len(head.rr), N_BACKGROUND, replace=False)
    bg_ori = rng.standard_normal((N_BACKGROUND, 3))
    bg_ori /= np.linalg.norm(bg_ori, axis=1, keepdims=True)
    bg = np.einsum("csk,sk->cs", head.gain[:, bg_idx], bg_ori) * rng.lognormal(0, 0.5, N_BACKGROUND)
    alpha_pool = np.r_[groups["parieto_occipital"], groups["occipital"]]
    alpha_idx = rng.choice(alpha_pool, N_ALPHA, replace=False)
    alpha = np.einsum("csk,sk->cs", head.gain[:, alpha_idx], _orientations(rng, head.rr[alpha_idx], head.center))
    sensor = rng.lognormal(0, 0.2, n_chans)

    noise_power = signal_power / 10 ** (snr_db / 10)
    unit = {
        "brain": float((bg[post] ** 2).sum(1).mean()),
        "alpha": float((alpha[post] ** 2).sum(1).mean()),
        "sensor": float((sensor[post] ** 2).mean()),
    }
    scales = {k: float(np.sqrt(share * noise_power / unit[k])) for k, share in zip(unit, mix)}

    art = ARTEFACTS[head.modality]
    harmonics = [h for h in (1, 2, 3) if h * line_freq < sfreq / 2]
    phase = rng.uniform(0, 2 * np.pi) + 0.3 * rng.standard_normal(n_chans)
    line_coefs = []
    for h, rel in zip(harmonics, (1.0, 0.3, 0.15)):
        amp = art["line"] * rel * rng.lognormal(0, 0.3, n_chans)
        line_coefs += [amp * np.cos(h * phase), -amp * np.sin(h * phase)]

    blink_onsets = np.zeros(0, int)
    blink_amps = np.zeros(0)
    blink_pattern = np.zeros(n_chans)
    if art["blink"] > 0:
        rate = rng.uniform(0.15, 0.3)  # blinks per second
        gaps = np.maximum(rng.exponential(1 / rate, int(n_times / sfreq * rate * 2) + 10), 1.0)
        onsets = np.cumsum(gaps)
        blink_onsets = np.round(onsets[onsets * sfreq < n_times] * sfreq).astype(int)
        blink_amps = art["blink"] * rng.uniform(0.7, 1.3, len(blink_onsets))
        pos = np.array([ch["loc"][:3] for ch in head.info["chs"]])
        fp = frontal_channels(head.info.ch_names)
        # The eyes sit in front of and below Fp1/Fp2; the blink field decays with distance.
        eyes = pos[[head.info.ch_names.index("Fp1"), head.info.ch_names.index("Fp2")]].mean(0) + [0, 0.02, -0.04]
        blink_pattern = np.exp(-np.linalg.norm(pos - eyes, axis=1) / 0.035)
        blink_pattern /= blink_pattern[fp].max()

    return NoiseModel(
        sfreq=sfreq,
        bg_leadfield=bg * scales["brain"],
        alpha_leadfield=alpha * scales["alpha"],
        alpha_freqs=rng.uniform(9, 11) + rng.uniform(-0.7, 0.7, N_ALPHA),
        sensor_sd=(sensor * scales["sensor"]).astype(np.float32),
        line_coefs=np.array(line_coefs).T,
        line_freqs=np.array([h * line_freq for h in harmonics]),
        drift_mix=rng.standard_normal((n_chans, N_DRIFT)) * art["drift"],
        blink_onsets=blink_onsets,
        blink_amps=blink_amps,
        blink_pattern=blink_pattern,
        scales={**scales, "noise_power_posterior": noise_power},
    )


class NoiseStream:
    """Yields consecutive noise blocks; filter states carry over, so blocks join seamlessly.

    The random draws depend on the block length, so a given seed and
    ``block_duration`` always give the same samples.
    """

    def __init__(self, model: NoiseModel, rng: np.random.Generator, posterior: list[int]):
        self.model, self.rng, self.sample = model, rng, 0
        self.posterior = list(posterior)
        self.posterior_sumsq, self.posterior_count = 0.0, 0
        self._mixing = np.concatenate([model.bg_leadfield, model.alpha_leadfield, model.line_coefs, model.drift_mix], axis=1)
        fs = model.sfreq
        self._pink_sos = background_sos(fs)
        self._pink_gain = np.sqrt(_sos_variance(self._pink_sos, int(20 * fs)))
        self._alpha_sos = [signal.butter(2, [f - 1.5, f + 1.5], "bandpass", fs=fs, output="sos") for f in model.alpha_freqs]
        self._env_sos = signal.butter(2, 0.5, "lowpass", fs=fs, output="sos")
        n_imp = int(20 * fs)
        self._alpha_gain = [np.sqrt(_sos_variance(s, n_imp)) for s in self._alpha_sos]
        self._env_gain = np.sqrt(_sos_variance(self._env_sos, n_imp))
        # Drift: white noise through two leaky integrators (time constant DRIFT_TAU);
        # the second one makes the spectrum fall as 1/f^4, so drift stays below
        # ~0.1 Hz instead of leaking into the evoked band as a random walk would.
        a = np.exp(-1 / (DRIFT_TAU * fs))
        self._drift_b, self._drift_den = [(1 - a) ** 2], [1.0, -2 * a, a * a]
        self._drift_norm = 1 / np.sqrt((1 - a) ** 4 * (1 + a * a) / (1 - a * a) ** 3)
        # Blocks must start stationary, not from rest: the fast filters get 10 s of
        # warm-up below; the drift filter, which needs minutes, a stationary draw.
        self._pink_zi = np.zeros((self._pink_sos.shape[0], N_BACKGROUND, 2))
        self._alpha_zi = [np.zeros((s.shape[0], 2)) for s in self._alpha_sos]
        self._env_zi = np.zeros((N_ALPHA, self._env_sos.shape[0], 2))
        self._drift_zi = signal.lfilter_zi(self._drift_b, self._drift_den) * rng.standard_normal((N_DRIFT, 1)) / self._drift_norm
        self._filtered(int(10 * fs))

    def _filtered(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit-variance pink, alpha and drift source time courses for the next n samples."""
        rng = self.rng
        pink, self._pink_zi = signal.sosfilt(self._pink_sos, rng.standard_normal((N_BACKGROUND, n)), axis=1, zi=self._pink_zi)
        pink /= self._pink_gain
        alpha = np.empty((N_ALPHA, n))
        env_in = rng.standard_normal((N_ALPHA, n))
        env, self._env_zi = signal.sosfilt(self._env_sos, env_in, axis=1, zi=self._env_zi.transpose(1, 0, 2))
        self._env_zi = self._env_zi.transpose(1, 0, 2)
        # Half-wave rectified slow noise: bursts of ~0.5-2 s, silent half the time;
        # sqrt(2) keeps the mean power of the burst train at 1.
        env = np.sqrt(2) * np.maximum(env / self._env_gain, 0)
        for k, sos in enumerate(self._alpha_sos):
            carrier, self._alpha_zi[k] = signal.sosfilt(sos, rng.standard_normal(n), zi=self._alpha_zi[k])
            alpha[k] = carrier / self._alpha_gain[k] * env[k]
        drift, self._drift_zi = signal.lfilter(self._drift_b, self._drift_den, rng.standard_normal((N_DRIFT, n)), axis=1, zi=self._drift_zi)
        drift *= self._drift_norm
        return pink, alpha, drift

    def next(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """The next ``(n_chans, n)`` block, written into ``out[:n_chans]`` when given.

        The SNR-governed part's power at the posterior sensors is accumulated in
        :attr:`posterior_sumsq` / :attr:`posterior_count`, to report the realised SNR.
        """
        m = self.model
        n_chans = len(m.sensor_sd)
        pink, alpha, drift = self._filtered(n)
        t = (self.sample + np.arange(n)) / m.sfreq
        phases = 2 * np.pi * m.line_freqs[:, None] * t
        waves = np.stack([np.cos(phases), np.sin(phases)], 1).reshape(-1, n)
        white = self.rng.standard_normal((n_chans, n), dtype=np.float32)
        white *= m.sensor_sd[:, None]
        # One matmul for every source-driven part (a BLAS call per part costs more).
        sources = np.concatenate([pink, alpha, waves, drift])
        if out is None:
            out = np.empty((n_chans, n))
        block = out[:n_chans]
        np.matmul(self._mixing, sources, out=block)
        block += white
        post = self.posterior
        scaled_post = self._mixing[post, : N_BACKGROUND + N_ALPHA] @ sources[: N_BACKGROUND + N_ALPHA] + white[post]
        self.posterior_sumsq += float(np.sum(scaled_post**2))
        self.posterior_count += scaled_post.size
        blink_len = int(round(BLINK_DURATION * m.sfreq))
        shape = 0.5 * (1 - np.cos(2 * np.pi * np.arange(blink_len) / blink_len))
        first, last = np.searchsorted(m.blink_onsets, [self.sample - blink_len, self.sample + n])
        for onset, amp in zip(m.blink_onsets[first:last], m.blink_amps[first:last]):
            lo, hi = max(onset, self.sample), min(onset + blink_len, self.sample + n)
            if lo < hi:
                block[:, lo - self.sample : hi - self.sample] += np.outer(m.blink_pattern, amp * shape[lo - onset : hi - onset])
        self.sample += n
        return block
