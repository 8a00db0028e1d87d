"""Why glimpse acquires with its own inlet rather than mne-lsl's StreamLSL; prints JSON.

One synthetic MEG-sized outlet (272 channels + SAMPLE_INDEX at 1200 Hz, 10 ms
chunks) runs in a subprocess. In this process, one after the other:

* ``mne_lsl``: ``StreamLSL(bufsize=2).connect(acquisition_delay=D)`` for each D;
  the CPU this process spends while it only acquires (``time.process_time`` over
  ``--seconds`` of sleep), and, in a second pass that polls ``n_new_samples``
  every 0.2 ms, the age of every sample when it becomes visible
  (``local_clock() - its LSL timestamp``): what a windower on top of it would
  wait, at the least, for the sample that completes a window; and the age of
  the newest sample of each poll that found new ones (a chunk end: the best case
  for a window whose newest sample sits there, as glimpse's ``chunks`` grid puts it).
* ``glimpse``: :class:`~glimpse.streaming.acquisition.StreamAcquisition` with the
  default preprocessing, 250 ms windows every 50 ms on the ``chunks`` grid (as
  ``glimpse decode``), cut when the sample that completes them arrives: the CPU
  of the same sleep, and each window's age when it is handed over
  (``t_cut - t_end``, its newest sample's age), preprocessing included.

Needs mne-lsl, which glimpse does not depend on: ``pip install mne-lsl``.
Usage: ``python bench/mne_lsl_acquisition.py [--seconds 10] [--delays 0.001 0.01 0.05]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl

REPO = Path(__file__).resolve().parents[1]
N_CHANS, SFREQ = 272, 1200.0


def _outlet(name: str) -> subprocess.Popen:
    args = [sys.executable, str(REPO / "tests" / "streaming" / "lsl_outlet.py"), "--name", name,
            "--source-id", name, "--type", "MEG", "--n-chans", str(N_CHANS), "--sfreq",
            str(SFREQ), "--chunk", "12", "--ch-type", "mag", "--unit", "T", "--amplitude", "1e-12"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _pcts(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), **{f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 99)}}


def mne_lsl_run(name: str, delay: float, seconds: float) -> dict:
    from mne_lsl.stream import StreamLSL

    stream = StreamLSL(bufsize=2, name=name).connect(acquisition_delay=delay, timeout=10)
    try:
        time.sleep(1.0)
        cpu0, t0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cores = (time.process_time() - cpu0) / (time.perf_counter() - t0)
        stream.get_data()  # marks what came during the sleep as seen
        ages, newest, end = [], [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            n_new = stream.n_new_samples
            if n_new:
                _, ts = stream.get_data(winsize=min(n_new, SFREQ) / SFREQ)
                age = (pylsl.local_clock() - ts) * 1e3
                ages.extend(age.tolist())
                newest.append(float(age[-1]))
            time.sleep(0.0002)
    finally:
        stream.disconnect()
    return {"acquisition_delay_s": delay, "cpu_cores": round(cores, 4),
            "sample_age_when_visible_ms": _pcts(ages),
            "newest_sample_age_when_visible_ms": _pcts(newest)}


def glimpse_run(name: str, seconds: float) -> dict:
    from glimpse.streaming.acquisition import StreamAcquisition
    from glimpse.streaming.preprocess import PreprocessConfig

    ch_names = [f"EEG{i:03d}" for i in range(N_CHANS)]  # the test outlet's names
    config = PreprocessConfig(ch_names=ch_names, center=[0.0] * N_CHANS, scale=[1e-12] * N_CHANS)
    ages: list[float] = []
    acq = StreamAcquisition(name, ch_names=ch_names, preprocess=config, n_times=30, markers=False,
                            grid="chunks", on_window=lambda w: ages.append((w.t_cut - w.t_end) * 1e3))
    with acq:
        time.sleep(4.0)  # past the chunks grid's probe (2 s settle + 1 s)
        ages.clear()
        cpu0, t0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cores = (time.process_time() - cpu0) / (time.perf_counter() - t0)
    return {"cpu_cores": round(cores, 4), "window_age_at_cut_ms": _pcts(ages)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--delays", type=float, nargs="+", default=[0.001, 0.01, 0.05])
    args = parser.parse_args()
    name = f"bench-mnelsl-{uuid.uuid4().hex[:8]}"
    proc = _outlet(name)
    try:
        out = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
               "stream": {"n_chans": N_CHANS, "sfreq": SFREQ, "chunk_samples": 12},
               "mne_lsl": [mne_lsl_run(name, d, args.seconds) for d in args.delays],
               "glimpse": glimpse_run(name, args.seconds)}
    finally:
        proc.terminate()
        proc.wait(5)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
