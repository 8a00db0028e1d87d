"""Trials of a recording: which stimulus was shown, and when.

Three sources: a BIDS ``events.tsv`` whose columns name each trial's stimulus file
(:class:`EventColumns`), annotations (EDF, EEGLAB, BrainVision markers, ...), and a
stim (trigger) channel; the last two optionally through a mapping from annotation
description or trigger value to stimulus (:func:`load_mapping`).

Times: ``Trial.onset`` is in seconds on the ``raw.times`` axis (0 = the first
sample of the data), and ``Trial.sample`` indexes ``raw.get_data()``. MNE's own
event arrays count from the acquisition start instead (they add
``raw.first_samp``); the two differ on FIF files cut from a longer recording.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mne
import numpy as np

from .channels import listing
from .errors import InputError

logger = logging.getLogger("glimpse.streaming.trials")

SPLITS = ("train", "test", "catch", "unknown")
TRIAL_SOURCES = ("auto", "events_tsv", "annotations", "stim_channel")
_NA = {"", "n/a", "na", "nan", "none"}


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

    Defaults fit ``glimpse simulate`` and BIDS sets that name the image of each
    trial: ``image_path`` relative to the BIDS root (or to ``stim_root``), the
    concept in ``concept`` or, where that column is missing, the image's folder
    name (THINGS' layout), and ``trial_type`` values exp/test/catch. Labels not in
    ``splits`` map to "unknown". THINGS-MEG as published names no image in its
    events; :mod:`glimpse.streaming.things_meg` finds them.
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
class Stimulus:
    """One mapping entry: what an annotation description or trigger value showed."""

    stim_file: str | None
    concept: str | None
    split: str


# --------------------------------------------------------------------------- sources


def extract_trials(raw, source, events, stim_map, tsv, base, stim_channel):
    """Trials from the chosen (or, with "auto", the first usable) source, and that source."""
    if source == "auto":
        if stim_map is not None:
            source = _source_for_mapping(raw, stim_map, stim_channel)
        elif tsv is not None and events.stimulus in tsv_header(tsv):
            source = "events_tsv"
        elif len(raw.annotations):
            source = "annotations"
        elif stim_channels(raw, stim_channel, required=False):
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


def _source_for_mapping(raw, stim_map: dict[str, Stimulus], stim_channel) -> str:
    """Annotations where the mapping names their descriptions, else the stim channel."""
    if set(raw.annotations.description) & set(stim_map):
        return "annotations"
    if _int_keys(stim_map) and stim_channels(raw, stim_channel, required=False):
        return "stim_channel"  # whether any trigger value matches is checked there
    raise _no_match(raw, stim_map, values=set())


def _no_match(raw, stim_map: dict[str, Stimulus], values: set[str]) -> InputError:
    """A mapping that names none of the events is a mistake, not zero trials."""
    descriptions = sorted(set(raw.annotations.description))
    return InputError(
        "mapping keys that match annotation descriptions or stim-channel values",
        f"keys {listing(sorted(stim_map))}; annotations {listing(descriptions) or 'none'}; "
        f"trigger values {listing(sorted(values, key=int)) or 'none'}",
        "key the mapping by one of those")


def _trials_from_tsv(tsv: Path, raw, events: EventColumns, base: Path) -> list[Trial]:
    sfreq = raw.info["sfreq"]
    trials, skipped = [], 0
    for i, row in enumerate(read_tsv(tsv), start=2):  # line 1 is the header
        label = na(row.get(events.split)) or "n/a"
        split = events.splits.get(label, "unknown")
        stim = na(row.get(events.stimulus))
        if stim is None and split != "catch":
            skipped += 1  # responses, fixations, ... : nothing was shown
            continue
        onset = row_onset(row, i, tsv)
        stim_file = stimulus_path(base, stim) if stim else None
        concept = na(row.get(events.concept)) if events.concept else None
        trials.append(Trial(onset=onset, stim_file=stim_file,
                            concept=concept or concept_of(stim_file), split=split,
                            trial_type=label, sample=int(round(onset * sfreq))))
    logger.debug("%s: %d trials, %d rows without a stimulus skipped", tsv, len(trials), skipped)
    return trials


def row_onset(row: Mapping[str, str], line: int, tsv: Path) -> float:
    """The onset (s) of an events.tsv row, or an InputError naming the line."""
    try:
        return float(row["onset"])
    except (KeyError, TypeError, ValueError):
        raise InputError("a numeric onset in every events.tsv row",
                         f"{row.get('onset')!r} on line {line} of {tsv}",
                         "fix that row (onsets are seconds from the first sample)") from None


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
    channels = stim_channels(raw, stim_channel, required=True)
    by_value = None if stim_map is None else _int_keys(stim_map)
    trials = []
    events = find_events(raw, channels)
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


def _trial(raw, onset: float, stim: Stimulus | None, label: str, base: Path) -> Trial:
    stim_file = stimulus_path(base, stim.stim_file) if stim and stim.stim_file else None
    concept = (stim.concept if stim else None) or (concept_of(stim_file) if stim_file else label)
    return Trial(onset=float(onset), stim_file=stim_file, concept=concept,
                 split=stim.split if stim else "unknown", trial_type=label,
                 sample=int(round(onset * raw.info["sfreq"])))


def stim_channels(raw, stim_channel, *, required: bool) -> list[str]:
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


def find_events(raw, channels: list[str]) -> np.ndarray:
    """``mne.find_events`` on ``channels``, one-sample triggers included."""
    with warnings.catch_warnings():
        # MNE takes the absolute value and says so; harmless for trigger codes.
        warnings.filterwarnings("ignore", message="Trigger channel contains negative values")
        # shortest_event=1: one-sample triggers are real on fast amplifiers.
        return mne.find_events(raw, stim_channel=channels, shortest_event=1, verbose="warning")


def _int_keys(stim_map: dict[str, Stimulus]) -> dict[str, Stimulus]:
    """Mapping keys that are trigger values, normalised ("01" -> "1")."""
    return {str(int(k)): v for k, v in stim_map.items() if re.fullmatch(r"\s*\d+\s*", k)}


# --------------------------------------------------------------------------- stimuli


def require_stimulus_files(stim_files: Iterable[Path | None], fix: str) -> None:
    """Raise an InputError naming the first missing files, if any named file is missing."""
    named = list(dict.fromkeys(p for p in stim_files if p is not None))
    missing = [p for p in named if not p.is_file()]
    if missing:
        raise InputError("every stimulus file the events name to exist",
                         f"{len(missing)} of {len(named)} missing, first "
                         f"{', '.join(str(p) for p in missing[:3])}", fix)


def stimulus_path(base: Path, value: str) -> Path:
    """``value`` (relative to ``base``, or absolute; either slash) as an absolute path."""
    # abspath, not resolve(): DataLad/git-annex images are symlinks, and resolving
    # them would lose the concept folder in the path.
    return Path(os.path.abspath(base / value.replace("\\", "/")))


def concept_of(stim_file: Path | None) -> str:
    """THINGS layout: <concept>/<image>; numbered folders (00001_aardvark) lose the number."""
    if stim_file is None:
        return ""
    return re.sub(r"^\d+_", "", stim_file.parent.name)


def na(value: Any) -> str | None:
    """The stripped text of a table cell, or None for BIDS' n/a and its cousins."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in _NA else text


