"""THINGS-EEG2 (Gifford et al. 2022) as a session: the publishers' epochs, laid end to end.

The dataset ships preprocessed epochs (pickled ``.npy`` files, read by
:func:`glimpse.streaming.recordings.read_things_eeg2`); :func:`load_things_eeg2` turns
them into a :class:`~glimpse.models.data.SessionData` whose runs are one file's epochs
each, so the same windows, splits and scaler apply as for continuous recordings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mne
import numpy as np
from tqdm import tqdm

from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import PreprocessConfig
from glimpse.streaming.recordings import Trial
from glimpse.streaming.things_eeg2 import read_things_eeg2

from .data import (Run, SessionData, apply_scaler, data_fingerprint, fit_training_scaler,
                   index_images, sensor_positions, trial_table)

logger = logging.getLogger("glimpse.models.things_eeg2")

__all__ = ["is_things_eeg2", "load_things_eeg2"]


def is_things_eeg2(path: Path) -> bool:
    """A THINGS-EEG2 root or subject folder (its ``Preprocessed_data*`` or training file)."""
    return path.is_dir() and (any(path.glob("Preprocessed_data*"))
                              or (path / "preprocessed_eeg_training.npy").is_file())


def load_things_eeg2(path: Path, subjects, preprocess: PreprocessConfig, image_dir,
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
    table, stims = trial_table(runs, subject_ids, sfreq, epoch_len=n_ep)
    # Epochs are not a timeline: no "previous onset", so the quiet-period rule does
    # not apply; a window must lie in its own epoch (bounds).
    table.prev_onset[:] = -np.inf
    images, image_concepts = index_images(table, stims)
    config = PreprocessConfig(ch_names=tuple(ch_names), sfreq=sfreq, l_freq=None, h_freq=None,
                              notch=None, clamp=preprocess.clamp)
    fitted = fit_training_scaler(runs, table, config, sfreq)
    for r in runs:
        apply_scaler(r.data, fitted)
    info = mne.create_info(list(ch_names), sfreq, "eeg")
    # Positions for the spatial layer; channels the standard montage lacks are left to
    # sensor_positions_2d (THINGS-EEG2 uses 10-10 names, all in standard_1005).
    info.set_montage("standard_1005", on_missing="ignore", verbose="error")
    return SessionData(runs=runs, subjects=subject_ids, trials=table, ch_names=tuple(ch_names),
                       positions=sensor_positions(info, ch_names), sfreq=sfreq, images=images,
                       image_concepts=image_concepts, preprocess=fitted, group_delay=0.0,
                       fingerprint=data_fingerprint(identity, fitted), source=path,
                       kind="epochs")
