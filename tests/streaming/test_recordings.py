"""Reading recordings and their trials: real files, a tiny BIDS dataset, THINGS-EEG2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pytest
from PIL import Image

from glimpse.service.info import format_description
from glimpse.streaming.errors import InputError
from glimpse.streaming.recordings import (
    EventColumns,
    SPLITS,
    Recording,
    Trial,
    describe,
    open_recording,
    read_things_eeg2,
)

# Reading a few small files and writing a tiny BIDS dataset takes seconds; a hang
# (a reader waiting on a broken file) must fail instead of stalling CI.
pytestmark = pytest.mark.timeout(60)

# The README table of ../shared/realdata: file, format, system, n_chans, sfreq as
# written there, length (s), events.
REAL = [
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", "FIF", "Neuromag/MEGIN", 376, 300.3, 1.0),
    ("ctf275_short_discontinuous_raw.fif", "FIF", "CTF", 356, 1200, 2.0),
    ("eeg_reduced.edf", "EDF", None, 139, 512, 6.0),
    ("biosemi_stim_channel.bdf", "BDF", "BioSemi", 4, 500, 10.0),
    ("brainvision/test_NO.vhdr", "BrainVision", "Brain Products", 65, 5000, 0.45),
    ("eeglab/test_raw.set", "EEGLAB", None, 32, 128, 238.0),
]


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.startswith("expected ") and "Fix: " in text
    return text


def _image(path: Path, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path, fmt)
    return path


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize(("name", "fmt", "system", "n_chans", "sfreq", "length"), REAL)
def test_every_real_file_opens_and_describes(realdata, name, fmt, system, n_chans, sfreq, length):
    path = realdata / name
    ref = mne.io.read_raw(path, verbose="error")
    rec = open_recording(path)
    assert isinstance(rec, Recording) and rec.bids_path is None
    assert (rec.n_times, rec.ch_names, rec.sfreq) == (ref.n_times, ref.ch_names, ref.info["sfreq"])
    assert len(rec.ch_names) == n_chans and round(rec.sfreq, 1) == sfreq
    assert rec.duration == pytest.approx(length, rel=0.01)

    d = describe(path)
    assert json.loads(json.dumps(d)) == d
    assert (d["format"], d["system"], d["n_chans"], d["n_times"]) == (fmt, system, n_chans,
                                                                     ref.n_times)
    assert d["sfreq"] == ref.info["sfreq"] and d["duration"] == ref.n_times / ref.info["sfreq"]
    assert sum(d["channel_types"].values()) == n_chans
    assert d["channel_types"] == {t: ref.get_channel_types().count(t)
                                  for t in set(ref.get_channel_types())}
    date = ref.info["meas_date"]
    assert d["meas_date"] == (None if date is None else date.isoformat())
    text = format_description(d)
    assert str(path) in text and f"{n_chans} (" in text and f"{ref.info['sfreq']:g} Hz" in text


def test_real_file_events_match_the_readme(realdata):
    events = {name: describe(realdata / name) for name, *_ in REAL}
    for name in ("neuromag306_sample_audvis_trunc_raw_sss.fif",
                 "ctf275_short_discontinuous_raw.fif", "biosemi_stim_channel.bdf"):
        assert events[name]["stim_events"] is not None, name  # "stim channel"
    assert events["neuromag306_sample_audvis_trunc_raw_sss.fif"]["stim_events"]["channels"] == [
        "STI 014"]
    assert events["biosemi_stim_channel.bdf"]["stim_events"]["values"] == {"1": 7, "2": 1, "4": 1}
    assert events["eeg_reduced.edf"]["annotations"]["count"] == 5
    eeglab = events["eeglab/test_raw.set"]
    assert eeglab["annotations"] == {"count": 154, "n_distinct": 2,
                                     "descriptions": {"square": 80, "rt": 74}}
    assert eeglab["trials"]["count"] == 154 and eeglab["stim_events"] is None
    bv = events["brainvision/test_NO.vhdr"]
    assert bv["annotations"]["count"] == 0 and bv["stim_events"] is None
    assert bv["trials"]["source"] == "none"
    assert "no events" in format_description(bv)


def test_annotation_trials_without_mapping(realdata):
    rec = open_recording(realdata / "eeglab/test_raw.set")
    ann = rec.raw.annotations
    assert len(rec.trials) == 154
    assert [t.concept for t in rec.trials] == list(ann.description)
    assert all(t.stim_file is None and t.split == "unknown" for t in rec.trials)
    np.testing.assert_allclose([t.onset for t in rec.trials], ann.onset - rec.raw.first_time)
    assert [t.sample for t in rec.trials] == [round(t.onset * 128) for t in rec.trials]

    edf = open_recording(realdata / "eeg_reduced.edf")
    assert [t.trial_type for t in edf.trials] == list(edf.raw.annotations.description)
    assert edf.trial_source == "annotations"


def test_annotation_trials_with_mapping_files(realdata, tmp_path):
    _image(tmp_path / "shapes" / "square.png")
    (tmp_path / "map.json").write_text(json.dumps(
        {"square": {"stim_file": "shapes/square.png", "split": "train"}}))
    rec = open_recording(realdata / "eeglab/test_raw.set", mapping=tmp_path / "map.json")
    assert len(rec.trials) == 80  # "rt" is not in the mapping: skipped
    assert {t.stim_file for t in rec.trials} == {tmp_path / "shapes" / "square.png"}
    assert {(t.concept, t.split, t.trial_type) for t in rec.trials} == {("shapes", "train",
                                                                        "square")}
    assert rec.stim_root == tmp_path

    (tmp_path / "map.tsv").write_text("description\tstim_file\tconcept\tsplit\n"
                                      "square\tshapes/square.png\tsquare\ttest\n"
                                      "rt\tn/a\tresponse\tcatch\n")
    rec = open_recording(realdata / "eeglab/test_raw.set", mapping=tmp_path / "map.tsv")
    assert len(rec.trials) == 154
    catch = [t for t in rec.trials if t.split == "catch"]
    assert len(catch) == 74 and all(t.stim_file is None and t.concept == "response" for t in catch)


def test_annotation_onsets_follow_first_samp(realdata, tmp_path):
    # This file starts 12900 samples into the acquisition: annotation onsets count
    # from meas_date, trial onsets from the first sample.
    raw = mne.io.read_raw_fif(realdata / "neuromag306_sample_audvis_trunc_raw_sss.fif",
                              verbose="error").crop(0, 0.9)
    assert raw.first_samp > 0
    raw.set_annotations(mne.Annotations([raw.first_time + 0.5], [0.0], ["face"],
                                        orig_time=raw.info["meas_date"]))
    raw.save(tmp_path / "cut_raw.fif", verbose="error")
    (trial,) = open_recording(tmp_path / "cut_raw.fif").trials
    assert trial.onset == pytest.approx(0.5) and trial.sample == round(0.5 * raw.info["sfreq"])


def test_stim_channel_trials_with_a_mapping_file(realdata, tmp_path):
    dog = _image(tmp_path / "stimuli" / "dog" / "dog_01.png")
    cat = _image(tmp_path / "stimuli" / "cat" / "cat_01.png")
    (tmp_path / "triggers.tsv").write_text("value\tstim_file\tconcept\tsplit\n"
                                           "1\tstimuli/dog/dog_01.png\tn/a\texp\n"
                                           "2\tstimuli/cat/cat_01.png\tcat\ttest\n"
                                           "4\tn/a\tn/a\tcatch\n")
    path = realdata / "biosemi_stim_channel.bdf"
    rec = open_recording(path, mapping=tmp_path / "triggers.tsv")
    ref = mne.find_events(mne.io.read_raw(path, verbose="error"), verbose="error")
    assert rec.trial_source == "stim_channel" and len(rec.trials) == len(ref) == 9
    assert [t.sample for t in rec.trials] == list(ref[:, 0] - rec.raw.first_samp)
    np.testing.assert_allclose([t.onset for t in rec.trials], rec.raw.times[ref[:, 0]])
    by_value = {t.trial_type: t for t in rec.trials}
    assert by_value["1"].stim_file == dog and by_value["1"].concept == "dog"
    assert by_value["1"].split == "train"  # "exp" in a mapping means what it means in events.tsv
    assert (by_value["2"].stim_file, by_value["2"].split) == (cat, "test")
    assert (by_value["4"].stim_file, by_value["4"].split, by_value["4"].concept) == (
        None, "catch", "4")


def test_stim_channel_source_can_be_forced(realdata):
    # The EDF file has both annotations (the default source) and a Status channel.
    rec = open_recording(realdata / "eeg_reduced.edf", source="stim_channel",
                         mapping={"4096": {"concept": "flash", "split": "train"}})
    assert len(rec.trials) == 7 and {t.concept for t in rec.trials} == {"flash"}
    rec = open_recording(realdata / "eeg_reduced.edf", source="stim_channel",
                         stim_channel="Status")
    assert {t.trial_type for t in rec.trials} == {"4096", "4100"} and len(rec.trials) == 13


# --------------------------------------------------------------------------- BIDS

SIM_EVENTS = ("onset\tduration\ttrial_type\tvalue\timage_path\tconcept\n"
              "1.0\t0.5\texp\t1\tstimuli/dog/dog_01.png\tdog\n"
              "2.0\t0.5\ttest\t2\tstimuli/cat/cat_01.png\tcat\n"
              "3.0\t0.5\tcatch\t3\tn/a\tn/a\n"
              "4.0\t0.5\tresponse\t9\tn/a\tn/a\n"
              "5.5\t0.5\tpractice\t4\tstimuli/dog/dog_01.png\tdog\n")
THINGS_MEG_EVENTS = ("onset\tduration\ttrial_type\tvalue\timage_path\n"
                     "1.25\t0.5\texp\t1\timages_meg/aardvark/aardvark_01b.jpg\n"
                     "2.5\t0.5\ttest\t2\timages_test_meg/zebra/zebra_02s.jpg\n"
                     "3.0\t0.5\tcatch\t3\tn/a\n")


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    """sub-01 with run-1 (simulator's events.tsv) and run-2 (THINGS-MEG-like)."""
    root = tmp_path_factory.mktemp("bids")
    info = mne.create_info([f"EEG{i:02d}" for i in range(4)], 100.0, "eeg")
    raw = mne.io.RawArray(np.random.default_rng(0).normal(size=(4, 1000)) * 1e-6, info,
                          verbose="error")
    # write_raw_bids warns when a recording has no events; the events.tsv is replaced below.
    raw.set_annotations(mne.Annotations([1.0], [0.5], ["exp"]))
    for run, events in (("1", SIM_EVENTS), ("2", THINGS_MEG_EVENTS)):
        bp = mne_bids.BIDSPath(subject="01", task="view", run=run, datatype="eeg", root=root)
        mne_bids.write_raw_bids(raw, bp, allow_preload=True, format="BrainVision",
                                verbose="error")
        bp.copy().update(suffix="events", extension=".tsv").fpath.write_text(events)
    _image(root / "stimuli" / "dog" / "dog_01.png")
    _image(root / "stimuli" / "cat" / "cat_01.png")
    return root


@pytest.fixture(scope="module")
def things_images(tmp_path_factory) -> Path:
    """THINGS-MEG's images live apart from the BIDS data, under images_meg/<concept>/."""
    root = tmp_path_factory.mktemp("things_images")
    _image(root / "images_meg" / "aardvark" / "aardvark_01b.jpg", "JPEG")
    _image(root / "images_test_meg" / "zebra" / "zebra_02s.jpg", "JPEG")
    return root


def test_bids_events_tsv_trials_resolve_to_the_stimuli(bids_root):
    rec = open_recording(bids_root, run=1)
    assert rec.bids_path is not None and rec.bids_path.run in ("1", "01")
    assert rec.trial_source == "events_tsv" and rec.stim_root == bids_root
    assert [(t.onset, t.split, t.trial_type) for t in rec.trials] == [
        (1.0, "train", "exp"), (2.0, "test", "test"), (3.0, "catch", "catch"),
        (5.5, "unknown", "practice")]  # the response row names no stimulus: skipped
    dog = bids_root / "stimuli" / "dog" / "dog_01.png"
    assert rec.trials[0] == Trial(onset=1.0, stim_file=dog, concept="dog", split="train",
                                  trial_type="exp", sample=100)
    assert rec.trials[1].stim_file == bids_root / "stimuli" / "cat" / "cat_01.png"
    assert rec.trials[2].stim_file is None
    assert all(t.stim_file is None or t.stim_file.is_absolute() for t in rec.trials)

    # The same recording named by its file inside the dataset.
    by_file = open_recording(rec.path)
    assert by_file.bids_path is not None and by_file.trials == rec.trials
    assert by_file.path == rec.path and by_file.stim_root == bids_root


def test_bids_describe(bids_root):
    d = describe(bids_root, subject="sub-01", task="view", run="01")
    assert json.loads(json.dumps(d)) == d
    assert d["format"] == "BIDS (BrainVision)" and d["system"] == "Brain Products"
    assert d["bids"]["subject"] == "01" and d["bids"]["root"] == str(bids_root)
    assert d["trials"]["splits"] == {"train": 1, "test": 1, "catch": 1, "unknown": 1}
    assert (d["trials"]["stimuli"], d["trials"]["stimuli_missing"]) == (2, 0)
    assert d["annotations"]["count"] == 5  # read_raw_bids turns every events.tsv row into one
    assert "BIDS (BrainVision)" in format_description(d)


def test_things_meg_events_take_the_concept_from_the_folder(bids_root, things_images):
    rec = open_recording(bids_root, run=2, stim_root=things_images)
    assert [(t.concept, t.split) for t in rec.trials] == [
        ("aardvark", "train"), ("zebra", "test"), ("", "catch")]
    assert rec.trials[0].stim_file == things_images / "images_meg/aardvark/aardvark_01b.jpg"
    assert rec.trials[0].sample == 125

    # Without the images, describe still works and counts what is missing.
    d = describe(bids_root, run=2)
    assert (d["trials"]["stimuli"], d["trials"]["stimuli_missing"]) == (2, 2)
    assert "--stim-root" in format_description(d)


def test_event_columns_round_trip_and_custom_columns(bids_root):
    cols = EventColumns(stimulus="image_path", concept=None, split="trial_type",
                        splits={"exp": "test", "test": "train"})
    assert EventColumns.from_json(cols.to_json()) == cols
    assert EventColumns.from_json(EventColumns().to_json()) == EventColumns()
    rec = open_recording(bids_root, run=1, events=cols)
    assert [(t.concept, t.split) for t in rec.trials] == [("dog", "test"), ("cat", "train"),
                                                          ("dog", "unknown")]
    with pytest.raises(InputError, match="EventColumns keys") as err:
        EventColumns.from_dict({"stimulus": "stim", "colour": "red"})
    _one_line(err)
    with pytest.raises(InputError, match="EventColumns.splits") as err:
        EventColumns(splits={"exp": "training"})
    _one_line(err)


# --------------------------------------------------------------------------- THINGS-EEG2

EEG2_CONCEPTS = {"train": ["00001_aardvark", "00001_aardvark", "00002_abacus", "00003_accordion"],
                 "test": ["00004_acorn", "00005_zebra"]}


def _write_things_eeg2(root: Path, subjects=("sub-01",), n_chans=17, n_times=100) -> Path:
    rng = np.random.default_rng(1)
    times = np.round(-0.2 + np.arange(n_times) / 250.0, 3)
    ch_names = [f"E{i}" for i in range(n_chans)]
    for sub in subjects:
        eeg = root / "Preprocessed_data_250Hz" / sub
        eeg.mkdir(parents=True)
        for split, fname in (("train", "preprocessed_eeg_training.npy"),
                             ("test", "preprocessed_eeg_test.npy")):
            data = rng.normal(size=(len(EEG2_CONCEPTS[split]), 2, n_chans, n_times))
            np.save(eeg / fname, {"preprocessed_eeg_data": data.astype(np.float32),
                                  "ch_names": ch_names, "times": times})
    meta = {}
    for split, folder in (("train", "training_images"), ("test", "test_images")):
        concepts = EEG2_CONCEPTS[split]
        files = [f"{c.split('_', 1)[1]}_{i:02d}b.jpg" for i, c in enumerate(concepts)]
        for c, f in zip(concepts, files):
            _image(root / "image_set" / folder / c / f, "JPEG")
        meta[f"{split}_img_files"], meta[f"{split}_img_concepts"] = files, concepts
    np.save(root / "image_set" / "image_metadata.npy", meta)
    return root


def _resave(path: Path, **changes) -> None:
    blob = np.load(path, allow_pickle=True).item()
    np.save(path, {**blob, **changes})


def test_things_eeg2_layout_reads_back(tmp_path):
    root = _write_things_eeg2(tmp_path)
    ds = read_things_eeg2(root)
    assert ds.sfreq == 250.0 and ds.n_chans == 17 and ds.ch_names[0] == "E0"
    assert ds.times.shape == (100,) and ds.times[0] == pytest.approx(-0.2)
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.data.shape == (4, 2, 17, 100) and test.data.shape == (2, 2, 17, 100)
    blob = np.load(root / "Preprocessed_data_250Hz/sub-01/preprocessed_eeg_training.npy",
                   allow_pickle=True).item()
    np.testing.assert_array_equal(train.data, blob["preprocessed_eeg_data"])
    assert [im.concept for im in train.images] == ["aardvark", "aardvark", "abacus", "accordion"]
    assert train.images[2].stim_file == (root / "image_set/training_images/00002_abacus"
                                         / "abacus_02b.jpg")
    assert {im.split for im in test.images} == {"test"}
    assert test.images[1].stim_file == root / "image_set/test_images/00005_zebra/zebra_01b.jpg"

    for other in (read_things_eeg2(root, subject=1), read_things_eeg2(root, subject="sub-01"),
                  read_things_eeg2(eeg_dir=root / "Preprocessed_data_250Hz/sub-01",
                                   image_dir=root / "image_set"),
                  read_things_eeg2(root / "Preprocessed_data_250Hz/sub-01"),
                  read_things_eeg2([root / "Preprocessed_data_250Hz/sub-01"
                                    / "preprocessed_eeg_test.npy",
                                    root / "image_set/image_metadata.npy"])):
        assert other.splits["test"].images == test.images
        np.testing.assert_array_equal(other.splits["test"].data, test.data)


@pytest.mark.parametrize(("change", "match"), [
    ({"preprocessed_eeg_data": np.zeros((4, 17, 100))}, r"4 axes.*got shape \(4, 17, 100\)"),
    ({"ch_names": ["E0", "E1"]}, r"len\(ch_names\)=2.*got shape \(4, 2, 17, 100\)"),
    ({"times": np.arange(50) / 250.0}, r"len\(times\)=50.*got shape \(4, 2, 17, 100\)"),
    ({"preprocessed_eeg_data": np.zeros((3, 2, 17, 100))}, r"4 images.*got shape \(3, 2, 17"),
])
def test_things_eeg2_wrong_shapes(tmp_path, change, match):
    root = _write_things_eeg2(tmp_path)
    _resave(root / "Preprocessed_data_250Hz/sub-01/preprocessed_eeg_training.npy", **change)
    with pytest.raises(InputError, match=match) as err:
        read_things_eeg2(root)
    _one_line(err)


def test_things_eeg2_bad_inputs(tmp_path):
    root = _write_things_eeg2(tmp_path / "two", subjects=("sub-01", "sub-02"))
    with pytest.raises(InputError, match=r"sub-01, sub-02.*--subject") as err:
        read_things_eeg2(root)
    _one_line(err)
    with pytest.raises(InputError, match=r"subject sub-03.*sub-01, sub-02") as err:
        read_things_eeg2(root, subject=3)
    _one_line(err)
    (root / "image_set/test_images/00005_zebra/zebra_01b.jpg").unlink()
    with pytest.raises(InputError, match=r"1 of 6 missing, first .*zebra_01b.jpg.*image_dir="):
        read_things_eeg2(root, subject=2)
    assert read_things_eeg2(root, subject=2, check_stimuli=False).splits["test"]
    with pytest.raises(InputError, match=r"does not exist"):
        read_things_eeg2(tmp_path / "nowhere")


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.fif, which does not exist.*check the path"
                       ) as err:
        open_recording(tmp_path / "nowhere.fif")
    _one_line(err)