def read_tsv(path: Path, delimiter: str = "\t") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def tsv_header(path: Path, delimiter: str = "\t") -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f, delimiter=delimiter), [])


# --------------------------------------------------------------------------- mappings


def load_mapping(mapping, events: EventColumns) -> tuple[dict[str, Stimulus], Path | None]:
    """A description/trigger-value -> stimulus mapping from a dict or a .json/.tsv file,
    and the folder of that file (None for a dict)."""
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
        label = na(entry.get("split")) or "unknown"
        split = label if label in SPLITS else events.splits.get(label)
        if split is None:
            raise InputError(f"a split in {SPLITS} (or one of {sorted(events.splits)})",
                             f"{label!r} for {key!r}", "fix the mapping's split")
        stim = na(entry.get("stim_file"))
        out[str(key).strip()] = Stimulus(None if stim is None else str(stim),
                                         na(entry.get("concept")), split)
    return out, folder


def _mapping_from_tsv(path: Path) -> dict[str, dict[str, str]]:
    rows = read_tsv(path)
    header = tsv_header(path)
    key = next((c for c in ("value", "description", "trial_type") if c in header), None)
    if key is None:
        raise InputError("a mapping TSV with a value or description column "
                         "(+ stim_file, concept, split)", f"columns {header} in {path}",
                         "name the key column value (trigger codes) or description (annotations)")
    return {row[key]: {k: v for k, v in row.items() if k != key and k is not None}
            for row in rows}
