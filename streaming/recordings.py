"""Open MEG/EEG recordings and find their trials: which image was shown, and when.

One entry point, :func:`open_recording`, for every file MNE reads (FIF, CTF
``.ds``, EDF, BDF, BrainVision, EEGLAB, ...), for BIDS datasets and for session
folders recorded live (:mod:`glimpse.streaming.session_log`, trials from their markers); a
:class:`Recording` holds the raw data and its :class:`Trial` list. Trials come
from one of three sources:

- a BIDS ``events.tsv`` whose columns name each trial's stimulus file
  (:class:`EventColumns`; the defaults fit THINGS-MEG and ``glimpse simulate``);
- annotations (EDF, EEGLAB, BrainVision markers, ...), optionally through a mapping
  from description to stimulus;
- a stim (trigger) channel plus a mapping from event value to stimulus.

:func:`describe` / :func:`format_description` back ``glimpse info``;
:func:`read_things_eeg2` reads THINGS-EEG2's preprocessed epochs, which are not a
raw recording.

Times: ``Trial.onset`` is in seconds on the ``raw.times`` axis (0 = the first
sample of the data), and ``Trial.sample`` indexes ``raw.get_data()``. MNE's own
event arrays count from the acquisition start instead (they add
``raw.first_samp``); the two differ on FIF files cut from a longer recording.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mne
import numpy as np

from .errors import InputError
from .session_log import find_session_stream, read_session_stream

logger = logging.getLogger("glimpse.streaming.recordings")

SPLITS = ("train", "test", "catch", "unknown")
TRIAL_SOURCES = ("auto", "events_tsv", "annotations", "stim_channel")

# Extension -> format, for the MEG/EEG formats mne.io.read_raw reads. Not all of
# its list: there ".txt" means BOXY optical data and ".mat" a FieldTrip struct,
# which would fail later with an obscure error instead of a clear one here.
_FORMATS = {
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
_BIDS_EXTENSIONS = [".fif", ".ds", ".edf", ".bdf", ".vhdr", ".set", ".con", ".sqd", ".mff"]
_BIDS_SUFFIXES = ["meg", "eeg", "ieeg"]
_NA = {"", "n/a", "na", "nan", "none"}
_MAX_LISTED = 10


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Trial:
    """One stimulus presentation.

    ``onset`` is in seconds on the ``raw.times`` axis, ``sample`` the matching index
    into the data; ``stim_file`` is absolute (None where the events name no file);
    ``split`` is one of :data:`SPLITS`; ``trial_type`` the raw event label it came
    from (events.tsv value, annotation description or trigger value).
    """

    onset: float
    stim_file: Path | None
    concept: str
    split: str
    trial_type: str
    sample: int


@dataclass(frozen=True)
class EventColumns:
    """Which ``events.tsv`` columns say what was shown; round-trips through JSON.

    Defaults fit THINGS-MEG (ds004212) and ``glimpse simulate``: ``image_path``
    relative to the BIDS root (or to ``stim_root``), the concept in ``concept`` or,
    where that column is missing, the image's folder name (THINGS' layout), and
    ``trial_type`` values exp/test/catch. Labels not in ``splits`` map to "unknown".
    """

    stimulus: str = "image_path"
    concept: str | None = "concept"
    split: str = "trial_type"
    splits: dict[str, str] = field(
        default_factory=lambda: {"exp": "train", "test": "test", "catch": "catch"}
    )

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.splits.items() if v not in SPLITS}
        if bad:
            raise InputError(f"EventColumns.splits values in {SPLITS}", f"{bad}",
                             "map each label to train, test, catch or unknown")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventColumns:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"EventColumns keys among {sorted(known)}", f"{unknown}",
                             "remove or rename those keys")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> EventColumns:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class _Stimulus:
    """One mapping entry: what an annotation description or trigger value showed."""

    stim_file: str | None
    concept: str | None
    split: str


@dataclass
class Recording:
    """An opened recording: the raw data, where it came from, and its trials.

    ``stim_root`` is the folder relative stimulus paths were resolved against;
    ``trial_source`` says where the trials came from ("events_tsv", "annotations",
    "stim_channel", "markers" or "none"); ``format`` and ``system`` are what :func:`describe`
    reports.
    """

    raw: mne.io.BaseRaw = field(repr=False)
    path: Path
    bids_path: Any | None  # mne_bids.BIDSPath; mne_bids is imported only for BIDS
    trials: list[Trial] = field(repr=False)
    stim_root: Path
    trial_source: str
    format: str
    system: str | None

    @property
    def sfreq(self) -> float:
        return float(self.raw.info["sfreq"])

    @property
    def ch_names(self) -> list[str]:
        return list(self.raw.ch_names)

    @property
    def n_times(self) -> int:
        return int(self.raw.n_times)

    @property
    def duration(self) -> float:
        """Seconds covered by the samples (``n_times / sfreq``)."""
        return self.n_times / self.sfreq


# --------------------------------------------------------------------------- opening


def open_recording(
    path: str | os.PathLike,
    *,
    preload: bool = False,
    events: EventColumns = EventColumns(),  # frozen, never mutated: safe as a default
    mapping: Mapping[str, Any] | str | os.PathLike | None = None,
    stim_root: str | os.PathLike | None = None,
    source: str = "auto",
    stim_channel: str | list[str] | None = None,
    subject: str | None = None,
    session: str | None = None,
    task: str | None = None,
    run: str | int | None = None,
    datatype: str | None = None,
    check_stimuli: bool = True,
) -> Recording:
    """Open a raw MEG/EEG file or a BIDS recording, and find its trials.

    ``path`` is a file MNE reads, a CTF ``.ds`` folder, a BIDS root (pick one
    recording with ``subject``/``session``/``task``/``run``/``datatype``), a
    recording file inside a BIDS dataset, or a session folder that glimpse
    recorded (or its ``streams/<name>`` folder; trials from its markers).

    ``source`` picks where trials come from; "auto" uses, in order: the mapping on
    annotations or trigger values when ``mapping`` is given; a BIDS events.tsv that
    has the ``events.stimulus`` column; annotations; the stim channel.
    ``mapping`` (a dict, or a .json/.tsv file) maps an annotation description or a
    trigger value to ``{"stim_file", "concept", "split"}`` (a bare string is a
    stim_file); keys it lacks are skipped. Relative stimulus paths resolve against
    ``stim_root``, else the mapping file's folder, else the BIDS root, else the
    recording's folder. With ``check_stimuli`` every named stimulus must exist.
    """
    path = Path(path).expanduser()
    if source not in TRIAL_SOURCES:
        raise InputError(f"source in {TRIAL_SOURCES}", repr(source), "pick one of those")
    if not path.exists():
        raise InputError("an existing recording file, CTF .ds folder or BIDS folder",
                         f"{path}, which does not exist",
                         f"check the path (relative paths start at {Path.cwd()})")
    if find_session_stream(path) is not None:
        if mapping is not None or source != "auto":
            raise InputError("trials from markers.jsonl for a recorded session",
                             f"mapping={mapping!r}, source={source!r}",
                             "drop --mapping / source= for session folders")
        return _open_session(path, events, stim_root)
    selection = {"subject": subject, "session": session, "task": task, "run": run,
                 "datatype": datatype}
    bids_root = _bids_root_of(path)
    if path.is_dir() and (path / "dataset_description.json").is_file():
        bids_path = _select_bids_recording(path, selection)
    else:
        asked = {k: v for k, v in selection.items() if v is not None}
        if asked:
            raise InputError("subject/session/task/run/datatype only with a BIDS root folder",
                             f"{_entities_str(asked)} with the file {path}",
                             "pass the BIDS root (the folder with dataset_description.json), "
                             "or drop the selection")
        bids_path = _bids_path_of_file(path, bids_root) if bids_root is not None else None

    if bids_path is not None:
        rec_path, base_root = Path(bids_path.fpath), Path(bids_path.root)
        raw_fmt = _format_of(rec_path)
        fmt = f"BIDS ({raw_fmt})"
        raw = _read_bids(bids_path, preload)
    else:
        rec_path, base_root = path, None
        raw_fmt = fmt = _format_of(path)
        raw = _read_raw_file(path, fmt, preload)

    stim_map, mapping_dir = (None, None) if mapping is None else _load_mapping(mapping, events)
    if stim_root is not None:
        stim_root = Path(stim_root).expanduser()
        if not stim_root.is_dir():
            raise InputError("--stim-root (stim_root) to be an existing folder",
                             f"{stim_root}", "point it at the folder that holds the stimuli")
    # A mapping's paths were written beside the mapping; events.tsv's from the BIDS root.
    base = Path(os.path.abspath(stim_root or mapping_dir or base_root or rec_path.parent))

    tsv = _events_tsv(bids_path) if bids_path is not None else None
    trials, used = _extract_trials(raw, source, events, stim_map, tsv, base, stim_channel)
    if check_stimuli:
        _check_stimuli((t.stim_file for t in trials),
                       f"point --stim-root (stim_root=) at the folder the relative paths "
                       f"start from (now {base})")
    system = _bids_manufacturer(bids_path) or _system_of(raw, raw_fmt)
    logger.debug("opened %s (%s, %d channels at %s Hz): %d trials from %s",
                rec_path, fmt, len(raw.ch_names), raw.info["sfreq"], len(trials), used)
    return Recording(raw=raw, path=rec_path, bids_path=bids_path, trials=trials,
                     stim_root=base, trial_source=used, format=fmt, system=system)


def _format_of(path: Path) -> str:
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
    if ext not in _FORMATS:
        raise InputError(
            f"a MEG/EEG recording ({', '.join(_FORMATS)}, or a BIDS folder)",
            f"{path} ({ext or 'no extension'})",
            "convert it to one of those (e.g. FIF with MNE, or EDF) or pass a BIDS dataset")
    return _FORMATS[ext]


def _read_raw_file(path: Path, fmt: str, preload: bool) -> mne.io.BaseRaw:
    try:
        # verbose="warning": MNE's info chatter stays out of the service log, its
        # warnings still reach the caller.
        return mne.io.read_raw(path, preload=preload, verbose="warning")
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one clear line
        if fmt == "CNT" and importlib.util.find_spec("antio") is None:
            raise InputError(
                "a .cnt file MNE can read",
                f"{path}, not a Neuroscan CNT, and MNE's ANT Neuro reader needs the optional "
                "package antio, which is not installed",
                "pip install antio (for ANT Neuro eego .cnt), or export the recording "
                "to EDF/BDF/FIF") from err
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise InputError(f"a readable {fmt} recording",
                         f"{path}, which failed to read ({type(err).__name__}: {first_line})",
                         "check that the file is complete and its companion files sit "
                         "beside it") from err


def _system_of(raw: mne.io.BaseRaw, fmt: str) -> str | None:
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


def _open_session(path: Path, events: EventColumns, stim_root) -> Recording:
    """A session folder that glimpse recorded: one stream's samples, trials from its markers.

    A marker's trial sits at the sample nearest its LSL time; markers outside the
    recorded samples, invalid ones and ones that are not JSON objects are skipped.
    Stimulus files are not checked: a session names the files of the machine that
    recorded it.
    """
    raw, times, markers = read_session_stream(path)
    base = Path(os.path.abspath(stim_root or find_session_stream(path)[0]))  # the session folder
    sfreq, period = raw.info["sfreq"], 1.0 / raw.info["sfreq"]
    trials = []
    for record in markers:
        marker, t = record.get("marker"), record.get("t")
        if not (record.get("valid", True) and isinstance(marker, dict)
                and isinstance(t, (int, float)) and times[0] - period <= t <= times[-1] + period):
            continue
        sample = int(np.searchsorted(times, t))  # the nearest of the samples around t
        if sample == len(times) or (sample > 0 and t - times[sample - 1] <= times[sample] - t):
            sample -= 1
        stim = _na(marker.get("stim_file"))
        stim_file = _absolute(base, stim) if stim else None
        label = _na(marker.get("trial_type")) or "n/a"
        trials.append(Trial(onset=sample / sfreq, stim_file=stim_file,
                            concept=_na(marker.get("concept")) or _concept_of(stim_file),
                            split=events.splits.get(label, "unknown"), trial_type=label,
                            sample=sample))
    logger.debug("opened session %s (%d channels at %s Hz): %d trials from %d markers",
                 path, len(raw.ch_names), sfreq, len(trials), len(markers))
    return Recording(raw=raw, path=path, bids_path=None, trials=trials, stim_root=base,
                     trial_source="markers", format="glimpse session", system=None)


# --------------------------------------------------------------------------- BIDS


def _bids_root_of(path: Path) -> Path | None:
    """The enclosing BIDS root of a ``sub-*`` recording file, else None."""
    if not path.name.startswith("sub-") or (path.is_dir() and path.suffix != ".ds"):
        return None  # a subject or session folder is not one recording
    for parent in Path(os.path.abspath(path)).parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def _bids_path_of_file(path: Path, root: Path):
    import mne_bids

    try:
        bids_path = mne_bids.get_bids_path_from_fname(path, check=False)
    except Exception as err:  # noqa: BLE001 - a name that is not BIDS is read as a plain file
        logger.debug("%s is inside BIDS root %s but its name is not BIDS (%s); "
                     "reading it as a plain file", path, root, err)
        return None
    return bids_path.update(root=root, check=False)


def _list_bids_recordings(root: Path) -> list:
    import mne_bids

    found = mne_bids.find_matching_paths(root, suffixes=_BIDS_SUFFIXES,
                                         extensions=_BIDS_EXTENSIONS, ignore_nosub=True)
    unique = {}
    for bp in found:  # split FIF files (split-01, split-02) are one recording
        bp = bp.copy().update(split=None, check=False)
        unique[str(bp.fpath)] = bp
    return [unique[k] for k in sorted(unique)]


def _select_bids_recording(root: Path, selection: dict[str, Any]):
    asked = {k: v for k, v in selection.items() if v is not None}
    candidates = _list_bids_recordings(root)
    matches = [bp for bp in candidates if all(_entity_matches(getattr(bp, k), v)
                                              for k, v in asked.items())]
    names = [str(Path(bp.fpath).relative_to(root)) for bp in candidates]
    if not candidates:
        raise InputError("a BIDS dataset with MEG/EEG recordings",
                         f"none under {root} (looked for sub-*/**/*_meg|eeg|ieeg "
                         f"{'|'.join(_BIDS_EXTENSIONS)})",
                         "check the dataset is complete (with DataLad: `datalad get`)")
    if not matches:
        raise InputError(f"a recording matching {_entities_str(asked)} in {root}",
                         f"none; the dataset has {_listing(names)}",
                         "pick one of those with subject=/session=/task=/run= "
                         "(--subject, --session, --task, --run)")
    if len(matches) > 1:
        which = f"matching {_entities_str(asked)}" if asked else "and no selection"
        raise InputError(f"one recording in the BIDS dataset {root}",
                         f"{len(matches)} recordings {which}: "
                         f"{_listing([str(Path(bp.fpath).relative_to(root)) for bp in matches])}",
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


def _read_bids(bids_path, preload: bool) -> mne.io.BaseRaw:
    import mne_bids

    try:
        return mne_bids.read_raw_bids(bids_path, extra_params={"preload": preload},
                                      verbose="warning")
    except Exception as err:  # noqa: BLE001 - same one-line report as plain files
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise InputError("a readable BIDS recording",
                         f"{bids_path.fpath}, which failed to read "
                         f"({type(err).__name__}: {first_line})",
                         "check its sidecar files (channels.tsv, *_meg.json/*_eeg.json) "
                         "against the data file") from err


def _events_tsv(bids_path) -> Path | None:
    tsv = Path(bids_path.copy().update(suffix="events", extension=".tsv", split=None,
                                       check=False).fpath)
    return tsv if tsv.is_file() else None


def _bids_manufacturer(bids_path) -> str | None:
    if bids_path is None:
        return None
    sidecar = Path(bids_path.copy().update(extension=".json", split=None, check=False).fpath)
    try:
        maker = json.loads(sidecar.read_text(encoding="utf-8")).get("Manufacturer")
    except (OSError, ValueError, AttributeError):
        return None
    return None if _na(maker) is None else str(maker)


def _entities_str(entities: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in entities.items())


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"{shown}, and {more} more" if more > 0 else shown


# --------------------------------------------------------------------------- trials


def _extract_trials(raw, source, events, stim_map, tsv, base, stim_channel):
    """Trials from the chosen (or, with "auto", the first usable) source."""
    if source == "auto":
        if stim_map is not None:
            source = _source_for_mapping(raw, stim_map, stim_channel)
        elif tsv is not None and events.stimulus in _tsv_header(tsv):
            source = "events_tsv"
        elif len(raw.annotations):
            source = "annotations"
        elif _stim_channels(raw, stim_channel, required=False):
            source = "stim_channel"
        else:
            return [], "none"
    if source == "events_tsv":
        if tsv is None:
            raise InputError("a BIDS recording with an events.tsv for source='events_tsv'",
                             "no events.tsv beside the recording",
                             "pick another source (annotations, stim_channel)")
        return _trials_from_tsv(tsv, raw, events, base), source
    if source == "annotations":
        return _trials_from_annotations(raw, stim_map, base), source
    return _trials_from_stim_channel(raw, stim_map, base, stim_channel), source


def _source_for_mapping(raw, stim_map: dict[str, _Stimulus], stim_channel) -> str:
    """Annotations where the mapping names their descriptions, else the stim channel."""
    if set(raw.annotations.description) & set(stim_map):
        return "annotations"
    if _int_keys(stim_map) and _stim_channels(raw, stim_channel, required=False):
        return "stim_channel"  # whether any trigger value matches is checked there
    raise _no_match(raw, stim_map, values=set())


def _no_match(raw, stim_map: dict[str, _Stimulus], values: set[str]) -> InputError:
    """A mapping that names none of the events is a mistake, not zero trials."""
    descriptions = sorted(set(raw.annotations.description))
    return InputError(
        "mapping keys that match annotation descriptions or stim-channel values",
        f"keys {_listing(sorted(stim_map))}; annotations {_listing(descriptions) or 'none'}; "
        f"trigger values {_listing(sorted(values, key=int)) or 'none'}",
        "key the mapping by one of those")


def _trials_from_tsv(tsv: Path, raw, events: EventColumns, base: Path) -> list[Trial]:
    sfreq = raw.info["sfreq"]
    trials, skipped = [], 0
    for i, row in enumerate(_read_tsv(tsv), start=2):  # line 1 is the header
        label = _na(row.get(events.split)) or "n/a"
        split = events.splits.get(label, "unknown")
        stim = _na(row.get(events.stimulus))
        if stim is None and split != "catch":
            skipped += 1  # responses, fixations, ... : nothing was shown
            continue
        try:
            onset = float(row["onset"])
        except (KeyError, TypeError, ValueError):
            raise InputError("a numeric onset in every events.tsv row",
                             f"{row.get('onset')!r} on line {i} of {tsv}",
                             "fix that row (onsets are seconds from the first sample)") from None
        stim_file = _absolute(base, stim) if stim else None
        concept = _na(row.get(events.concept)) if events.concept else None
        trials.append(Trial(onset=onset, stim_file=stim_file,
                            concept=concept or _concept_of(stim_file), split=split,
                            trial_type=label, sample=int(round(onset * sfreq))))
    logger.debug("%s: %d trials, %d rows without a stimulus skipped", tsv, len(trials), skipped)
    return trials


def _trials_from_annotations(raw, stim_map, base: Path) -> list[Trial]:
    # Annotation onsets count from the acquisition start (meas_date); raw.times from
    # the first sample, which is first_time later.
    onsets = raw.annotations.onset - raw.first_time
    trials = []
    for onset, description in zip(onsets, raw.annotations.description):
        if stim_map is None:
            if description.upper().startswith(("BAD", "EDGE")):
                continue  # MNE's marks for bad spans and boundaries, not stimuli
            trials.append(_trial(raw, onset, None, str(description), base))
        elif description in stim_map:
            trials.append(_trial(raw, onset, stim_map[description], str(description), base))
    if stim_map is not None and not trials:
        raise _no_match(raw, stim_map, values=set())
    return trials


def _trials_from_stim_channel(raw, stim_map, base: Path, stim_channel) -> list[Trial]:
    channels = _stim_channels(raw, stim_channel, required=True)
    by_value = None if stim_map is None else _int_keys(stim_map)
    trials = []
    events = _find_events(raw, channels)
    for sample, _, value in events:
        onset = (sample - raw.first_samp) / raw.info["sfreq"]
        label = str(int(value))
        if by_value is None:
            trials.append(_trial(raw, onset, None, label, base))
        elif label in by_value:
            trials.append(_trial(raw, onset, by_value[label], label, base))
    if stim_map is not None and not trials:
        raise _no_match(raw, stim_map, values={str(v) for v in np.unique(events[:, 2])})
    return trials


def _trial(raw, onset: float, stim: _Stimulus | None, label: str, base: Path) -> Trial:
    stim_file = _absolute(base, stim.stim_file) if stim and stim.stim_file else None
    concept = (stim.concept if stim else None) or (_concept_of(stim_file) if stim_file else label)
    return Trial(onset=float(onset), stim_file=stim_file, concept=concept,
                 split=stim.split if stim else "unknown", trial_type=label,
                 sample=int(round(onset * raw.info["sfreq"])))


def _stim_channels(raw, stim_channel, *, required: bool) -> list[str]:
    """The trigger channel(s): the one named, else MNE's choice (STI101, STI 014, all stim)."""
    if stim_channel is not None:
        names = [stim_channel] if isinstance(stim_channel, str) else list(stim_channel)
        absent = [n for n in names if n not in raw.ch_names]
        if absent:
            have = [raw.ch_names[i] for i in mne.pick_types(raw.info, meg=False, stim=True)]
            raise InputError("a stim channel that the recording has",
                             f"{absent}; its stim channels are {have or 'none'}",
                             "pass one of those (--stim-channel), or leave it out to auto-detect")
        return names
    for name in ("STI101", "STI 014"):
        if name in raw.ch_names:
            return [name]
    names = [raw.ch_names[i] for i in mne.pick_types(raw.info, meg=False, stim=True)]
    if not names and required:
        raise InputError("a recording with a stim channel for source='stim_channel'",
                         f"no channel of type stim among {len(raw.ch_names)} channels",
                         "name the trigger channel (--stim-channel) or use annotations")
    return names


