"""``glimpse demo``: the main job on the embedded default, with no data and no weights.

Today the offline half: simulate the default MEG session (once), read it back the
way a user's BIDS dataset is read, run the shared preprocessing over every subject
and summarise what a decoder will be trained on. Later issues extend it with
training, evaluation and the live viewer.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from streaming.errors import InputError
from streaming.preprocess import PreprocessConfig, fit_scaler, preprocess_raw
from streaming.recordings import open_recording
from streaming.simulate import SimulationConfig, simulate_session

logger = logging.getLogger("glimpse.service.demo")


def ensure_session(out: Path, config: SimulationConfig, *, fresh: bool = False) -> Path:
    """Simulate ``config`` into ``out`` unless ``out`` already holds exactly that session.

    ``fresh`` replaces a simulated session, never a folder of something else.
    """
    manifest = out / "simulation.json"
    if not manifest.is_file():
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out} to be empty or to hold a glimpse demo session",
                             "a folder with other files", "pass --out with a new folder")
        simulate_session(config, out, progress=True)
        return out
    if not fresh:
        saved = SimulationConfig.from_dict(json.loads(manifest.read_text())["config"])
        if saved == config:
            logger.info("reusing the simulated session in %s (pass --fresh to redo it)", out)
            return out
        raise InputError(f"{out} to hold the demo's default session",
                         "a session simulated with other parameters",
                         "pass --fresh to replace it, or --out to use another folder")
    simulate_session(config, out, overwrite=True, progress=True)
    return out


def run_demo(out: Path, *, fresh: bool = False, config: SimulationConfig | None = None) -> str:
    """Run the demo and return its summary as text."""
    config = config or SimulationConfig()
    start = time.perf_counter()
    ensure_session(out, config, fresh=fresh)
    lines = [f"glimpse demo: simulated {config.modality.upper()} session in {out}/"]
    preprocess = PreprocessConfig(picks=("mag",) if config.modality == "meg" else ("eeg",))
    for subject in range(1, config.subjects + 1):
        recording = open_recording(out, subject=f"{subject:02d}")
        splits = Counter(t.split for t in recording.trials)
        concepts = {s: {t.concept for t in recording.trials if t.split == s} for s in ("train", "test")}
        fitted = fit_scaler(recording.raw, preprocess)
        data = preprocess_raw(recording.raw, fitted)
        lines += [
            f"  sub-{subject:02d}: {len(recording.ch_names)} channels at {recording.sfreq:g} Hz, "
            f"{recording.duration / 60:.1f} min",
            f"    trials: {splits['train']} train ({len(concepts['train'])} concepts), "
            f"{splits['test']} test ({len(concepts['test'])} unseen concepts), {splits['catch']} catch",
            f"    preprocessed: {data.shape[0]} channels x {data.shape[1]} samples at "
            f"{fitted.sfreq:g} Hz, float32, |x| <= {fitted.clamp:g}",
        ]
        if concepts["train"] & concepts["test"]:
            raise RuntimeError("simulated test concepts leaked into training")  # a simulator bug
    lines += [
        f"  evoked figure: {out / 'figures' / 'evoked.png'}",
        f"  done in {time.perf_counter() - start:.1f} s. Next: `glimpse info {out} --subject 01`.",
    ]
    return "\n".join(lines)
