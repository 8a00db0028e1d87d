"""From recordings to training windows: what a brain encoder is trained and evaluated on.

:func:`load_session` opens every recording of a dataset (a BIDS root, one file, or
THINGS-EEG2's epochs), runs the shared causal preprocessing over each run and
returns a :class:`SessionData`: per run, the preprocessed ``float32 (n_chans,
n_samples)`` array at the output rate, and one :class:`TrialTable` over all runs
(onset, image row, concept, split, subject).

Windows are the model input, ``float32 (n_chans, n_times)``, and are cut from that
array in two kinds:

- classic epochs (:func:`epochs`): -0.5..1.0 s around onset, 181 samples at 120 Hz,
  as in Benchetrit et al. (2023);
- streaming-ready windows of the live length (default 0.25 s, 30 samples), whose
  END lies at some offset from the onset. :class:`WindowSampler` draws them at
  random for training ("stimulus" windows ending in :data:`STIM_OFFSETS`, and
  "nothing new" windows ending in :data:`NOTHING_OFFSETS`, before the response
  to a fresh image can have arrived); :func:`fixed_windows` cuts them at fixed
  offsets for validation and evaluation.

Time axis and filter delay. Output sample ``k`` of a run sits at ``k / sfreq``
seconds after the run's first input sample, which is where ``Trial.onset`` counts
from; a window "ending at t" holds the output samples at or before t. Onsets are
NOT shifted by the causal filters' group delay (``SessionData.group_delay``,
~61 ms at 120 Hz): the live path cuts its windows from the same causal output,
timed by the LSL time of their last sample, so a window at offset ``o`` offline is
the window at offset ``o`` live, and the model learns the delay.

Scaler. The robust scaler (median / IQR per channel) is fitted on the training
trials only: on the preprocessed samples within :data:`SCALER_SPAN` of each
``split == "train"`` onset, pooled over all runs and subjects (one scaler, since a
checkpoint stores one preprocessing). Test trials' samples (interleaved in the
same runs, as in THINGS-MEG) never enter it. Trials later held out for validation
do: the split into concepts is the trainer's and comes after loading; median and
IQR over tens of minutes of signal carry nothing about which image was shown.

Memory: about ``n_chans * sfreq * 4`` bytes per second of recording (272 MEG
channels at 120 Hz: 0.47 GB per hour).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mne
import numpy as np
from tqdm import tqdm

from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import OnlinePreprocessor, PreprocessConfig, fit_scaler
from glimpse.streaming.recordings import EventColumns, Trial, open_recording, read_things_eeg2

logger = logging.getLogger("glimpse.models.data")

__all__ = [
    "EPOCH_SPAN", "EVAL_OFFSETS", "NOTHING_OFFSETS", "STIM_OFFSETS",
    "Run", "SessionData", "Splits", "TrialTable", "WindowSampler", "WindowSet",
    "cut_windows", "epochs", "fixed_windows", "image_targets", "load_session",
    "split_trials", "window_ends",
]

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
#: Span around training onsets whose samples fit the robust scaler, s.
SCALER_SPAN = (-0.5, 1.0)
# Recording samples read per pass: ~3.5 MB per block for 275 channels in float64.
_READ_BLOCK = 16384
_BIDS_SUFFIXES = ["meg", "eeg", "ieeg"]
_BIDS_EXTENSIONS = [".fif", ".ds", ".edf", ".bdf", ".vhdr", ".set", ".con", ".sqd", ".mff"]
_DECODED_SPLITS = ("train", "test")


# --------------------------------------------------------------------------- data


@dataclass
class Run:
    """One preprocessed recording (or, for THINGS-EEG2, one file's epochs laid end to end).

    ``data`` is ``float32 (n_chans, n_samples)`` at ``SessionData.sfreq``; sample
    ``k`` is at ``k / sfreq`` s on the time axis of ``Trial.onset``. ``kind`` is
    "continuous" or "epochs"; for epochs, every trial's windows must stay inside
    its own epoch (see ``TrialTable.bounds``).
    """

    subject: str
    source: Path
    data: np.ndarray = field(repr=False)
    trials: list[Trial] = field(repr=False)
    kind: str = "continuous"

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[1])


@dataclass
class TrialTable:
    """Every trial of a session, one row each, over all runs (numpy arrays of length N).

    ``run`` indexes ``SessionData.runs``; ``subject`` indexes
    ``SessionData.subjects``; ``onset`` is in s on the run's time axis; ``image``
    is the row of ``SessionData.images`` (-1 for catch trials and trials without a
    stimulus file); ``bounds[i]`` is the ``[first, stop)`` sample range a window of
    trial i may use (the whole run, or the trial's own epoch); ``prev_onset`` is the
    previous onset in the same run (-inf for the first).
    """

    run: np.ndarray
    subject: np.ndarray
    onset: np.ndarray
    image: np.ndarray
    concept: np.ndarray
    split: np.ndarray
    bounds: np.ndarray
    prev_onset: np.ndarray

    def __len__(self) -> int:
        return len(self.onset)

    def select(self, *, split: str | None = None, concepts: Iterable[str] | None = None,
               with_image: bool = True) -> np.ndarray:
        """Indices of the trials in ``split`` (and among ``concepts``), with an image row."""
        keep = np.ones(len(self), bool)
        if split is not None:
            keep &= self.split == split
        if concepts is not None:
            keep &= np.isin(self.concept, list(concepts))
        if with_image:
            keep &= self.image >= 0
        return np.flatnonzero(keep)


@dataclass
class SessionData:
    """A dataset loaded for training or evaluation; see the module docstring.

    ``images`` are the distinct stimulus files of train and test trials (sorted);
    ``preprocess`` is the fitted preprocessing (``ch_names``, ``center``, ``scale``)
    to store in the checkpoint; ``positions`` the sensors' 2-D layout ``(n_chans,
    2)``; ``group_delay`` the causal filters' constant content lag, in s (not
    compensated: see the module docstring); ``fingerprint`` a sha256 over the
    recordings' identity and the preprocessing.
    """

    runs: list[Run]
    subjects: list[str]
    trials: TrialTable
    ch_names: tuple[str, ...]
    positions: np.ndarray
    sfreq: float
    images: tuple[Path, ...]
    image_concepts: tuple[str, ...]
    preprocess: PreprocessConfig
    group_delay: float
    fingerprint: str
    source: Path
    kind: str = "continuous"

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)

    def n_times(self, window_s: float) -> int:
        """Samples in a window of ``window_s`` seconds (0.25 s at 120 Hz: 30)."""
        return window_samples(window_s, self.sfreq)

    def summary(self) -> dict[str, Any]:
        splits = {str(s): int(np.sum(self.trials.split == s)) for s in np.unique(self.trials.split)}
        return {"source": str(self.source), "kind": self.kind, "subjects": self.subjects,
                "runs": len(self.runs), "n_chans": self.n_chans, "sfreq": self.sfreq,
                "trials": splits, "images": len(self.images),
                "group_delay_ms": round(1e3 * self.group_delay, 2),
                "fingerprint": self.fingerprint}


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


@dataclass(frozen=True)
class Splits:
    """Trial indices (rows of the ``TrialTable``) and the concepts behind them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_concepts: tuple[str, ...]
    val_concepts: tuple[str, ...]