def _find_events(raw, channels: list[str]) -> np.ndarray:
    with warnings.catch_warnings():
        # MNE takes the absolute value and says so; harmless for trigger codes.
        warnings.filterwarnings("ignore", message="Trigger channel contains negative values")
        # shortest_event=1: one-sample triggers are real on fast amplifiers.
        return mne.find_events(raw, stim_channel=channels, shortest_event=1, verbose="warning")


def _int_keys(stim_map: dict[str, _Stimulus]) -> dict[str, _Stimulus]:
    """Mapping keys that are trigger values, normalised ("01" -> "1")."""
    return {str(int(k)): v for k, v in stim_map.items() if re.fullmatch(r"\s*\d+\s*", k)}


def _check_stimuli(stim_files: Iterable[Path | None], fix: str) -> None:
    named = list(dict.fromkeys(p for p in stim_files if p is not None))
    missing = [p for p in named if not p.is_file()]
    if missing:
        raise InputError("every stimulus file the events name to exist",
                         f"{len(missing)} of {len(named)} missing, first "
                         f"{', '.join(str(p) for p in missing[:3])}", fix)


def _absolute(base: Path, value: str) -> Path:
    # abspath, not resolve(): DataLad/git-annex images are symlinks, and resolving
    # them would lose the concept folder in the path.
    return Path(os.path.abspath(base / value.replace("\\", "/")))