def test_unsupported_formats(tmp_path, realdata):
    (tmp_path / "notes.txt").write_text("1 2 3\n")
    with pytest.raises(InputError, match=r"\.fif, .*\.edf, .*\.vhdr, .*notes\.txt \(\.txt\)"
                       ) as err:
        open_recording(tmp_path / "notes.txt")
    _one_line(err)
    with pytest.raises(InputError, match=r"companion files. Fix: pass .*test_NO\.vhdr") as err:
        open_recording(realdata / "brainvision" / "test_NO.vmrk")
    _one_line(err)
    (tmp_path / "broken_raw.fif").write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match=r"a readable FIF recording.*broken_raw\.fif") as err:
        open_recording(tmp_path / "broken_raw.fif")
    _one_line(err)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=r"dataset_description\.json") as err:
        open_recording(tmp_path / "folder")
    _one_line(err)


@pytest.mark.skipif(importlib.util.find_spec("antio") is not None,
                    reason="with antio installed MNE reads ANT files itself")
def test_ant_neuro_cnt_needs_antio(tmp_path):
    (tmp_path / "eego.cnt").write_bytes(b"RIFF" + b"\0" * 2048)
    with pytest.raises(InputError, match=r"antio.*Fix: pip install antio") as err:
        open_recording(tmp_path / "eego.cnt")
    _one_line(err)


