"""The 1/f slope: its definition on known spectra, and the simulator's against real recordings.

The real range of each modality is measured here, from ``../shared/realdata``, with
the same function the simulator is held to, so the test follows the definition.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mne
import numpy as np
import pytest
from scipy import signal

from glimpse.streaming.errors import InputError
from glimpse.streaming.simulate import simulate_session
from glimpse.streaming.simulate.noise import background_sos
from glimpse.streaming.simulate.spectrum import aperiodic_slope, fit_mask

# Real recordings and the channel type of each that counts, as (file, pick, modality).
# Left out: brainvision/test_NO.vhdr (0.45 s, shorter than one 1 s Welch segment),
# the CTF file's 8 "EEG" channels (flat or at the microvolt level: not connected),
# xdf/clock_resets.xdf (uniform random numbers, not EEG) and xdf/minimal.xdf (10 Hz).
REAL = [
    ("ctf275_short_discontinuous_raw.fif", "mag", "meg"),  # CTF axial gradiometers, as simulated
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", "mag", "meg"),
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", "grad", "meg"),
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", "eeg", "eeg"),
    ("eeg_reduced.edf", "eeg", "eeg"),
    ("biosemi_stim_channel.bdf", "eeg", "eeg"),
    ("eeglab/test_raw.set", "eeg", "eeg"),
]
# Slack on the real range: the real files are 1-238 s long, so their slopes carry
# estimation noise of a few hundredths (1 s vs the full 1.002 s of the Neuromag
# file moves its magnetometers by 0.05).
TOLERANCE = 0.05


def _slope(raw: mne.io.BaseRaw, pick: str) -> float:
    picks = mne.pick_types(raw.info, meg=pick if pick != "eeg" else False, eeg=pick == "eeg",
                           ref_meg=False, exclude="bads")
    assert len(picks) >= 3, (raw.filenames, pick)
    return aperiodic_slope(raw.get_data(picks=picks), raw.info["sfreq"],
                           line_freq=raw.info.get("line_freq") or 50.0)


@pytest.fixture(scope="module")
def real_ranges(realdata: Path) -> dict[str, tuple[float, float]]:
    slopes: dict[str, list[float]] = {"meg": [], "eeg": []}
    for name, pick, modality in REAL:
        raw = mne.io.read_raw(realdata / name, preload=True, verbose="error")
        slopes[modality].append(_slope(raw, pick))
    return {m: (min(s), max(s)) for m, s in slopes.items()}


def _power_law(exponent: float, *, sfreq: float = 500.0, seconds: float = 60.0, n_chans: int = 6,
               seed: int = 0) -> np.ndarray:
    """White noise shaped in the frequency domain to P(f) ~ 1/f**exponent."""
    rng = np.random.default_rng(seed)
    n = int(sfreq * seconds)
    spec = np.fft.rfft(rng.standard_normal((n_chans, n)), axis=1)
    freqs = np.fft.rfftfreq(n, 1 / sfreq)
    spec[:, 1:] *= freqs[1:] ** (-exponent / 2)
    spec[:, 0] = 0
    return np.fft.irfft(spec, n, axis=1) * rng.uniform(0.5, 2.0, (n_chans, 1))


@pytest.mark.parametrize("exponent", [1.0, 1.5, 2.0])
def test_slope_of_a_power_law_is_its_exponent(exponent):
    # 1 s Hann windows smooth the spectrum over +-2 Hz, which reads steep spectra a
    # few per cent steeper (1/f**2 -> about -2.05), the same on every recording.
    assert aperiodic_slope(_power_law(exponent), 500.0) == pytest.approx(-exponent, rel=0.05)


def test_alpha_and_line_noise_do_not_move_the_slope():
    sfreq = 500.0
    data = _power_law(1.5, sfreq=sfreq)
    t = np.arange(data.shape[1]) / sfreq
    freqs, psd = signal.welch(data, fs=sfreq, nperseg=int(sfreq))

    def tone(freq: float, db: float) -> np.ndarray:
        """A sinusoid ``db`` above each channel's background in a 1 Hz bin."""
        power = 10 ** (db / 10) * psd[:, [np.argmin(np.abs(freqs - freq))]]
        return np.sqrt(2 * power) * np.sin(2 * np.pi * freq * t)

    # A 30 dB alpha peak and a 20 dB mains at 16.7 Hz (railway) with its harmonic.
    alpha, mains = tone(10.3, 30), tone(16.7, 20) + tone(33.4, 20)
    base = aperiodic_slope(data, sfreq, line_freq=16.7)
    assert aperiodic_slope(data + alpha + mains, sfreq, line_freq=16.7) == pytest.approx(base, abs=0.03)
    assert aperiodic_slope(data + mains, sfreq, line_freq=None) > base + 0.1  # the exclusion is what holds it