def _concept_of(stim_file: Path | None) -> str:
    """THINGS layout: <concept>/<image>; numbered folders (00001_aardvark) lose the number."""
    if stim_file is None:
        return ""
    return re.sub(r"^\d+_", "", stim_file.parent.name)


def _na(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in _NA else text


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _tsv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f, delimiter="\t"), [])


def _load_mapping(mapping, events: EventColumns) -> tuple[dict[str, _Stimulus], Path | None]:
    """A description/trigger-value -> stimulus mapping from a dict or a .json/.tsv file."""
    folder = None
    if not isinstance(mapping, Mapping):
        path = Path(mapping).expanduser()
        if not path.is_file():
            raise InputError("a mapping file (.json or .tsv)", f"{path}, which does not exist",
                             "check the path")
        folder = path.parent
        if path.suffix.lower() == ".json":
            try:
                mapping = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise InputError("a JSON mapping file", f"{path}: {err}", "fix the JSON") from None
            if not isinstance(mapping, dict):
                raise InputError("a JSON object {key: {stim_file, concept, split}}",
                                 f"a {type(mapping).__name__} in {path}", "wrap the entries in {}")
        elif path.suffix.lower() in (".tsv", ".txt"):
            mapping = _mapping_from_tsv(path)
        else:
            raise InputError("a mapping file ending in .json or .tsv", f"{path}",
                             "save the mapping as JSON or tab-separated values")
    allowed = {"stim_file", "concept", "split"}
    out = {}
    for key, entry in mapping.items():
        entry = {"stim_file": entry} if isinstance(entry, (str, os.PathLike)) else dict(entry)
        unknown = set(entry) - allowed
        if unknown:
            raise InputError(f"mapping entries with keys {sorted(allowed)}",
                             f"{sorted(unknown)} for {key!r}", "rename or remove those keys")
        label = _na(entry.get("split")) or "unknown"
        split = label if label in SPLITS else events.splits.get(label)
        if split is None:
            raise InputError(f"a split in {SPLITS} (or one of {sorted(events.splits)})",
                             f"{label!r} for {key!r}", "fix the mapping's split")
        stim = _na(entry.get("stim_file"))
        out[str(key).strip()] = _Stimulus(None if stim is None else str(stim),
                                          _na(entry.get("concept")), split)
    return out, folder


