"""``glimpse serve`` and ``glimpse demo``: the service and the viewer (commands of
:mod:`glimpse.service.cli`, kept here so each module holds one concern)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["demo", "serve"]


def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to bind. Anything but 127.0.0.1/::1/localhost needs --token.  [default: 127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port (0: any free one).  [default: 8000]")] = None,
    data: Annotated[Optional[list[Path]], typer.Option("--data", "-d", help="A data root (repeat for more): checkpoints, galleries, recordings and session folders are found, served and loaded only from these.  [default: . and ./glimpse-demo]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Settings file (JSON or TOML, keys as the GLIMPSE_* variables without the prefix, lower case).", exists=True, dir_okay=False)] = None,
    token: Annotated[Optional[str], typer.Option(help="Token every API call and WebSocket must carry (or GLIMPSE_TOKEN). Required off loopback.")] = None,
    sessions_dir: Annotated[Optional[Path], typer.Option(help="Where session folders are written (inside a data root).  [default: FIRST_ROOT/sessions]")] = None,
    device: Annotated[Optional[str], typer.Option(help="Where the worker decodes: cpu, cuda, cuda:1.  [default: cpu]")] = None,
) -> None:
    """Serve the API, the WebSocket hub and the browser viewer.

    Open the printed URL: pick an LSL stream (or start a replay of a recording),
    a checkpoint and a gallery, and start a session; decoded images, the true
    stimulus, latency and stream health appear live. Each session runs its
    acquisition and its model worker in processes of their own and records its
    folder (`glimpse replay` replays it). Settings come from --config, then the
    environment (GLIMPSE_HOST, GLIMPSE_PORT, GLIMPSE_DATA, GLIMPSE_TOKEN, ...),
    then these options.

    Examples:

      glimpse serve --data glimpse-demo

      GLIMPSE_TOKEN=$(openssl rand -hex 16) glimpse serve --host 0.0.0.0 --data /lab/data
    """
    from .serve import run_serve
    from .settings import Settings

    settings = Settings.load(config, host=host, port=port, data=data, token=token,
                             sessions_dir=sessions_dir, device=device)
    run_serve(settings, echo=typer.echo)


def demo(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where the demo session lives; reused when it exists.  [default: glimpse-demo, glimpse-demo-eeg for EEG]")] = None,
    port: Annotated[int, typer.Option(help="TCP port of the viewer (0: any free one).")] = 8000,
    modality: Annotated[str, typer.Option(help="Simulate MEG (272-channel CTF-like) or EEG (64-channel).")] = "meg",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser; just print the URL.")] = False,
    duration: Annotated[Optional[float], typer.Option(help="Serve this many seconds, print the summary and exit (scripts, tests).  [default: until Ctrl-C]")] = None,
    fresh: Annotated[bool, typer.Option(help="Simulate and train again even if OUT already holds a demo.")] = False,
) -> None:
    """Run the main job on the embedded default and watch it live in the browser.

    No data, no weights, no network. Simulates a THINGS-like session (once; later
    runs reuse it), trains the default brain encoder on it (a few minutes on 2
    cores, first run only), evaluates it on the unseen test concepts
    (OUT/report/), builds the gallery of test images (OUT/gallery/), then starts
    the service with a looping replay of subject 01 as an LSL stream and a session
    decoding it, and prints the viewer's URL (opening a browser when there is a
    display). Ctrl-C stops everything and prints a summary.
    """
    from .serve import run_browser_demo

    out = out or Path("glimpse-demo" if modality == "meg" else f"glimpse-demo-{modality}")
    run_browser_demo(out, port=port, modality=modality, open_browser=not no_browser,
                     duration=duration, fresh=fresh, echo=typer.echo)