def test_bids_selection_errors(bids_root):
    with pytest.raises(InputError, match=r"got 2 recordings and no selection: "
                       r"sub-01/eeg/sub-01_task-view_run-1_eeg\.vhdr, .*run-2.*--run") as err:
        open_recording(bids_root)
    _one_line(err)
    with pytest.raises(InputError, match=r"matching subject=02 task=rest.*got none; the dataset "
                       r"has sub-01/eeg/.*run-1_eeg.vhdr") as err:
        open_recording(bids_root, subject="02", task="rest")
    _one_line(err)
    with pytest.raises(InputError, match=r"only with a BIDS root.*run=1") as err:
        open_recording(bids_root / "sub-01/eeg/sub-01_task-view_run-1_eeg.vhdr", run=1)
    _one_line(err)
    empty = bids_root.parent / "empty_bids"
    empty.mkdir(exist_ok=True)
    (empty / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    with pytest.raises(InputError, match=r"with MEG/EEG recordings.*got none") as err:
        open_recording(empty)
    _one_line(err)


def test_missing_stimulus_files(bids_root, things_images, tmp_path):
    with pytest.raises(InputError, match=r"2 of 2 missing, first .*images_meg/aardvark/"
                       r"aardvark_01b\.jpg.*Fix: point --stim-root") as err:
        open_recording(bids_root, run=2)
    _one_line(err)
    with pytest.raises(InputError, match=r"2 of 2 missing.*dog_01\.png") as err:
        open_recording(bids_root, run=1, stim_root=things_images)
    _one_line(err)
    with pytest.raises(InputError, match=r"existing folder") as err:
        open_recording(bids_root, run=2, stim_root=tmp_path / "no_such_folder")
    _one_line(err)
    # check_stimuli=False is what describe uses: the trials still carry the paths.
    rec = open_recording(bids_root, run=2, check_stimuli=False)
    assert rec.trials[0].stim_file == bids_root / "images_meg/aardvark/aardvark_01b.jpg"


def test_bad_mappings_and_options(realdata, tmp_path):
    eeglab = realdata / "eeglab/test_raw.set"
    with pytest.raises(InputError, match=r"keys flash; annotations rt, square; trigger values "
                       r"none") as err:
        open_recording(eeglab, mapping={"flash": "flash.png"})
    _one_line(err)
    with pytest.raises(InputError, match=r"split in .*'training' for 'square'") as err:
        open_recording(eeglab, mapping={"square": {"split": "training"}})
    _one_line(err)
    with pytest.raises(InputError, match=r"\['image'\] for 'square'") as err:
        open_recording(eeglab, mapping={"square": {"image": "a.png"}})
    _one_line(err)
    (tmp_path / "map.tsv").write_text("code\tstim_file\n1\ta.png\n")
    with pytest.raises(InputError, match=r"value or description column") as err:
        open_recording(eeglab, mapping=tmp_path / "map.tsv")
    _one_line(err)
    with pytest.raises(InputError, match=r"source in") as err:
        open_recording(eeglab, source="markers")
    _one_line(err)
    with pytest.raises(InputError, match=r"no channel of type stim") as err:
        open_recording(eeglab, source="stim_channel")
    _one_line(err)
    with pytest.raises(InputError, match=r"\['TRIG'\]; its stim channels are \['Status'\]"
                       ) as err:
        open_recording(realdata / "biosemi_stim_channel.bdf", stim_channel="TRIG")
    _one_line(err)


def test_preload(realdata):
    rec = open_recording(realdata / "eeglab/test_raw.set", preload=True)
    assert rec.raw.preload and rec.path == realdata / "eeglab/test_raw.set"


def test_a_mapping_that_matches_no_trigger_value(realdata):
    with pytest.raises(InputError, match=r"keys 9; annotations none; trigger values 1, 2, 4"
                       ) as err:
        open_recording(realdata / "biosemi_stim_channel.bdf", mapping={"9": "nine.png"})
    _one_line(err)


@pytest.mark.timeout(120)  # the shared fixture simulates the session first (~5 s)
def test_simulated_session_reads_back_with_trials_on_the_pngs(small_meg_session):
    """The simulator's BIDS output through the default EventColumns, by root and by file."""
    root, config, _ = small_meg_session
    rec = open_recording(root, subject="01")
    assert rec.sfreq == 1200.0 and rec.bids_path is not None
    splits = {s: [t for t in rec.trials if t.split == s] for s in SPLITS}
    n_train = config.concepts * config.exemplars
    n_test = config.test_concepts * config.test_exemplars * config.test_repeats
    assert (len(splits["train"]), len(splits["test"]), len(splits["unknown"])) == (n_train, n_test, 0)
    for trial in rec.trials:
        assert trial.stim_file.suffix == ".png" and trial.stim_file.is_file()
        assert trial.stim_file.is_relative_to(root / "stimuli")
        if trial.split != "catch":
            assert trial.stim_file.parent.name == trial.concept
        # onsets agree with the samples of the data actually read
        assert abs(trial.onset * rec.sfreq - trial.sample) < 1
    assert {t.concept for t in splits["train"]}.isdisjoint({t.concept for t in splits["test"]})
    by_file = open_recording(rec.path)  # a file inside the dataset is recognised as BIDS
    assert by_file.trials == rec.trials
