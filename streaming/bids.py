"""BIDS datasets: pick one recording, read it with its sidecars, find its events.

mne-bids does the reading; this module chooses the recording from the user's
selection (subject, session, task, run, datatype) with errors that list what the
dataset has, and undoes one sidecar habit that would lose data: a ``channels.tsv``
that types MEG sensors ``OTHER`` (THINGS-MEG does, for its 272 axial
gradiometers) turns them into misc channels; the raw file's own types are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mne

from .channels import listing
from .errors import InputError
from .rawfiles import check_complete, read_raw_file
from .trials import na, read_tsv

logger = logging.getLogger("glimpse.streaming.bids")

BIDS_EXTENSIONS = [".fif", ".ds", ".edf", ".bdf", ".vhdr", ".set", ".con", ".sqd", ".mff"]
BIDS_SUFFIXES = ["meg", "eeg", "ieeg"]
_MEG_KINDS = (mne.io.constants.FIFF.FIFFV_MEG_CH, mne.io.constants.FIFF.FIFFV_REF_MEG_CH)
# What set_channel_types changes; restoring these gives back the raw file's channel.
_TYPE_KEYS = ("kind", "coil_type", "unit", "unit_mul", "coord_frame")
_OTHER_WARNING = "No BIDS -> MNE mapping found"
_told_about_types: set[str] = set()  # datasets whose retyped channels were reported


def is_bids_root(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_description.json").is_file()


def bids_root_of(path: Path) -> Path | None:
    """The enclosing BIDS root of a ``sub-*`` recording file, else None."""
    if not path.name.startswith("sub-") or (path.is_dir() and path.suffix != ".ds"):
        return None  # a subject or session folder is not one recording
    for parent in Path(os.path.abspath(path)).parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def bids_path_of_file(path: Path, root: Path):
    """The BIDSPath of a recording file inside ``root``; None where its name is not BIDS."""
    import mne_bids

    try:
        bids_path = mne_bids.get_bids_path_from_fname(path, check=False)
    except Exception as err:  # noqa: BLE001 - a name that is not BIDS is read as a plain file
        logger.debug("%s is inside BIDS root %s but its name is not BIDS (%s); "
                     "reading it as a plain file", path, root, err)
        return None
    return bids_path.update(root=root, check=False)


def list_bids_recordings(root: Path, **entities: Any) -> list:
    """Every MEG/EEG recording under ``root``, split FIF parts counted once, sorted.

    ``entities`` (``subjects``, ``sessions``, ``tasks``, ``runs``: lists of labels)
    narrow the search as in ``mne_bids.find_matching_paths``.
    """
    import mne_bids

    found = mne_bids.find_matching_paths(root, suffixes=BIDS_SUFFIXES, extensions=BIDS_EXTENSIONS,
                                         ignore_nosub=True, **entities)
    # Split FIF files (split-01, split-02, ...: a recording over 2 GB) are one recording,
    # named by its first part: MNE reads the rest from it, and the name without a split
    # entity is no file at all.
    unique = {}
    for bp in sorted(found, key=lambda bp: str(bp.fpath)):
        unique.setdefault(str(bp.copy().update(split=None, check=False).fpath), bp)
    return [unique[k] for k in sorted(unique)]


def select_bids_recording(root: Path, selection: dict[str, Any]):
    """The one recording of ``root`` that matches ``selection``, or an InputError listing them."""
    asked = {k: v for k, v in selection.items() if v is not None}
    candidates = list_bids_recordings(root)
    matches = [bp for bp in candidates if all(_entity_matches(getattr(bp, k), v)
                                              for k, v in asked.items())]
    names = [str(Path(bp.fpath).relative_to(root)) for bp in candidates]
    if not candidates:
        raise InputError("a BIDS dataset with MEG/EEG recordings",
                         f"none under {root} (looked for sub-*/**/*_meg|eeg|ieeg "
                         f"{'|'.join(BIDS_EXTENSIONS)})",
                         "check the dataset is complete (with DataLad: `datalad get`)")
    if not matches:
        raise InputError(f"a recording matching {entities_str(asked)} in {root}",
                         f"none; the dataset has {listing(names)}",
                         "pick one of those with subject=/session=/task=/run= "
                         "(--subject, --session, --task, --run)")
    if len(matches) > 1:
        which = f"matching {entities_str(asked)}" if asked else "and no selection"
        raise InputError(f"one recording in the BIDS dataset {root}",
                         f"{len(matches)} recordings {which}: "
                         f"{listing([str(Path(bp.fpath).relative_to(root)) for bp in matches])}",
                         "pick one with subject=/session=/task=/run= "
                         "(--subject, --session, --task, --run)")
    return matches[0]


def _entity_matches(have: str | None, want: Any) -> bool:
    if have is None:
        return False
    want = str(want)
    want = want.split("-", 1)[1] if re.match(r"^(sub|ses|task|run)-", want) else want
    if have.isdigit() and want.isdigit():  # run=1 matches run-01
        return int(have) == int(want)
    return have == want


def entities_str(entities: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in entities.items())


# --------------------------------------------------------------------------- reading


def read_bids(bids_path, raw_fmt: str, preload: bool) -> mne.io.BaseRaw:
    """``mne_bids.read_raw_bids``, whole data checked, the raw file's MEG types kept."""
    import mne_bids

    retyped = _meg_typed_other(bids_path)
    try:
        with _quiet_about_other(bool(retyped)):
            raw = mne_bids.read_raw_bids(bids_path, extra_params={"preload": preload},
                                         verbose="warning")
    except Exception as err:  # noqa: BLE001 - same one-line report as plain files
        # A damaged data file is the likelier cause, and its error names the fix.
        read_raw_file(Path(bids_path.fpath), raw_fmt, preload=False)
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise InputError("a readable BIDS recording",
                         f"{bids_path.fpath}, which failed to read "
                         f"({type(err).__name__}: {first_line})",
                         "check its sidecar files (channels.tsv, *_meg.json/*_eeg.json) "
                         "against the data file") from err
    check_complete(raw, Path(bids_path.fpath), raw_fmt)
    if retyped:
        _restore_meg_types(raw, bids_path, retyped)
    return raw


