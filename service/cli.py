"""The ``glimpse`` command line.

Every command has ``--help``. Bad input ends in one line on stderr
(``glimpse: error: expected ...; got ... Fix: ...``) and exit status 2; the full
traceback is shown only with ``--verbose``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from glimpse.streaming.errors import InputError
from glimpse.streaming.simulate import SimulationConfig

logger = logging.getLogger("glimpse.service.cli")

app = typer.Typer(
    name="glimpse",
    help=(
        "Decode what a person is seeing from MEG or EEG, live.\n\n"
        "Start with `glimpse demo`. Inspect a recording with `glimpse info FILE`; "
        "make a THINGS-like session with `glimpse simulate`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}


def _setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("glimpse: %(message)s"))
    root = logging.getLogger("glimpse")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # MNE chatters at INFO; show it only when asked for details. Set through the
    # environment so that `--help` does not pay for importing MNE.
    os.environ["MNE_LOGGING_LEVEL"] = "INFO" if level <= logging.DEBUG else "ERROR"


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages and tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show warnings and errors only.")] = False,
) -> None:
    if verbose and quiet:
        raise InputError("at most one of --verbose and --quiet", "both", "drop one of them")
    _state["verbose"] = verbose
    _setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


# --------------------------------------------------------------------------- info


@app.command()
def info(
    recording: Annotated[Path, typer.Argument(help="A recording file (FIF, CTF .ds, EDF, BDF, BrainVision .vhdr, EEGLAB .set, LabRecorder .xdf), a file inside a BIDS dataset, a BIDS root, or a session folder recorded by `glimpse decode`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")] = False,
    subject: Annotated[Optional[str], typer.Option(help="BIDS root only: the subject to open (e.g. 01).")] = None,
    session: Annotated[Optional[str], typer.Option(help="BIDS root only: the session.")] = None,
    task: Annotated[Optional[str], typer.Option(help="BIDS root only: the task.")] = None,
    run: Annotated[Optional[str], typer.Option(help="BIDS root only: the run.")] = None,
    stim_root: Annotated[Optional[Path], typer.Option(help="Folder that relative stimulus paths start from (default: the BIDS root, the mapping file's folder, or the recording's folder). THINGS-MEG: the THINGS image folder (<concept>/<image>.jpg).")] = None,
    mapping: Annotated[Optional[Path], typer.Option(help="JSON or TSV file mapping annotation descriptions or trigger values to stimulus files (columns: key, stim_file, concept, split). THINGS-MEG without sourcedata/: a TSV/CSV of things_image_nr -> image_path.")] = None,
    stim_channel: Annotated[Optional[str], typer.Option(help="Trigger channel to read events from (default: auto-detect).")] = None,
    stream: Annotated[Optional[str], typer.Option(help="XDF only: the name of the signal stream (default: the first numeric one).")] = None,
) -> None:
    """Describe a recording: system, channel types and counts, sfreq, duration, events.

    Examples:

      glimpse info sub-01_task-things_meg.fif

      glimpse info ./bids --subject 01 --json

      glimpse info ds004212 --subject BIGMEG1 --session 01 --run 01 --stim-root THINGS/object_images
    """
    from .info import format_description
    from glimpse.streaming.recordings import describe

    options = dict(subject=subject, session=session, task=task, run=run, stim_root=stim_root,
                   mapping=mapping, stim_channel=stim_channel, stream=stream)
    description = describe(recording, **{k: v for k, v in options.items() if v is not None})
    if as_json:
        typer.echo(json.dumps(description, indent=2))
    else:
        typer.echo(format_description(description))


# --------------------------------------------------------------------------- simulate


class Modality(str, Enum):
    meg = "meg"
    eeg = "eeg"


_SIM = SimulationConfig()  # the defaults shown in --help are the config's own


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: a BIDS dataset with stimuli/, simulation.json and figures/.")] = Path("glimpse-sim"),
    modality: Annotated[Modality, typer.Option(help="meg: CTF-275 axial gradiometers, 1200 Hz; eeg: 64-channel 10-20 montage, 1000 Hz.")] = Modality(_SIM.modality),
    subjects: Annotated[int, typer.Option(help="Number of subjects (one forward model, per-subject source orientations and weights).")] = _SIM.subjects,
    concepts: Annotated[int, typer.Option(help="Training concepts (shape family x variant).")] = _SIM.concepts,
    exemplars: Annotated[int, typer.Option(help="Training images per concept, each shown once (trial_type exp).")] = _SIM.exemplars,
    test_concepts: Annotated[int, typer.Option(help="Test concepts, never used in training.")] = _SIM.test_concepts,
    test_exemplars: Annotated[int, typer.Option(help="Test images per test concept.")] = _SIM.test_exemplars,
    test_repeats: Annotated[int, typer.Option(help="Repeats of each test image (THINGS-MEG uses 12).")] = _SIM.test_repeats,
    catch_fraction: Annotated[float, typer.Option(help="Share of catch trials (a fixed target image); 0 for none.")] = _SIM.catch_fraction,
    snr_db: Annotated[float, typer.Option(help="Single-trial SNR in dB: evoked vs. background+alpha+sensor noise power at posterior sensors, 0-600 ms.")] = _SIM.snr_db,
    sfreq: Annotated[Optional[float], typer.Option(help="Sampling rate in Hz.  [default: 1200 for MEG, 1000 for EEG]")] = None,
    line_freq: Annotated[float, typer.Option(help="Mains frequency of the simulated line noise (50 or 60 Hz).")] = _SIM.line_freq,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes identical files.")] = _SIM.seed,
    image_size: Annotated[int, typer.Option(help="Stimulus images are IMAGE_SIZE x IMAGE_SIZE pixels.")] = _SIM.image_size,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists and is not empty.")] = False,
    live: Annotated[bool, typer.Option("--live", help="Write no files: be a simulated person watching the screen. Publishes LSL stream NAME (the world's sensors in SI units + a SAMPLE_INDEX channel, in real time, with 1/f background, alpha, line noise and EEG blinks) and adds the evoked response of every image announced on NAME-markers (JSON {\"stim_file\", \"concept\", \"trial_type\"}, as `glimpse replay` and the /present page send). Runs until Ctrl-C or --duration; prints a one-line summary.", rich_help_panel="Live person (--live)")] = False,
    name: Annotated[str, typer.Option(help="LSL stream name; the person watches NAME-markers.", rich_help_panel="Live person (--live)")] = "glimpse-sim",
    subject_seed: Annotated[int, typer.Option(help="Who the person is: seed N is the world's subject 1000+N (own dipole orientations, gains, latencies), never one of a session's subjects 1-99. Same seed, same person.", rich_help_panel="Live person (--live)")] = 0,
    world: Annotated[Optional[Path], typer.Option(help="The --out folder of an earlier `glimpse simulate`: its simulation.json sets the world (stimuli, sensors, sfreq, SNR), so the person sees the images and lives in the world a model trained on that session knows. Without it, the options above make the world.", rich_help_panel="Live person (--live)")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.  [default: until Ctrl-C]", rich_help_panel="Live person (--live)")] = None,
    chunk_ms: Annotated[float, typer.Option(help="Push a chunk every CHUNK_MS milliseconds of wall time (timestamps stay on the sample grid).", rich_help_panel="Live person (--live)")] = 20.0,
    ctx: typer.Context = None,
) -> None:
    """Write a simulated THINGS-like MEG or EEG session (BIDS + PNG stimuli), or with
    --live be a simulated person who watches the screen.

    Sensor signals come from a real MNE forward model (sphere head, volume source
    space, real sensor positions) driven by image-dependent occipital and
    occipito-temporal responses (~100 ms low-level, ~170-280 ms shape and concept,
    offset at ~600 ms), plus 1/f background, alpha bursts, sensor and line noise,
    drift, and blinks for EEG. The default run takes ~25 s and ~770 MB (MEG).

    Example (the size the tests use):

      glimpse simulate --out sim --subjects 1 --concepts 8 --exemplars 2

    A live person in that session's world, for the demo or a calibration:

      glimpse simulate --live --world sim --name meg --subject-seed 3
    """
    world_options = ("modality", "subjects", "concepts", "exemplars", "test_concepts", "test_exemplars",
                     "test_repeats", "catch_fraction", "snr_db", "sfreq", "line_freq", "seed", "image_size")
    if not live:
        stray = _typed(ctx, "name", "subject_seed", "world", "duration", "chunk_ms")
        if stray:
            raise InputError("--name, --subject-seed, --world, --duration and --chunk-ms only with --live",
                             " ".join(stray), "add --live, or drop them")
    else:
        stray = _typed(ctx, "out", "subjects", "overwrite")
        if stray:
            raise InputError("no file options with --live (it writes no files)", " ".join(stray),
                             "drop them; --world names a session to take the world from")
        if world is not None and (stray := [f for f in _typed(ctx, *world_options) if f != "--modality"]):
            raise InputError(f"the world's options from {world / 'simulation.json'} alone", " ".join(stray),
                             "drop them, or drop --world to make the world from the options")
    from glimpse.streaming.simulate import simulate_session

    config = SimulationConfig(
        modality=modality.value, subjects=subjects, concepts=concepts, exemplars=exemplars,
        test_concepts=test_concepts, test_exemplars=test_exemplars, test_repeats=test_repeats,
        catch_fraction=catch_fraction, snr_db=snr_db, sfreq=sfreq, line_freq=line_freq, seed=seed,
        image_size=image_size,
    )
    if live:
        from glimpse.streaming.simulate.live import format_live_summary, run_live_person

        stats = run_live_person(
            name=name, subject_seed=subject_seed, config=None if world is not None else config, world=world,
            modality=modality.value if world is None or _typed(ctx, "modality") else None,
            duration=duration, chunk_ms=chunk_ms,
        )
        typer.echo(format_live_summary(stats))
        return
    result = simulate_session(config, out, overwrite=overwrite, progress=True)
    typer.echo(json.dumps(result.summary(), indent=2))


def _typed(ctx: typer.Context | None, *names: str) -> list[str]:
    """The options among ``names`` that the user gave (not left at their defaults), as flags."""
    if ctx is None:
        return []
    return ["--" + n.replace("_", "-") for n in names
            if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") in ("COMMANDLINE", "ENVIRONMENT")]


# --------------------------------------------------------------------------- gallery

gallery_app = typer.Typer(help="Image galleries: embeddings of candidate images for retrieval.",
                          no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")

EMBEDDER_HELP = ("Image embedder: 'handcrafted' (no weights, 256-d), 'handcrafted:dim=N', or "
                 "'open_clip:ARCH:PATH' with local OpenCLIP weights (e.g. open_clip:ViT-H-14:/models/vit-h-14.safetensors).")


def _cache_dir(cache_dir: Optional[Path]) -> Optional[Path]:
    """Embedding cache: --cache-dir, else $GLIMPSE_CACHE_DIR, else ~/.cache/glimpse/embeddings."""
    if cache_dir is not None:
        return cache_dir
    return Path(os.environ.get("GLIMPSE_CACHE_DIR", Path.home() / ".cache" / "glimpse" / "embeddings"))


@gallery_app.command("build")
def gallery_build(
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively: png, jpg, jpeg, webp, bmp).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Gallery file to write (FILE.safetensors + FILE.json sidecar).")],
    embedder: Annotated[str, typer.Option(help=EMBEDDER_HELP)] = "handcrafted",
    root: Annotated[Optional[Path], typer.Option(help="Folder image ids are relative to (default: IMAGES). Use the dataset root when trials name stimuli from there.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Embedding cache, keyed by file content.  [default: $GLIMPSE_CACHE_DIR or ~/.cache/glimpse/embeddings]")] = None,
    device: Annotated[str, typer.Option(help="Torch device for neural embedders (cpu, cuda, cuda:1).")] = "cpu",
    allow_random_init: Annotated[bool, typer.Option(help="Allow an OpenCLIP model without weights (meaningless embeddings; for smoke tests only).")] = False,
) -> None:
    """Embed a folder of images into a gallery for retrieval.

    Example:

      glimpse gallery build sim/stimuli --root sim --out sim-gallery.safetensors
    """
    from glimpse.models.embedders import load_embedder
    from glimpse.models.gallery import build_gallery, gallery_files

    model = load_embedder(embedder, device=device, allow_random_init=allow_random_init)
    gallery = build_gallery(images, model, root=root, cache_dir=_cache_dir(cache_dir), progress=True)
    tensors, sidecar = gallery_files(gallery.save(out))
    typer.echo(f"{gallery.summary()}\nwrote {tensors} and {sidecar.name}")


# --------------------------------------------------------------------------- train / evaluate

def _load_data(data: Path, subjects: Optional[list[str]], stim_root: Optional[Path], preprocess=None,
               mapping: Optional[Path] = None):
    from glimpse.models.data import load_session

    return load_session(data, subjects=subjects or None, stim_root=stim_root, preprocess=preprocess,
                        mapping=mapping, progress=True)


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="A BIDS dataset (e.g. from `glimpse simulate`), one recording, or a THINGS-EEG2 folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write (config.json + model.safetensors + figures/).")],
    embedder: Annotated[str, typer.Option(help=EMBEDDER_HELP)] = "handcrafted",
    model: Annotated[str, typer.Option(help="brain_encoder (Benchetrit et al. 2023), ridge, shallow_fbcsp or eegnet (braindecode peers).")] = "brain_encoder",
    loss: Annotated[str, typer.Option(help="clip (brain-to-image, image-side normalisation), clip_symmetric (InfoNCE, learned temperature), mse, or mix.")] = "mix",
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (early stopping on held-out concepts).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Windows per batch.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    window: Annotated[float, typer.Option(help="Window length in seconds (the live window).")] = 0.25,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    init: Annotated[Optional[Path], typer.Option(help="Start the brain encoder's trunk from `glimpse pretrain` output or another checkpoint.")] = None,
    subject: Annotated[Optional[list[str]], typer.Option(help="BIDS subjects to use (repeat the option); default: all.")] = None,
    stim_root: Annotated[Optional[Path], typer.Option(help="Folder that relative stimulus paths start from. THINGS-MEG: the THINGS image folder (<concept>/<image>.jpg).")] = None,
    mapping: Annotated[Optional[Path], typer.Option(help="THINGS-MEG without sourcedata/: a TSV/CSV of things_image_nr -> image_path (see `glimpse info --help`).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Image-embedding cache.  [default: $GLIMPSE_CACHE_DIR or ~/.cache/glimpse/embeddings]")] = None,
) -> None:
    """Train a decoder from brain windows to image embeddings and write a checkpoint.

    One model across subjects (subject layers), trained on live-length windows at
    random positions around each image onset plus windows with no fresh stimulus
    (for the calibrated confidence). Validation holds out whole concepts. Runs
    under `torchrun --nproc_per_node N` too (DistributedDataParallel).

    Example:

      glimpse train glimpse-demo --out ckpt
    """
    from glimpse.models.train import TrainConfig, train as run_training

    given = dict(model=model, embedder=embedder, loss=loss, epochs=epochs, batch_size=batch_size, lr=lr,
                 window_s=window, seed=seed, init=str(init) if init else None, device=device,
                 cache_dir=str(_cache_dir(cache_dir)))
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    session = _load_data(data, subject, stim_root, mapping=mapping)
    result = run_training(session, config, out, progress=True)
    if result.checkpoint_dir is not None:
        typer.echo(json.dumps({"checkpoint": str(result.checkpoint_dir), "metrics": result.metrics}, indent=2,
                              default=str))


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder from `glimpse train`.")],
    data: Annotated[Path, typer.Argument(help="Dataset with test trials (events.tsv trial_type 'test'), preprocessed as the checkpoint says.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder (metrics.json, summary.txt, curve.png, examples.png).  [default: CHECKPOINT/eval]")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics JSON to this file.")] = None,
    n_way: Annotated[int, typer.Option(help="n for n-way top-1 (MinD-Vis style).")] = 50,
    subject: Annotated[Optional[list[str]], typer.Option(help="BIDS subjects to evaluate (repeat); default: all.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Image-embedding cache.")] = None,
) -> None:
    """Measure retrieval among unseen test images: top-1, top-5, median rank, n-way.

    Single-trial and repeat-averaged results are reported separately, with chance
    levels, a time-resolved top-5 curve (-200..1000 ms) and, on simulated data, the
    noise-free ceiling.
    """
    from glimpse.models.evaluate import evaluate as run_evaluation
    from glimpse.models.report import format_report

    metrics = run_evaluation(checkpoint, data, n_way=n_way, subjects=subject or None,
                             cache_dir=_cache_dir(cache_dir), out_dir=out or checkpoint / "eval",
                             progress=True)
    if json_file is not None:
        json_file.write_text(json.dumps(metrics, indent=1, default=str) + "\n")
    typer.echo(format_report(metrics))


@app.command()
def pretrain(
    data: Annotated[Path, typer.Argument(help="Recordings to pretrain on (labels are not used).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pretrained trunk (use with `glimpse train --init`).")],
    mask_ratio: Annotated[float, typer.Option(help="Share of time patches masked and reconstructed.")] = 0.75,
    epochs: Annotated[int, typer.Option(help="Pretraining epochs.")] = 10,
    window: Annotated[float, typer.Option(help="Window length in seconds.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    subject: Annotated[Optional[list[str]], typer.Option(help="BIDS subjects (repeat); default: all.")] = None,
) -> None:
    """Self-supervised masked-signal pretraining of the brain encoder's trunk (MinD-Vis, DreamDiffusion)."""
    from glimpse.models.pretrain import PretrainConfig, pretrain_session

    session = _load_data(data, subject, None)
    path = pretrain_session(session, PretrainConfig(mask_ratio=mask_ratio, epochs=epochs, seed=seed),
                            out, window_s=window, progress=True)
    typer.echo(f"wrote {path}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder from `glimpse train`.")],
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="ONNX file to write.  [default: CHECKPOINT/model.onnx, which `glimpse decode` then uses]")] = None,
) -> None:
    """Export a checkpoint's brain encoder to ONNX (checked against torch with onnxruntime).

    The file takes a channel mask besides the window and the subject, so a live
    stream that lacks some channels can still be decoded.
    """
    from glimpse.models.export import ONNX_NAME, export_checkpoint_onnx

    report = export_checkpoint_onnx(checkpoint, onnx or Path(checkpoint) / ONNX_NAME)
    typer.echo(json.dumps(report, indent=2))


