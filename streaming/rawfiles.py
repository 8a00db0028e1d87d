"""Raw MEG/EEG files as MNE reads them: which format, which system, and whole data.

``mne.io.read_raw`` opens every format glimpse accepts; this module says which
format a path is (with a clear error for companion files and formats MNE would
misread), turns every reader failure into one :class:`InputError` line, and makes
sure the data are all there when the file is opened. A file cut short by a broken
copy would otherwise open and fail only at the first read (FIF: ``ValueError:
buffer size must be a multiple of element size``), or, in EDF, BDF and
BrainVision, silently read as a shorter recording.
"""

from __future__ import annotations

import configparser
import importlib.util
import logging
import warnings
from collections import Counter
from pathlib import Path

import mne

from .errors import InputError

logger = logging.getLogger("glimpse.streaming.rawfiles")

# Extension -> format, for the MEG/EEG formats mne.io.read_raw reads. Not all of
# its list: there ".txt" means BOXY optical data and ".mat" a FieldTrip struct,
# which would fail later with an obscure error instead of a clear one here.
FORMATS = {
    ".fif": "FIF",
    ".fif.gz": "FIF",
    ".ds": "CTF",
    ".edf": "EDF",
    ".bdf": "BDF",
    ".gdf": "GDF",
    ".vhdr": "BrainVision",
    ".ahdr": "BrainVision",
    ".set": "EEGLAB",
    ".cnt": "CNT",
    ".mff": "EGI MFF",
    ".sqd": "KIT",
    ".con": "KIT",
    ".eeg": "Nihon Kohden",
    ".nxe": "eXimia",
    ".lay": "Persyst",
    ".data": "Nicolet",
}
# Files that belong to a recording but are not the one to open.
_COMPANIONS = {".vmrk": ".vhdr", ".eeg": ".vhdr", ".fdt": ".set", ".meg4": ".ds", ".res4": ".ds"}
# The system a format implies, where the format belongs to one maker.
_FORMAT_SYSTEM = {"CTF": "CTF", "BDF": "BioSemi", "BrainVision": "Brain Products",
                  "EGI MFF": "EGI", "KIT": "KIT/Yokogawa", "Nihon Kohden": "Nihon Kohden",
                  "eXimia": "Nexstim eXimia", "Persyst": "Persyst", "Nicolet": "Nicolet"}
# MEG coil type // 100 -> maker: the coil types are the most reliable hint there is,
# since FIF files converted from CTF or KIT keep them.
_COIL_SYSTEM = {30: "Neuromag/MEGIN", 40: "BTi/4D Magnes", 50: "CTF", 60: "KIT/Yokogawa",
                70: "BabyMEG", 75: "Artemis123", 80: "QuSpin OPM", 81: "FieldLine OPM",
                82: "Kernel OPM", 90: "KRISS", 91: "Compumedics"}
_BRAINVISION_BYTES = {"INT_16": 2, "UINT_16": 2, "INT_32": 4, "IEEE_FLOAT_32": 4}
DAMAGED_FIX = ("the file is truncated or damaged: copy it again (with its companion "
               "files beside it)")


def format_of(path: Path) -> str:
    """The format of a raw file from its extension, or an InputError saying what to pass."""
    name = path.name.lower()
    ext = ".fif.gz" if name.endswith(".fif.gz") else path.suffix.lower()
    if path.is_dir() and ext not in (".ds", ".mff"):
        raise InputError("a recording file, a CTF .ds folder or a BIDS root",
                         f"the folder {path}",
                         "pass the recording file itself, or the BIDS root with its "
                         "dataset_description.json")
    companion = _COMPANIONS.get(ext)
    if companion is not None and (ext != ".eeg" or path.with_suffix(".vhdr").exists()):
        target = path.parent if companion == ".ds" else path.with_suffix(companion)
        kind = "folder" if companion == ".ds" else "file"
        raise InputError(f"the recording's {companion} {kind}",
                         f"{path}, one of its companion files", f"pass {target}")
    if ext not in FORMATS:
        raise InputError(
            f"a MEG/EEG recording ({', '.join(FORMATS)}, .xdf, or a BIDS folder)",
            f"{path} ({ext or 'no extension'})",
            "convert it to one of those (e.g. FIF with MNE, or EDF) or pass a BIDS dataset")
    return FORMATS[ext]


