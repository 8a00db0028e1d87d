"""The offline face: the online preprocessor run over a whole recording, block by block."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import mne
import numpy as np

from ..errors import InputError
from .config import PreprocessConfig
from .online import BLOCK, OnlinePreprocessor

logger = logging.getLogger("glimpse.streaming.preprocess")

def _blocks(data: Any, config: PreprocessConfig, sfreq_in: float | None):
    """(resolved config, sfreq_in, n_times, iterator of float64 blocks) for a Raw or array."""
    if isinstance(data, mne.io.BaseRaw):
        if sfreq_in is not None and not math.isclose(sfreq_in, data.info["sfreq"]):
            raise InputError(f"sfreq_in equal to the recording's {data.info['sfreq']:g} Hz",
                             f"{sfreq_in:g}", "leave sfreq_in out for a Raw")
        config = config.resolve(data.info)
        picks = list(config.ch_names)

        def gen():
            for start in range(0, data.n_times, BLOCK):
                yield data.get_data(picks=picks, start=start, stop=start + BLOCK)
        return config, data.info["sfreq"], data.n_times, gen()
    if sfreq_in is None:
        raise InputError("sfreq_in for an array", "None", "pass sfreq_in=<rate in Hz>")
    array = np.asarray(data)
    if array.ndim != 2:
        raise InputError("an array of shape (n_chans, n_times)", f"shape {array.shape}",
                         "put channels first and samples last")
    if config.ch_names is not None and array.shape[0] != len(config.ch_names):
        raise InputError(f"{len(config.ch_names)} channels (the config's ch_names)",
                         f"{array.shape[0]}", "pick the config's channels in its order")
    return config, sfreq_in, array.shape[1], (array[:, s:s + BLOCK]
                                               for s in range(0, array.shape[1], BLOCK))


def _run(data: Any, config: PreprocessConfig, sfreq_in: float | None, flat: list | None = None):
    """Run the online face over ``data`` block by block: (online object, float32 output)."""
    config, sfreq_in, _, blocks = _blocks(data, config, sfreq_in)
    n_chans = len(config.ch_names) if config.ch_names is not None else np.shape(data)[0]
    online = OnlinePreprocessor(config, sfreq_in, n_chans=n_chans)
    parts, low, high = [], np.inf, -np.inf
    for block in blocks:
        if flat is not None:  # input range, to tell dead channels from quiet ones
            low = np.fmin(low, np.fmin.reduce(block, axis=1))
            high = np.fmax(high, np.fmax.reduce(block, axis=1))
        parts.append(online.process(block))
    if flat is not None:
        flat.append(~(high > low))
    out = np.concatenate(parts, axis=1) if parts else np.empty((n_chans, 0), np.float32)
    return online, out


def preprocess_raw(data: mne.io.BaseRaw | np.ndarray, config: PreprocessConfig,
                   sfreq_in: float | None = None, *, return_times: bool = False):
    """Preprocess a whole recording: the online face run over it in blocks.

    ``data`` is an MNE Raw (channels picked by ``config``, ``sfreq_in`` read from it)
    or an array ``(n_chans, n_times)`` already in the config's channel order. Returns
    float32 ``(n_chans, n_out)`` with ``n_out = ceil(n_times * up / down)``; with
    ``return_times``, also the times (s) of the outputs, ``k / sfreq_out``, where 0 is
    the first input sample. Scaling and clamping apply only to a fitted config.
    """
    online, out = _run(data, config, sfreq_in)
    if not return_times:
        return out
    return out, online.input_position(np.arange(out.shape[1])) / online.sfreq_in


def fit_scaler(data: Any, config: PreprocessConfig, sfreq_in: float | None = None, *,
               skip_s: float = 0.0) -> PreprocessConfig:
    """Fit the robust scaler (median, interquartile range) on training data.

    ``data``: a Raw, an array, or a sequence of them (runs, each filtered from a
    fresh state); statistics are taken after filtering and resampling, skipping the
    first ``skip_s`` seconds of each run (filter warm-up). Returns a new, resolved
    config, whose ``ch_names`` are ``ch0, ch1...`` when fitted on bare arrays.

    Zero-IQR guard, per channel (never across channels: MEG in T and EEG in V differ
    by 1e8): a channel whose input is constant (dead) gets scale 1, so its output
    stays at round-off, ~0; a channel whose IQR is under 1e-3 of its standard
    deviation (coarsely quantised, mostly-constant) gets 1.349 x std, the IQR of a
    normal law with that spread.
    """
    runs = [data] if isinstance(data, (mne.io.BaseRaw, np.ndarray)) else list(data)
    if not runs:
        raise InputError("at least one recording", "none", "pass a Raw, an array or a list")
    base = dataclasses.replace(config, center=None, scale=None)
    outs, flats = [], []
    for run in runs:
        if isinstance(run, mne.io.BaseRaw):
            base = base.resolve(run.info)  # the first run fixes the channels; later ones need them
        _, out = _run(run, base, sfreq_in, flats)
        if outs and out.shape[0] != outs[0].shape[0]:
            raise InputError(f"runs with the same {outs[0].shape[0]} channels",
                             f"a run with {out.shape[0]}", "pick the same channels in every run")
        outs.append(out[:, int(round(skip_s * base.sfreq)):])
    stacked = np.concatenate(outs, axis=1).astype(np.float64)
    if stacked.shape[1] < 2:
        raise InputError("at least 2 output samples to fit the scaler",
                         f"{stacked.shape[1]}", "pass longer recordings or a smaller skip_s")
    q25, center, q75 = np.percentile(stacked, [25, 50, 75], axis=1)
    scale = q75 - q25
    std = stacked.std(axis=1)
    flat = np.logical_and.reduce(flats)
    spiky = ~flat & ~(scale > 1e-3 * std)
    scale[spiky] = np.where(std[spiky] > 0, 1.349 * std[spiky], 1.0)
    scale[flat] = 1.0
    n = stacked.shape[0]
    ch_names = base.ch_names if base.ch_names is not None else tuple(f"ch{i}" for i in range(n))
    for mask, what in ((flat, "constant input (dead?); scale 1"),
                       (spiky, "zero interquartile range; scale 1.349 x std")):
        if mask.any():
            logger.warning("%d channel(s) with %s: %s", int(mask.sum()), what,
                           [ch_names[i] for i in np.flatnonzero(mask)[:10]])
    logger.info("fitted robust scaler on %d channels x %d samples", n, stacked.shape[1])
    return dataclasses.replace(base, ch_names=ch_names, center=tuple(center.tolist()),
                               scale=tuple(scale.tolist()))
