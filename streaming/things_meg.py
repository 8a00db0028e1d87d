"""THINGS-MEG as OpenNeuro publishes it (ds004212): the image of every trial.

Its ``events.tsv`` holds ``onset, duration, trial_type, things_category_nr, value,
sample`` and no image path: ``value`` is the THINGS image number. The images are
named in one of two places:

- ``sourcedata/sample_attributes_P{n}.csv`` (n: the number of ``sub-BIGMEG{n}``),
  one row per trial over all sessions and runs, with ``session_nr``, ``run_nr``,
  ``trial_type``, ``image_path`` (``images_meg/aardvark/aardvark_01b.jpg``) and
  ``things_image_nr``; a run's rows match its events in order. Where
  ``things_image_nr`` and ``value`` disagree (a few trials in some runs), the CSV's
  ``image_path`` is used and the count is logged;
- else a mapping file that the user names: THINGS image number -> image path.

Image paths resolve under the stimulus root as written, or in the THINGS image
database's own layout ``<concept>/<image>.jpg`` (the leading ``images_meg/``
dropped). ``exp`` trials train, ``test`` trials test, ``catch`` trials (oddball
images outside THINGS) keep split "catch" and no stimulus, so they are never
trained or tested on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .channels import listing
from .errors import InputError
from .trials import EventColumns, Trial, concept_of, na, read_tsv, row_onset, stimulus_path, \
    tsv_header

logger = logging.getLogger("glimpse.streaming.things_meg")

NAME = "THINGS-MEG"  # dataset_description.json's Name
IMAGE_NUMBER = "value"  # the events.tsv column with the THINGS image number
_CATEGORY = "things_category_nr"
_CSV_COLUMNS = ("session_nr", "run_nr", "trial_type", "image_path", "things_image_nr")
_MAPPING_KEYS = ("things_image_nr", "value")
_MAPPING_PATHS = ("image_path", "stim_file")


def is_things_meg(bids_root: Path, tsv: Path, events: EventColumns) -> bool:
    """A THINGS-MEG run: image numbers in its events.tsv, and no image path column."""
    header = tsv_header(tsv)
    if events.stimulus in header or IMAGE_NUMBER not in header:
        return False  # a BIDS set that names its images reads as any other
    return _CATEGORY in header or _dataset_name(bids_root) == NAME


def _dataset_name(root: Path) -> str | None:
    try:
        return json.loads((root / "dataset_description.json").read_text("utf-8")).get("Name")
    except (OSError, ValueError, AttributeError):
        return None


def sample_attributes_csv(bids_path) -> Path:
    """``<root>/sourcedata/sample_attributes_P{n}.csv`` for ``sub-BIGMEG{n}``."""
    number = re.search(r"(\d+)$", bids_path.subject or "")
    name = f"sample_attributes_P{int(number.group(1)) if number else bids_path.subject}.csv"
    return Path(bids_path.root) / "sourcedata" / name


def read_trials(raw, bids_path, tsv: Path, events: EventColumns, mapping,
                stim_root: Path | None) -> tuple[list[Trial], Path, str]:
    """A THINGS-MEG run's trials, the folder its image paths start from, and their source.

    ``mapping`` (a file or a dict: THINGS image number -> image path) is used when
    given; else the subject's sample_attributes CSV; else the trials name no image
    (``open_recording`` reports that unless asked not to check the stimuli).
    """
    rows = read_tsv(tsv)
    csv_path = sample_attributes_csv(bids_path)
    if mapping is not None:
        numbers, folder = _read_mapping(mapping)
        paths = _mapped_paths(rows, numbers, mapping, tsv)
        source = f"THINGS image numbers mapped by {mapping if folder else 'a dict'}"
    elif csv_path.is_file():
        folder, paths = None, _csv_paths(rows, csv_path, bids_path, tsv)
        source = str(csv_path.relative_to(bids_path.root))
    else:
        folder, paths, source = None, [None] * len(rows), "none"
    base = Path(os.path.abspath(stim_root or folder or bids_path.root))
    sfreq = raw.info["sfreq"]
    trials = []
    for line, (row, path) in enumerate(zip(rows, paths), start=2):  # line 1: the header
        label = na(row.get(events.split)) or "n/a"
        split = events.splits.get(label, "unknown")
        onset = row_onset(row, line, tsv)
        stim_file = None if split == "catch" or path is None else resolve_image(base, path)
        concept = concept_of(stim_file) or _number_text(row.get(_CATEGORY))
        trials.append(Trial(onset=onset, stim_file=stim_file, concept=concept, split=split,
                            trial_type=label, sample=int(round(onset * sfreq))))
    return trials, base, source


def no_images_error(bids_path) -> InputError:
    return InputError(
        "the image of each THINGS-MEG trial (events.tsv names THINGS image numbers only)",
        f"neither {sample_attributes_csv(bids_path)} nor a mapping of image numbers",
        "get the dataset's sourcedata/ folder (datalad get sourcedata), or pass --mapping "
        "FILE with columns things_image_nr and image_path")


def resolve_image(base: Path, path: str) -> Path:
    """``base/path`` if it exists, else the THINGS database's ``base/<concept>/<image>``."""
    full = stimulus_path(base, path)
    parts = Path(path.replace("\\", "/")).parts
    if full.is_file() or len(parts) <= 2:
        return full
    return stimulus_path(base, "/".join(parts[-2:]))