# --------------------------------------------------------------------------- windows (pure)


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


# --------------------------------------------------------------------------- splits, targets


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


def image_targets(session: SessionData, embedder: Any, *, cache_dir: str | os.PathLike | None
                  = None, progress: bool = True) -> np.ndarray:
    """``float32 (len(session.images), dim)``: the embedding of each stimulus image.

    ``embedder`` is an ``ImageEmbedder`` or a spec for ``glimpse.models.embedders.load_embedder``.
    """
    if isinstance(embedder, str):
        from .embedders import load_embedder

        embedder = load_embedder(embedder)
    targets = np.asarray(embedder.embed_files(list(session.images), cache_dir=cache_dir,
                                              progress=progress), dtype=np.float32)
    if targets.shape != (len(session.images), embedder.dim):
        raise InputError(f"embeddings of shape ({len(session.images)}, {embedder.dim})",
                         f"{targets.shape} from the {embedder.name} embedder",
                         "check the embedder")
    return targets


# --------------------------------------------------------------------------- loading


def load_session(
    path: str | os.PathLike,
    *,
    subjects: Sequence[str] | None = None,
    preprocess: PreprocessConfig | None = None,
    events: EventColumns = EventColumns(),  # frozen: safe as a default
    stim_root: str | os.PathLike | None = None,
    session: str | None = None,
    task: str | None = None,
    run: str | int | None = None,
    mapping: Any = None,
    source: str = "auto",
    stim_channel: str | None = None,
    progress: bool = True,
) -> SessionData:
    """Open, check and preprocess every recording of a dataset; see the module docstring.

    ``path``: a BIDS root (every subject, session and run matching ``subjects``,
    ``session``, ``task``, ``run``), one recording file, or a THINGS-EEG2 root or
    subject folder (detected by its ``Preprocessed_data*`` or
    ``preprocessed_eeg_training.npy``; those files are pickles, see
    :func:`glimpse.streaming.recordings.read_things_eeg2`). ``preprocess`` picks channels and
    filters (default ``PreprocessConfig()``); its scaler is refitted here on
    the training trials. The other keywords go to :func:`open_recording`; for
    THINGS-EEG2, ``stim_root`` is the ``image_set`` folder (default: found beside the data).

    Raises :class:`InputError` on non-finite samples (naming the channel and the
    time), on subjects that lack a channel of the training set, and on datasets
    without training trials.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("an existing BIDS root, recording or THINGS-EEG2 folder",
                         f"{path}, which does not exist", "check the path")
    preprocess = preprocess or PreprocessConfig()
    if _is_things_eeg2(path):
        return _load_things_eeg2(path, subjects, preprocess, stim_root, progress)
    opts = dict(events=events, stim_root=stim_root, mapping=mapping, source=source,
                stim_channel=stim_channel)
    files = _recording_files(path, subjects, session, task, run)
    config = None
    runs, identity, delays, rates = [], [], set(), set()
    for file, subject in tqdm(files, desc="preprocess", unit="run", disable=not progress):
        rec = open_recording(file, **opts)
        if config is None:
            # The first run fixes the channels; every later one must have all of them.
            config = dataclasses.replace(preprocess, center=None, scale=None).resolve(rec.raw.info)
            info0 = rec.raw.info
        _check_channels(config, rec.raw.ch_names, subject, rec.path)
        online = OnlinePreprocessor(config, rec.sfreq)
        data = _preprocess_checked(rec, config, online)
        delays.add(round(online.group_delay, 9))
        rates.add(online.sfreq_out)
        runs.append(Run(subject=subject, source=rec.path, data=data, trials=list(rec.trials)))
        identity.append({"file": rec.path.name, "bytes": _size(rec.path), "subject": subject,
                         "sfreq": rec.sfreq, "n_times": rec.n_times,
                         "trials": _trials_digest(rec.trials, rec.stim_root)})
        logger.info("sub-%s %s: %d channels x %d samples at %.6g Hz, %d trials", subject,
                    rec.path.name, data.shape[0], data.shape[1], online.sfreq_out, len(rec.trials))
    sfreq = _one_rate(rates)
    subject_ids = sorted({r.subject for r in runs})
    table, stims = _trial_table(runs, subject_ids, sfreq, epoch_len=None)
    images, image_concepts = _index_images(table, stims)
    fitted = _fit_scaler(runs, table, config, sfreq)
    for r in runs:
        _apply_scaler(r.data, fitted)
    positions = _positions(info0, fitted.ch_names)
    fingerprint = _fingerprint(identity, fitted)
    session_data = SessionData(runs=runs, subjects=subject_ids, trials=table,
                               ch_names=tuple(fitted.ch_names), positions=positions, sfreq=sfreq,
                               images=images, image_concepts=image_concepts, preprocess=fitted,
                               group_delay=max(delays), fingerprint=fingerprint,
                               source=path, kind="continuous")
    logger.info("loaded %s", session_data.summary())
    return session_data


def _is_things_eeg2(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("Preprocessed_data*"))
                              or (path / "preprocessed_eeg_training.npy").is_file())


def _recording_files(path: Path, subjects, session, task, run) -> list[tuple[Path, str]]:
    """(recording, subject id) for every run to load, in a stable order."""
    if not (path.is_dir() and (path / "dataset_description.json").is_file()):
        if subjects is not None or session is not None or task is not None or run is not None:
            raise InputError("subjects/session/task/run only with a BIDS root",
                             f"a selection with the file {path}", "pass the BIDS root")
        subject = path.name.split("_")[0][4:] if path.name.startswith("sub-") else path.stem
        return [(path, subject or "01")]
    import mne_bids

    def entity(value):
        return None if value is None else [str(v).split("-", 1)[-1] for v in
                                           ([value] if isinstance(value, (str, int)) else value)]

    found = mne_bids.find_matching_paths(path, subjects=entity(subjects), sessions=entity(session),
                                         tasks=entity(task), runs=entity(run),
                                         suffixes=_BIDS_SUFFIXES, extensions=_BIDS_EXTENSIONS,
                                         ignore_nosub=True)
    unique = {}
    for bp in found:  # split FIF files (split-01, split-02) are one recording
        bp = bp.copy().update(split=None, check=False)
        unique[str(bp.fpath)] = bp
    if not unique:
        have = mne_bids.get_entity_vals(path, "subject")
        raise InputError("MEG/EEG recordings matching the selection in the BIDS dataset",
                         f"none for subjects={subjects}, session={session}, task={task}, "
                         f"run={run}; subjects there: {have}",
                         "pick subjects/sessions/runs that exist (glimpse info ROOT)")
    return [(Path(unique[k].fpath), unique[k].subject) for k in sorted(unique)]


def _check_channels(config: PreprocessConfig, names: Sequence[str], subject: str, path: Path):
    have = set(names)
    missing = [n for n in config.ch_names if n not in have]
    if missing:
        shown = ", ".join(missing[:10]) + (f", and {len(missing) - 10} more" if len(missing) > 10
                                           else "")
        raise InputError(f"every subject with the {len(config.ch_names)} channels used for "
                         "training (those of the first run)",
                         f"sub-{subject} ({path.name}) lacks {len(missing)}: {shown}",
                         "exclude those channels for everyone (PreprocessConfig(exclude=...)), "
                         "or leave that subject out (subjects=...)")


def _preprocess_checked(rec, config: PreprocessConfig, online: OnlinePreprocessor) -> np.ndarray:
    """Unscaled causal preprocessing of a run; refuses non-finite samples.

    Checked before filtering: the preprocessor would hold the last finite value, which
    is right live (the window is marked invalid) but would train on made-up data.
    """
    picks = list(config.ch_names)
    parts = []
    for start in range(0, rec.n_times, _READ_BLOCK):
        block = rec.raw.get_data(picks=picks, start=start, stop=start + _READ_BLOCK)
        finite = np.isfinite(block)
        if not finite.all():
            ch, k = _first_nonfinite(finite)
            raise InputError(
                "finite samples in every channel of the recording",
                f"{block[ch, k]} in channel {picks[ch]} at {(start + k) / rec.sfreq:.3f} s of "
                f"{rec.path} (first non-finite sample)",
                f"interpolate or drop {picks[ch]} (PreprocessConfig(exclude=[...])), or crop "
                "the recording before that time")
        parts.append(online.process(block))
    if not parts:
        raise InputError("a recording with samples", f"{rec.path} is empty", "check the file")
    return np.concatenate(parts, axis=1)


def _first_nonfinite(finite: np.ndarray) -> tuple[int, int]:
    """(channel, sample) of the earliest non-finite sample (lowest channel on ties)."""
    bad_cols = np.flatnonzero(~finite.all(axis=0))
    k = int(bad_cols[0])
    return int(np.flatnonzero(~finite[:, k])[0]), k


def _one_rate(rates: set[float]) -> float:
    rates = sorted(rates)
    if rates[-1] / rates[0] - 1 > 1e-6:
        raise InputError("runs that resample to one output rate",
                         f"{rates} Hz", "record at rates that the output rate divides evenly")
    return float(rates[0])


def _trial_table(runs: list[Run], subject_ids: list[str], sfreq: float,
                 epoch_len: int | None) -> tuple[TrialTable, list[Path | None]]:
    """The trial table (its ``image`` column still -1) and each trial's decoded stimulus."""
    cols: dict[str, list] = {k: [] for k in ("run", "subject", "onset", "concept", "split",
                                             "bounds", "prev_onset", "stim")}
    for r, run in enumerate(runs):
        order = sorted(range(len(run.trials)), key=lambda i: run.trials[i].onset)
        run.trials = [run.trials[i] for i in order]
        prev = -np.inf
        for i, t in enumerate(run.trials):
            cols["run"].append(r)
            cols["subject"].append(subject_ids.index(run.subject))
            cols["onset"].append(t.onset)
            cols["concept"].append(t.concept)
            cols["split"].append(t.split)
            cols["stim"].append(t.stim_file if t.split in _DECODED_SPLITS else None)
            if epoch_len is None:
                cols["bounds"].append((0, run.n_samples))
            else:
                cols["bounds"].append((i * epoch_len, (i + 1) * epoch_len))
            cols["prev_onset"].append(prev)
            prev = t.onset
    table = TrialTable(run=np.asarray(cols["run"], np.int64),
                       subject=np.asarray(cols["subject"], np.int64),
                       onset=np.asarray(cols["onset"], float),
                       image=np.full(len(cols["onset"]), -1, np.int64),
                       concept=np.asarray(cols["concept"], dtype=object).astype(str),
                       split=np.asarray(cols["split"], dtype=object).astype(str),
                       bounds=np.asarray(cols["bounds"], np.int64).reshape(-1, 2),
                       prev_onset=np.asarray(cols["prev_onset"], float))
    if not len(table):
        raise InputError("recordings with trials (events naming the stimuli)",
                         "no trials", "check the events (glimpse info DATA)")
    return table, cols["stim"]


