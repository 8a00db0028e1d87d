"""A synthetic LSL outlet for the acquisition tests, run as a subprocess.

Channel 0 is ``SAMPLE_INDEX`` and carries the sample's index (float32 holds
integers exactly up to 2**24: 3.9 h at 1200 Hz), so a test proves end to end
that no sample was dropped or duplicated. The other channels carry small noise
plus a 10 Hz sine, in SI units unless ``--unit`` says otherwise. Timestamps are
explicit, one per sample, on the regular grid ``t0 + (index + shift) / sfreq``
(so a pause or a skip is a timestamp jump, exactly as a real amplifier's).

Prints ``ready`` (flushed) once the outlets exist, then pushes in real time,
one chunk per ``--chunk`` samples. Examples::

    python tests/streaming/lsl_outlet.py --name X --source-id U --n-chans 8 --sfreq 1000
    python tests/streaming/lsl_outlet.py ... --nan-at 1.0 --nan-len 20 --pause-at 1 --pause-for 5
    python tests/streaming/lsl_outlet.py ... --raw file.fif --clock-channel SCLK01-177
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pylsl

from glimpse.streaming.outlet import SignalOutlet, si_units, signal_info


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--source-id", required=True)
    p.add_argument("--type", default="EEG", help="LSL content type")
    p.add_argument("--n-chans", type=int, default=8, help="data channels besides SAMPLE_INDEX")
    p.add_argument("--sfreq", type=float, default=1000.0, help="nominal rate; 0 = irregular")
    p.add_argument("--format", default="float32", help="float32, double64, string")
    p.add_argument("--chunk", type=int, default=10, help="samples per push")
    p.add_argument("--duration", type=float, default=0.0, help="seconds of data; 0 = forever")
    p.add_argument("--ch-names", default="", help="comma-separated data channel names")
    p.add_argument("--ch-type", default="eeg")
    p.add_argument("--unit", default="V", help="unit declared for the data channels")
    p.add_argument("--amplitude", type=float, default=1e-5, help="in the declared unit")
    p.add_argument("--start-index", type=int, default=0, help="first SAMPLE_INDEX value")
    p.add_argument("--nan-at", type=float, action="append", default=[],
                   help="second at which a NaN burst starts (repeatable)")
    p.add_argument("--inf-at", type=float, action="append", default=[],
                   help="second at which a +inf burst starts (repeatable)")
    p.add_argument("--burst-len", type=int, default=5, help="samples per NaN/inf burst")
    p.add_argument("--pause-at", type=float, default=None, help="stop pushing at this second")
    p.add_argument("--pause-for", type=float, default=0.0,
                   help="seconds of silence; the samples of the pause are skipped "
                        "(timestamps jump), as with a real outage")
    p.add_argument("--markers", action="store_true", help="also publish '<name>-markers'")
    p.add_argument("--marker-every", type=float, default=0.2, help="seconds between markers")
    p.add_argument("--bad-marker-every", type=int, default=0,
                   help="every Nth marker is malformed JSON (0 = never)")
    p.add_argument("--wait-consumer", type=float, default=0.0,
                   help="after 'ready', wait up to this many seconds for an inlet before "
                        "pushing (so a test sees every sample from index 0)")
    p.add_argument("--raw", default=None, help="push this recording's samples instead")
    p.add_argument("--clock-channel", default=None,
                   help="with --raw: a channel of seconds (CTF SCLK) whose jumps become "
                        "timestamp jumps")
    return p.parse_args()


def _from_raw(args):
    import mne

    raw = mne.io.read_raw(args.raw, preload=True, verbose="error")
    clock = None
    if args.clock_channel:
        clock = raw.get_data(picks=[args.clock_channel])[0]
    keep = [n for n in raw.ch_names if n != args.clock_channel]
    data = raw.get_data(picks=keep).T.astype(np.float32)  # SI, as MNE stores it
    info = raw.copy().pick(keep).info
    return data, keep, info.get_channel_types(), si_units(info), raw.info["sfreq"], clock


def main() -> None:
    args = _parse()
    rng = np.random.default_rng(0)
    clock = None
    if args.raw:
        data, names, types, units, sfreq, clock = _from_raw(args)
        args.sfreq = sfreq
        n_total = len(data)
    else:
        names = args.ch_names.split(",") if args.ch_names else [
            f"EEG{i:03d}" for i in range(args.n_chans)]
        types, units = [args.ch_type] * len(names), [args.unit] * len(names)
        sfreq = args.sfreq if args.sfreq > 0 else 100.0  # irregular: push at 100 Hz anyway
        n_total = int(round(args.duration * sfreq)) if args.duration > 0 else None
        data = None
    n_data = len(names)
    info = signal_info(args.name, args.source_id, args.sfreq, names, types, units,
                       index="first", stream_type=args.type, channel_format=args.format)
    outlet = SignalOutlet(info, index="first", markers=args.markers, max_buffered=60)
    print("ready", flush=True)
    if args.wait_consumer > 0:
        outlet.signal.wait_for_consumers(args.wait_consumer)

    chunk = max(1, args.chunk)
    t0 = pylsl.local_clock() + 0.05
    shift = 0.0  # seconds the timestamps jump by after a pause
    paused = False
    n_markers = 0
    next_marker = args.marker_every
    bursts = [(int(round(s * sfreq)), np.nan) for s in args.nan_at] + \
             [(int(round(s * sfreq)), np.inf) for s in args.inf_at]
    phase = 2 * np.pi * 10.0 / sfreq
    index = 0
    while n_total is None or index < n_total:
        n = chunk if n_total is None else min(chunk, n_total - index)
        idx = np.arange(index, index + n)
        if args.pause_at is not None and not paused and idx[-1] / sfreq >= args.pause_at:
            paused = True
            time.sleep(args.pause_for)
            shift += args.pause_for  # the samples "during" the pause never existed
        due = t0 + shift + idx[-1] / sfreq  # real-time pacing on the sample grid
        if clock is not None:
            times = t0 + (clock[idx] - clock[0])  # jumps where the recording's clock does
        else:
            times = t0 + shift + idx / sfreq
        wait = due - pylsl.local_clock()
        if wait > 0:
            time.sleep(wait)
        if data is not None:
            block = data[index:index + n]
        else:
            block = (args.amplitude * (0.2 * rng.standard_normal((n, n_data))
                                       + np.sin(phase * idx)[:, None])).astype(np.float32)
        for start, value in bursts:
            hit = (idx >= start) & (idx < start + args.burst_len)
            if hit.any():
                block = block.copy()
                block[hit, : max(1, n_data // 2)] = value
        if args.format == "string":  # only to be refused: the index as text, then the data
            rows = np.concatenate([(args.start_index + idx)[:, None], block], axis=1)
            outlet.signal.push_chunk([[str(v) for v in row] for row in rows.tolist()],
                                     times.tolist())
        else:
            outlet.push(block, times, args.start_index + index)
        index += n
        if outlet.markers is not None and idx[-1] / sfreq >= next_marker:
            n_markers += 1
            if args.bad_marker_every and n_markers % args.bad_marker_every == 0:
                text = '{"stim_file": "broken.png", "concept":'  # malformed on purpose
            else:
                text = json.dumps({"stim_file": f"img{n_markers:04d}.png",
                                   "concept": f"concept{n_markers % 4}",
                                   "trial_type": "test", "index": n_markers})
            outlet.push_marker(text, times[-1])
            next_marker += args.marker_every
    time.sleep(0.5)  # let the last chunk leave before the outlet goes
    print("done", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
