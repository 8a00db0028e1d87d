"""The one preprocessing definition: config as data, filters, and online/offline parity."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest
from scipy import signal

from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import (
    OnlinePreprocessor,
    PreprocessConfig,
    fit_scaler,
    preprocess_raw,
)
from glimpse.streaming.preprocess.filters import SosBlock

PARITY_TOL = 1e-5  # scaled units (the acceptance threshold)


def _stream(online: OnlinePreprocessor, data: np.ndarray, seed: int = 0,
            sizes: tuple[int, int] = (1, 200)) -> np.ndarray:
    """Feed ``data`` in chunks of random sizes, as an LSL inlet would."""
    rng = np.random.default_rng(seed)
    outs, start = [], 0
    while start < data.shape[1]:
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        outs.append(online.process(data[:, start:start + size]))
        start += size
    return np.concatenate(outs, axis=1)


def _sine(freq: float, sfreq: float, seconds: float, n_chans: int = 2) -> np.ndarray:
    t = np.arange(int(round(seconds * sfreq))) / sfreq
    return np.tile(np.sin(2 * np.pi * freq * t), (n_chans, 1))


def _synthetic(sfreq: float = 1000.0, seconds: float = 30.0, n_chans: int = 32, seed: int = 0):
    """Stand-in for a simulated session: offsets, drift, alpha, mains, 1/f-ish noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sfreq)
    t = np.arange(n) / sfreq
    noise = np.cumsum(rng.standard_normal((n_chans, n)), axis=1) * 0.02  # brown noise
    noise += rng.standard_normal((n_chans, n))
    alpha = np.sin(2 * np.pi * 10 * t + rng.uniform(0, 2 * np.pi, (n_chans, 1)))
    mains = 3 * np.sin(2 * np.pi * 50 * t)
    offsets = rng.uniform(-500, 500, (n_chans, 1))
    drift = 0.5 * t
    gains = rng.uniform(0.5, 5.0, (n_chans, 1))
    return (noise + alpha + mains + drift) * gains * 1e-6 + offsets * 1e-6


def _amplitude(y: np.ndarray, times: np.ndarray, freq: float) -> float:
    """Amplitude of the ``freq`` component (least squares; samples miss the peaks)."""
    basis = np.stack([np.sin(2 * np.pi * freq * times), np.cos(2 * np.pi * freq * times),
                      np.ones_like(times)], axis=1)
    coef = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)[0]
    return float(np.hypot(coef[0], coef[1]))


def _read(path):
    return mne.io.read_raw(path, preload=True, verbose=False)


# ------------------------------------------------------------------- config as data
def test_json_round_trip_is_exact_and_plain():
    config = PreprocessConfig(picks=["mag", "eeg"], include=("STI 014",), exclude=("MLC11",),
                              exclude_bads=False, ch_names=("a", "b"), sfreq=100.0, l_freq=0.5,
                              h_freq=30.0, filter_order=3, notch=60.0, notch_q=25.0,
                              antialias_pass=0.7, antialias_atten_db=70.0,
                              center=(0.1, -1e-13), scale=(3.3e-13, 1 / 3), clamp=None)
    text = config.to_json()
    assert PreprocessConfig.from_json(text) == config
    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config

    def plain(value):
        return value is None or isinstance(value, (bool, int, float, str)) or (
            isinstance(value, list) and all(plain(v) for v in value))
    assert all(plain(v) for v in config.to_dict().values())
    assert PreprocessConfig.from_json(PreprocessConfig().to_json()) == PreprocessConfig()


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(InputError, match="unknown.*'hpass'.*Fix:"):
        PreprocessConfig.from_dict({"hpass": 1.0})


def test_resolve_picks_by_type_and_name(realdata):
    raw = _read(realdata / "ctf275_short_discontinuous_raw.fif")
    types = dict(zip(raw.ch_names, raw.get_channel_types(), strict=True))
    config = PreprocessConfig(picks=("mag",)).resolve(raw.info)
    assert config.ch_names == tuple(n for n in raw.ch_names if types[n] == "mag")
    misc = next(n for n in raw.ch_names if types[n] == "misc")
    first_mag = config.ch_names[0]
    custom = PreprocessConfig(picks=("meg",), include=(misc,), exclude=(first_mag,))
    custom = custom.resolve(raw.info)
    assert misc in custom.ch_names and first_mag not in custom.ch_names
    assert all(types[n] != "ref_meg" for n in custom.ch_names)  # "meg" leaves references out
    # Once resolved, the stored names decide, in their order, whatever the stream's order.
    shuffled = list(reversed(raw.ch_names))
    idx = config.pick_indices(shuffled)
    assert [shuffled[i] for i in idx] == list(config.ch_names)
    assert config.resolve(raw.info) is config
    raw.info["bads"] = [first_mag]
    assert first_mag not in PreprocessConfig(picks=("mag",)).resolve(raw.info).ch_names


