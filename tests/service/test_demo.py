"""`glimpse demo` on a small simulated session (the default size is `make demo`'s job)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from glimpse.service.cli import main
from glimpse.service.demo import run_demo
from glimpse.service.serve import run_browser_demo
from glimpse.streaming.errors import InputError


@pytest.mark.timeout(120)  # simulating the shared session (~5 s) plus preprocessing it
def test_demo_summarises_the_session_once(small_meg_session, tmp_path):
    root, config, _ = small_meg_session
    out = tmp_path / "demo"
    shutil.copytree(root, out)  # the demo writes its report: the shared session stays as it is
    text = run_demo(out, config=config, model=False)
    # 8 concepts x 2 exemplars; 4 test concepts x 2 images x 6 repeats
    assert "16 train (8 concepts)" in text
    cached = json.loads((out / "report" / "subjects.json").read_text())
    assert any("16 train (8 concepts)" in line for line in cached["lines"])
    cached["lines"] = ["  sub-01: read from the cache"]
    (out / "report" / "subjects.json").write_text(json.dumps(cached))
    assert "read from the cache" in run_demo(out, config=config, model=False)  # not read again
    assert "48 test (4 unseen concepts)" in text
    assert "274 channels x" in text and "at 120 Hz" in text


@pytest.mark.timeout(120)
def test_a_session_of_another_simulator_version_is_simulated_again(small_meg_session, tmp_path, caplog):
    """The same parameters give other data with another simulator version: redone, and retrained."""
    root, config, _ = small_meg_session
    out = tmp_path / "demo"
    shutil.copytree(root, out)
    record = json.loads((out / "simulation.json").read_text())
    record["simulator_version"] += 1  # as if another simulator had written it
    (out / "simulation.json").write_text(json.dumps(record))
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "subjects.json").write_text(json.dumps({"config": config.to_dict(), "lines": ["stale"]}))
    with caplog.at_level("WARNING", logger="glimpse.service.demo"):
        text = run_demo(out, config=config, model=False)
    assert f"made by simulator version {record['simulator_version']}, this is" in caplog.text
    assert "stale" not in text
    from glimpse.streaming.simulate import simulated_with

    assert simulated_with(out, config)


@pytest.mark.slow
@pytest.mark.timeout(400)  # tiny training, evaluation (curve, ceiling), gallery, 8 s served; ~70 s alone
def test_demo_trains_evaluates_builds_the_gallery_once_and_serves_it(small_meg_session, tmp_path,
                                                                      one_thread):
    from glimpse.models.checkpoint import load_checkpoint
    from glimpse.models.gallery import Gallery
    from glimpse.models.train import TrainConfig

    root, config, _ = small_meg_session
    out = tmp_path / "demo"
    shutil.copytree(root, out)  # the shared session stays as other tests expect it
    tiny = TrainConfig(epochs=1, patience=1, hidden=16, spatial_channels=8, n_blocks=1,
                       presence_draws=1, cache_dir=str(tmp_path / "cache"))
    lines: list[str] = []
    final = run_browser_demo(out, port=0, open_browser=False, duration=8.0, config=config,
                             train_config=tiny, echo=lines.append)
    text = "\n".join(lines)
    assert "trained brain_encoder" in text and "top-5 single-trial" in text
    # The live part: served, sub-01 replayed over LSL and decoded, the session recorded.
    assert "the viewer is at http://127.0.0.1:" in text and "windows decoded" in lines[-1]
    assert final["n_decoded"] > 20 and final["worker"]["restarts"] == 0
    (session,) = (out / "sessions").iterdir()
    assert (session / "frames.jsonl").stat().st_size > 0 and (session / "summary.json").is_file()
    assert load_checkpoint(out / "model").model_name == "brain_encoder"
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["test"]["n_images"] == 8 and metrics["test"]["disjoint"]
    gallery = Gallery.load(out / "gallery" / "test.safetensors")
    # Ids as events.tsv names the stimuli, so live markers match gallery entries.
    assert len(gallery) == 8 and all(i.startswith("stimuli/test/") for i in gallery.ids)
    again = run_demo(out, config=config, train_config=tiny)
    assert "(reused)" in again  # nothing retrained on the second run


@pytest.mark.parametrize("modality", ["meg", "eeg"])
def test_demo_trains_each_modality_with_its_budget(modality, tmp_path, monkeypatch):
    """EEG's base needs more epochs and patience than MEG's to transfer to new people."""
    from glimpse.service import demo
    from glimpse.streaming.simulate import SimulationConfig

    used = []
    monkeypatch.setattr(demo, "ensure_session", lambda out, config, fresh=False: out)
    monkeypatch.setattr(demo, "_subject_lines", lambda out, config, fresh: [])
    monkeypatch.setattr(demo, "_model_lines", lambda out, config: used.append(config) or [])
    run_demo(tmp_path, config=SimulationConfig(modality=modality))
    assert (used[0].epochs, used[0].patience) == {"meg": (25, 10), "eeg": (60, 20)}[modality]


def test_demo_refuses_a_folder_with_another_session(small_meg_session):
    root, config, _ = small_meg_session
    other = dataclasses.replace(config, seed=config.seed + 1)
    with pytest.raises(InputError, match="--fresh"):
        run_demo(root, config=other)


def test_demo_refuses_a_non_empty_folder_that_is_no_session(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    for fresh in ([], ["--fresh"]):  # --fresh replaces a demo session, never other files
        assert main(["demo", "--out", str(tmp_path), *fresh]) == 2
        assert "pass --out with a new folder" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"