def _index_images(table: TrialTable, stims: list[Path | None]
                  ) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Distinct stimulus files (sorted) and their concepts; fills ``table.image``."""
    concept_of = {}
    for stim, concept in zip(stims, table.concept):
        if stim is not None:
            concept_of.setdefault(Path(stim), str(concept))
    images = tuple(sorted(concept_of))
    row = {p: i for i, p in enumerate(images)}
    table.image[:] = [-1 if s is None else row[Path(s)] for s in stims]
    return images, tuple(concept_of[p] for p in images)


def _fit_scaler(runs: list[Run], table: TrialTable, config: PreprocessConfig,
                sfreq: float) -> PreprocessConfig:
    """Median/IQR of the unscaled output within SCALER_SPAN of training onsets.

    ``fit_scaler`` is given these samples through an identity configuration (same
    rate, no filters), so its statistics and zero-IQR guards are the ones used.
    """
    train = np.flatnonzero(table.split == "train")
    if not len(train):
        raise InputError("training trials (split 'train', trial_type 'exp' in THINGS)",
                         f"none among {len(table)} trials",
                         "check the events' split column (EventColumns.splits)")
    pieces = []
    for r, run in enumerate(runs):
        mask = np.zeros(run.n_samples, bool)
        for i in train[table.run[train] == r]:
            lo = max(int(np.floor((table.onset[i] + SCALER_SPAN[0]) * sfreq)), table.bounds[i, 0])
            hi = min(int(np.ceil((table.onset[i] + SCALER_SPAN[1]) * sfreq)) + 1,
                     table.bounds[i, 1])
            mask[lo:hi] = True
        if mask.any():
            pieces.append(run.data[:, mask])
    samples = np.concatenate(pieces, axis=1)
    identity = PreprocessConfig(ch_names=config.ch_names, sfreq=sfreq, l_freq=None, h_freq=None,
                                notch=None, clamp=config.clamp)
    stats = fit_scaler(samples, identity, sfreq_in=sfreq)
    return dataclasses.replace(config, center=stats.center, scale=stats.scale)


def _apply_scaler(data: np.ndarray, config: PreprocessConfig) -> None:
    """The preprocessor's last two stages, in place (as ``OnlinePreprocessor`` does them)."""
    center = np.asarray(config.center, np.float32)[:, None]
    inv = (1.0 / np.asarray(config.scale, np.float64)).astype(np.float32)[:, None]
    for start in range(0, data.shape[1], 65536):  # in slices: no float64 copy of the run
        block = data[:, start:start + 65536]
        block -= center
        block *= inv
        if config.clamp is not None:
            np.clip(block, -config.clamp, config.clamp, out=block)