# -------------------------------------------------------------------------- bad input
BAD = [
    # (config fields, sfreq_in, what the message must contain)
    (dict(h_freq=100.0), 1200.0,
     "expected h_freq < 60.0 Hz (Nyquist of the 120 Hz output); got 100.0. "
     "Fix: lower --h-freq or raise --sfreq"),
    (dict(h_freq=70.0, sfreq=200.0), 128.0,
     "expected h_freq < 64.0 Hz (Nyquist of the 128 Hz input)"),
    (dict(l_freq=65.0, h_freq=None), 1200.0, "expected l_freq < 60.0 Hz"),
    (dict(l_freq=40.0, h_freq=1.0), 1200.0,
     "expected l_freq < h_freq; got l_freq=40.0, h_freq=1.0"),
    (dict(l_freq=-1.0), 1200.0, "expected l_freq a positive number"),
    (dict(sfreq=0.0), 1200.0, "expected sfreq a positive number; got 0.0"),
    (dict(sfreq=-120.0), 1200.0, "expected sfreq a positive number"),
    (dict(), 0.0, "expected the input sfreq a positive number"),
    (dict(), float("nan"), "expected the input sfreq a positive number"),
    (dict(picks=("mag", "brain")), 1200.0, "unknown ['brain']"),
    (dict(picks=()), 1200.0, "expected picks that select at least one channel"),
    (dict(clamp=0.0), 1200.0, "expected clamp > 0 (or None to disable clipping); got 0.0"),
    (dict(clamp=-5.0), 1200.0, "expected clamp > 0"),
    (dict(clamp="20"), 1200.0, "expected clamp > 0"),
    (dict(sfreq="120"), 1200.0, "expected sfreq a positive number; got '120'"),
    (dict(notch=50.0, l_freq=None, h_freq=None), 100.0,
     "expected notch < 50.0 Hz (Nyquist of the 100 Hz input"),
    (dict(filter_order=0), 1200.0, "expected filter_order an integer from 1 to 10"),
    (dict(antialias_pass=1.5), 1200.0, "expected 0 < antialias_pass < 1"),
    (dict(center=(0.0,), scale=None, ch_names=("a",)), 1200.0, "center and scale both set"),
    (dict(center=(0.0,), scale=(0.0,), ch_names=("a",)), 1200.0, "positive finite scale"),
    (dict(center=(0.0, 1.0), scale=(1.0, 1.0), ch_names=("a",)), 1200.0, "one value per channel"),
    (dict(center=("a",), scale=(1.0,), ch_names=("a",)), 1200.0, "expected center a list of float"),
]


@pytest.mark.parametrize(("fields", "sfreq_in", "message"), BAD)
def test_bad_config_raises_input_error(fields, sfreq_in, message):
    with pytest.raises(InputError) as err:
        PreprocessConfig(**fields).validate(sfreq_in)
    assert message in str(err.value)
    assert str(err.value).startswith("expected ") and ". Fix: " in str(err.value)
    with pytest.raises(InputError):  # the online face refuses it too
        OnlinePreprocessor(PreprocessConfig.from_dict(fields), sfreq_in, n_chans=1)


def test_picks_that_select_nothing(realdata):
    raw = _read(realdata / "eeglab" / "test_raw.set")
    with pytest.raises(InputError, match="select at least one channel.*types \\['eeg'\\].*Fix: "):
        PreprocessConfig(picks=("mag",)).validate(raw.info["sfreq"], info=raw.info)
    with pytest.raises(InputError, match="include names that the recording has"):
        PreprocessConfig(picks=(), include=("nope",)).resolve(raw.info)
    with pytest.raises(InputError, match="trained channels.*missing"):
        PreprocessConfig(ch_names=("Fz", "nope")).pick_indices(raw.ch_names)


def test_bad_chunks_raise_input_error():
    online = OnlinePreprocessor(PreprocessConfig(), 1200.0, n_chans=3)
    shape_error = r"expected a chunk of shape \(3, n_samples\); got shape \(4, 10\)"
    with pytest.raises(InputError, match=shape_error):
        online.process(np.zeros((4, 10)))
    with pytest.raises(InputError, match="shape"):
        online.process(np.zeros(10))
    with pytest.raises(InputError, match="one timestamp per sample"):
        online.process(np.zeros((3, 10)), timestamps=np.zeros(9))
    with pytest.raises(InputError, match="resolved channels, or n_chans"):
        OnlinePreprocessor(PreprocessConfig(), 1200.0)
    with pytest.raises(InputError, match="sfreq_in for an array"):
        preprocess_raw(np.zeros((3, 10)), PreprocessConfig())
    with pytest.raises(InputError, match="2 channels"):
        preprocess_raw(np.zeros((3, 10)), PreprocessConfig(ch_names=("a", "b")), 1200.0)


