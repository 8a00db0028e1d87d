"""``glimpse calibrate``: a new person's calibration from the terminal (a command of
:mod:`glimpse.service.cli`, kept here so each module holds one concern).

Three uses: against a running service (``--service URL``: creates the calibration,
prints the /present URL to open on the person's screen, follows the trials and the
epochs with progress bars, prints the result); offline from a session folder already
recorded (``glimpse calibrate SESSION_FOLDER --base CKPT --out DIR``); and
``--fresh-images WORLD``, which draws new exemplars of a simulated world's concepts as
the calibration images of a simulated person.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from glimpse.streaming.errors import InputError

__all__ = ["calibrate"]

POLL_S = 0.5


def calibrate(
    session_folder: Annotated[Optional[Path], typer.Argument(help="Offline: a session folder recorded while the person watched the images (its markers name them).", show_default=False)] = None,
    base: Annotated[Optional[str], typer.Option(help="The base brain_encoder checkpoint (a folder; with --service, an id of GET /api/checkpoints or a path inside the data roots).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Offline: the adapted checkpoint's folder.", show_default=False)] = None,
    subject: Annotated[str, typer.Option(help="The new person's subject id in the adapted checkpoint.")] = "new",
    layers: Annotated[str, typer.Option(help="What learns: 'all' (the whole model, from the base's weights and a new subject layer), 'subject' (only the new subject layer) or 'subject+head' (and the last layers).")] = "all",
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping on held-out calibration concepts).")] = 40,
    service: Annotated[Optional[str], typer.Option(help="A running service's URL (glimpse serve): calibrate live through it.", show_default=False)] = None,
    stream: Annotated[Optional[str], typer.Option(help="With --service: the person's LSL stream name.", show_default=False)] = None,
    images: Annotated[Optional[str], typer.Option(help="With --service: the calibration images' folder inside the service's data roots.", show_default=False)] = None,
    test_images: Annotated[Optional[str], typer.Option(help="With --service: held-out images' folder, shown among them to compare before and after.", show_default=False)] = None,
    minutes: Annotated[float, typer.Option(help="With --service: minutes of calibration images (THINGS-MEG pace: 40 a minute).")] = 2.0,
    test_repeats: Annotated[int, typer.Option(help="With --service: times each held-out image is shown.")] = 2,
    session: Annotated[Optional[str], typer.Option(help="With --service: a running session recording the stream, to hot-swap (default: the calibration starts one).", show_default=False)] = None,
    gallery: Annotated[Optional[str], typer.Option(help="With --service and no --session: the gallery of the session it starts.", show_default=False)] = None,
    swap: Annotated[bool, typer.Option(help="With --service: switch the live session to the adapted checkpoint when ready (unless it decodes the held-out images clearly worse).")] = True,
    swap_if_worse: Annotated[bool, typer.Option(help="With --service: switch even when the held-out top-5 after is more than one standard error below before.")] = False,
    resume: Annotated[Optional[str], typer.Option(help="With --service: resume (or follow) the calibration with this id.", show_default=False)] = None,
    token: Annotated[Optional[str], typer.Option(help="With --service: its token (or GLIMPSE_TOKEN).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(help="Offline: torch CPU threads.", show_default=False)] = None,
    fresh_images: Annotated[Optional[Path], typer.Option(help="Draw new exemplars of this simulated world's training concepts into WORLD/calibration/stimuli/fresh (a simulated person's calibration images) and exit.", show_default=False)] = None,
    per_concept: Annotated[int, typer.Option(help="With --fresh-images: exemplars per concept.")] = 2,
) -> None:
    """Calibrate a new person: adapt a base checkpoint to them and decode them live.

    Live, through a running service: the person watches the /present page (the
    printed URL, full screen) while their stream is recorded; the base is adapted to
    them (a new subject layer learnt from the calibration images), compared before and
    after on the held-out images, and the live session switches to it.

    Examples (the simulated person of the demo's world):

      glimpse calibrate --fresh-images glimpse-demo

      glimpse simulate --live --world glimpse-demo --name newcomer --subject-seed 7

      glimpse calibrate --service http://127.0.0.1:8000 --base model --stream newcomer
        --images calibration/stimuli/fresh --test-images stimuli/test --subject p07

    Offline, from a session folder recorded while the images were shown:

      glimpse calibrate glimpse-demo/sessions/20250101-120000-ab12cd34 --base glimpse-demo/model
        --out glimpse-demo/p07 --subject p07
    """
    if fresh_images is not None:
        from .calibration.simulated import write_fresh_images

        folder = write_fresh_images(fresh_images, per_concept=per_concept)
        typer.echo(f"calibration images: {folder} ({sum(1 for _ in folder.rglob('*.png'))} images)")
        return
    if service is not None:
        _live(service.rstrip("/"), token or os.environ.get("GLIMPSE_TOKEN"), resume, {
            "base": base, "stream": stream, "images": images, "test_images": test_images, "minutes": minutes,
            "test_repeats": test_repeats, "subject": subject, "session": session, "gallery": gallery,
            "layers": layers, "epochs": epochs, "swap": swap, "swap_if_worse": swap_if_worse})
        return
    if session_folder is None or base is None or out is None:
        raise InputError("SESSION_FOLDER --base CKPT --out DIR (offline), --service URL (live) or "
                         "--fresh-images WORLD", "none of them complete", "see `glimpse calibrate --help`")
    _offline(session_folder, base, out, subject=subject, layers=layers, epochs=epochs, threads=threads)


# --------------------------------------------------------------------------- offline


def _offline(folder: Path, base: str, out: Path, **options: Any) -> None:
    from tqdm import tqdm

    from .calibration.adapt import run_adaptation

    if out.exists() and any(out.iterdir()):
        raise InputError("a new or empty --out folder", f"{out}, which holds files", "name a new folder")
    job = {"base": base, "folder": str(folder), "out": str(out), "onsets": None,
           "lineage": {"session_folder": str(Path(folder).resolve())}, **options}
    import logging

    from .calibration.adapt import EpochProgress

    bar = tqdm(total=options["epochs"], desc="adapt", unit="epoch")

    def send(message: tuple) -> None:
        kind, body = message
        if kind == "phase":
            bar.set_description(body)
        elif kind == "epoch":
            bar.update(1)
            bar.set_postfix(val_top5=_fmt(body.get("val_top5")))

    train_log = logging.getLogger("glimpse.models.train")
    handler, level = EpochProgress(send), train_log.level
    train_log.addHandler(handler)
    train_log.setLevel(logging.INFO)
    try:
        result = run_adaptation(job, send)
    finally:
        train_log.removeHandler(handler)
        train_log.setLevel(level)
        bar.close()
    for line in _result_lines(result, str(out)):
        typer.echo(line)


# --------------------------------------------------------------------------- live


def _request(url: str, token: str | None, method: str = "GET", body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        try:
            error = json.loads(err.read().decode("utf-8"))["error"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"an answer from {url}", f"HTTP {err.code}", "check the URL and the service") from None
        raise InputError(error["expected"], error["got"], error["fix"]) from None
    except urllib.error.URLError as err:
        raise InputError(f"a glimpse service at {url}", f"no answer ({err.reason})",
                         "start it with `glimpse serve` (or `glimpse demo`), or fix --service") from None


def _live(service: str, token: str | None, resume: str | None, body: dict[str, Any]) -> None:
    if resume is not None:
        calibration = _request(f"{service}/api/calibrations/{resume}", token)
        if calibration["state"] == "interrupted":
            calibration = _request(f"{service}/api/calibrations/{resume}/resume", token, "POST", {})
    else:
        missing = [k for k in ("base", "images") if not body.get(k)]
        if missing or not (body.get("stream") or body.get("session")):
            raise InputError("--base, --images and --stream (or --session) with --service",
                             f"missing {', '.join(missing) or '--stream'}", "see `glimpse calibrate --help`")
        sent = {k: v for k, v in body.items() if v is not None}
        calibration = _request(f"{service}/api/calibrations", token, "POST", sent)
    cid = calibration["id"]
    typer.echo(f"calibration {cid} of {calibration['subject']}: recording in session {calibration['session']}\n"
               f"  open on the person's screen, then press Start: {service}{calibration['present_url']}")
    final = _follow(service, token, cid, calibration)
    for line in _outcome(final, service):
        typer.echo(line)
    if final["state"] == "failed":
        error = final["error"] or {}
        if "expected" in error:
            raise InputError(error["expected"], error["got"], error["fix"])
        raise InputError("an adaptation that finishes", error.get("message", "it failed"), "see the service log")


def _follow(service: str, token: str | None, cid: str, calibration: dict) -> dict:
    """Progress bars until the calibration waits for someone (interrupted) or is done."""
    from tqdm import tqdm

    trials = tqdm(total=calibration["trials"]["n"], desc="trials shown", unit="trial")
    epochs = None
    try:
        while True:
            state = calibration["state"]
            trials.n = min(calibration["trials"]["n_shown"], trials.total)
            trials.refresh()
            if state in ("adapting", "ready", "swapped") and epochs is None:
                epochs = tqdm(total=calibration["request"]["epochs"], desc="adapting", unit="epoch")
            if epochs is not None:
                epochs.n = len(calibration["history"])
                epochs.set_postfix_str(f"{calibration['phase']}, val top-5 {_fmt(calibration['val_top5'])}")
            if _settled(calibration):
                if epochs is not None and calibration["state"] in ("ready", "swapped"):
                    epochs.total = epochs.n  # early stopping ends it before the most epochs
                    epochs.refresh()
                return calibration
            time.sleep(POLL_S)
            calibration = _request(f"{service}/api/calibrations/{cid}", token)
    finally:
        trials.close()
        if epochs is not None:
            epochs.close()


def _settled(calibration: dict) -> bool:
    """Done, or waiting for someone: interrupted, failed, cancelled, swapped, or ready
    without a swap to come (none asked for, or one refused)."""
    state = calibration["state"]
    if state == "ready":
        return (not calibration["request"]["swap"] or calibration["swap_error"] is not None
                or calibration["swap_held"] is not None)
    return state in ("interrupted", "failed", "cancelled", "swapped")


def _outcome(calibration: dict, service: str) -> list[str]:
    state = calibration["state"]
    if state == "interrupted":
        return [f"interrupted: {calibration['error']['message']}",
                f"  the recording is kept; once the stream is back: glimpse calibrate --service {service} "
                f"--resume {calibration['id']}"]
    if state == "cancelled":
        return ["cancelled; the recording goes on in its session"]
    if state == "failed":
        return [f"calibration {calibration['id']} failed"]
    lines = _result_lines(calibration["result"], calibration["checkpoint"])
    if state == "swapped":
        lines.append(f"  session {calibration['session']} now decodes {calibration['subject']} with it: "
                     f"{service}/")
    elif calibration.get("swap_held"):
        lines.append(f"  not switched: {calibration['swap_held']}; switch anyway with "
                     f"POST {service}/api/calibrations/{calibration['id']}/swap")
    elif calibration.get("swap_error"):
        lines.append(f"  the hot swap was refused: {calibration['swap_error']}")
    return lines


def _result_lines(result: dict, checkpoint: str) -> list[str]:
    lines = [f"adapted checkpoint: {checkpoint} (subject {result['subject']}, {result['n_train_trials']} "
             f"calibration trials, best epoch {result.get('best_epoch')}, {result.get('wall_s')} s)",
             f"  validation (calibration concepts held out to stop early): top-5 {_fmt(result.get('val_top5'))}, "
             f"chance {_fmt(result.get('val_chance_top5'))}, {result.get('n_val_trials')} trials"]
    before, after = result.get("held_out_before"), result.get("held_out_after")
    if before and after:
        lines.append(f"  held-out images, single-trial top-5: {before['top5']:.3f} before, {after['top5']:.3f} "
                     f"after (chance {after['chance_top5']:.3f}, {after['n_trials']} trials, "
                     f"{after['n_candidates']} candidates)")
    else:
        lines.append("  no held-out trials: before/after not measured (show --test-images)")
    return lines


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