# --------------------------------------------------------------------------- the CSV


def _csv_paths(rows: list[dict[str, str]], csv_path: Path, bids_path, tsv: Path) -> list:
    """The CSV's image_path of each events.tsv row, matched by session, run and order."""
    session, run = _entity_number(bids_path, "session"), _entity_number(bids_path, "run")
    matched = _sample_attributes(*_stamp(csv_path)).get((session, run), [])
    if len(matched) != len(rows):
        raise InputError(f"{len(rows)} rows for session {session} run {run} in {csv_path}, "
                         f"one per trial of {tsv.name}",
                         f"{len(matched)} rows",
                         "use the unmodified sample_attributes file of this subject "
                         "(datalad get sourcedata)")
    differ = []
    for k, (event, attrs) in enumerate(zip(rows, matched)):
        label, theirs = na(event.get("trial_type")), na(attrs["trial_type"])
        if label != theirs:
            raise InputError(f"the trial types of {csv_path.name} in the order of {tsv.name}",
                             f"{theirs!r} for trial {k + 1} of session {session} run {run}, "
                             f"where events.tsv has {label!r}",
                             "use the unmodified sample_attributes file of this subject")
        if label != "catch" and _number(event.get(IMAGE_NUMBER)) != _number(
                attrs["things_image_nr"]):
            differ.append(f"trial {k + 1}: {_number_text(event.get(IMAGE_NUMBER))} vs "
                          f"{_number_text(attrs['things_image_nr'])}")
    if differ:
        logger.warning("%s: %d trials where events.tsv's value differs from %s's "
                       "things_image_nr (%s); the CSV's image_path is used for them",
                       tsv.name, len(differ), csv_path.name, listing(differ, 3))
    return [na(attrs["image_path"]) for attrs in matched]


