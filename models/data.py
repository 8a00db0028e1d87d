"""From recordings to training windows: what a brain encoder is trained and evaluated on.

:func:`load_session` opens every recording of a dataset (a BIDS root, one file, or
THINGS-EEG2's epochs), runs the shared causal preprocessing over each run and
returns a :class:`SessionData`: per run, the preprocessed ``float32 (n_chans,
n_samples)`` array at the output rate, and one :class:`TrialTable` over all runs
(onset, image row, concept, split, subject).

Windows, the model input, are cut from those arrays by :mod:`glimpse.models.windows`;
THINGS-EEG2's epochs are read by :mod:`glimpse.models.things_eeg2`.

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
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mne
import numpy as np
from tqdm import tqdm

from glimpse.streaming.bids import list_bids_recordings
from glimpse.streaming.channels import require_channels
from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import OnlinePreprocessor, PreprocessConfig, fit_scaler
from glimpse.streaming.recordings import EventColumns, Trial, open_recording

from .windows import window_samples

logger = logging.getLogger("glimpse.models.data")

__all__ = ["Run", "SessionData", "TrialTable", "image_targets", "load_session"]

#: Span around training onsets whose samples fit the robust scaler, s.
SCALER_SPAN = (-0.5, 1.0)
# Recording samples read per pass: ~3.5 MB per block for 275 channels in float64.
_READ_BLOCK = 16384
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


# --------------------------------------------------------------------------- targets


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
    positions: Mapping[str, Sequence[float]] | None = None,
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
    ``positions``: 2-D sensor layout by channel name, used where the recording's own
    cannot be found (a live session folder keeps channel names and types only; its
    checkpoint's positions stand in).

    Raises :class:`InputError` on non-finite samples (naming the channel and the
    time), on subjects that lack a channel of the training set, and on datasets
    without training trials.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("an existing BIDS root, recording or THINGS-EEG2 folder",
                         f"{path}, which does not exist", "check the path")
    preprocess = preprocess or PreprocessConfig()
    from .things_eeg2 import is_things_eeg2, load_things_eeg2  # it builds on this module

    if is_things_eeg2(path):
        return load_things_eeg2(path, subjects, preprocess, stim_root, progress)
    opts = dict(events=events, stim_root=stim_root, mapping=mapping, source=source,
                stim_channel=stim_channel)
    files = _recording_files(path, subjects, session, task, run)
    config = None
    runs, identity, delays, rates = [], [], set(), set()
    for file, subject in tqdm(files, desc="preprocess", unit="run", disable=not progress):
        rec = open_recording(file, **opts)
        if config is None:  # the first run fixes the channels; later ones must have them all
            config, info0 = _first_run_config(preprocess, rec), rec.raw.info
        _check_channels(config, rec.raw.ch_names, subject, rec.path)
        online = OnlinePreprocessor(config, rec.sfreq)
        data = _preprocess_checked(rec, config, online)
        delays.add(round(online.group_delay, 9))
        rates.add(online.sfreq_out)
        runs.append(Run(subject=subject, source=rec.path, data=data, trials=list(rec.trials)))
        identity.append(_run_identity(rec, subject))
        logger.info("sub-%s %s: %d channels x %d samples at %.6g Hz, %d trials", subject,
                    rec.path.name, data.shape[0], data.shape[1], online.sfreq_out, len(rec.trials))
    sfreq = _one_rate(rates)
    subject_ids = sorted({r.subject for r in runs})
    table, stims = trial_table(runs, subject_ids, sfreq, epoch_len=None)
    images, image_concepts = index_images(table, stims)
    fitted = fit_training_scaler(runs, table, config, sfreq)
    for r in runs:
        apply_scaler(r.data, fitted)
    layout = _layout(info0, fitted.ch_names, positions)
    fingerprint = data_fingerprint(identity, fitted)
    session_data = SessionData(runs=runs, subjects=subject_ids, trials=table,
                               ch_names=tuple(fitted.ch_names), positions=layout, sfreq=sfreq,
                               images=images, image_concepts=image_concepts, preprocess=fitted,
                               group_delay=max(delays), fingerprint=fingerprint,
                               source=path, kind="continuous")
    logger.info("loaded %s", session_data.summary())
    return session_data


def _first_run_config(preprocess: PreprocessConfig, rec) -> PreprocessConfig:
    """The first run's channels and filters; the notch at the recording's mains (BIDS:
    PowerLineFrequency) unless one is set."""
    mains = rec.line_freq if rec.line_freq and rec.line_freq < rec.sfreq / 2 else None
    return dataclasses.replace(preprocess, center=None, scale=None,
                               notch=preprocess.notch or mains).resolve(rec.raw.info)


def _run_identity(rec, subject: str) -> dict[str, Any]:
    """What the data fingerprint hashes of one run."""
    return {"file": rec.path.name, "bytes": _size(rec.path), "subject": subject, "sfreq": rec.sfreq,
            "n_times": rec.n_times, "trials": _trials_digest(rec.trials, rec.stim_root)}


def _layout(info: mne.Info, ch_names: Sequence[str],
            positions: Mapping[str, Sequence[float]] | None) -> np.ndarray:
    """The recording's 2-D sensor layout, else ``positions`` by name (live session folders)."""
    try:
        return sensor_positions(info, ch_names)
    except InputError:
        if positions is None or not all(name in positions for name in ch_names):
            raise
        return np.asarray([positions[name] for name in ch_names], np.float32)


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

    found = list_bids_recordings(path, subjects=entity(subjects), sessions=entity(session),
                                 tasks=entity(task), runs=entity(run))
    if not found:
        have = mne_bids.get_entity_vals(path, "subject")
        raise InputError("MEG/EEG recordings matching the selection in the BIDS dataset",
                         f"none for subjects={subjects}, session={session}, task={task}, "
                         f"run={run}; subjects there: {have}",
                         "pick subjects/sessions/runs that exist (glimpse info ROOT)")
    return [(Path(bp.fpath), bp.subject) for bp in found]


