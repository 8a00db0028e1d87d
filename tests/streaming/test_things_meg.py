"""THINGS-MEG as OpenNeuro publishes it (ds004212): real text files, simulated signal.

The root is built in tmp_path from ``../shared/things-meg/ds004212`` (the
``things_meg`` fixture): the dataset's own ``dataset_description.json``,
``participants.tsv``, ``task-main_events.json`` and, for sub-BIGMEG1 ses-01 runs
01 and 02, the real ``channels.tsv``, ``meg.json`` and ``coordsystem.json``.

Deviations from the published dataset, each forced by what a test can hold:

- The signal is simulated and written as FIF (``..._meg.fif``) beside the real
  sidecars, since MNE cannot write CTF ``.ds``; the FIF has the 310 channels of
  ``channels.tsv`` under their names, with the file types a ``.ds`` gives them
  (axial gradiometers MEG with CTF-275 positions, references ref_meg, UPPT001 stim,
  the rest misc) and no line frequency, so 60 Hz can only come from meg.json.
- Each run covers its first ``SECONDS`` s (a full run is 348 s, 0.5 GB): its
  ``events.tsv`` keeps the real rows whose onset lies in that span, unchanged.
- ``sourcedata/sample_attributes_P1.csv`` is annexed and not in the shared files:
  a synthetic one, consistent with those events, names made-up images in THINGS'
  layout (``images_meg/<concept>/<concept>_<n>.jpg``; catch under
  ``images_catch_meg/``), with ``DISAGREE`` deliberate ``things_image_nr``
  disagreements in run 01.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import mne
import numpy as np
import pytest
from PIL import Image

from glimpse.service.cli import main
from glimpse.streaming import bids
from glimpse.streaming.errors import InputError
from glimpse.streaming.recordings import describe, open_recording
from glimpse.streaming.things_meg import resolve_image

# Writing two 30 s runs of 310 channels at 1200 Hz takes a few seconds; a hang in a
# reader must fail instead of stalling CI.
pytestmark = pytest.mark.timeout(120)

SUBJECT, SESSION, RUNS = "BIGMEG1", "01", ("01", "02")
SECONDS = 30.0
DISAGREE = 3  # things_image_nr != value in run 01
SELECT = {"subject": SUBJECT, "session": SESSION, "run": "01"}


def _stem(run: str) -> str:
    return f"sub-{SUBJECT}_ses-{SESSION}_task-main_run-{run}"


def _image_path(row: dict[str, str], number: int) -> str:
    concept = f"concept{int(float(row['things_category_nr']))}"
    return f"images_meg/{concept}/{concept}_{number}.jpg"


def _events(src: Path, run: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(src / f"sub-{SUBJECT}/ses-{SESSION}/meg/{_stem(run)}_events.tsv", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [r for r in reader if float(r["onset"]) < SECONDS - 1.0]
        return list(reader.fieldnames), rows


def _simulated_ctf(channels_tsv: Path, events: list[dict[str, str]], seed: int) -> mne.io.Raw:
    """CTF-275-like signal under channels.tsv's names: noise plus an evoked response."""
    with open(channels_tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    canonical = mne.channels.read_meg_canonical_info("ctf275")
    by_stem = {ch["ch_name"].split("-")[0]: ch for ch in canonical["chs"]}
    kinds = {"OTHER": "mag", "MEGREFMAG": "ref_meg", "MEGREFGRADAXIAL": "ref_meg"}
    names = [r["name"] for r in rows]
    types = ["stim" if n == "UPPT001" else kinds.get(r["type"], "misc")
             for n, r in zip(names, rows)]
    info = mne.create_info(names, 1200.0, types)
    fiff = mne.io.constants.FIFF
    coils = {"OTHER": fiff.FIFFV_COIL_CTF_GRAD, "MEGREFMAG": fiff.FIFFV_COIL_CTF_REF_MAG,
             "MEGREFGRADAXIAL": fiff.FIFFV_COIL_CTF_REF_GRAD}
    for ch, row in zip(info["chs"], rows):
        if row["type"] in coils:
            ch["coil_type"] = coils[row["type"]]
        ref = by_stem.get(ch["ch_name"].split("-")[0])
        if ref is not None and row["type"] == "OTHER":
            ch["loc"], ch["coord_frame"] = ref["loc"].copy(), ref["coord_frame"]
    info["dev_head_t"] = mne.transforms.Transform("meg", "head")
    rng = np.random.default_rng(seed)
    n_times = int(SECONDS * 1200)
    data = rng.normal(0, 1e-13, (len(names), n_times)).astype(np.float32)
    meg = np.flatnonzero(np.array(types) == "mag")
    t = np.arange(int(0.5 * 1200)) / 1200
    bump = np.exp(-0.5 * ((t - 0.15) / 0.04) ** 2)
    for row in events:
        start = int(round(float(row["onset"]) * 1200))
        pattern = np.random.default_rng(int(float(row["value"]) if row["value"] != "N/A" else 0))
        data[meg, start:start + len(t)] += 3e-13 * pattern.normal(size=(len(meg), 1)) * bump
    stim = names.index("UPPT001")
    for row in events:
        start = int(round(float(row["onset"]) * 1200))
        data[stim, start:start + 12] = 64
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_meas_date(0)
    return raw


def build_root(src: Path, dst: Path, *, with_csv: bool = True) -> Path:
    """A THINGS-MEG root laid out as published (see the module docstring); returns it."""
    for name in ("dataset_description.json", "participants.tsv", "task-main_events.json"):
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, dst / name)
    meg = dst / f"sub-{SUBJECT}/ses-{SESSION}/meg"
    meg.mkdir(parents=True)
    attributes = []
    for r, run in enumerate(RUNS):
        for suffix in ("channels.tsv", "meg.json", "coordsystem.json"):
            shutil.copy(src / f"sub-{SUBJECT}/ses-{SESSION}/meg/{_stem(run)}_{suffix}",
                        meg / f"{_stem(run)}_{suffix}")
        header, rows = _events(src, run)
        with open(meg / f"{_stem(run)}_events.tsv", "w", newline="") as f:
            writer = csv.DictWriter(f, header, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        raw = _simulated_ctf(meg / f"{_stem(run)}_channels.tsv", rows, seed=r)
        raw.save(meg / f"{_stem(run)}_meg.fif", verbose="error")
        attributes += _attribute_rows(rows, run)
    if with_csv:
        _write_csv(dst / "sourcedata" / "sample_attributes_P1.csv", attributes)
    return dst


def _attribute_rows(rows: list[dict[str, str]], run: str) -> list[dict]:
    out, disagreements = [], 0
    for k, row in enumerate(rows):
        entry = {"session_nr": int(SESSION), "run_nr": int(run), "trial_nr": k + 1,
                 "trial_type": row["trial_type"], "image_on": row["onset"],
                 "image_off": float(row["onset"]) + 0.5, "image_nr": k + 1}
        if row["trial_type"] == "catch":
            entry.update(image_path=f"images_catch_meg/catch_{k:02d}.jpg",
                         things_image_nr="nan")
        else:
            number = int(float(row["value"]))
            if run == "01" and row["trial_type"] == "exp" and disagreements < DISAGREE:
                number, disagreements = number + 1, disagreements + 1
            entry.update(image_path=_image_path(row, number), things_image_nr=number)
        out.append(entry)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A session that is not in this root: the CSV covers all of a subject's runs.
    rows = rows + [{**rows[0], "session_nr": 2}, {**rows[1], "session_nr": 2}]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_images(stim: Path, root: Path) -> None:
    """Tiny JPEGs in the THINGS image database's layout, <concept>/<image>.jpg."""
    with open(root / "sourcedata" / "sample_attributes_P1.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["trial_type"] != "catch":
                path = stim / Path(row["image_path"]).relative_to("images_meg")
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    Image.new("RGB", (8, 8), (len(path.name) * 9 % 255, 80, 40)).save(path, "JPEG")


@pytest.fixture(scope="module")
def root(things_meg, tmp_path_factory) -> tuple[Path, Path]:
    """(THINGS-MEG root, THINGS image folder), built once for this module."""
    base = tmp_path_factory.mktemp("things_meg")
    dst = build_root(things_meg, base / "ds004212")
    stim = base / "object_images"
    _write_images(stim, dst)
    return dst, stim


@pytest.fixture(autouse=True)
def _glimpse_logs_reach_caplog(monkeypatch):
    """``glimpse`` CLI runs (here or in earlier test files) stop the logger's propagation."""
    log = logging.getLogger("glimpse")
    monkeypatch.setattr(log, "propagate", True)
    monkeypatch.setattr(log, "handlers", [])


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.startswith("expected ") and "Fix: " in text
    return text


# --------------------------------------------------------------------------- tests


def test_every_trial_resolves_from_the_sample_attributes(root, things_meg, caplog):
    dst, stim = root
    with caplog.at_level(logging.WARNING, logger="glimpse"):
        rec = open_recording(dst, stim_root=stim, **SELECT)
    _, rows = _events(things_meg, "01")
    assert len(rec.trials) == len(rows) and rec.trial_source == "events_tsv"
    assert rec.stimuli_source == "sourcedata/sample_attributes_P1.csv"
    for trial, row in zip(rec.trials, rows):
        assert trial.trial_type == row["trial_type"]
        assert trial.onset == pytest.approx(float(row["onset"]))
        if row["trial_type"] == "catch":  # excluded: no stimulus, never train or test
            assert trial.split == "catch" and trial.stim_file is None
        else:
            assert trial.split == {"exp": "train", "test": "test"}[row["trial_type"]]
            assert trial.stim_file.is_file() and trial.stim_file.is_relative_to(stim)
            assert trial.concept == f"concept{int(float(row['things_category_nr']))}"
    splits = {t.split for t in rec.trials}
    assert splits == {"train", "test", "catch"}
    # The disagreements: counted in one warning, the CSV's image used.
    warned = [r.getMessage() for r in caplog.records if "things_image_nr" in r.getMessage()]
    assert len(warned) == 1 and f": {DISAGREE} trials where" in warned[0]
    assert "the CSV's image_path is used" in warned[0]
    first_exp = next(i for i, r in enumerate(rows) if r["trial_type"] == "exp")
    csv_number = int(float(rows[first_exp]["value"])) + 1
    assert rec.trials[first_exp].stim_file.stem.endswith(f"_{csv_number}")


def test_gradiometers_stay_meg_said_once_and_mains_from_the_sidecar(root, caplog, monkeypatch):
    dst, stim = root
    monkeypatch.setattr(bids, "_told_about_types", set())
    with caplog.at_level(logging.DEBUG, logger="glimpse"):
        recs = [open_recording(dst, stim_root=stim, subject=SUBJECT, session=SESSION, run=run)
                for run in RUNS]
    for rec in recs:
        types = rec.raw.get_channel_types()
        assert types.count("mag") == 272 and types.count("ref_meg") == 28
        assert rec.raw.info["chs"][rec.ch_names.index("MLC11-1609")]["coil_type"] == \
            mne.io.constants.FIFF.FIFFV_COIL_CTF_GRAD
        assert rec.line_freq == 60.0  # meg.json's PowerLineFrequency; the FIF has none
    said = [r for r in caplog.records if "OTHER" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO, logging.DEBUG]
    assert "272 MEG channels OTHER" in said[0].getMessage()


def test_image_number_mapping_without_the_csv(things_meg, root, tmp_path):
    _, stim = root
    dst = build_root(things_meg, tmp_path / "ds", with_csv=False)
    mapping = tmp_path / "things_images.tsv"
    _, rows = _events(things_meg, "01")
    numbers = {int(float(r["value"])): r for r in rows if r["trial_type"] != "catch"}
    lines = ["things_image_nr\timage_path"]
    lines += [f"{n}\t{_image_path(r, n)}" for n, r in numbers.items()]
    for n, r in numbers.items():  # the mapping's images, where the CSV named others
        target = stim / Path(_image_path(r, n)).relative_to("images_meg")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(target, "JPEG")
    mapping.write_text("\n".join(lines) + "\n")
    rec = open_recording(dst, stim_root=stim, mapping=mapping, **SELECT)
    shown = [t for t in rec.trials if t.split != "catch"]
    assert shown and all(t.stim_file.is_file() for t in shown)
    assert [t.stim_file.stem for t in shown] == [
        f"concept{int(float(r['things_category_nr']))}_{int(float(r['value']))}"
        for r in rows if r["trial_type"] != "catch"]
    # Without the CSV and without a mapping: one line that says where images come from.
    with pytest.raises(InputError, match=r"sample_attributes_P1\.csv nor a mapping") as err:
        open_recording(dst, stim_root=stim, **SELECT)
    _one_line(err)
    assert describe(dst, stim_root=stim, **SELECT)["trials"]["stimuli_source"] == "none"
    # A mapping that lacks a number of the trials.
    first = next(iter(numbers))
    mapping.write_text("\n".join(line for line in lines if not line.startswith(f"{first}\t")))
    with pytest.raises(InputError, match=rf"1 numbers of .*_events\.tsv missing .*: {first}"
                       ) as err:
        open_recording(dst, stim_root=stim, mapping=mapping, **SELECT)
    _one_line(err)


def test_both_image_layouts_resolve(tmp_path):
    rel = "images_meg/aardvark/aardvark_01b.jpg"
    database = tmp_path / "object_images" / "aardvark" / "aardvark_01b.jpg"
    database.parent.mkdir(parents=True)
    database.touch()
    assert resolve_image(tmp_path / "object_images", rel) == database
    as_written = tmp_path / "meg_images" / rel
    as_written.parent.mkdir(parents=True)
    as_written.touch()
    assert resolve_image(tmp_path / "meg_images", rel) == as_written


def test_missing_image_and_wrong_csv_are_one_line(root, things_meg, tmp_path):
    dst, stim = root
    rec = open_recording(dst, stim_root=stim, **SELECT)
    gone = next(t.stim_file for t in rec.trials if t.stim_file is not None)
    elsewhere = tmp_path / "images"
    shutil.copytree(stim, elsewhere)
    (elsewhere / gone.relative_to(stim)).unlink()
    with pytest.raises(InputError, match=rf"1 of \d+ missing, first .*{gone.name}") as err:
        open_recording(dst, stim_root=elsewhere, **SELECT)
    assert "THINGS image folder" in _one_line(err)

    short = build_root(things_meg, tmp_path / "short")
    csv_path = short / "sourcedata" / "sample_attributes_P1.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # one trial of run 01 less
    with pytest.raises(InputError, match=r"rows for session 1 run 1 in .*P1\.csv") as err:
        open_recording(short, stim_root=stim, **SELECT)
    _one_line(err)


def test_glimpse_info_lists_trials_with_their_images(root, capsys):
    dst, stim = root
    args = ["info", str(dst), "--subject", SUBJECT, "--session", SESSION, "--run", "01",
            "--stim-root", str(stim)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "BIDS (FIF)" in out and "mains        60 Hz" in out
    assert "mag: 272" in out and "ref_meg: 28" in out
    assert "stimuli      from sourcedata/sample_attributes_P1.csv" in out
    assert ", 0 missing" in out
    listed = [line for line in out.splitlines() if line.startswith("    ") and ".jpg" in line]
    assert listed and all(str(stim) in line and "(missing)" not in line for line in listed)
    assert main([*args, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["line_freq"] == 60.0 and described["trials"]["stimuli_missing"] == 0


def test_load_session_trains_on_it_with_the_mains_notch(root):
    from glimpse.models.data import load_session

    dst, stim = root
    session = load_session(dst, stim_root=stim, progress=False)
    assert len(session.runs) == 2 and session.subjects == ["BIGMEG1"]
    assert session.preprocess.notch == 60.0
    assert len(session.ch_names) == 272
    splits = set(session.trials.split)
    assert {"train", "test", "catch"} <= splits
    shown = session.trials.split != "catch"
    assert (session.trials.image[shown] >= 0).all() and (session.trials.image[~shown] == -1).all()


def test_glimpse_train_runs_on_it(root, tmp_path, capsys):
    dst, stim = root
    ckpt = tmp_path / "ckpt"
    assert main(["-q", "train", str(dst), "--out", str(ckpt), "--stim-root", str(stim),
                 "--model", "ridge", "--cache-dir", str(tmp_path / "cache")]) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["preprocess"]["notch"] == 60.0
    assert len(config["preprocess"]["ch_names"]) == 272


def test_glimpse_train_takes_an_image_number_mapping(things_meg, root, tmp_path, capsys):
    """Without sourcedata/: `glimpse train --mapping` reads the images from the user's table."""
    _, stim = root
    dst = build_root(things_meg, tmp_path / "ds", with_csv=False)
    numbers = {}
    for run in RUNS:
        numbers.update({int(float(r["value"])): r for r in _events(things_meg, run)[1]
                        if r["trial_type"] != "catch"})
    lines = ["things_image_nr\timage_path"] + [f"{n}\t{_image_path(r, n)}"
                                               for n, r in numbers.items()]
    for n, r in numbers.items():
        target = stim / Path(_image_path(r, n)).relative_to("images_meg")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(target, "JPEG")
    mapping = tmp_path / "things_images.tsv"
    mapping.write_text("\n".join(lines) + "\n")
    ckpt = tmp_path / "ckpt"
    args = ["-q", "train", str(dst), "--out", str(ckpt), "--stim-root", str(stim),
            "--model", "ridge", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--mapping", str(mapping)]) == 0
    assert json.loads((ckpt / "config.json").read_text())["preprocess"]["notch"] == 60.0
    capsys.readouterr()
    # Without it the same root is refused in one line that names the way out.
    assert main([*args[:-2], "--cache-dir", str(tmp_path / "cache2")]) == 2
    assert "nor a mapping" in capsys.readouterr().err
