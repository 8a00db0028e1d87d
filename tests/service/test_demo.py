"""`glimpse demo` on a small simulated session (the default size is `make demo`'s job)."""

from __future__ import annotations

import dataclasses

import pytest

from service.cli import main
from service.demo import run_demo
from streaming.errors import InputError


@pytest.mark.timeout(120)  # simulating the shared session (~5 s) plus preprocessing it
def test_demo_summarises_the_session(small_meg_session):
    root, config, _ = small_meg_session
    text = run_demo(root, config=config)
    # 8 concepts x 2 exemplars; 4 test concepts x 2 images x 6 repeats
    assert "16 train (8 concepts)" in text
    assert "48 test (4 unseen concepts)" in text
    assert "274 channels x" in text and "at 120 Hz" in text


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
