"""The adaptation of a calibration, in a process of its own, its progress over a pipe.

Model work never runs on the service's event loop, and torch's threads should not
compete with the live session's threads inside the service process: :class:`AdaptJob`
runs :func:`adapt_main` in a ``spawn`` process, which loads the session folder with
the base's preprocessing, keeps the calibration's own trials
(:func:`~.trials.calibration_trials`), calls
:func:`glimpse.models.new_subject.adapt_to_subject` and, when the base has an ONNX
export, exports the adapted checkpoint too (live decoding on a CPU runs it).

Messages from the child, each a tuple: ``("phase", name)`` (loading, training,
evaluating, exporting), ``("data", counts)``, ``("epoch", {"epoch", "train_loss",
"val_loss", "val_top1", "val_top5"})`` after every epoch, ``("result", summary)`` and
``("error", {"expected", "got", "fix"} or {"message"})``. The epochs come from the
training loop's own log record ("epoch %s", logged at INFO without a progress bar),
caught by a handler here: no change to training is needed to watch it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..sessions.wire import error_body

__all__ = ["AdaptJob", "EpochProgress", "adapt_main", "run_adaptation"]

logger = logging.getLogger("glimpse.service.calibration.adapt")


class EpochProgress(logging.Handler):
    """Turns the training loop's log records into progress messages (``send(message)``);
    add it to the "glimpse.models.train" logger, at level INFO or lower."""

    def __init__(self, send: Callable[[tuple], None]):
        super().__init__(logging.DEBUG)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        # logging keeps a lone mapping argument as ``args`` itself.
        row = record.args if isinstance(record.args, dict) else (record.args or (None,))[0]
        if record.msg == "epoch %s" and isinstance(row, dict):
            self.send(("epoch", dict(row)))
        elif isinstance(record.msg, str) and record.msg.startswith("checkpoint written to"):
            self.send(("phase", "evaluating"))  # held-out images, before and after


def run_adaptation(job: dict[str, Any], send: Callable[[tuple], None] = lambda message: None) -> dict[str, Any]:
    """Load, select, adapt and (when the base has one) export; the result's summary.

    ``job``: ``base``, ``folder`` (the session folder), ``out``, ``subject``, ``layers``,
    ``epochs``, ``min_trials``, ``onsets`` (``[(t_lsl, stim_file)]`` of the calibration's
    valid trials, or None for every trial of the folder), ``lineage``, ``threads``,
    ``cache_dir``. Raises InputError as the adaptation does.
    """
    from glimpse.models.checkpoint import load_checkpoint
    from glimpse.models.export import ONNX_NAME, export_checkpoint_onnx
    from glimpse.models.new_subject import AdaptConfig, adapt_to_subject

    from .trials import calibration_trials

    started = time.perf_counter()
    send(("phase", "loading"))
    ckpt = load_checkpoint(job["base"])
    data = _load_session(job["folder"], ckpt)
    counts = None
    if job.get("onsets") is not None:
        data, counts = calibration_trials(data, job["folder"], job["onsets"])
        send(("data", counts))
    send(("phase", "training"))
    config = AdaptConfig(layers=job.get("layers", AdaptConfig.layers), epochs=int(job.get("epochs", 40)),
                         num_threads=job.get("threads"), cache_dir=job.get("cache_dir"),
                         min_trials=int(job.get("min_trials", 30)))
    result = adapt_to_subject(job["base"], data, job["out"], config, subject=job["subject"],
                              lineage=job.get("lineage"), progress=False)
    if (Path(ckpt.path) / ONNX_NAME).is_file():
        send(("phase", "exporting"))
        export_checkpoint_onnx(result.checkpoint_dir, Path(result.checkpoint_dir) / ONNX_NAME)
    metrics = result.train_metrics
    summary = {**result.summary(), "val_chance_top5": metrics.get("val_chance_top5"),
               "n_val_trials": metrics.get("n_val_trials"), "epochs_run": metrics.get("epochs_run"),
               "trials": counts, "wall_s": round(time.perf_counter() - started, 2)}
    return summary


def _load_session(folder: str, ckpt):
    """``load_session`` of a live session folder with the base's preprocessing.

    A session folder keeps no sensor positions (stream.json names channels and types;
    MNE takes a CTF MEG recording without its system info for Neuromag's, and EEG has
    no montage), so the base's positions of the same channels stand in. The adaptation
    never uses them: the adapted checkpoint keeps the base's.
    """
    from glimpse.models.data import load_session

    return load_session(folder, preprocess=ckpt.preprocess, progress=False,
                        positions=dict(zip(ckpt.ch_names, ckpt.positions)))


def adapt_main(job: dict[str, Any], conn: Connection) -> None:
    """The child process: :func:`run_adaptation`, every step reported on ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    level = job.get("log_level", logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s adapt %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # the training log below runs at INFO for the epochs only
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            try:
                conn.send(message)
            except (OSError, ValueError):  # the service went away; the work goes on to its end
                pass

    handler = EpochProgress(send)
    train_log = logging.getLogger("glimpse.models.train")
    train_log.addHandler(handler)
    train_log.setLevel(logging.INFO)  # the epoch records, whatever the service's level
    try:
        send(("result", run_adaptation(job, send)))
    except Exception as err:  # noqa: BLE001 - reported to the service, which shows it
        if not hasattr(err, "expected"):
            logging.getLogger("glimpse.service.calibration").exception("adaptation failed")
        send(("error", error_body(err)))
    finally:
        train_log.removeHandler(handler)
        conn.close()


class AdaptJob:
    """:func:`adapt_main` in a spawned process; ``on_message(kind, body)`` from a reader
    thread, then ``on_message("exit", exitcode)`` once the process is gone."""

    def __init__(self, job: dict[str, Any], on_message: Callable[[str, Any], None]):
        self.job, self.on_message = job, on_message
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=adapt_main, args=(job, child), daemon=True,
                                name=f"glimpse-adapt-{job['subject']}")
        self.proc.start()
        child.close()
        self._reader = threading.Thread(target=self._read, name="calibration-adapt-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                kind, body = self._conn.recv()
            except (EOFError, OSError):
                break
            try:
                self.on_message(kind, body)
            except Exception:  # noqa: BLE001 - one bad message must not stop the reading
                logger.exception("handling %s from the adaptation", kind)
        self.proc.join(10.0)
        self.on_message("exit", self.proc.exitcode)

    def alive(self) -> bool:
        return self.proc.is_alive()

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the adaptation now (its partial checkpoint folder stays)."""
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout)
