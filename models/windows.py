"""Windows, the model input: cut from a loaded session at fixed or random offsets.

A window is ``float32 (n_chans, n_times)``, cut from a run's preprocessed array
(:class:`glimpse.models.data.SessionData`) in two kinds:

- classic epochs (:func:`epochs`): -0.5..1.0 s around onset, 181 samples at 120 Hz,
  as in Benchetrit et al. (2023);
- streaming-ready windows of the live length (default 0.25 s, 30 samples), whose
  END lies at some offset from the onset. :class:`WindowSampler` draws them at
  random for training ("stimulus" windows ending in :data:`STIM_OFFSETS`, and
  "nothing new" windows ending in :data:`NOTHING_OFFSETS`, before the response
  to a fresh image can have arrived); :func:`fixed_windows` cuts them at fixed
  offsets for validation and evaluation.

A window "ending at t" holds the output samples at or before t (see
:mod:`glimpse.models.data` for the time axis and the filters' delay).
:func:`split_trials` chooses the trials that training draws from and validates on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from glimpse.streaming.errors import InputError

if TYPE_CHECKING:  # only annotations: data.py imports this module
    from .data import SessionData

logger = logging.getLogger("glimpse.models.windows")

__all__ = ["EPOCH_SPAN", "EVAL_OFFSETS", "MIN_QUIET_S", "NOTHING_OFFSETS", "STIM_OFFSETS",
           "Splits", "WindowSampler", "WindowSet", "cut_windows", "epochs", "fixed_windows",
           "split_trials", "window_ends", "window_samples"]

#: Window END, in s after onset, of training "stimulus" windows (uniform). A window
#: that ends earlier holds no response yet (the causal filters' ~61 ms delay plus the
#: ~100 ms visual latency): it is trained neither as a stimulus nor as nothing new,
#: and live its confidence is low, as it should be.
STIM_OFFSETS = (0.15, 0.8)
#: Window END, in s after onset, of "nothing new" windows: the fixation before an
#: image and the first 40 ms after it, before any response can have arrived.
NOTHING_OFFSETS = (-0.25, 0.04)
#: A "nothing new" window starts at least this long after the previous onset, so the
#: previous image's responses (offset response at ~0.6 s + filter delay) are over.
MIN_QUIET_S = 0.8
#: Window ends (s after onset) of the deterministic validation/evaluation windows:
#: they cover the early (~0.1 s), late (~0.17, ~0.28 s) and offset (~0.6 s) responses.
EVAL_OFFSETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Classic epoch around onset, s (Benchetrit et al. 2023: 181 samples at 120 Hz).
EPOCH_SPAN = (-0.5, 1.0)


@dataclass
class WindowSet:
    """Windows and their labels; a map-style dataset (``ws[i]`` -> one window's tuple).

    ``x`` ``float32 (N, n_chans, n_times)``; ``subject`` (N,) index into
    ``SessionData.subjects``; ``target`` (N,) image row (-1: none); ``is_stimulus``
    (N,) bool, False for "nothing new" windows; ``offset_s`` (N,) time of the last
    sample minus the onset; ``trial`` (N,) row of the ``TrialTable``.
    """

    x: np.ndarray = field(repr=False)
    subject: np.ndarray
    target: np.ndarray
    is_stimulus: np.ndarray
    offset_s: np.ndarray
    trial: np.ndarray

    def __len__(self) -> int:
        return len(self.subject)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int, bool, float]:
        return (self.x[i], int(self.subject[i]), int(self.target[i]),
                bool(self.is_stimulus[i]), float(self.offset_s[i]))

    def subset(self, index: np.ndarray) -> WindowSet:
        return WindowSet(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @classmethod
    def concatenate(cls, parts: Sequence[WindowSet]) -> WindowSet:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts])
                     for f in dataclasses.fields(cls)))



def window_samples(window_s: float, sfreq: float) -> int:
    """Samples in a window of ``window_s`` s at ``sfreq`` (the live worker's rule too)."""
    n = int(round(window_s * sfreq))
    if not (math.isfinite(window_s) and n >= 1):
        raise InputError("a window of at least one sample", f"window_s={window_s!r} at "
                         f"{sfreq:g} Hz", "use e.g. --window 0.25")
    return n


def window_ends(onsets: np.ndarray, offsets_s: np.ndarray | float, sfreq: float) -> np.ndarray:
    """Index of the last sample at or before ``onset + offset`` (s), as int64.

    The 1e-6-sample slack keeps an end that lies exactly on a sample (``2.0 s * 120``)
    from dropping to the previous one by float round-off.
    """
    t = (np.asarray(onsets, float) + np.asarray(offsets_s, float)) * sfreq
    return np.floor(t + 1e-6).astype(np.int64)


def cut_windows(data: np.ndarray, ends: np.ndarray, n_times: int) -> np.ndarray:
    """``(N, n_chans, n_times)`` windows of ``data (n_chans, n_samples)`` ending at ``ends``."""
    ends = np.asarray(ends, np.int64)
    if ends.size and (ends.min() < n_times - 1 or ends.max() >= data.shape[1]):
        raise InputError(f"window ends in [{n_times - 1}, {data.shape[1] - 1}]",
                         f"[{ends.min()}, {ends.max()}]", "drop windows outside the data")
    index = ends[:, None] + np.arange(1 - n_times, 1)[None, :]
    return np.ascontiguousarray(data[:, index].transpose(1, 0, 2))


def _make_windows(session: SessionData, trials: np.ndarray, ends: np.ndarray, n_times: int,
                  is_stimulus: np.ndarray) -> WindowSet:
    """Cut the windows of ``trials`` ending at ``ends``; drop those outside their bounds."""
    table = session.trials
    trials, ends = np.asarray(trials, np.int64), np.asarray(ends, np.int64)
    is_stimulus = np.broadcast_to(np.asarray(is_stimulus, bool), trials.shape)
    inside = (ends - n_times + 1 >= table.bounds[trials, 0]) & (ends < table.bounds[trials, 1])
    if not inside.all():
        logger.debug("%d of %d windows fall outside their run or epoch; dropped",
                     int((~inside).sum()), len(trials))
    trials, ends, is_stimulus = trials[inside], ends[inside], is_stimulus[inside]
    x = np.empty((len(trials), session.n_chans, n_times), np.float32)
    runs = table.run[trials]
    for r in np.unique(runs):
        rows = np.flatnonzero(runs == r)
        x[rows] = cut_windows(session.runs[r].data, ends[rows], n_times)
    offset = (ends / session.sfreq - table.onset[trials]).astype(np.float32)
    return WindowSet(x=x, subject=table.subject[trials].astype(np.int64),
                     target=table.image[trials].astype(np.int64),
                     is_stimulus=is_stimulus.copy(), offset_s=offset, trial=trials)


def fixed_windows(session: SessionData, trials: np.ndarray, *, window_s: float = 0.25,
                  offsets: Sequence[float] = EVAL_OFFSETS, is_stimulus: bool = True,
                  min_quiet_s: float = MIN_QUIET_S) -> WindowSet:
    """Deterministic windows: for each trial and each offset, the window ending there.

    Ordered trial-major (all offsets of trial 0, then trial 1, ...); windows that do
    not fit in their run or epoch are dropped. With ``is_stimulus=False`` they are
    labelled "nothing new" (use offsets in :data:`NOTHING_OFFSETS`), and those that
    start less than ``min_quiet_s`` after the previous onset are dropped too.
    """
    n = session.n_times(window_s)
    trials = np.asarray(trials, np.int64)
    offs = np.asarray(offsets, float)
    rep = np.repeat(trials, len(offs))
    ends = window_ends(session.trials.onset[rep], np.tile(offs, len(trials)), session.sfreq)
    if not is_stimulus:
        quiet = (ends - n + 1) / session.sfreq >= session.trials.prev_onset[rep] + min_quiet_s
        rep, ends = rep[quiet], ends[quiet]
    return _make_windows(session, rep, ends, n, np.full(len(rep), is_stimulus))


def epochs(session: SessionData, trials: np.ndarray, *, tmin: float = EPOCH_SPAN[0],
           tmax: float = EPOCH_SPAN[1]) -> WindowSet:
    """Classic epochs ``tmin..tmax`` s around onset (both ends included: 181 samples at 120 Hz).

    ``offset_s`` is the time of the last sample relative to onset (~``tmax``).
    """
    n = int(round((tmax - tmin) * session.sfreq)) + 1
    trials = np.asarray(trials, np.int64)
    ends = window_ends(session.trials.onset[trials], tmax, session.sfreq)
    return _make_windows(session, trials, ends, n, np.ones(len(trials), bool))


class WindowSampler:
    """Random streaming-ready windows of ``trials``, redrawn every epoch, seeded.

    Per trial and epoch: ``windows_per_trial`` "stimulus" windows whose ends are
    uniform (on the sample grid) in ``onset + stim_offsets``; and ``nothing_fraction``
    "nothing new" windows per stimulus window, each ending in ``onset +
    nothing_offsets`` of a random trial and starting at least ``min_quiet_s`` after
    the previous onset. ``sample(epoch)`` depends only on ``(seed, epoch)``, so every
    DDP rank draws the same set and takes its shard.
    """

    def __init__(self, session: SessionData, trials: np.ndarray, *, window_s: float = 0.25,
                 stim_offsets: tuple[float, float] = STIM_OFFSETS,
                 nothing_offsets: tuple[float, float] | None = NOTHING_OFFSETS,
                 nothing_fraction: float = 0.5, windows_per_trial: int = 1,
                 min_quiet_s: float = MIN_QUIET_S, seed: int = 0):
        for name, span in (("stim_offsets", stim_offsets), ("nothing_offsets", nothing_offsets)):
            if span is not None and not span[0] <= span[1]:
                raise InputError(f"{name} (low, high) with low <= high", repr(span),
                                 "swap the two values")
        if not 0 <= nothing_fraction <= 10:
            raise InputError("nothing_fraction in [0, 10]", repr(nothing_fraction),
                             "use e.g. 0.5 (one nothing-new window per two stimulus windows)")
        if not (isinstance(windows_per_trial, int) and windows_per_trial >= 1):
            raise InputError("windows_per_trial an integer >= 1", repr(windows_per_trial),
                             "use e.g. 2")
        self.session, self.seed = session, int(seed)
        self.n_times = session.n_times(window_s)
        self.nothing_fraction, self.windows_per_trial = nothing_fraction, windows_per_trial
        table, sfreq, n = session.trials, session.sfreq, self.n_times
        trials = np.asarray(trials, np.int64)
        first = table.bounds[trials, 0] + n - 1  # the earliest end that fits
        last = table.bounds[trials, 1] - 1
        lo = np.maximum(np.ceil((table.onset[trials] + stim_offsets[0]) * sfreq - 1e-6), first)
        hi = np.minimum(window_ends(table.onset[trials], stim_offsets[1], sfreq), last)
        ok = lo <= hi
        if not ok.all():
            logger.debug("%d trials have no room for a stimulus window; left out", int((~ok).sum()))
        self.trials = trials[ok]
        self._lo, self._hi = lo[ok].astype(np.int64), hi[ok].astype(np.int64)
        self._nothing = (np.empty(0, np.int64),) * 3
        if nothing_offsets is not None and nothing_fraction > 0:
            quiet = np.ceil((table.prev_onset[trials] + min_quiet_s) * sfreq - 1e-6) + n - 1
            nlo = np.maximum.reduce([
                np.ceil((table.onset[trials] + nothing_offsets[0]) * sfreq - 1e-6),
                np.where(np.isfinite(quiet), quiet, first), first])
            nhi = np.minimum(window_ends(table.onset[trials], nothing_offsets[1], sfreq), last)
            nok = nlo <= nhi
            self._nothing = (trials[nok], nlo[nok].astype(np.int64), nhi[nok].astype(np.int64))
        if len(self.trials) == 0:
            raise InputError("trials with room for a stimulus window",
                             f"none of {len(trials)}", "check the onsets and --window")

    def __len__(self) -> int:
        """Windows per epoch (stimulus + nothing new)."""
        return self.windows_per_trial * len(self.trials) + self._n_nothing()

    def _n_nothing(self) -> int:
        if not len(self._nothing[0]):
            return 0
        return int(round(self.nothing_fraction * self.windows_per_trial * len(self.trials)))

    def sample(self, epoch: int) -> WindowSet:
        """This epoch's windows, stimulus windows first (shuffle before batching)."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        trials = np.tile(self.trials, self.windows_per_trial)
        ends = rng.integers(np.tile(self._lo, self.windows_per_trial),
                            np.tile(self._hi, self.windows_per_trial) + 1)
        parts = [_make_windows(self.session, trials, ends, self.n_times, True)]
        k = self._n_nothing()
        if k:
            cand, lo, hi = self._nothing
            pick = rng.choice(len(cand), size=k, replace=k > len(cand))
            nends = rng.integers(lo[pick], hi[pick] + 1)
            parts.append(_make_windows(self.session, cand[pick], nends, self.n_times, False))
        return WindowSet.concatenate(parts)


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Splits:
    """Trial indices (rows of the ``TrialTable``) and the concepts behind them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_concepts: tuple[str, ...]
    val_concepts: tuple[str, ...]


def split_trials(session: SessionData, val_fraction: float = 0.15, seed: int = 0) -> Splits:
    """Training trials, validation trials of WHOLE held-out training concepts, test trials.

    ``val_fraction`` of the training concepts (at least one when > 0, leaving at
    least two) are held out, drawn with ``seed``; test trials (``split == "test"``)
    are never part of training or validation.
    """
    table = session.trials
    train_all = table.select(split="train")
    concepts = sorted(set(table.concept[train_all].tolist()))
    if len(concepts) < 2:
        raise InputError("training trials of at least 2 concepts (a contrastive decoder needs "
                         "at least 2 concepts to tell apart)",
                         f"{len(concepts)} concept(s) {concepts} in {len(train_all)} "
                         f"training trials of {session.source}",
                         "check the events' concept and split columns (EventColumns)")
    if not 0 <= val_fraction < 1:
        raise InputError("val_concept_fraction in [0, 1)", repr(val_fraction), "use e.g. 0.15")
    n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * len(concepts))))
    if n_val and len(concepts) - n_val < 2:
        raise InputError("at least 2 training concepts left after holding out validation "
                         "concepts", f"{len(concepts)} concepts, {n_val} held out",
                         "use more concepts, or val_concept_fraction=0 (no early stopping "
                         "and no confidence calibration)")
    rng = np.random.default_rng(seed)
    val = tuple(sorted(np.asarray(concepts)[rng.permutation(len(concepts))[:n_val]].tolist()))
    train = tuple(c for c in concepts if c not in val)
    return Splits(train=table.select(split="train", concepts=train),
                  val=table.select(split="train", concepts=val),
                  test=table.select(split="test"),
                  train_concepts=train, val_concepts=val)