class _DropOther(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _OTHER_WARNING not in record.getMessage()


@contextlib.contextmanager
def _quiet_about_other(active: bool):
    """Without mne-bids' one warning (and log line) per channel typed OTHER: the
    channels keep their types and one line says so (``_restore_meg_types``)."""
    if not active:
        yield
        return
    mne_logger, drop = logging.getLogger("mne"), _DropOther()
    mne_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{_OTHER_WARNING}")
            yield
    finally:
        mne_logger.removeFilter(drop)


def _meg_typed_other(bids_path) -> list[str]:
    """Channels that channels.tsv types OTHER: mne-bids makes them misc."""
    tsv = Path(bids_path.copy().update(suffix="channels", extension=".tsv", split=None,
                                       check=False).fpath)
    if not tsv.is_file():
        return []
    return [row["name"] for row in read_tsv(tsv)
            if (row.get("type") or "").strip().upper() == "OTHER" and row.get("name")]


def _restore_meg_types(raw: mne.io.BaseRaw, bids_path, retyped: list[str]) -> None:
    """Give back the types that the raw file's header has for the channels typed OTHER."""
    header = mne.io.read_raw(bids_path.fpath, preload=False, verbose="error").info
    in_file = {name: i for i, name in enumerate(header["ch_names"])}
    in_raw = {name: j for j, name in enumerate(raw.ch_names)}
    restored = []
    for name in retyped:
        i, j = in_file.get(name), in_raw.get(name)
        if i is None or j is None or header["chs"][i]["kind"] not in _MEG_KINDS:
            continue
        ch = raw.info["chs"][j]
        for key in _TYPE_KEYS:
            ch[key] = header["chs"][i][key]
        ch["loc"] = header["chs"][i]["loc"].copy()
        restored.append(name)
    if not restored:
        return
    root = str(bids_path.root)
    log = logger.debug if root in _told_about_types else logger.info
    _told_about_types.add(root)
    types = sorted(set(raw.get_channel_types(picks=[in_raw[n] for n in restored])))
    log("%s: channels.tsv types %d MEG channels OTHER (%s); kept the types of the "
        "recording file (%s)", root, len(restored), listing(restored, 3), ", ".join(types))


def events_tsv(bids_path) -> Path | None:
    """The recording's ``events.tsv``, where it has one."""
    tsv = Path(bids_path.copy().update(suffix="events", extension=".tsv", split=None,
                                       check=False).fpath)
    return tsv if tsv.is_file() else None


def sidecar(bids_path) -> dict[str, Any]:
    """The recording's ``*_meg.json``/``*_eeg.json`` as a dict ({} if unreadable)."""
    path = Path(bids_path.copy().update(extension=".json", split=None, check=False).fpath)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def bids_manufacturer(bids_path) -> str | None:
    if bids_path is None:
        return None
    maker = sidecar(bids_path).get("Manufacturer")
    return None if na(maker) is None else str(maker)
