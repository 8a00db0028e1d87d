"""The CLI as a user meets it: --help everywhere, info on real files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glimpse.service.cli import main

COMMANDS = ["info", "simulate", "demo", "gallery", "gallery build", "train", "evaluate", "pretrain",
            "export", "replay", "decode"]


@pytest.mark.parametrize("command", [[], *[c.split() for c in COMMANDS]])
def test_help_everywhere(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out
    if command:
        # the docstring's first line is the command's summary
        assert len(out.splitlines()) > 5


def test_info_json_on_real_fif(realdata, capsys):
    assert main(["info", str(realdata / "ctf275_short_discontinuous_raw.fif"), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["n_chans"] == 356
    assert described["sfreq"] == pytest.approx(1200.0)


def test_info_text_on_real_edf(realdata, capsys):
    assert main(["info", str(realdata / "eeg_reduced.edf")]) == 0
    out = capsys.readouterr().out
    assert "512" in out and "139" in out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("glimpse: error: expected ")
    assert "Fix:" in err[0]
    return err[0]


def test_info_missing_file_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.fif")]) == 2
    assert "nope.fif" in _one_line_error(capsys)


def test_info_unsupported_format_is_one_line(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("not a recording")
    assert main(["info", str(path)]) == 2
    _one_line_error(capsys)


def test_simulate_zero_concepts_is_one_line(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "s"), "--concepts", "0"]) == 2
    assert "concepts" in _one_line_error(capsys)


def test_simulate_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["simulate", "--out", str(tmp_path), "--subjects", "1", "--concepts", "8", "--exemplars", "2"]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_verbose_and_quiet_conflict(capsys):
    assert main(["--verbose", "--quiet", "info", "x"]) == 2
    _one_line_error(capsys)


def test_unknown_option_is_a_usage_error(capsys):
    assert main(["simulate", "--no-such-option"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_simulate_then_info_on_the_bids_output(tmp_path, capsys):
    out = tmp_path / "sim"
    args = ["simulate", "--out", str(out), "--subjects", "1", "--concepts", "8", "--exemplars", "2",
            "--image-size", "64", "--seed", "3"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary  # the summary is printed as JSON
    assert main(["info", str(out), "--subject", "01", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["sfreq"] == pytest.approx(1200.0)
    assert described["n_chans"] >= 272


@pytest.mark.timeout(120)  # the shared fixture simulates the session first (~5 s)
def test_gallery_build_then_load(small_meg_session, tmp_path, capsys):
    from glimpse.models.gallery import Gallery

    root, _, _ = small_meg_session
    out = tmp_path / "gallery.safetensors"
    args = ["gallery", "build", str(root / "stimuli"), "--root", str(root), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    gallery = Gallery.load(out)
    assert gallery.embedder == "handcrafted" and gallery.dim == 256
    assert all(i.startswith("stimuli/") for i in gallery.ids)  # ids match the events' image_path
    assert str(len(gallery)) in capsys.readouterr().out


def test_gallery_build_unknown_embedder_is_one_line(tmp_path, capsys):
    assert main(["gallery", "build", str(tmp_path), "--out", str(tmp_path / "g"), "--embedder", "dinov9"]) == 2
    assert "dinov9" in _one_line_error(capsys)


@pytest.mark.slow
@pytest.mark.timeout(600)  # pretrain + train + export + evaluate on a small session, 2 cores
def test_pretrain_train_export_evaluate(small_meg_session, tmp_path, capsys):
    root, _, _ = small_meg_session
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["pretrain", str(root), "--out", str(tmp_path / "pre"), "--epochs", "1"]) == 0
    assert (tmp_path / "pre" / "trunk.safetensors").is_file()
    ckpt = tmp_path / "ckpt"
    assert main(["train", str(root), "--out", str(ckpt), "--epochs", "2", "--init", str(tmp_path / "pre"),
                 *cache]) == 0
    assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "model.onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert max(report["max_abs_diff"].values()) <= 1e-4
    assert main(["evaluate", str(ckpt), str(root), "--json", str(tmp_path / "metrics.json"), *cache]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["disjoint"] is True
    assert (ckpt / "eval" / "curve.png").is_file()


def test_export_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    _one_line_error(capsys)


# Cut at two thirds plus one byte: mid-record for EDF/BDF, mid-sample for BrainVision
# and EEGLAB; a FIF cut there fails at open, one cut near its end only at the first read
# of the last buffer (the "buffer size must be a multiple of element size" of old).
TRUNCATED = [
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", None, 2 / 3),
    ("neuromag306_sample_audvis_trunc_raw_sss.fif", None, 0.95),
    ("ctf275_short_discontinuous_raw.fif", None, 2 / 3),
    ("eeg_reduced.edf", None, 2 / 3),
    ("biosemi_stim_channel.bdf", None, 2 / 3),
    ("brainvision/test_NO.vhdr", "brainvision/test_NO.eeg", 2 / 3),
    ("eeglab/test_raw.set", "eeglab/test_raw.fdt", 2 / 3),
]


@pytest.mark.parametrize(("recording", "data_file", "keep"), TRUNCATED)
def test_info_on_a_truncated_file_is_one_line(realdata, tmp_path, capsys, recording, data_file,
                                              keep):
    import shutil

    folder = (realdata / recording).parent
    (tmp_path / recording).parent.mkdir(parents=True, exist_ok=True)
    for companion in folder.glob(Path(recording).stem + ".*"):
        shutil.copyfile(companion, (tmp_path / recording).parent / companion.name)
    cut = tmp_path / (data_file or recording)
    with open(cut, "r+b") as f:
        f.truncate(int(cut.stat().st_size * keep) + 1)
    assert main(["info", str(tmp_path / recording)]) == 2
    line = _one_line_error(capsys)
    assert str(tmp_path / recording) in line
    assert "truncated or damaged: copy it again" in line