# ---------------------------------------------------------------------------- scaling
def test_robust_scaler_centres_scales_and_clamps():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((4, 60 * 1000)) * np.array([[1e-13], [5e-6], [1.0], [300.0]])
    data[:, 30_000] += 1e4 * data[:, :1000].std(axis=1)  # one huge artefact per channel
    config = fit_scaler(data, PreprocessConfig(l_freq=0.5), 1000.0, skip_s=2.0)
    assert config.ch_names == ("ch0", "ch1", "ch2", "ch3") and config.is_fitted
    out = preprocess_raw(data, config, 1000.0)[:, 240:]
    q25, median, q75 = np.percentile(out, [25, 50, 75], axis=1)
    np.testing.assert_allclose(median, 0.0, atol=1e-3)
    np.testing.assert_allclose(q75 - q25, 1.0, atol=1e-3)
    assert np.abs(out).max() == np.float32(config.clamp)  # the artefact hit the clamp
    loose = preprocess_raw(data, PreprocessConfig(**{**config.to_dict(), "clamp": None}), 1000.0)
    assert np.abs(loose).max() > 100


def test_zero_iqr_guard_is_per_channel():
    rng = np.random.default_rng(2)
    data = rng.standard_normal((4, 20_000))
    data[0] *= 1e-13  # MEG-sized, beside EEG-sized channels: not "zero"
    data[1] = 7.0  # dead channel: constant offset
    data[2] = 0.0
    data[2, ::1000] = 1.0  # quantised: mostly zero
    config = fit_scaler(data, PreprocessConfig(l_freq=None, h_freq=None), 1000.0)
    out = preprocess_raw(data, config, 1000.0)
    assert config.scale[0] < 1e-12 and abs(config.scale[0] / config.scale[3] - 1e-13) < 1e-14
    assert config.scale[1] == 1.0
    assert np.abs(out[1]).max() < 1e-6  # stays near 0, not round-off blown up to the clamp
    assert 0 < config.scale[2] < 1 and np.abs(out[2]).max() < config.clamp


# ---------------------------------------------------------------------------- filters
def test_notch_removes_mains():
    x = _sine(50.0, 1200.0, 4.0)
    base = dict(l_freq=None, h_freq=None)
    kept = preprocess_raw(x, PreprocessConfig(**base), 1200.0)[:, 240:]
    notched = preprocess_raw(x, PreprocessConfig(notch=50.0, **base), 1200.0)[:, 240:]
    assert np.abs(kept).max() > 0.5
    assert np.abs(notched).max() < 1e-3


@pytest.mark.parametrize("sfreq_in", [1200.0, 1000.0, 512.0, 300.3])
def test_antialias_stop_band_and_pass_band(sfreq_in):
    config = PreprocessConfig(l_freq=None, h_freq=None)
    online = OnlinePreprocessor(config, sfreq_in, n_chans=2)
    settle = int(0.5 * online.sfreq_out)
    # Everything that would fold into the 0-45 Hz pass band is >= ~60 dB down.
    for freq in [76.0, 80.0, 100.0, 0.49 * sfreq_in, 0.3 * sfreq_in]:
        if freq < 75.0 or freq >= sfreq_in / 2:
            continue
        out = preprocess_raw(_sine(freq, sfreq_in, 3.0), config, sfreq_in)[:, settle:]
        assert np.abs(out).max() < 10 ** (-57 / 20), freq
    for freq in [1.0, 10.0, 30.0, 44.0]:
        out, times = preprocess_raw(_sine(freq, sfreq_in, 3.0), config, sfreq_in, return_times=True)
        assert abs(_amplitude(out[0, settle:], times[settle:], freq) - 1.0) < 2e-3, freq


def test_band_pass_removes_offsets_and_drift():
    t = np.arange(20 * 1200) / 1200
    x = np.stack([5.0 + 0.1 * t, -3.0 + 0 * t]) + np.sin(2 * np.pi * 10 * t)
    out = preprocess_raw(x, PreprocessConfig(l_freq=1.0, h_freq=40.0), 1200.0)[:, 600:]
    assert np.abs(out.mean(axis=1)).max() < 1e-2
    assert abs(np.abs(out).max() - 1.0) < 0.05