def _check_channels(config: PreprocessConfig, names: Sequence[str], subject: str, path: Path):
    require_channels(config.ch_names, names,
                     expected=f"every subject with the {len(config.ch_names)} channels used for "
                              "training (those of the first run)",
                     source=f"sub-{subject} ({path.name})",
                     fix="exclude those channels for everyone (PreprocessConfig(exclude=...)), "
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


def trial_table(runs: list[Run], subject_ids: list[str], sfreq: float,
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


def index_images(table: TrialTable, stims: list[Path | None]
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


def fit_training_scaler(runs: list[Run], table: TrialTable, config: PreprocessConfig,
                sfreq: float) -> PreprocessConfig:
    """Median/IQR of the unscaled output within SCALER_SPAN of training onsets.

    ``fit_scaler`` is given these samples through an identity configuration (same
    rate, no filters), so its statistics and zero-IQR guards are the ones used.
    """
    train = np.flatnonzero(table.split == "train")
    if not len(train):
        raise InputError("training trials (split 'train', trial_type 'exp' in THINGS)",
                         f"none among {len(table)} trials",
                         "check the events' split column (EventColumns.splits), or map "
                         "marker/annotation labels to stimuli and splits with --mapping")
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


def apply_scaler(data: np.ndarray, config: PreprocessConfig) -> None:
    """The preprocessor's last two stages, in place (as ``OnlinePreprocessor`` does them)."""
    center = np.asarray(config.center, np.float32)[:, None]
    inv = (1.0 / np.asarray(config.scale, np.float64)).astype(np.float32)[:, None]
    for start in range(0, data.shape[1], 65536):  # in slices: no float64 copy of the run
        block = data[:, start:start + 65536]
        block -= center
        block *= inv
        if config.clamp is not None:
            np.clip(block, -config.clamp, config.clamp, out=block)


def sensor_positions(info: mne.Info, ch_names: Sequence[str]) -> np.ndarray:
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


def data_fingerprint(identity: list[dict], config: PreprocessConfig) -> str:
    """sha256 over each run's identity (name, size, shape, trials) and the preprocessing.

    No paths or modification times: a dataset copied elsewhere keeps its fingerprint.
    """
    blob = json.dumps({"runs": identity, "preprocess": config.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