def _stamp(path: Path) -> tuple[str, int, int]:
    """The cache key of a file's version: path, modification time, size."""
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _sample_attributes(path: str, _mtime: int, _size: int) -> dict[tuple[int, int], list]:
    """(session_nr, run_nr) -> that run's rows in file order; read once per file version
    (27,048 rows per subject, asked for by each of its 120 runs)."""
    csv_path = Path(path)
    header = tsv_header(csv_path, delimiter=",")
    missing = [c for c in _CSV_COLUMNS if c not in header]
    if missing:
        raise InputError(f"a sample_attributes CSV with columns {list(_CSV_COLUMNS)}",
                         f"{csv_path} without {missing}",
                         "use the unmodified file from the dataset's sourcedata/")
    runs: dict[tuple[int, int], list] = {}
    for line, row in enumerate(read_tsv(csv_path, delimiter=","), start=2):
        key = (_number(row["session_nr"]), _number(row["run_nr"]))
        if None in key:
            raise InputError("whole session_nr and run_nr in every row",
                             f"{row['session_nr']!r}, {row['run_nr']!r} on line {line} of "
                             f"{csv_path}", "use the unmodified file from sourcedata/")
        runs.setdefault(key, []).append({c: row[c] for c in _CSV_COLUMNS})
    return runs


def _entity_number(bids_path, entity: str) -> int:
    value = getattr(bids_path, entity)
    number = _number(value)
    if number is None:
        raise InputError(f"a numbered {entity} (THINGS-MEG: ses-01..12, run-01..10)",
                         f"{entity}={value!r} in {bids_path.fpath}",
                         "keep the dataset's file names")
    return number


# --------------------------------------------------------------------------- the mapping


def _read_mapping(mapping) -> tuple[dict[int, str], Path | None]:
    """THINGS image number -> image path, from a dict or a .tsv/.csv/.json file."""
    folder = None
    if not isinstance(mapping, Mapping):
        path = Path(mapping).expanduser()
        if not path.is_file():
            raise InputError("a mapping file of THINGS image numbers (.tsv, .csv or .json)",
                             f"{path}, which does not exist", "check the path")
        folder = path.parent
        mapping = _mapping_file(path)
    numbers = {}
    for key, value in mapping.items():
        number = _number(key)
        if number is None or na(value) is None:
            raise InputError("THINGS image numbers mapped to image paths",
                             f"{key!r} -> {value!r}", "fix that entry")
        numbers[number] = str(value)
    return numbers, folder


def _mapping_file(path: Path) -> dict[Any, Any]:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise InputError("a JSON object {things_image_nr: image_path}", f"{path}: {err}",
                             "fix the JSON") from None
        if not isinstance(data, dict):
            raise InputError("a JSON object {things_image_nr: image_path}",
                             f"a {type(data).__name__} in {path}", "wrap the entries in {}")
        return data
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    header = tsv_header(path, delimiter=delimiter)
    key = next((c for c in _MAPPING_KEYS if c in header), None)
    value = next((c for c in _MAPPING_PATHS if c in header), None)
    if key is None or value is None:
        raise InputError(f"a mapping with columns {' or '.join(_MAPPING_KEYS)} and "
                         f"{' or '.join(_MAPPING_PATHS)}", f"columns {header} in {path}",
                         "name the columns things_image_nr and image_path")
    return {row[key]: row[value] for row in read_tsv(path, delimiter=delimiter)}


def _mapped_paths(rows: list[dict[str, str]], numbers: dict[int, str], mapping,
                  tsv: Path) -> list:
    paths, absent = [], []
    for row in rows:
        if na(row.get("trial_type")) == "catch":
            paths.append(None)
            continue
        number = _number(row.get(IMAGE_NUMBER))
        paths.append(numbers.get(number))
        if number not in numbers:
            absent.append(_number_text(row.get(IMAGE_NUMBER)))
    if absent:
        absent = list(dict.fromkeys(absent))
        raise InputError("an image path for every THINGS image number of the trials",
                         f"{len(absent)} numbers of {tsv.name} missing from {mapping}: "
                         f"{listing(absent, 5)}", "add those numbers to the mapping")
    return paths


def _number(value: Any) -> int | None:
    """A whole number from a table cell ("24812.0" -> 24812); None for n/a or text."""
    text = na(value)
    try:
        number = float(text) if text is not None else None
    except ValueError:
        return None
    return int(number) if number is not None and number.is_integer() else None


def _number_text(value: Any) -> str:
    number = _number(value)
    return "" if number is None else str(number)
