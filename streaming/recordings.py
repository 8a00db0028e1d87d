"""Open MEG/EEG recordings and find their trials: which image was shown, and when.

One entry point, :func:`open_recording`, for every file MNE reads (FIF, CTF
``.ds``, EDF, BDF, BrainVision, EEGLAB, ...; :mod:`~glimpse.streaming.rawfiles`),
for BIDS datasets (:mod:`~glimpse.streaming.bids`), THINGS-MEG as published
included (:mod:`~glimpse.streaming.things_meg`), and for session folders recorded
live (:mod:`glimpse.streaming.session_log`, trials from their markers); a
:class:`Recording` holds the raw data and its :class:`Trial` list, found by
:mod:`~glimpse.streaming.trials`. :func:`describe` says what a recording holds
(``glimpse info``); :func:`read_things_eeg2` reads THINGS-EEG2's preprocessed
epochs, which are not a raw recording.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mne
import numpy as np

from . import bids, things_meg
from .errors import InputError
from .rawfiles import format_of, read_raw_file, system_of
from .session_log import find_session_stream, read_session_stream
from .things_eeg2 import StimulusImage, ThingsEEG2, ThingsEEG2Split, read_things_eeg2
from .trials import (
    SPLITS,
    TRIAL_SOURCES,
    EventColumns,
    Trial,
    concept_of,
    extract_trials,
    find_events,
    load_mapping,
    na,
    require_stimulus_files,
    stim_channels,
    stimulus_path,
)
from .xdf import read_xdf

__all__ = ["SPLITS", "TRIAL_SOURCES", "EventColumns", "Recording", "StimulusImage",
           "ThingsEEG2", "ThingsEEG2Split", "Trial", "describe", "open_recording",
           "read_things_eeg2"]

logger = logging.getLogger("glimpse.streaming.recordings")


@dataclass
class Recording:
    """An opened recording: the raw data, where it came from, and its trials.

    ``stim_root`` is the folder relative stimulus paths were resolved against;
    ``trial_source`` says where the trials came from ("events_tsv", "annotations",
    "stim_channel", "markers" or "none"), ``stimuli_source`` where their images were
    named where that is not the trials' own source (THINGS-MEG: the
    sample_attributes CSV or a mapping); ``format`` and ``system`` are what
    :func:`describe` reports.
    """

    raw: mne.io.BaseRaw = field(repr=False)
    path: Path
    bids_path: Any | None  # mne_bids.BIDSPath; mne_bids is imported only for BIDS
    trials: list[Trial] = field(repr=False)
    stim_root: Path
    trial_source: str
    format: str
    system: str | None
    stimuli_source: str | None = None

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

    @property
    def line_freq(self) -> float | None:
        """Mains frequency (Hz) as the recording states it (BIDS: PowerLineFrequency)."""
        value = self.raw.info["line_freq"]
        return None if value is None else float(value)


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
    stream: str | None = None,
) -> Recording:
    """Open a raw MEG/EEG file or a BIDS recording, and find its trials.

    ``path`` is a file MNE reads, a CTF ``.ds`` folder, a BIDS root (pick one
    recording with ``subject``/``session``/``task``/``run``/``datatype``), a
    recording file inside a BIDS dataset, or a session folder that glimpse
    recorded (or its ``streams/<name>`` folder; trials from its markers), or an
    XDF file that LabRecorder wrote (``stream`` names its signal stream, default
    the first numeric one; trials from its marker streams, see :func:`_open_xdf`).

    ``source`` picks where trials come from; "auto" uses, in order: the mapping on
    annotations or trigger values when ``mapping`` is given; a BIDS events.tsv that
    has the ``events.stimulus`` column; annotations; the stim channel.
    ``mapping`` (a dict, or a .json/.tsv file) maps an annotation description or a
    trigger value to ``{"stim_file", "concept", "split"}`` (a bare string is a
    stim_file); keys it lacks are skipped. Relative stimulus paths resolve against
    ``stim_root``, else the mapping file's folder, else the BIDS root, else the
    recording's folder. With ``check_stimuli`` every named stimulus must exist.

    THINGS-MEG as published (events.tsv with THINGS image numbers, no image path)
    is recognised: images come from ``sourcedata/sample_attributes_P{n}.csv``, or
    from ``mapping`` read as THINGS image number -> image path; ``stim_root`` is the
    THINGS image folder (see :mod:`glimpse.streaming.things_meg`).
    """
    path = Path(path).expanduser()
    if source not in TRIAL_SOURCES:
        raise InputError(f"source in {TRIAL_SOURCES}", repr(source), "pick one of those")
    if not path.exists():
        raise InputError("an existing recording file, CTF .ds folder or BIDS folder",
                         f"{path}, which does not exist",
                         f"check the path (relative paths start at {Path.cwd()})")
    if stim_root is not None:
        stim_root = Path(stim_root).expanduser()
        if not stim_root.is_dir():
            raise InputError("--stim-root (stim_root) to be an existing folder",
                             f"{stim_root}", "point it at the folder that holds the stimuli")
    if path.suffix.lower() == ".xdf" and path.is_file():
        return _open_xdf(path, stream, events, mapping, stim_root, source, check_stimuli)
    if stream is not None:
        raise InputError("stream= only with an XDF file (it names one of its streams)",
                         f"stream={stream!r} with {path}", "drop stream=")
    if find_session_stream(path) is not None:
        if mapping is not None or source != "auto":
            raise InputError("trials from markers.jsonl for a recorded session",
                             f"mapping={mapping!r}, source={source!r}",
                             "drop --mapping / source= for session folders")
        return _open_session(path, events, stim_root)
    selection = {"subject": subject, "session": session, "task": task, "run": run,
                 "datatype": datatype}
    raw, rec_path, bids_path, fmt, raw_fmt = _open_raw(path, selection, preload)
    tsv = bids.events_tsv(bids_path) if bids_path is not None else None
    rec = Recording(raw=raw, path=rec_path, bids_path=bids_path, trials=[],
                    stim_root=rec_path.parent, trial_source="none", format=fmt,
                    system=bids.bids_manufacturer(bids_path) or system_of(raw, raw_fmt))
    if (tsv is not None and source in ("auto", "events_tsv")
            and things_meg.is_things_meg(Path(bids_path.root), tsv, events)):
        _things_meg_trials(rec, tsv, events, mapping, stim_root, check_stimuli)
    else:
        _trials(rec, tsv, events, mapping, stim_root, source, stim_channel, check_stimuli)
    logger.debug("opened %s (%s, %d channels at %s Hz): %d trials from %s", rec_path, fmt,
                 len(raw.ch_names), raw.info["sfreq"], len(rec.trials), rec.trial_source)
    return rec


def _open_raw(path: Path, selection: dict[str, Any], preload: bool):
    """(raw, recording path, BIDSPath or None, format shown, raw file format)."""
    if bids.is_bids_root(path):
        bids_path = bids.select_bids_recording(path, selection)
    else:
        asked = {k: v for k, v in selection.items() if v is not None}
        if asked:
            raise InputError("subject/session/task/run/datatype only with a BIDS root folder",
                             f"{bids.entities_str(asked)} with the file {path}",
                             "pass the BIDS root (the folder with dataset_description.json), "
                             "or drop the selection")
        root = bids.bids_root_of(path)
        bids_path = bids.bids_path_of_file(path, root) if root is not None else None
    if bids_path is None:
        fmt = format_of(path)
        return read_raw_file(path, fmt, preload), path, None, fmt, fmt
    rec_path = Path(bids_path.fpath)
    raw_fmt = format_of(rec_path)
    raw = bids.read_bids(bids_path, raw_fmt, preload)
    return raw, rec_path, bids_path, f"BIDS ({raw_fmt})", raw_fmt


def _trials(rec: Recording, tsv, events, mapping, stim_root, source, stim_channel,
            check: bool) -> None:
    """Trials from events.tsv, annotations or the stim channel (``extract_trials``)."""
    stim_map, mapping_dir = (None, None) if mapping is None else load_mapping(mapping, events)
    # A mapping's paths were written beside the mapping; events.tsv's from the BIDS root.
    base_root = None if rec.bids_path is None else Path(rec.bids_path.root)
    base = Path(os.path.abspath(stim_root or mapping_dir or base_root or rec.path.parent))
    rec.trials, rec.trial_source = extract_trials(rec.raw, source, events, stim_map, tsv, base,
                                                  stim_channel)
    rec.stim_root = base
    if check:
        require_stimulus_files((t.stim_file for t in rec.trials),
                      f"point --stim-root (stim_root=) at the folder the relative paths "
                      f"start from (now {base})")


def _things_meg_trials(rec: Recording, tsv, events, mapping, stim_root, check: bool) -> None:
    rec.trials, rec.stim_root, rec.stimuli_source = things_meg.read_trials(
        rec.raw, rec.bids_path, tsv, events, mapping, stim_root)
    rec.trial_source = "events_tsv"
    if not check:
        return
    if rec.stimuli_source == "none":
        raise things_meg.no_images_error(rec.bids_path)
    require_stimulus_files((t.stim_file for t in rec.trials),
                  f"point --stim-root at the THINGS image folder, the one holding "
                  f"<concept>/<image>.jpg or images_meg/ (now {rec.stim_root})")


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
        trials.append(_marker_trial(marker, sample, sfreq, base, events))
    logger.debug("opened session %s (%d channels at %s Hz): %d trials from %d markers",
                 path, len(raw.ch_names), sfreq, len(trials), len(markers))
    return Recording(raw=raw, path=path, bids_path=None, trials=trials, stim_root=base,
                     trial_source="markers", format="glimpse session", system=None)


def _marker_trial(marker: dict, sample: int, sfreq: float, base: Path,
                  events: EventColumns) -> Trial:
    """The trial of a JSON marker ``{"stim_file", "concept", "trial_type"}`` at ``sample``."""
    stim = na(marker.get("stim_file"))
    stim_file = stimulus_path(base, stim) if stim else None
    label = na(marker.get("trial_type")) or "n/a"
    return Trial(onset=sample / sfreq, stim_file=stim_file,
                 concept=na(marker.get("concept")) or concept_of(stim_file),
                 split=events.splits.get(label, "unknown"), trial_type=label, sample=sample)


def _open_xdf(path: Path, stream, events, mapping, stim_root, source, check: bool) -> Recording:
    """An XDF file (:mod:`~glimpse.streaming.xdf`): trials from its string markers.

    JSON markers as glimpse writes them (``{"stim_file", "concept", "trial_type"}``)
    are trials, their split from ``trial_type`` as in events.tsv. Plain strings go
    through ``mapping`` (description -> stimulus) like any annotation. Plain strings
    without a mapping are kept as annotations and as trials without a stimulus,
    split "unknown", as the annotations of an EDF file are: ``glimpse info``
    describes the file and ``glimpse replay`` replays them, while training refuses
    a recording without stimuli (``load_session``: "recordings with trials").
    """
    if source not in ("auto", "annotations"):
        raise InputError("source 'auto' or 'annotations' for an XDF file (trials come "
                         "from its marker streams)", repr(source), "drop source= / --source")
    signal = read_xdf(path, stream)
    rec = Recording(raw=signal.raw, path=path, bids_path=None, trials=[],
                    stim_root=path.parent, trial_source="none", format="XDF", system=None)
    parsed = [_json_marker(m.text) for m in signal.markers]
    if mapping is None and any(p is not None for p in parsed):
        base = Path(os.path.abspath(stim_root or path.parent))
        rec.trials = [_marker_trial(p, m.sample, rec.sfreq, base, events)
                      for m, p in zip(signal.markers, parsed) if p is not None]
        rec.stim_root, rec.trial_source = base, "markers"
        if check:
            require_stimulus_files((t.stim_file for t in rec.trials),
                                   f"point --stim-root (stim_root=) at the folder the markers' "
                                   f"stim_file paths start from (now {base})")
    else:
        _trials(rec, None, events, mapping, stim_root, source, None, check)
    return rec


def _json_marker(text: str) -> dict | None:
    """A marker string that is a JSON object naming a stimulus, else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and {"stim_file", "concept",
                                                   "trial_type"} & set(value) else None