def read_raw_file(path: Path, fmt: str, preload: bool) -> mne.io.BaseRaw:
    """``mne.io.read_raw`` with whole data checked; every failure one InputError line."""
    with warnings.catch_warnings(record=True) as caught:
        # Recorded, then re-emitted unless they turn out to be signs of a cut file.
        warnings.simplefilter("always")
        try:
            # verbose="warning": MNE's info chatter stays out of the service log, its
            # warnings still reach the caller.
            raw = mne.io.read_raw(path, preload=preload, verbose="warning")
        except Exception as err:  # noqa: BLE001 - every reader failure becomes one clear line
            if fmt == "CNT" and importlib.util.find_spec("antio") is None:
                raise InputError(
                    "a .cnt file MNE can read",
                    f"{path}, not a Neuroscan CNT, and MNE's ANT Neuro reader needs the "
                    "optional package antio, which is not installed",
                    "pip install antio (for ANT Neuro eego .cnt), or export the recording "
                    "to EDF/BDF/FIF") from err
            raise unreadable(path, fmt, err) from err
        check_complete(raw, path, fmt)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return raw


def unreadable(path: Path, fmt: str, err: Exception) -> InputError:
    """The one-line error for a file that a reader gave up on."""
    first_line = (str(err).strip().splitlines() or [""])[0]
    return InputError(f"a readable {fmt} recording with all its data",
                      f"{path}, which failed to read ({type(err).__name__}: {first_line})",
                      DAMAGED_FIX)


def check_complete(raw: mne.io.BaseRaw, path: Path, fmt: str) -> None:
    """Raise an InputError if the data file holds less than its header promises.

    The last sample is read at once: readers that load lazily (FIF, CTF, EEGLAB)
    would otherwise fail at the first read, far from the open. EDF/BDF and
    BrainVision readers size the data from the file instead, so their headers are
    compared with the file size.
    """
    short = None
    if fmt in ("EDF", "BDF"):
        short = _edf_short(raw, path)
    elif fmt == "BrainVision":
        short = _brainvision_short(raw, path)
    if short:
        raise InputError(f"a complete {fmt} recording", f"{path}, {short}", DAMAGED_FIX)
    if not raw.preload and raw.n_times:
        try:
            raw.get_data(start=raw.n_times - 1)
        except Exception as err:  # noqa: BLE001 - any failure here means missing data
            raise unreadable(path, fmt, err) from err


def _edf_short(raw: mne.io.BaseRaw, path: Path) -> str | None:
    """EDF/BDF: the header's record count x record duration against the samples read."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
        n_records = int(head[236:244].decode("ascii"))
        duration = float(head[244:252].decode("ascii"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # a header MNE read but we cannot: leave the judgement to MNE
    if n_records <= 0 or duration <= 0:
        return None  # -1: a recording that was not closed; MNE sizes it from the file
    promised = round(n_records * duration * raw.info["sfreq"])
    if raw.n_times < promised:
        return (f"whose header promises {n_records} data records ({promised} samples) "
                f"but which holds {raw.n_times} samples")
    return None


def _brainvision_short(raw: mne.io.BaseRaw, path: Path) -> str | None:
    """BrainVision binary data: whole samples of every channel, DataPoints if stated.

    A file cut exactly between two samples, with no DataPoints in its header, cannot
    be told from a shorter recording.
    """
    header = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        header.read_string(text[text.index("["):])
        sections = {name.lower(): header[name] for name in header.sections()}
        common, binary = sections["common infos"], sections["binary infos"]
        data = path.parent / common["DataFile"]
        size, bytes_per = data.stat().st_size, _BRAINVISION_BYTES[binary["BinaryFormat"]]
        n_chans = int(common["NumberOfChannels"])
    except (OSError, ValueError, KeyError, configparser.Error):
        return None
    if common.get("DataFormat", "BINARY").upper() != "BINARY":
        return None
    sample = n_chans * bytes_per
    points = common.get("DataPoints")
    if points is not None and points.strip().isdigit() and size < int(points) * sample:
        return f"whose data file {data.name} holds {size // sample} of {int(points)} samples"
    if size % sample:
        return (f"whose data file {data.name} ends inside a sample ({size} bytes, not a "
                f"multiple of {n_chans} channels x {bytes_per} bytes)")
    return None


def system_of(raw: mne.io.BaseRaw, fmt: str) -> str | None:
    """The acquisition system, where the file says so; None rather than a guess."""
    meg_kinds = (mne.io.constants.FIFF.FIFFV_MEG_CH, mne.io.constants.FIFF.FIFFV_REF_MEG_CH)
    coils = Counter(int(ch["coil_type"]) // 100 for ch in raw.info["chs"]
                    if ch["kind"] in meg_kinds)
    for group, _ in coils.most_common():
        if group in _COIL_SYSTEM:
            return _COIL_SYSTEM[group]
    device = raw.info.get("device_info") or {}
    for key in ("model", "type"):
        if device.get(key):
            return str(device[key])
    return _FORMAT_SYSTEM.get(fmt)

