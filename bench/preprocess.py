"""Cost of the online preprocessing face per live chunk; prints JSON.

A CTF-275-like stream (272 channels at 1200 Hz) and a 64-channel EEG stream
(1000 Hz), notch on, scaler fitted, in chunks of 10 ms (a sender's usual chunk) and
of 50 ms (one hop: acquisition pulls once per window, when the sample that completes
it arrives). Usage: ``python bench/preprocess.py [--chunks 5000]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from glimpse.streaming.preprocess import OnlinePreprocessor, PreprocessConfig


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000, help="timed chunks per stream")
    args = parser.parse_args()
    print(json.dumps({
        "bench": "preprocess_online_chunk",
        "meg_ctf275_10ms": measure(272, 1200.0, 12, args.chunks),
        "meg_ctf275_50ms": measure(272, 1200.0, 60, args.chunks),
        "eeg_64_10ms": measure(64, 1000.0, 10, args.chunks),
        "eeg_64_50ms": measure(64, 1000.0, 50, args.chunks),
    }, indent=2))


if __name__ == "__main__":
    main()