# --------------------------------------------------------------------------- describe


def describe(path: str | os.PathLike, *, n_listed: int = 5, **selection: Any) -> dict[str, Any]:
    """What a recording holds, JSON-serialisable, for ``glimpse info``.

    Takes ``open_recording``'s keywords; never fails on missing stimulus files (it
    counts them instead) and never loads more than the trigger channel. The first
    ``n_listed`` trials are listed with their stimulus files.
    """
    selection.update(preload=False, check_stimuli=False)
    rec = open_recording(path, **selection)
    raw = rec.raw
    descriptions = Counter(str(d) for d in raw.annotations.description)
    annotations = {"count": len(raw.annotations), "n_distinct": len(descriptions),
                   "descriptions": dict(descriptions.most_common(20))}
    channels = stim_channels(raw, selection.get("stim_channel"), required=False)
    stim_events = None
    if channels:
        values = Counter(int(v) for v in find_events(raw, channels)[:, 2])
        stim_events = {"channels": channels, "count": sum(values.values()),
                       "values": {str(v): values[v] for v in sorted(values)}}
    named = {t.stim_file for t in rec.trials if t.stim_file is not None}
    meas_date = raw.info["meas_date"]
    bids_entities = None
    if rec.bids_path is not None:
        bp = rec.bids_path
        bids_entities = {"root": str(bp.root), "subject": bp.subject, "session": bp.session,
                         "task": bp.task, "run": bp.run, "datatype": bp.datatype}
    listed = [{"onset": t.onset, "split": t.split, "concept": t.concept,
               "stim_file": None if t.stim_file is None else str(t.stim_file),
               "exists": t.stim_file is not None and t.stim_file.is_file()}
              for t in rec.trials[:n_listed]]
    return {
        "path": str(rec.path),
        "format": rec.format,
        "system": rec.system,
        "bids": bids_entities,
        "n_chans": len(raw.ch_names),
        "channel_types": dict(Counter(raw.get_channel_types())),
        "sfreq": rec.sfreq,
        "line_freq": rec.line_freq,
        "n_times": rec.n_times,
        "duration": rec.duration,
        "meas_date": None if meas_date is None else meas_date.isoformat(),
        "annotations": annotations,
        "stim_events": stim_events,
        "trials": {"source": rec.trial_source, "count": len(rec.trials),
                   "splits": dict(Counter(t.split for t in rec.trials)),
                   "stimuli": len(named),
                   "stimuli_missing": sum(not p.is_file() for p in named),
                   "stimuli_source": rec.stimuli_source,
                   "stim_root": str(rec.stim_root),
                   "first": listed},
    }