# --------------------------------------------------------------------------- replay


@app.command()
def replay(
    recording: Annotated[Path, typer.Argument(help="What to stream: a recording file (FIF, CTF .ds, EDF, BDF, BrainVision .vhdr, EEGLAB .set, LabRecorder .xdf), a file inside a BIDS dataset (its events.tsv gives the markers), or a session folder recorded by `glimpse decode`.")],
    name: Annotated[str, typer.Option(help="LSL stream name; the stimuli go to NAME-markers.")] = "glimpse-replay",
    source_id: Annotated[Optional[str], typer.Option(help="LSL source id, by which inlets find a restarted replay again.  [default: derived from NAME and the file]")] = None,
    speed: Annotated[float, typer.Option(help="Playback speed: 1 is real time, 10 ten times faster (the declared sfreq stays the recording's).")] = 1.0,
    loop: Annotated[bool, typer.Option(help="Start again at the end, until Ctrl-C.")] = False,
    chunk_ms: Annotated[float, typer.Option(help="Push a chunk every CHUNK_MS milliseconds of wall time.")] = 10.0,
    index_channel: Annotated[bool, typer.Option(help="Append a SAMPLE_INDEX channel (type misc) counting samples, to check that none is dropped.")] = False,
    mapping: Annotated[Optional[Path], typer.Option(help="JSON or TSV file mapping annotation descriptions (XDF: marker strings) or trigger values to stimulus files (see `glimpse info --help`).")] = None,
    stream: Annotated[Optional[str], typer.Option(help="XDF only: the name of the signal stream (default: the first numeric one).")] = None,
) -> None:
    """Stream a recording over LSL as if it were live, with its stimuli as markers.

    Channels keep their names, MNE types and SI units (V, T, T/m, declared in the
    stream description); each trial goes out on NAME-markers as JSON
    {"stim_file", "concept", "trial_type"} with the timestamp of its onset sample.
    A discontinuous recording (CTF trials, FIF skips, EEGLAB boundaries) replays
    with a timestamp jump where acquisition stopped. Ends at the end of the
    recording (or on Ctrl-C) with a one-line summary.

    Examples:

      glimpse replay sim/sub-01/meg/sub-01_task-things_meg.fif --name meg

      glimpse replay sessions/2024-05-01 --speed 10 --loop
    """
    from glimpse.streaming.recordings import open_recording
    from glimpse.streaming.replay import format_summary, run_replay

    if mapping is not None or stream is not None:
        recording = open_recording(recording, mapping=mapping, stream=stream, check_stimuli=False)
    stats = run_replay(recording, name=name, source_id=source_id, speed=speed, loop=loop,
                       chunk_ms=chunk_ms, index_channel=index_channel)
    typer.echo(format_summary(stats))


