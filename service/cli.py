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
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from streaming.errors import InputError

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
    recording: Annotated[Path, typer.Argument(help="A recording file (FIF, CTF .ds, EDF, BDF, BrainVision .vhdr, EEGLAB .set), a file inside a BIDS dataset, or a BIDS root.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")] = False,
    subject: Annotated[Optional[str], typer.Option(help="BIDS root only: the subject to open (e.g. 01).")] = None,
    session: Annotated[Optional[str], typer.Option(help="BIDS root only: the session.")] = None,
    task: Annotated[Optional[str], typer.Option(help="BIDS root only: the task.")] = None,
    run: Annotated[Optional[str], typer.Option(help="BIDS root only: the run.")] = None,
) -> None:
    """Describe a recording: system, channel types and counts, sfreq, duration, events.

    Examples:

      glimpse info sub-01_task-things_meg.fif

      glimpse info ./bids --subject 01 --json
    """
    from streaming.recordings import describe, format_description

    selection = {k: v for k, v in dict(subject=subject, session=session, task=task, run=run).items() if v}
    description = describe(recording, **selection)
    if as_json:
        typer.echo(json.dumps(description, indent=2))
    else:
        typer.echo(format_description(description))


# --------------------------------------------------------------------------- simulate


class Modality(str, Enum):
    meg = "meg"
    eeg = "eeg"


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (a BIDS dataset with stimuli/, simulation.json and figures/).")] = Path("glimpse-sim"),
    modality: Annotated[Modality, typer.Option(help="meg: CTF-275 sensors at 1200 Hz; eeg: 64-channel 10-20 montage at 1000 Hz.")] = Modality.meg,
    subjects: Annotated[Optional[int], typer.Option(help="Number of subjects.  [default: 2]")] = None,
    concepts: Annotated[Optional[int], typer.Option(help="Training concepts (shape families and variants).")] = None,
    exemplars: Annotated[Optional[int], typer.Option(help="Training images per concept, each shown once.")] = None,
    test_concepts: Annotated[Optional[int], typer.Option(help="Test concepts, never used in training.")] = None,
    test_repeats: Annotated[Optional[int], typer.Option(help="Repeats of each test image (THINGS-MEG uses 12).")] = None,
    snr_db: Annotated[Optional[float], typer.Option(help="Single-trial signal-to-noise ratio in dB.")] = None,
    sfreq: Annotated[Optional[float], typer.Option(help="Sampling rate in Hz (default: 1200 for MEG, 1000 for EEG).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed writes identical files.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Stimulus images are IMAGE_SIZE x IMAGE_SIZE pixels.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists and is not empty.")] = False,
) -> None:
    """Write a simulated THINGS-like MEG or EEG session (BIDS + PNG stimuli).

    Sensor signals come from a real MNE forward model (sphere head, volume source
    space) driven by image-dependent occipital responses, plus 1/f background,
    alpha bursts, sensor and line noise, drift (and blinks for EEG).

    Example (the size the tests use):

      glimpse simulate --out sim --subjects 1 --concepts 8 --exemplars 2
    """
    from streaming.simulate import SimulationConfig, simulate_session

    given = dict(
        modality=modality.value, subjects=subjects, concepts=concepts, exemplars=exemplars,
        test_concepts=test_concepts, test_repeats=test_repeats, snr_db=snr_db, sfreq=sfreq,
        seed=seed, image_size=image_size,
    )
    config = SimulationConfig(**{k: v for k, v in given.items() if v is not None})
    start = time.perf_counter()
    result = simulate_session(config, out, overwrite=overwrite, progress=True)
    logger.info("simulated in %.1f s", time.perf_counter() - start)
    typer.echo(json.dumps(result.summary(), indent=2))


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the demo session lives; reused when it exists.")] = Path("glimpse-demo"),
    fresh: Annotated[bool, typer.Option(help="Simulate again even if OUT already holds a demo session.")] = False,
) -> None:
    """Run the main job on the embedded default: no data, no weights, no network.

    Simulates the default MEG session (once; later runs reuse it), reads it back
    as a user's BIDS dataset would be read, runs the preprocessing that training
    and live decoding share, and prints a summary.
    """
    from service.demo import run_demo

    typer.echo(run_demo(out, fresh=fresh))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning bad input into one line and status 2."""
    try:
        result = app(args=argv, prog_name="glimpse", standalone_mode=False)
    except InputError as err:
        if _state["verbose"]:
            logger.exception("bad input")
        typer.echo(f"glimpse: error: {err}", err=True)
        return 2
    except click.exceptions.Abort:
        typer.echo("glimpse: aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
