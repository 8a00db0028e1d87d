"""Cost of the online preprocessing face per live chunk; prints JSON.

A CTF-275-like stream (272 channels at 1200 Hz) and a 64-channel EEG stream
(1000 Hz), notch on, scaler fitted, in chunks of 10 ms (a sender's usual chunk) and
of 50 ms (one hop: acquisition pulls once per window, when the sample that completes
it arrives). With ``--parity DIR`` (the real recordings, ``../shared/realdata``),
also the largest difference between the online face, fed in random chunks of 1-200
samples, and the offline face on each recording (the figure the parity tests bound).
Usage: ``python bench/preprocess.py [--chunks 5000] [--parity ../shared/realdata]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from glimpse.streaming.preprocess import (OnlinePreprocessor, PreprocessConfig, fit_scaler,
                                          preprocess_raw)

# (file, picks, notch): MEG at 1200 Hz, EEG at 128, 512, 5000 Hz, Neuromag at 300.3 Hz
REAL = [("ctf275_short_discontinuous_raw.fif", ("mag",), 50.0),
        ("eeglab/test_raw.set", ("eeg",), 50.0), ("eeg_reduced.edf", ("eeg",), 50.0),
        ("neuromag306_sample_audvis_trunc_raw_sss.fif", ("meg",), 60.0),
        ("brainvision/test_NO.vhdr", ("eeg",), 50.0)]


def measure(n_chans: int, sfreq: float, chunk: int, n_chunks: int, warmup: int = 200) -> dict:
    config = PreprocessConfig(notch=50.0, ch_names=tuple(f"ch{i}" for i in range(n_chans)),
                              center=(0.0,) * n_chans, scale=(1e-12,) * n_chans)
    online = OnlinePreprocessor(config, sfreq)
    span = chunk * 10_000
    x = np.random.default_rng(0).standard_normal((n_chans, span)) * 1e-12
    costs = np.empty(n_chunks)
    for i in range(warmup + n_chunks):
        start = (i * chunk) % (span - chunk)
        block = x[:, start:start + chunk]
        t = time.perf_counter()
        online.process(block)
        if i >= warmup:
            costs[i - warmup] = time.perf_counter() - t
    us = costs * 1e6
    return {
        "n_chans": n_chans, "sfreq": sfreq, "chunk_samples": chunk, "chunks": n_chunks,
        "median_us": round(float(np.median(us)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "max_us": round(float(us.max()), 1),
        "realtime_fraction": round(float(np.median(costs)) / (chunk / sfreq), 4),
        "group_delay_ms": round(online.group_delay * 1e3, 1),
    }


def parity(realdata: Path) -> dict:
    """Max |online - offline| (scaled units) per real recording, online in random chunks."""
    import mne

    out = {}
    for name, picks, notch in REAL:
        raw = mne.io.read_raw(realdata / name, preload=True, verbose=False)
        config = fit_scaler(raw, PreprocessConfig(picks=picks, l_freq=0.5, h_freq=40.0,
                                                  notch=notch))
        offline = preprocess_raw(raw, config)
        data = raw.get_data(picks=config.pick_indices(raw.ch_names))
        online, rng, parts, start = OnlinePreprocessor(config, raw.info["sfreq"]), \
            np.random.default_rng(0), [], 0
        while start < data.shape[1]:
            size = int(rng.integers(1, 201))
            parts.append(online.process(data[:, start:start + size]))
            start += size
        out[name] = float(np.abs(np.concatenate(parts, axis=1) - offline).max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000, help="timed chunks per stream")
    parser.add_argument("--parity", type=Path, default=None,
                        help="folder of the real recordings (../shared/realdata)")
    args = parser.parse_args()
    print(json.dumps({
        **({"parity_max_abs_diff": parity(args.parity)} if args.parity else {}),
        "bench": "preprocess_online_chunk",
        "meg_ctf275_10ms": measure(272, 1200.0, 12, args.chunks),
        "meg_ctf275_50ms": measure(272, 1200.0, 60, args.chunks),
        "eeg_64_10ms": measure(64, 1000.0, 10, args.chunks),
        "eeg_64_50ms": measure(64, 1000.0, 50, args.chunks),
    }, indent=2))


if __name__ == "__main__":
    main()