class Grid(str, Enum):
    chunks = "chunks"
    fixed = "fixed"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


@app.command()
def decode(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder from `glimpse train`.")],
    gallery: Annotated[Path, typer.Option(help="Gallery from `glimpse gallery build`, embedded like the checkpoint's targets.")],
    stream: Annotated[Optional[list[str]], typer.Option("--stream", "-s", help="LSL stream name to decode (repeat for several; each one's NAME-markers is followed too).")] = None,
    recording: Annotated[Optional[Path], typer.Option(help="Instead of --stream: a recording (any file `glimpse info` reads, or a BIDS root) fed through the live windower and decoder without LSL, in the chunks a live pull takes; prints the live figure (top-k of the windows ending 0.15-0.65 s after an onset, beside chance). Default grid: fixed.")] = None,
    record: Annotated[Optional[Path], typer.Option(help="Session folder that records samples, markers and frames.  [default: sessions/<date-time>]")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds, with a summary.  [default: until Ctrl-C]")] = None,
    backend: Annotated[Backend, typer.Option(help="auto: onnxruntime on CPU when the checkpoint was exported (CHECKPOINT/model.onnx, `glimpse export`), else torch.")] = Backend.auto,
    onnx: Annotated[Optional[Path], typer.Option(help="ONNX file from `glimpse export` (with --backend onnx).  [default: CHECKPOINT/model.onnx]")] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda / cuda:N.")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads of the model and the retrieval (1 keeps latency steady on a busy machine).")] = 1,
    k: Annotated[int, typer.Option("-k", help="Images retrieved per window.")] = 5,
    hop: Annotated[float, typer.Option(help="Seconds between windows.")] = 0.05,
    allow_missing: Annotated[bool, typer.Option(help="Decode with checkpoint channels missing from the stream (masked in the spatial attention).")] = False,
    grid: Annotated[Optional[Grid], typer.Option(help="Window grid. chunks: after 2 s the grid moves once so that windows end where the sender's chunks end (a window's newest sample no longer waits for the rest of its chunk: ~7 ms less at 1200 Hz in 10 ms chunks). fixed: every hop from the stream's first sample.  [default: chunks; fixed with --recording]")] = None,
    max_age: Annotated[Optional[float], typer.Option(help="Skip windows whose newest sample is already older than this many seconds when they are cut (a start-up backlog, a stall), counted as stale.  [default: two hops]")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each stream to appear.")] = 10.0,
) -> None:
    """Decode live LSL streams in the terminal: a line per second, a summary at the end.

    Each stream is matched to the checkpoint's channels by name, preprocessed with
    the checkpoint's own preprocessing and cut into the checkpoint's window every
    --hop seconds; the worker runs the brain encoder on the newest windows and
    retrieves the top-k gallery images. Everything acquired and every decoded
    frame is written to the session folder while it runs (`glimpse replay
    FOLDER` replays it). The live line shows the decode rate, latency p50/p99
    (from the LSL time of a window's last sample to its frame), dropped and
    stale and invalid windows, the newest top-1 and, with a markers stream, the
    true stimulus and the top-k hit rate against chance. A window already older
    than --max-age when it is cut is skipped (counted as stale): what is shown is
    the present.

    With --recording instead of --stream, a recording goes through the same
    windower and decoder without LSL, and the same live figure is printed.

    Example, with `glimpse demo` done and `glimpse replay
    glimpse-demo/sub-01/meg/sub-01_task-things_meg.fif --name meg` running:

      glimpse decode --stream meg --checkpoint glimpse-demo/model --gallery glimpse-demo/gallery/test --duration 60
    """
    from .decode import run_decode, run_decode_recording

    if recording is not None:
        if stream:
            raise InputError("either --stream (live) or --recording (offline)", "both",
                             "drop one of them")
        run_decode_recording(recording, checkpoint, gallery, backend=backend.value, onnx=onnx,
                             device=device, k=k, hop=hop, allow_missing=allow_missing,
                             grid=(grid or Grid.fixed).value, threads=threads, echo=typer.echo)
        return
    run_decode(stream or [], checkpoint, gallery, record=record, duration=duration,
               backend=backend.value, onnx=onnx, device=device, k=k, hop=hop,
               allow_missing=allow_missing, grid=(grid or Grid.chunks).value,
               resolve_timeout=timeout, threads=threads, max_age=max_age, echo=typer.echo)


# ------------------------------------------------------------- serve and demo

from .cli_generate import generator_app, reconstruct  # noqa: E402 - their own modules
from .cli_calibrate import calibrate  # noqa: E402
from .cli_serve import demo, serve  # noqa: E402

app.command()(serve)
app.command()(demo)
app.add_typer(generator_app, name="generator")
app.command()(reconstruct)
app.command()(calibrate)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning bad input into one line and status 2."""
    try:
        result = app(args=argv, prog_name="glimpse", standalone_mode=False)
    except InputError as err:
        if _state["verbose"]:
            logger.exception("bad input")
        typer.echo(f"glimpse: error: {err}", err=True)
        return 2
    except typer.Abort:
        typer.echo("glimpse: aborted", err=True)
        return 130
    except typer.exceptions.TyperException as err:  # usage errors: unknown option, bad value
        err.show()
        return err.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