# ------------------------------------------------------------------- time and length
@pytest.mark.parametrize("sfreq_in", [1200.0, 1000.0, 300.3, 300.3074951171875, 512.0, 5000.0,
                                      128.0, 120.0, 100.0])
def test_length_and_time_alignment(sfreq_in):
    config = PreprocessConfig(l_freq=None, h_freq=None)
    x = _sine(3.0, sfreq_in, 4.0)
    out, times = preprocess_raw(x, config, sfreq_in, return_times=True)
    online = OnlinePreprocessor(config, sfreq_in, n_chans=2)
    assert out.dtype == np.float32
    assert out.shape[1] == -(-x.shape[1] * online.up // online.down) == times.size
    assert abs(online.sfreq_out / 120.0 - 1) < 1e-5
    np.testing.assert_allclose(times, np.arange(times.size) / online.sfreq_out, rtol=0, atol=1e-9)
    # Output k holds the input at time k / sfreq_out, delayed by the FIR's constant delay.
    expected = np.sin(2 * np.pi * 3.0 * (times - online.group_delay))
    settle = int(0.5 * online.sfreq_out)
    np.testing.assert_allclose(out[0, settle:], expected[settle:], atol=2e-3)
    # ~61 ms for 120 Hz out; longer when the input is the slower rate (100 Hz: 73 ms).
    assert online.group_delay < 0.0615 * 120.0 / min(120.0, sfreq_in)
    # Chunked: each output's time comes from the timestamps of the chunk that completed it.
    t0 = 12345.678
    rng = np.random.default_rng(3)
    t_out, start = [], 0
    while start < x.shape[1]:
        stop = start + int(rng.integers(1, 60))
        stamps = t0 + np.arange(start, min(stop, x.shape[1])) / sfreq_in
        chunk_out, chunk_times = online.process(x[:, start:stop], timestamps=stamps)
        assert chunk_out.shape[1] == chunk_times.size
        if chunk_times.size:
            assert chunk_times[-1] <= stamps[-1] + 1e-9  # never later than the newest input
        t_out.append(chunk_times)
        start = stop
    newest = np.floor(times * sfreq_in + 1e-9)  # index of the newest input each output used
    np.testing.assert_allclose(np.concatenate(t_out), t0 + newest / sfreq_in, rtol=0, atol=1e-9)
    assert np.all(t0 + times - np.concatenate(t_out) < 1 / sfreq_in)  # within one input sample


def test_group_delay_is_reported():
    online = OnlinePreprocessor(PreprocessConfig(notch=50.0), 1200.0, n_chans=1)
    assert online.group_delay == 73 / 1200  # 147-tap linear-phase FIR: 73 samples
    assert 0.062 < online.group_delay_at(10.0) < 0.070  # + the band-pass and notch at 10 Hz
    assert OnlinePreprocessor(PreprocessConfig(), 120.0, n_chans=1).group_delay == 0.0


def test_zero_and_one_sample_chunks():
    x = _synthetic(sfreq=1000.0, seconds=2.0, n_chans=3)
    config = fit_scaler(x, PreprocessConfig(notch=50.0), 1000.0)
    online = OnlinePreprocessor(config, 1000.0)
    empty = online.process(np.empty((3, 0)))
    assert empty.shape == (3, 0) and empty.dtype == np.float32
    outs = []
    for i in range(x.shape[1]):
        outs.append(online.process(x[:, i:i + 1]))
        outs.append(online.process(x[:, i:i]))
    streamed = np.concatenate(outs, axis=1)
    offline = preprocess_raw(x, config, 1000.0)
    assert streamed.dtype == offline.dtype == np.float32
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= PARITY_TOL
    # reset() starts over: the same input gives the same output again.
    assert np.array_equal(online.reset().process(x), offline)


def test_non_finite_samples_are_held_and_counted():
    x = _synthetic(sfreq=1000.0, seconds=3.0, n_chans=2)
    config = fit_scaler(x, PreprocessConfig(), 1000.0)
    gappy = x.copy()
    gappy[0, 1000:1050] = np.nan
    gappy[1, 1500] = np.inf
    online = OnlinePreprocessor(config, 1000.0)
    out = _stream(online, gappy)
    assert np.isfinite(out).all() and online.n_nonfinite == 51
    held = x.copy()
    held[0, 1000:1050] = x[0, 999]
    held[1, 1500] = x[1, 1499]
    assert np.abs(out - preprocess_raw(held, config, 1000.0)).max() <= PARITY_TOL


# ---------------------------------------------------------------------------- parity
REAL = [
    # (file, picks, notch): MEG at 1200 Hz, EEG at 128, 512, 5000 Hz, Neuromag at 300.3 Hz
    ("ctf275_short_discontinuous_raw.fif", ("mag",), 50.0),
    ("eeglab/test_raw.set", ("eeg",), 50.0),
    ("eeg_reduced.edf", ("eeg",), 50.0),
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", ("meg",), 60.0),
    ("brainvision/test_NO.vhdr", ("eeg",), 50.0),
]


@pytest.mark.parametrize(("name", "picks", "notch"), REAL, ids=[r[0] for r in REAL])
def test_online_offline_parity_on_real_recordings(realdata, name, picks, notch):
    raw = _read(realdata / name)
    config = fit_scaler(raw, PreprocessConfig(picks=picks, l_freq=0.5, h_freq=40.0, notch=notch))
    config = PreprocessConfig.from_json(config.to_json())  # as a checkpoint would hold it
    offline = preprocess_raw(raw, config)
    data = raw.get_data(picks=config.pick_indices(raw.ch_names))
    online = _stream(OnlinePreprocessor(config, raw.info["sfreq"]), data, seed=len(name))
    assert online.dtype == offline.dtype == np.float32
    assert online.shape == offline.shape == (len(config.ch_names), offline.shape[1])
    # Both faces start in the same state, so parity holds from the first sample, not
    # only after the filters' warm-up.
    assert np.abs(online - offline).max() <= PARITY_TOL
    assert np.abs(offline).max() > 1.0  # a real signal came through, not zeros


def test_online_offline_parity_on_a_synthetic_session():
    x = _synthetic(sfreq=1000.0, seconds=60.0, n_chans=64)
    config = fit_scaler(x, PreprocessConfig(notch=50.0), 1000.0, skip_s=5.0)
    offline = preprocess_raw(x, config, 1000.0)
    online = _stream(OnlinePreprocessor(config, 1000.0), x, seed=7)
    assert np.abs(online - offline).max() <= PARITY_TOL
    q25, q75 = np.percentile(offline[:, 600:], [25, 75], axis=1)
    np.testing.assert_allclose(q75 - q25, 1.0, atol=0.05)


@pytest.mark.timeout(120)  # the shared fixture simulates the session first (~5 s)
def test_online_offline_parity_on_a_simulated_session(small_meg_session):
    """The acceptance test on glimpse's own simulator output, read as a user's BIDS set."""
    from glimpse.streaming.recordings import open_recording

    root, _, _ = small_meg_session
    raw = open_recording(root, subject="01").raw
    config = fit_scaler(raw, PreprocessConfig(picks=("mag",), notch=50.0), skip_s=5.0)
    offline = preprocess_raw(raw, config)
    data = raw.get_data(picks=list(config.ch_names))
    online = _stream(OnlinePreprocessor(config, raw.info["sfreq"]), data, seed=11)
    assert offline.shape == (274, online.shape[1])
    assert np.abs(online - offline).max() <= PARITY_TOL
    assert np.abs(offline).max() > 1.0


@pytest.mark.parametrize("sos", [signal.butter(2, [0.1, 40.0], "bandpass", fs=120.0, output="sos"),
                                 signal.tf2sos(*signal.iirnotch(50.0, 30.0, fs=1000.0))],
                         ids=["band-pass", "notch"])
def test_short_blocks_filter_exactly_as_sosfilt(sos):
    """Live chunks take the matrix form of the IIR cascade; it is sosfilt's recursion."""
    block = SosBlock(sos)
    rng = np.random.default_rng(0)
    for m in (1, 2, 6, 13, 64):
        x = rng.standard_normal((5, m))
        zi = rng.standard_normal((len(sos), 5, 2))
        y, zf = block(x, zi)
        want_y, want_zf = signal.sosfilt(sos, x, axis=-1, zi=zi)
        np.testing.assert_allclose(y, want_y, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(zf, want_zf, rtol=1e-9, atol=1e-12)


def test_short_chunks_match_one_long_block():
    """The banded FIR and matrix IIR (chunks <= 64 outputs) against the long-block path."""
    x = _synthetic(sfreq=1000.0, seconds=4.0, n_chans=4)
    config = fit_scaler(x, PreprocessConfig(notch=50.0), 1000.0)
    whole = OnlinePreprocessor(config, 1000.0).process(x)  # 480 outputs in one call
    online = OnlinePreprocessor(config, 1000.0)
    hop = np.concatenate([online.process(x[:, i:i + 50]) for i in range(0, x.shape[1], 50)], 1)
    assert hop.shape == whole.shape
    assert np.abs(hop - whole).max() <= 1e-5 * np.abs(whole).max()