def _mapping_from_tsv(path: Path) -> dict[str, dict[str, str]]:
    rows = _read_tsv(path)
    header = _tsv_header(path)
    key = next((c for c in ("value", "description", "trial_type") if c in header), None)
    if key is None:
        raise InputError("a mapping TSV with a value or description column "
                         "(+ stim_file, concept, split)", f"columns {header} in {path}",
                         "name the key column value (trigger codes) or description (annotations)")
    return {row[key]: {k: v for k, v in row.items() if k != key and k is not None}
            for row in rows}


# --------------------------------------------------------------------------- describe


def describe(path: str | os.PathLike, **selection: Any) -> dict[str, Any]:
    """What a recording holds, JSON-serialisable, for ``glimpse info``.

    Takes ``open_recording``'s keywords; never fails on missing stimulus files (it
    counts them instead) and never loads more than the trigger channel.
    """
    selection.update(preload=False, check_stimuli=False)
    rec = open_recording(path, **selection)
    raw = rec.raw
    descriptions = Counter(str(d) for d in raw.annotations.description)
    annotations = {"count": len(raw.annotations), "n_distinct": len(descriptions),
                   "descriptions": dict(descriptions.most_common(20))}
    channels = _stim_channels(raw, selection.get("stim_channel"), required=False)
    stim_events = None
    if channels:
        values = Counter(int(v) for v in _find_events(raw, channels)[:, 2])
        stim_events = {"channels": channels, "count": sum(values.values()),
                       "values": {str(v): values[v] for v in sorted(values)}}
    named = {t.stim_file for t in rec.trials if t.stim_file is not None}
    meas_date = raw.info["meas_date"]
    bids = None
    if rec.bids_path is not None:
        bp = rec.bids_path
        bids = {"root": str(bp.root), "subject": bp.subject, "session": bp.session,
                "task": bp.task, "run": bp.run, "datatype": bp.datatype}
    return {
        "path": str(rec.path),
        "format": rec.format,
        "system": rec.system,
        "bids": bids,
        "n_chans": len(raw.ch_names),
        "channel_types": dict(Counter(raw.get_channel_types())),
        "sfreq": rec.sfreq,
        "n_times": rec.n_times,
        "duration": rec.duration,
        "meas_date": None if meas_date is None else meas_date.isoformat(),
        "annotations": annotations,
        "stim_events": stim_events,
        "trials": {"source": rec.trial_source, "count": len(rec.trials),
                   "splits": dict(Counter(t.split for t in rec.trials)),
                   "stimuli": len(named),
                   "stimuli_missing": sum(not p.is_file() for p in named),
                   "stim_root": str(rec.stim_root)},
    }


