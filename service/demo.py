"""``glimpse demo``: the main job on the embedded default, with no data and no weights.

Simulate the default MEG session (once), read it back the way a user's BIDS
dataset is read, run the shared preprocessing over every subject, then train the
default brain encoder on it, evaluate it on the unseen test concepts and build the
gallery of test images that live decoding retrieves from. Each step's output is
reused on the next run (``--fresh`` redoes everything).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import PreprocessConfig, fit_scaler, preprocess_raw
from glimpse.streaming.recordings import open_recording
from glimpse.streaming.simulate import SIMULATOR_VERSION, SimulationConfig, simulate_session, simulated_with

logger = logging.getLogger("glimpse.service.demo")

MODEL_DIR, REPORT_DIR, GALLERY_DIR = "model", "report", "gallery"
#: The demo's training budget per modality (``TrainConfig`` fields): ``glimpse train``
#: lets early stopping end training (10 epochs of patience, at most 100), which takes
#: longer; the demo keeps its few minutes. EEG gets more: on the default EEG world,
#: validation top-5 among the few validation images is flat from epoch 12 while test
#: top-5 and the transfer to a new person still grow, so 10 epochs of patience stopped
#: the base at epoch 23 with 17.4 % top-5; 60 epochs with 20 of patience gave 27.3 and
#: 33.9 % in two runs (docs/guide/calibration.rst, "How long it takes").
DEMO_BUDGET = {"meg": {"epochs": 25}, "eeg": {"epochs": 60, "patience": 20}}


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


def run_demo(out: Path, *, fresh: bool = False, config: SimulationConfig | None = None,
             train_config: Any = None, model: bool = True) -> str:
    """Run the demo and return its summary as text.

    ``model``: also train, evaluate and build the gallery (``train_config``: a
    ``glimpse.models.train.TrainConfig``, default its defaults with
    :data:`DEMO_BUDGET`). Serving it live in the
    browser is :func:`glimpse.service.serve.run_browser_demo`'s.
    """
    config = config or SimulationConfig()
    start = time.perf_counter()
    if not fresh and (out / "simulation.json").is_file() and not simulated_with(out, config):
        saved = json.loads((out / "simulation.json").read_text(encoding="utf-8"))
        if saved.get("simulator_version", 1) != SIMULATOR_VERSION:
            # The same parameters give other data with another simulator (and so another model).
            logger.warning("%s was made by simulator version %s, this is version %d: simulating and "
                           "training again", out, saved.get("simulator_version", 1), SIMULATOR_VERSION)
            fresh = True
    if fresh and (out / "simulation.json").is_file():
        for sub in (MODEL_DIR, REPORT_DIR, GALLERY_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
    ensure_session(out, config, fresh=fresh)
    lines = [f"glimpse demo: simulated {config.modality.upper()} session in {out}/"]
    lines += _subject_lines(out, config, fresh=fresh)
    lines.append(f"  evoked figure: {out / 'figures' / 'evoked.png'}")
    if model:
        lines += _model_lines(out, train_config or _demo_train_config(config.modality))
    lines.append(f"  done in {time.perf_counter() - start:.1f} s. Next: `glimpse info {out} "
                 f"--subject 01`" + (f", `glimpse evaluate {out / MODEL_DIR} {out}`." if model else "."))
    return "\n".join(lines)


def _subject_lines(out: Path, config: SimulationConfig, *, fresh: bool) -> list[str]:
    """Each subject read back and preprocessed as training reads it; summary lines.

    Computed once per simulated session (seconds per subject) and kept in
    OUT/report/subjects.json, so that a later demo serves within seconds.
    """
    cache = out / REPORT_DIR / "subjects.json"
    if cache.is_file() and not fresh:
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("config") == json.loads(json.dumps(config.to_dict())):
            return saved["lines"]
    lines: list[str] = []
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
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"config": config.to_dict(), "lines": lines}, indent=1),
                     encoding="utf-8")
    return lines


def _demo_train_config(modality: str) -> Any:
    from glimpse.models.train import TrainConfig

    return TrainConfig(**DEMO_BUDGET[modality])


def _model_lines(out: Path, config: Any) -> list[str]:
    """Train (once), evaluate (once) and build the test gallery (once); summary lines."""
    from glimpse.models.data import load_session
    from glimpse.models.embedders import load_embedder
    from glimpse.models.evaluate import evaluate
    from glimpse.models.export import ONNX_NAME, export_checkpoint_onnx
    from glimpse.models.gallery import Gallery, build_gallery, gallery_files
    from glimpse.models.report import write_report
    from glimpse.models.train import train

    ckpt_dir, report_dir = out / MODEL_DIR, out / REPORT_DIR
    lines = []
    data = None
    if not (ckpt_dir / "config.json").is_file():
        data = load_session(out)
        t = time.perf_counter()
        result = train(data, config, ckpt_dir)
        lines.append(f"  trained {config.model} in {time.perf_counter() - t:.0f} s -> {ckpt_dir}/ "
                     f"(validation top-5 {result.metrics.get('val_top5', float('nan')):.3f} "
                     f"on held-out training concepts)")
    else:
        logger.info("reusing the trained model in %s (pass --fresh to retrain)", ckpt_dir)
        lines.append(f"  model: {ckpt_dir}/ (reused)")
    onnx_file = ckpt_dir / ONNX_NAME
    if config.model != "ridge" and not onnx_file.is_file():
        export_checkpoint_onnx(ckpt_dir, onnx_file)  # what live decoding runs on a CPU
    metrics_file = report_dir / "metrics.json"
    if not metrics_file.is_file():
        metrics = evaluate(ckpt_dir, data if data is not None else out, cache_dir=config.cache_dir,
                           progress=True)
        write_report(metrics, report_dir)
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    single, avg = metrics["single_trial"], metrics["averaged"]
    lines.append(
        f"  unseen test concepts, {metrics['test']['n_images']} images: top-5 single-trial "
        f"{single['top5']:.3f}, repeat-averaged {avg['top5']:.3f} (chance {single['chance_top5']:.3f})"
        f" -> {report_dir}/")
    gallery_path = out / GALLERY_DIR / "test.safetensors"
    if not gallery_files(gallery_path)[0].is_file():
        images = sorted((out / "stimuli" / "test").rglob("*.png"))
        # Ids relative to the dataset root, as events.tsv and the live markers name them.
        build_gallery(images, load_embedder(config.embedder), root=out,
                      cache_dir=config.cache_dir).save(gallery_path)
    lines.append(f"  gallery of the {len(Gallery.load(gallery_path))} test images: {gallery_path}")
    return lines
