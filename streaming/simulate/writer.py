"""Stream simulated blocks to disk without holding a session in memory.

MEG: blocks go to a float32 scratch file (time-major); a minimal file-backed
:class:`mne.io.BaseRaw` reads it back in buffers so ``raw.save(fmt="short")``
writes the FIF. The per-channel calibration is a power of two chosen from the
channel's peak, so int16 steps sit far below the sensor noise and int16 -> float
-> int16 round trips (mne-bids re-saves the FIF) are exact.

EEG: blocks go straight into a BrainVision triplet (float32 in uV), which
mne-bids copies as is; BIDS does not allow FIF for EEG.
"""

from __future__ import annotations

import math
from pathlib import Path

import mne
import numpy as np
from mne.io import BaseRaw

INT16_HEADROOM = 32000  # < 32767: the FIF writer truncates, never saturates


class Float32Store:
    """Append-only time-major float32 file, tracking each channel's peak."""

    def __init__(self, path: Path, n_chans: int):
        self.path, self.n_chans, self.n_times = Path(path), n_chans, 0
        self.peak = np.zeros(n_chans)
        self._fid = open(self.path, "wb")

    def append(self, block: np.ndarray) -> None:
        """Write an ``(n_chans, n)`` block."""
        np.maximum(self.peak, np.abs(block).max(axis=1), out=self.peak)
        self._fid.write(np.ascontiguousarray(block.T, dtype="<f4").tobytes())
        self.n_times += block.shape[1]

    def close(self) -> None:
        self._fid.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start:stop`` of all channels, ``(n_chans, stop - start)`` float32."""
        with open(self.path, "rb") as fid:
            fid.seek(start * self.n_chans * 4)
            flat = np.fromfile(fid, "<f4", (stop - start) * self.n_chans)
        return flat.reshape(stop - start, self.n_chans).T


class _StoreRaw(BaseRaw):
    """A raw whose samples live in a :class:`Float32Store` (preload=False)."""

    def __init__(self, info: mne.Info, store: Float32Store):
        super().__init__(info, preload=False, last_samps=[store.n_times - 1], raw_extras=[{"store": store}], orig_format="single", verbose=False)

    def _read_segment_file(self, data, idx, fi, start, stop, cals, mult):
        one = self._raw_extras[fi]["store"].read(start, stop)
        if mult is not None:
            data[:] = mult @ one
        else:
            data[:] = one[idx]


def power_of_two_cals(peak: np.ndarray) -> np.ndarray:
    """Smallest power of two such that ``peak / cal`` fits int16 with headroom."""
    peak = np.where(peak > 0, peak, 1.0)
    return np.exp2(np.ceil(np.log2(peak / INT16_HEADROOM)))


def write_fif(store: Float32Store, info: mne.Info, fname: Path, annotations: mne.Annotations | None = None) -> mne.Info:
    """Save the store (and annotations) as an int16 FIF; returns the info with the calibrations used."""
    info = info.copy()
    cals = power_of_two_cals(store.peak)
    for ch, cal in zip(info["chs"], cals):
        if ch["kind"] == mne.io.constants.FIFF.FIFFV_STIM_CH:
            cal = 1.0  # trigger codes are integers already
        ch["cal"], ch["range"] = float(cal), 1.0
    raw = _StoreRaw(info, store)
    if annotations is not None:
        raw.set_annotations(annotations)
    raw.save(fname, fmt="short", buffer_size_sec=1.0, overwrite=True, verbose=False)
    return info


class BrainVisionWriter:
    """Write a BrainVision ``.vhdr``/``.vmrk``/``.eeg`` triplet block by block."""

    def __init__(self, folder: Path, basename: str, ch_names: list[str], sfreq: float, meas_date):
        self.folder, self.basename = Path(folder), basename
        self.ch_names, self.sfreq, self.meas_date = ch_names, sfreq, meas_date
        self._fid = open(self.folder / f"{basename}.eeg", "wb")
        self.n_times = 0
        self.peak = np.zeros(len(ch_names))

    @property
    def vhdr(self) -> Path:
        return self.folder / f"{self.basename}.vhdr"

    def append(self, block: np.ndarray) -> None:
        """Write an ``(n_chans, n)`` block in volts (stored as float32 microvolts)."""
        np.maximum(self.peak, np.abs(block).max(axis=1), out=self.peak)
        self._fid.write(np.ascontiguousarray(block.T * 1e6, dtype="<f4").tobytes())
        self.n_times += block.shape[1]

    def close(self, markers: list[tuple[int, int]]) -> Path:
        """Finish the files; ``markers`` are ``(sample, code)`` stimulus triggers."""
        self._fid.close()
        interval = 1e6 / self.sfreq
        lines = [
            "Brain Vision Data Exchange Header File Version 1.0",
            "; Written by glimpse simulate",
            "",
            "[Common Infos]",
            "Codepage=UTF-8",
            f"DataFile={self.basename}.eeg",
            f"MarkerFile={self.basename}.vmrk",
            "DataFormat=BINARY",
            "; Data orientation: MULTIPLEXED=ch1,pt1, ch2,pt1 ...",
            "DataOrientation=MULTIPLEXED",
            f"NumberOfChannels={len(self.ch_names)}",
            "; Sampling interval in microseconds",
            f"SamplingInterval={interval:.10g}",
            "",
            "[Binary Infos]",
            "BinaryFormat=IEEE_FLOAT_32",
            "",
            "[Channel Infos]",
            "; Each entry: Ch<Channel number>=<Name>,<Reference channel name>,",
            '; <Resolution in "Unit">,<Unit>, Future extensions..',
        ] + [f"Ch{k}={name},,1,µV" for k, name in enumerate(self.ch_names, 1)]
        self.vhdr.write_text("\n".join(lines) + "\n", encoding="utf-8")
        stamp = self.meas_date.strftime("%Y%m%d%H%M%S%f")
        marks = [
            "Brain Vision Data Exchange Marker File, Version 1.0",
            "",
            "[Common Infos]",
            "Codepage=UTF-8",
            f"DataFile={self.basename}.eeg",
            "",
            "[Marker Infos]",
            "; Each entry: Mk<Marker number>=<Type>,<Description>,<Position in data points>,",
            "; <Size in data points>, <Channel number (0 = marker is related to all channels)>",
            f"Mk1=New Segment,,1,1,0,{stamp}",
        ] + [f"Mk{k}=Stimulus,S{code:>3},{sample + 1},1,0" for k, (sample, code) in enumerate(markers, 2)]
        (self.folder / f"{self.basename}.vmrk").write_text("\n".join(marks) + "\n", encoding="utf-8")
        return self.vhdr


def block_slices(n_times: int, block: int):
    """``(start, stop)`` of consecutive blocks covering ``n_times`` samples."""
    for start in range(0, n_times, block):
        yield start, min(start + block, n_times)


def n_blocks(n_times: int, block: int) -> int:
    return math.ceil(n_times / block)
