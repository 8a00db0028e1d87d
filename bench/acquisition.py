"""Cost of live acquisition per LSL chunk, beyond preprocessing; prints JSON.

A real pylsl outlet in another process (tests/streaming/lsl_outlet.py) pushes a
CTF-275-like stream (272 channels at 1200 Hz, 10 ms = 12-sample chunks, plus a
SAMPLE_INDEX channel); a StreamAcquisition (notch on, fitted scaler, 250 ms
windows every 50 ms at 120 Hz) records, per chunk, the time from the pull's return
to the last window handed to ``on_window``, and the preprocessing share of it.
Also: the cost of one 12-sample ``pull_chunk`` into the ring when data is waiting,
and the same per-chunk path fed plain arrays (no outlet competing for the cores).

Usage: ``python bench/acquisition.py [--seconds 20] [--n-chans 272] [--sfreq 1200]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl

from streaming.acquisition import StreamAcquisition
from streaming.lsl import find_stream, open_inlet
from streaming.preprocess import PreprocessConfig
from streaming.ring import SampleRing

OUTLET = Path(__file__).resolve().parents[1] / "tests" / "streaming" / "lsl_outlet.py"


def _outlet(name: str, sid: str, args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(OUTLET), "--name", name, "--source-id", sid,
                             "--n-chans", str(args.n_chans), "--sfreq", str(args.sfreq),
                             "--chunk", str(args.chunk), "--duration", str(args.seconds),
                             "--ch-type", "mag", "--unit", "fT", "--amplitude", "100",
                             "--wait-consumer", "20"], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the outlet did not start")
    return proc


def _us(values) -> dict:
    us = np.asarray(values) * 1e6
    return {"median_us": round(float(np.median(us)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
            "max_us": round(float(us.max()), 1)}


def _pull_cost(name: str, sid: str, n_chans: int, chunk: int, sfreq: float) -> dict:
    """Time pull_chunk(dest_obj=ring slice) of `chunk` samples when data is waiting."""
    info = find_stream(name, sid, timeout=10)
    inlet, _ = open_inlet(info)
    ring = SampleRing(int(2 * sfreq), n_chans + 1)
    time.sleep(1.5)  # let ~1.5 s pile up in the inlet
    costs = []
    for _ in range(int(sfreq // chunk)):
        data, _ = ring.reserve(chunk)
        t = time.perf_counter()
        _, ts = inlet.pull_chunk(timeout=0.0, max_samples=chunk, dest_obj=data,
                                 as_numpy=True)
        costs.append(time.perf_counter() - t)
        ring.commit(len(ts))
    inlet.close_stream()
    return _us(costs)


def _offline(n_chans: int, sfreq: float, chunk: int, config: PreprocessConfig,
             n_chunks: int = 3000) -> dict:
    """The same per-chunk path fed plain arrays (no LSL, no other process on the cores)."""
    names = list(config.ch_names)
    info = pylsl.StreamInfo("bench-arrays", "MEG", n_chans + 1, sfreq, "float32", "bench-arrays")
    info.set_channel_labels(["SAMPLE_INDEX", *names])
    info.set_channel_units(["none"] + ["fT"] * n_chans)
    acq = StreamAcquisition("bench-arrays", ch_names=names, preprocess=config, n_times=30,
                            on_window=lambda w: None, markers=False)
    acq._setup(info)
    rng = np.random.default_rng(0)
    data = (100 * rng.standard_normal((chunk * n_chunks, n_chans + 1))).astype(np.float32)
    times = 1000.0 + np.arange(len(data)) / sfreq
    acq._profile = []
    for start in range(0, len(data), chunk):
        view, tview = acq._raw.reserve(chunk)
        view[:] = data[start:start + chunk]  # stands in for pull_chunk(dest_obj=view)
        tview[:] = times[start:start + chunk]
        view, tview = acq._raw.commit(chunk)
        acq._on_chunk(view, tview, 0.0)
    prof = np.array(acq._profile[200:])
    return {"on_chunk_total": _us(prof[:, 1]), "preprocess": _us(prof[:, 2]),
            "acquisition_beyond_preprocess": _us(prof[:, 1] - prof[:, 2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--n-chans", type=int, default=272)
    parser.add_argument("--sfreq", type=float, default=1200.0)
    parser.add_argument("--chunk", type=int, default=12)
    args = parser.parse_args()

    sid = uuid.uuid4().hex
    name = f"bench-acquisition-{sid[:8]}"
    names = [f"EEG{i:03d}" for i in range(args.n_chans)]  # the outlet's default labels
    config = PreprocessConfig(notch=50.0, ch_names=tuple(names), center=(0.0,) * len(names),
                              scale=(1e-13,) * len(names))
    windows = []
    proc = _outlet(name, sid, args)
    try:
        acq = StreamAcquisition(name, sid, ch_names=names, preprocess=config, n_times=30,
                                on_window=windows.append, markers=False, lost_after=5.0)
        acq._profile = []  # per chunk: (n samples, on_chunk seconds, preprocess seconds)
        acq.start()
        proc.wait(args.seconds + 30)
        deadline = time.monotonic() + 5
        while acq.stats()["n_samples"] < int(args.seconds * args.sfreq) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        acq.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    prof = np.array(acq._profile[50:])  # skip the start-up chunks
    total, pre = prof[:, 1], prof[:, 2]
    stats = acq.stats()

    sid2 = uuid.uuid4().hex
    name2 = f"bench-pull-{sid2[:8]}"
    args2 = argparse.Namespace(**{**vars(args), "seconds": 4.0})
    proc = subprocess.Popen([sys.executable, str(OUTLET), "--name", name2, "--source-id", sid2,
                             "--n-chans", str(args.n_chans), "--sfreq", str(args.sfreq),
                             "--chunk", str(args.chunk), "--duration", str(args2.seconds)],
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        pull = _pull_cost(name2, sid2, args.n_chans, args.chunk, args.sfreq)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()

    print(json.dumps({
        "bench": "acquisition_chunk",
        "stream": {"n_chans": args.n_chans, "sfreq": args.sfreq, "chunk_samples": args.chunk,
                   "seconds": args.seconds},
        "chunks": len(prof),
        "samples": stats["n_samples"], "windows": stats["n_windows"],
        "invalid_windows": stats["n_invalid_windows"], "gaps": stats["n_gaps"],
        "on_chunk_total": _us(total),
        "preprocess": _us(pre),
        "acquisition_beyond_preprocess": _us(total - pre),
        "pull_chunk_into_ring": pull,
        "offline_same_path_on_arrays": _offline(args.n_chans, args.sfreq, args.chunk, config),
        "window_preprocess_ms_median": round(float(np.median(
            [w.preprocess_ms for w in windows])), 3),
        "window_acquire_ms_median": round(float(np.median([w.acquire_ms for w in windows])), 3),
        "note": f"pylsl {pylsl.__version__}; acquire_ms includes up to one chunk of "
                "buffering (the newest sample a window needs may sit early in its chunk)",
    }, indent=2))


if __name__ == "__main__":
    main()