def test_fit_mask_keeps_2_to_40_hz_without_alpha_and_mains():
    freqs = np.arange(0.0, 100.0, 0.5)
    kept = freqs[fit_mask(freqs, line_freq=16.7)]
    assert kept.min() == 2.0 and kept.max() == 40.0
    assert not ((kept >= 7) & (kept <= 14)).any()
    assert not (np.abs(kept - 33.4) <= 2).any() and not (np.abs(kept - 16.7) <= 2).any()


@pytest.mark.parametrize("sfreq", [200.0, 1000.0, 1200.0, 5000.0])
def test_background_filter_falls_at_its_exponent(sfreq):
    freqs, response = signal.sosfreqz(background_sos(sfreq, 1.5), worN=np.linspace(2, 40, 400), fs=sfreq)
    slope = np.polyfit(np.log10(freqs), np.log10(np.abs(response) ** 2), 1)[0]
    assert slope == pytest.approx(-1.5, abs=0.06)


@pytest.mark.parametrize(
    ("data", "sfreq", "kwargs", "match"),
    [
        (np.zeros(1000), 500.0, {}, "shape"),
        (np.ones((2, 100)), 500.0, {}, "Welch segment"),
        (np.full((2, 1000), np.nan), 500.0, {}, "finite"),
        (np.random.default_rng(0).standard_normal((2, 1000)), 60.0, {}, "sampling rate"),
        (np.zeros((2, 1000)), 500.0, {}, "flat"),
        (np.random.default_rng(0).standard_normal((3, 1000)) * [[1], [1], [1e-12]], 500.0, {}, "1 flat"),
        (np.random.default_rng(0).standard_normal((2, 1000)), 500.0, {"segment_s": 0.0}, "segment_s"),
        (np.random.default_rng(0).standard_normal((2, 1000)), 500.0, {"segment_s": 0.1}, "frequency bins"),
    ],
)
def test_bad_input_is_an_input_error(data, sfreq, kwargs, match):
    with pytest.raises(InputError, match=match):
        aperiodic_slope(data, sfreq, **kwargs)


@pytest.mark.timeout(120)  # reads the real files (a few seconds)
def test_real_recordings_fall_like_brains(real_ranges):
    # Sanity of the reference itself: brain spectra fall between 1/f and 1/f**2.5.
    for modality, (lo, hi) in real_ranges.items():
        assert -2.5 < lo <= hi < -1.0, (modality, lo, hi)


@pytest.mark.timeout(180)  # two MEG (~5 s each) and two EEG (~2 s each) sessions on 2 cores
def test_simulated_slopes_lie_in_the_real_range(real_ranges, small_meg_session, tmp_path):
    base = small_meg_session[1]
    sessions = {("meg", 0): small_meg_session[2]}
    for modality, seed in (("meg", 1), ("eeg", 0), ("eeg", 1)):
        config = dataclasses.replace(base, modality=modality, seed=seed)
        sessions[modality, seed] = simulate_session(config, tmp_path / f"{modality}{seed}", progress=False)
    measured = {}
    for (modality, seed), result in sessions.items():
        raw = mne.io.read_raw(result.data_files["01"], verbose="error")  # get_data reads the picks only
        measured[modality, seed] = _slope(raw, "mag" if modality == "meg" else "eeg")
    for (modality, seed), slope in measured.items():
        lo, hi = real_ranges[modality]
        assert lo - TOLERANCE <= slope <= hi + TOLERANCE, (modality, seed, slope, real_ranges, measured)