def format_description(d: Mapping[str, Any]) -> str:
    """The human-readable face of :func:`describe`'s dict."""
    def counts(c: Mapping[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in c.items())

    lines = [d["path"],
             f"  format       {d['format']}",
             f"  system       {d['system'] or 'unknown'}"]
    if d.get("bids"):
        ents = {k: v for k, v in d["bids"].items() if k != "root" and v is not None}
        lines.append(f"  BIDS         {_entities_str(ents)} (root {d['bids']['root']})")
    lines += [f"  channels     {d['n_chans']} ({counts(d['channel_types'])})",
              f"  sfreq        {d['sfreq']:g} Hz",
              f"  duration     {d['duration']:.3f} s ({d['n_times']} samples)",
              f"  recorded     {d['meas_date'] or 'unknown'}"]
    ann = d["annotations"]
    shown = counts(ann["descriptions"])
    if ann["n_distinct"] > len(ann["descriptions"]):
        shown += f", ... ({ann['n_distinct']} distinct)"
    lines.append(f"  annotations  {ann['count']}" + (f": {shown}" if ann["count"] else ""))
    se = d["stim_events"]
    if se is None:
        lines.append("  stim events  no stim channel")
    else:
        lines.append(f"  stim events  {se['count']} on {', '.join(se['channels'])}"
                     + (f": values {counts(se['values'])}" if se["count"] else ""))
    tr = d["trials"]
    text = (f"  trials       {tr['count']} from {tr['source']}" if tr["source"] != "none"
            else "  trials       none (no events)")
    if tr["count"]:
        text += f": {counts(tr['splits'])}"
    if tr["stimuli"]:
        text += f"; {tr['stimuli']} stimulus files, {tr['stimuli_missing']} missing"
        if tr["stimuli_missing"]:
            text += f" under {tr['stim_root']} (set --stim-root)"
    lines.append(text)
    return "\n".join(lines)


# --------------------------------------------------------------------------- THINGS-EEG2


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
        _check_stimuli((im.stim_file for s in splits.values() for im in s.images),
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
                             f"{_listing(subjects) or 'none'} in {tops[0]}",
                             "pick one with subject= (--subject)")
        return tops[0] / subjects[0]
    name = str(subject)
    name = name if name.startswith("sub-") else f"sub-{int(name):02d}" if name.isdigit() \
        else f"sub-{name}"
    if name not in subjects:
        raise InputError(f"subject {name} in {tops[0]}", f"{_listing(subjects) or 'none'}",
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