def _positions(info: mne.Info, ch_names: Sequence[str]) -> np.ndarray:
    from .brain_encoder import sensor_positions_2d

    return np.asarray(sensor_positions_2d(info, list(ch_names)), np.float32)


def _size(path: Path) -> int:
    if path.is_dir():  # CTF .ds, EGI .mff
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _trials_digest(trials: Sequence[Trial], stim_root: Path) -> str:
    """sha256 of the trial list, stimulus paths relative to the stimulus root (movable)."""
    def rel(p):
        if p is None:
            return None
        try:
            return Path(p).relative_to(stim_root).as_posix()
        except ValueError:
            return Path(p).name
    rows = [[round(t.onset, 6), rel(t.stim_file), t.concept, t.split] for t in trials]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _fingerprint(identity: list[dict], config: PreprocessConfig) -> str:
    """sha256 over each run's identity (name, size, shape, trials) and the preprocessing.

    No paths or modification times: a dataset copied elsewhere keeps its fingerprint.
    """
    blob = json.dumps({"runs": identity, "preprocess": config.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- THINGS-EEG2


def _load_things_eeg2(path: Path, subjects, preprocess: PreprocessConfig, image_dir,
                      progress: bool) -> SessionData:
    """THINGS-EEG2's epochs, laid end to end per file; one trial per (image, repeat).

    The data were preprocessed offline by the publishers (non-causal filters,
    baseline correction, 100 or 250 Hz): glimpse's filters are not run again, only
    the robust scaler (fitted on the training epochs) and clamp, so the stored
    preprocessing is an identity at the data's rate plus that scaler. A live stream
    for such a checkpoint must be preprocessed the publishers' way.
    """
    if preprocess.ch_names is not None or preprocess.include or preprocess.exclude:
        logger.info("THINGS-EEG2: channel picks are the files' own; picks/include/exclude ignored")
    folder = path if (path / "preprocessed_eeg_training.npy").is_file() else None
    if folder is not None:
        names = [folder.name[4:] if folder.name.startswith("sub-") else folder.name]
    else:
        tops = sorted(p for p in path.glob("Preprocessed_data*") if p.is_dir())
        names = sorted(p.name[4:] for p in tops[0].glob("sub-*") if p.is_dir()) if tops else []
    if subjects is not None:
        wanted = [str(s).removeprefix("sub-") for s in subjects]
        absent = [s for s in wanted if s not in names]
        if absent:
            raise InputError(f"subjects among {names}", f"{absent}", "pick existing subjects")
        names = wanted
    runs, identity, ch_names, sfreq, tmin, n_ep = [], [], None, None, None, None
    for name in tqdm(names, desc="THINGS-EEG2", unit="subject", disable=not progress):
        eeg = read_things_eeg2(folder if folder is not None else path,
                               subject=None if folder is not None else name,
                               image_dir=image_dir)
        if ch_names is not None and (eeg.ch_names != ch_names or eeg.sfreq != sfreq):
            raise InputError("every subject with the same channels and rate",
                             f"sub-{name} differs", "leave that subject out (subjects=...)")
        ch_names, sfreq = eeg.ch_names, eeg.sfreq
        tmin, n_ep = float(eeg.times[0]), len(eeg.times)
        for split, part in eeg.splits.items():
            data = np.asarray(part.data, np.float32)  # (images, repeats, chans, times)
            n_img, n_rep = data.shape[:2]
            if not np.isfinite(data).all():
                i, j, c, k = np.argwhere(~np.isfinite(data))[0]
                raise InputError("finite samples in every epoch",
                                 f"{data[i, j, c, k]} in channel {ch_names[c]} at "
                                 f"{eeg.times[k]:.3f} s of image {i}, repeat {j} ({split})",
                                 "re-download or clean the file")
            flat = data.reshape(n_img * n_rep, len(ch_names), n_ep)
            cont = np.ascontiguousarray(flat.transpose(1, 0, 2).reshape(len(ch_names), -1))
            trials = []
            for t in range(n_img * n_rep):
                im = part.images[t // n_rep]
                onset = (t * n_ep - tmin * sfreq) / sfreq  # sample of time 0 in epoch t
                trials.append(Trial(onset=onset, stim_file=im.stim_file, concept=im.concept,
                                    split=split, trial_type=split,
                                    sample=int(round(onset * sfreq))))
            runs.append(Run(subject=name, source=eeg.eeg_dir, data=cont, trials=trials,
                            kind="epochs"))
            identity.append({"file": f"sub-{name}/{split}", "shape": list(data.shape),
                             "bytes": data.nbytes, "sfreq": sfreq})
    if not runs:
        raise InputError("THINGS-EEG2 subject folders", f"none under {path}",
                         "pass the dataset root or a subject folder")
    subject_ids = sorted({r.subject for r in runs})
    table, stims = _trial_table(runs, subject_ids, sfreq, epoch_len=n_ep)
    # Epochs are not a timeline: no "previous onset", so the quiet-period rule does
    # not apply; a window must lie in its own epoch (bounds).
    table.prev_onset[:] = -np.inf
    images, image_concepts = _index_images(table, stims)
    config = PreprocessConfig(ch_names=tuple(ch_names), sfreq=sfreq, l_freq=None, h_freq=None,
                              notch=None, clamp=preprocess.clamp)
    fitted = _fit_scaler(runs, table, config, sfreq)
    for r in runs:
        _apply_scaler(r.data, fitted)
    info = mne.create_info(list(ch_names), sfreq, "eeg")
    # Positions for the spatial layer; channels the standard montage lacks are left to
    # sensor_positions_2d (THINGS-EEG2 uses 10-10 names, all in standard_1005).
    info.set_montage("standard_1005", on_missing="ignore", verbose="error")
    return SessionData(runs=runs, subjects=subject_ids, trials=table, ch_names=tuple(ch_names),
                       positions=_positions(info, ch_names), sfreq=sfreq, images=images,
                       image_concepts=image_concepts, preprocess=fitted, group_delay=0.0,
                       fingerprint=_fingerprint(identity, fitted), source=path, kind="epochs")
