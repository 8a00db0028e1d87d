"""THINGS-EEG2's preprocessed epochs (Gifford et al. 2022) and their image list.

Not a raw recording: each subject's preprocessed_eeg_{training,test}.npy holds
epochs of 17 channels at 100 Hz, (images, repeats, channels, times), and
image_set/image_metadata.npy says which image each row showed.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .channels import listing
from .errors import InputError
from .trials import require_stimulus_files

logger = logging.getLogger("glimpse.streaming.things_eeg2")


@dataclass(frozen=True)
class StimulusImage:
    """One image of an image set: file (absolute), concept and split."""

    stim_file: Path
    concept: str
    split: str


@dataclass
class ThingsEEG2Split:
    """``data`` is (n_images, n_repeats, n_chans, n_times); row i shows ``images[i]``."""

    data: np.ndarray = field(repr=False)
    images: list[StimulusImage] = field(repr=False)


@dataclass
class ThingsEEG2:
    """THINGS-EEG2 preprocessed epochs: ``splits`` holds "train" and/or "test"."""

    ch_names: list[str]
    times: np.ndarray = field(repr=False)
    sfreq: float
    splits: dict[str, ThingsEEG2Split]
    eeg_dir: Path
    image_dir: Path

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)


_EEG2_FILES = {"train": "preprocessed_eeg_training.npy", "test": "preprocessed_eeg_test.npy"}
_EEG2_IMAGE_FOLDERS = {"train": "training_images", "test": "test_images"}
_EEG2_META_KEYS = {"train": ("train_img_files", "train_img_concepts"),
                   "test": ("test_img_files", "test_img_concepts")}


def read_things_eeg2(
    source: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    *,
    subject: str | int | None = None,
    eeg_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    check_stimuli: bool = True,
) -> ThingsEEG2:
    """Read THINGS-EEG2's preprocessed EEG (Gifford et al. 2022) and its image list.

    ``source`` is the dataset root (``Preprocessed_data_*/sub-XX/`` and
    ``image_set/``; pick the subject with ``subject`` when there are several), a
    subject's folder holding ``preprocessed_eeg_{training,test}.npy``, or a list
    of the .npy files themselves (with ``image_metadata.npy``). ``eeg_dir`` and
    ``image_dir`` (the folder with ``image_metadata.npy``, ``training_images/``
    and ``test_images/``) override what the layout implies.

    Security: these .npy files are pickles (``np.save`` of a dict), read with
    ``allow_pickle=True``, and unpickling a file can run code from it. Load only
    files from a source you trust; glimpse reads them only from the paths you name.
    """
    files, meta_file, eeg_dir, image_dir = _things_eeg2_paths(source, subject, eeg_dir, image_dir)
    meta = _load_pickled_dict(meta_file, {k for s in files for k in _EEG2_META_KEYS[s]})
    ch_names = times = None
    splits = {}
    for split, file in files.items():
        blob = _load_pickled_dict(file, {"preprocessed_eeg_data", "ch_names", "times"})
        data = np.asarray(blob["preprocessed_eeg_data"])
        names, t = [str(c) for c in blob["ch_names"]], np.asarray(blob["times"], dtype=float)
        expected = "(images, repeats, channels, times)"
        if data.ndim != 4:
            raise InputError(f"preprocessed_eeg_data of 4 axes {expected}",
                             f"shape {data.shape} in {file}",
                             "pass the unmodified THINGS-EEG2 preprocessed files")
        if len(names) != data.shape[2] or t.ndim != 1 or len(t) != data.shape[3]:
            raise InputError(f"shape {expected} = (.., .., len(ch_names)={len(names)}, "
                             f"len(times)={t.size})",
                             f"shape {data.shape} in {file}",
                             "pass the unmodified THINGS-EEG2 preprocessed files")
        if ch_names is not None and (names != ch_names or not np.allclose(t, times)):
            raise InputError("training and test files with the same channels and times",
                             f"different ones in {file}", "pass both files of one subject")
        ch_names, times = names, t
        images = _things_eeg2_images(meta, split, image_dir, meta_file)
        if len(images) != data.shape[0]:
            raise InputError(f"{len(images)} images along axis 0 of {file}, as "
                             f"{meta_file.name} lists for {split}",
                             f"shape {data.shape}",
                             "pass the image_metadata.npy of the same image set")
        splits[split] = ThingsEEG2Split(data=data, images=images)
    if check_stimuli:
        require_stimulus_files((im.stim_file for s in splits.values() for im in s.images),
                       f"pass image_dir=: the folder holding training_images/ "
                       f"and test_images/ (now {image_dir})")
    sfreq = _sfreq_from_times(times, files)
    logger.info("THINGS-EEG2 from %s: %s, %d channels at %s Hz", eeg_dir,
                {k: v.data.shape for k, v in splits.items()}, len(ch_names), sfreq)
    return ThingsEEG2(ch_names=ch_names, times=times, sfreq=sfreq, splits=splits,
                      eeg_dir=eeg_dir, image_dir=image_dir)


def _things_eeg2_paths(source, subject, eeg_dir, image_dir):
    """(split -> eeg file, metadata file, eeg_dir, image_dir) from whatever was named."""
    files: dict[str, Path] = {}
    meta_file = None
    if source is not None and not isinstance(source, (str, os.PathLike)):
        for f in map(Path, source):
            _require_exists(f)
            if f.name == "image_metadata.npy":
                meta_file = f
            else:
                split = next((s for s, n in _EEG2_FILES.items() if f.name == n), None)
                if split is None:
                    raise InputError(f"THINGS-EEG2 files named {sorted(_EEG2_FILES.values())} "
                                     "or image_metadata.npy", f"{f}", "pass those files")
                files[split] = f
        if not files:
            raise InputError(f"{' and/or '.join(_EEG2_FILES.values())} among the files named",
                             "only image_metadata.npy", "add the preprocessed EEG files")
        eeg_dir = Path(eeg_dir) if eeg_dir else next(iter(files.values())).parent
        image_dir = Path(image_dir) if image_dir else (meta_file.parent if meta_file else None)
    else:
        root = None if source is None else Path(source).expanduser()
        if root is not None:
            _require_exists(root)
        if eeg_dir is None:
            if root is None:
                raise InputError("a THINGS-EEG2 root, a subject folder or eeg_dir=",
                                 "nothing", "pass the dataset root")
            eeg_dir = root if any((root / n).is_file() for n in _EEG2_FILES.values()) \
                else _things_eeg2_subject_dir(root, subject)
        eeg_dir = Path(eeg_dir).expanduser()
        _require_exists(eeg_dir)
        if image_dir is None:
            # root/Preprocessed_data_*/sub-XX -> root/image_set
            guesses = [p / "image_set" for p in (root, eeg_dir.parent.parent) if p is not None]
            image_dir = next((g for g in guesses if g.is_dir()), None)
        files = {s: eeg_dir / n for s, n in _EEG2_FILES.items() if (eeg_dir / n).is_file()}
    if not files:
        raise InputError(f"{' and/or '.join(_EEG2_FILES.values())}", f"none in {eeg_dir}",
                         "pass the subject folder of the preprocessed data (eeg_dir=)")
    if image_dir is None:
        raise InputError("THINGS-EEG2's image_set folder (image_metadata.npy, training_images/, "
                         "test_images/)", "none found beside the EEG files",
                         "pass image_dir=")
    image_dir = Path(image_dir).expanduser()
    meta_file = meta_file or image_dir / "image_metadata.npy"
    _require_exists(meta_file)
    return files, meta_file, Path(os.path.abspath(eeg_dir)), Path(os.path.abspath(image_dir))


def _things_eeg2_subject_dir(root: Path, subject) -> Path:
    tops = sorted(p for p in root.glob("Preprocessed_data*") if p.is_dir())
    if len(tops) != 1:
        raise InputError("one Preprocessed_data* folder under the THINGS-EEG2 root",
                         f"{[p.name for p in tops] or 'none'} in {root}",
                         "pass the subject folder itself (eeg_dir=)")
    subjects = sorted(p.name for p in tops[0].glob("sub-*") if p.is_dir())
    if subject is None:
        if len(subjects) != 1:
            raise InputError("one subject folder, or subject=",
                             f"{listing(subjects) or 'none'} in {tops[0]}",
                             "pick one with subject= (--subject)")
        return tops[0] / subjects[0]
    name = str(subject)
    name = name if name.startswith("sub-") else f"sub-{int(name):02d}" if name.isdigit() \
        else f"sub-{name}"
    if name not in subjects:
        raise InputError(f"subject {name} in {tops[0]}", f"{listing(subjects) or 'none'}",
                         "pick one of those with subject= (--subject)")
    return tops[0] / name


def _things_eeg2_images(meta, split, image_dir: Path, meta_file: Path) -> list[StimulusImage]:
    files_key, concepts_key = _EEG2_META_KEYS[split]
    files, concepts = list(meta[files_key]), list(meta[concepts_key])
    if len(files) != len(concepts):
        raise InputError(f"as many {concepts_key} as {files_key}",
                         f"{len(concepts)} and {len(files)} in {meta_file}",
                         "pass the unmodified image_metadata.npy")
    folder = image_dir / _EEG2_IMAGE_FOLDERS[split]
    return [StimulusImage(stim_file=folder / str(c) / str(f),
                          concept=re.sub(r"^\d+_", "", str(c)), split=split)
            for f, c in zip(files, concepts)]


def _load_pickled_dict(path: Path, keys: set[str]) -> dict:
    try:
        # The files are pickles by design; callers only pass paths the user named.
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise InputError("a NumPy .npy file", f"{path}, unreadable ({err})",
                         "re-download it") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict) or not keys <= set(obj):
        got = sorted(obj) if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise InputError(f"a dict with keys {sorted(keys)}", f"{got} in {path}",
                         "pass the unmodified THINGS-EEG2 file")
    return obj


def _sfreq_from_times(times: np.ndarray, files) -> float:
    steps = np.diff(times)
    if times.size < 2 or np.any(steps <= 0):
        raise InputError("times that increase, at least two of them",
                         f"{times.size} values in {sorted(map(str, files.values()))}",
                         "pass the unmodified THINGS-EEG2 files")
    sfreq = (times.size - 1) / (times[-1] - times[0])
    # times are stored rounded; snap to the integer rate the data were resampled to
    return float(round(sfreq)) if abs(sfreq - round(sfreq)) < 1e-3 else round(sfreq, 6)


def _require_exists(path: Path) -> None:
    if not Path(path).exists():
        raise InputError("an existing file or folder", f"{path}, which does not exist",
                         "check the path")
