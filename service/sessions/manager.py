"""The service's live sessions: create from a request, look up, stop.

A request names its checkpoint and gallery by catalog id or by a path inside the
data roots (:class:`~glimpse.service.catalog.Catalog`), and its streams by LSL name
(or name and source id). Before any process starts, the checkpoint's embedder must be
the gallery's. Several sessions may decode the same stream: each opens its own LSL
inlet (LSL serves any number), records its own folder and runs its own worker, so
comparing two checkpoints on one stream side by side is one more session.

Generation: ``"generator"`` names a generator folder (``generator.json`` beside the
back-end's files) inside the data roots. Its embedder must be the checkpoint's (a
400 naming both); it loads in the worker, in the background, while retrieval
already runs. ``"mode"`` retrieval, generation or two_stage (the last two need a
generator) switches while the session runs (:meth:`SessionManager.set_mode`).

``"subject"``: the training subject of the checkpoint whose subject layer decodes
(an id of its config.json ``subjects``; default the first). A running session's
checkpoint and subject change with :meth:`SessionManager.swap_checkpoint` (a person
calibrated, :mod:`.swap`) without stopping its acquisition or recording.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glimpse.models.generators import Generator, check_generate_options

from ..errors import Conflict, InputError, NotFound
from .generation import GENERATION_MODES
from .session import LiveSession
from .swap import check_swap, checkpoint_subject

logger = logging.getLogger("glimpse.service.sessions")

__all__ = ["SessionManager"]


def _config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A catalog checkpoint's config.json."""
    return json.loads((Path(ckpt["abspath"]) / "config.json").read_text(encoding="utf-8"))


def _checkpoint_entry(ckpt: dict[str, Any], config: dict[str, Any], subject: str) -> dict[str, Any]:
    """What a session's description says of its checkpoint, but its sensors."""
    return {"id": ckpt["id"], "name": ckpt.get("name"), "model": config["model"]["name"],
            "modality": ckpt.get("modality"), "subject": subject,
            "subjects": [str(s) for s in config["subjects"]]}


def _stream_pair(ref: Any) -> tuple[str | None, str | None]:
    if isinstance(ref, str):
        return ref, None
    name, source_id = ref.get("name"), ref.get("source_id")
    if not name and not source_id:
        raise InputError("a stream as a name or {\"name\", \"source_id\"}", repr(ref),
                         "pick a stream from GET /api/streams")
    return name, source_id


class SessionManager:
    """Sessions by id; ``publish(session_id, message)`` is the hub's (a dict, or bytes:
    a binary message). ``load_generator(folder, device=)``: what the worker loads
    generators with (None: :func:`glimpse.models.generators.load_generator`); it
    crosses to the worker process, so it must pickle (a module-level function)."""

    def __init__(self, settings, catalog, publish: Callable[[str, dict | bytes], None], *,
                 sessions_dir: Path, log_level: int = logging.WARNING,
                 clients_of: Callable[[str], int] = lambda session_id: 0,
                 load_generator: Callable | None = None):
        self.settings, self.catalog, self.publish = settings, catalog, publish
        self.load_generator = load_generator
        self.clients_of = clients_of
        self.sessions_dir, self.log_level = Path(sessions_dir), log_level
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def get(self, session_id: str) -> LiveSession:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise NotFound("the id of a session", f"{session_id!r}; sessions now: "
                           f"{', '.join(self.ids()) or 'none'}",
                           "list them with GET /api/sessions, or start one with POST /api/sessions")
        return session

    def describe(self, session_id: str) -> dict[str, Any]:
        return self.get(session_id).describe()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.describe() for s in sessions]

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        """Start a session (blocking until it decodes or fails); its description."""
        ckpt, gallery = self.catalog.checkpoint(request["checkpoint"]), self.catalog.gallery(request["gallery"])
        config = _config(ckpt)
        subject = checkpoint_subject(config, request.get("subject"), ckpt["id"])
        sidecar = json.loads(Path(gallery["abspath"]).with_suffix(".json").read_text(encoding="utf-8"))
        emb = config["embedder"]
        if (emb["name"], int(emb["dim"])) != (sidecar["embedder"], int(sidecar["dim"])):
            raise InputError(f"a gallery embedded with the checkpoint's embedder ({emb['name']}, "
                             f"{emb['dim']} dims)",
                             f"gallery {gallery['id']} of {sidecar['embedder']} ({sidecar['dim']} dims)",
                             "pick a gallery built with that embedder (GET /api/galleries lists "
                             "each one's), or build one with `glimpse gallery`")
        generator = self._generator(request.get("generator"), emb)
        mode = request.get("mode", "retrieval")
        if mode in GENERATION_MODES and generator is None:
            raise InputError(f'a "generator" for mode {mode!r}', "none",
                             'name a generator folder inside the data roots, or use mode "retrieval"')
        steps, strength = int(request.get("steps", 1)), float(request.get("strength", 0.6))
        check_generate_options(steps, strength, 0.0)
        session_id = secrets.token_hex(4)
        folder = None
        if request.get("record", True):
            folder = self.sessions_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{session_id}"
        streams = [_stream_pair(s) for s in request["streams"]]
        hop = float(request.get("hop", 0.05))
        spec = {
            "session": session_id, "folder": str(folder) if folder is not None else None,
            "streams": streams, "checkpoint": str(ckpt["abspath"]), "gallery": str(gallery["abspath"]),
            "gallery_id": gallery["id"], "k": int(request.get("k", 5)), "hop": hop,
            "checkpoint_id": ckpt["id"], "subject": subject,
            "max_age": request.get("max_age"), "allow_missing": bool(request.get("allow_missing", False)),
            "backend": self.settings.backend, "device": self.settings.device,
            "threads": self.settings.threads, "resolve_timeout": float(request.get("resolve_timeout", 10.0)),
            "ch_names": list(config["channels"]["names"]), "positions": config["channels"]["positions"],
            "sfreq": float(config["sfreq"]), "n_times": int(config["window"]["n_times"]),
            "preprocess": config["preprocess"], "log_level": self.log_level,
            "generator": generator and generator.pop("abspath"), "mode": mode, "steps": steps,
            "strength": strength, "mean_norm": emb.get("mean_norm"),
            "roots": [str(p) for p in self.catalog.roots.paths], "load_generator": self.load_generator,
        }
        describe = {
            "streams": [{"name": n, "source_id": s} for n, s in streams],
            "checkpoint": {**_checkpoint_entry(ckpt, config, subject),
                           "ch_names": spec["ch_names"], "positions": spec["positions"],
                           "sfreq": spec["sfreq"], "n_times": spec["n_times"]},
            "gallery": {"id": gallery["id"], "name": gallery.get("name"), "n": len(sidecar["ids"]),
                        "embedder": sidecar["embedder"], "dim": int(sidecar["dim"])},
            "mode": mode, "generator": generator, "steps": steps, "strength": strength,
            "k": spec["k"], "hop": hop, "record": folder is not None,
            "folder": str(folder) if folder is not None else None,
        }
        session = LiveSession(spec, publish=lambda m: self.publish(session_id, m), describe=describe,
                              clients=lambda: self.clients_of(session_id),
                              stimulus_url=self._stimulus_url,
                              gallery_ids=list(sidecar["ids"]), gallery_size=len(sidecar["ids"]),
                              standby=self.settings.standby_worker)
        with self._lock:
            self._sessions[session_id] = session
        try:
            session.start()
        except BaseException:
            with self._lock:
                self._sessions.pop(session_id, None)
            if folder is not None and folder.is_dir() and not any(folder.rglob("*.f32")):
                shutil.rmtree(folder, ignore_errors=True)  # nothing recorded: leave nothing
            raise
        logger.info("session %s started: %s -> %s", session_id, streams, folder)
        return session.describe()

    def _generator(self, ref: str | None, embedder: dict[str, Any]) -> dict[str, Any] | None:
        """The generator folder ``ref`` (an id of /api/generators or a path inside the roots),
        refused unless it is conditioned on the checkpoint's embedder."""
        if not ref:
            return None
        entry = self.catalog.generator(ref)
        Generator(embedder=entry["embedder"], dim=entry["dim"], size=entry["size"]).check_embedder(
            embedder["name"], int(embedder["dim"]))
        return {k: entry[k] for k in ("id", "name", "path", "abspath", "kind", "embedder", "dim", "size")}

    def set_mode(self, session_id: str, mode: str) -> dict[str, Any]:
        """Switch a running session's mode; its description."""
        return self.get(session_id).set_mode(mode)

    def swap_checkpoint(self, session_id: str, checkpoint_ref: str,
                        subject: str | None = None) -> dict[str, Any]:
        """Decode a running session with another checkpoint (and subject) from now on; its
        description. Blocks while the new checkpoint loads beside the old one.

        Parameters
        ----------
        session_id : str
            A running session (NotFound, 404; Conflict, 409, when it is not running).
        checkpoint_ref : str
            A checkpoint id of GET /api/checkpoints or a folder inside the data roots. It
            must take the session's windows: the same channel set, rate, window length and
            filters (its scaler may differ), and the embedder of the session's gallery
            (InputError, 400, naming both sides otherwise).
        subject : str or None
            A training subject id of that checkpoint (400 listing them); None: the first.
        """
        session = self.get(session_id)
        if session.state != "running":
            raise Conflict("a running session", f"session {session_id}, {session.state}",
                           "start a new session with the checkpoint (POST /api/sessions)")
        ckpt = self.catalog.checkpoint(checkpoint_ref)
        config = _config(ckpt)
        described = session.describe()
        gallery = described["gallery"]
        check_swap(session.spec, config, ckpt["id"], (gallery["embedder"], gallery["dim"]))
        emb = config["embedder"]
        generator = described.get("generator")
        if generator:  # the gallery's embedder is the generator's already; said plainly anyway
            Generator(embedder=generator["embedder"], dim=generator["dim"],
                      size=generator["size"]).check_embedder(emb["name"], int(emb["dim"]))
        subject_id = checkpoint_subject(config, subject, ckpt["id"])
        changes = {"checkpoint": str(ckpt["abspath"]), "checkpoint_id": ckpt["id"],
                   "subject": subject_id, "mean_norm": emb.get("mean_norm")}
        # The sensors stay the acquisition's (the viewer's topography follows its signal).
        entry = {**described["checkpoint"], **_checkpoint_entry(ckpt, config, subject_id)}
        description = session.swap_checkpoint(changes, entry)
        logger.info("session %s: checkpoint %s (subject %s)", session_id, ckpt["id"], subject_id)
        return description

    def _stimulus_url(self, stim_file: str) -> str | None:
        """Where the viewer gets a true stimulus that is not in the gallery: only a file
        inside the data roots (a marker names a path on the sender's machine)."""
        if not stim_file or not self.catalog.roots.contains(stim_file) or not Path(stim_file).is_file():
            return None
        return "/api/stimuli?path=" + urllib.parse.quote(stim_file, safe="")

    def stop(self, session_id: str, timeout: float = 10.0) -> dict[str, Any]:
        session = self.get(session_id)
        if session.state == "stopped":
            raise Conflict("a running session", f"session {session_id}, already stopped",
                           "nothing to do; GET /api/sessions/{id}/download has its folder")
        return session.stop(timeout)

    def folder(self, session_id: str) -> Path:
        session = self.get(session_id)
        if session.spec["folder"] is None:
            raise NotFound("a session recorded to a folder", f"session {session_id} with record off",
                           "start sessions with \"record\": true (the default)")
        return Path(session.spec["folder"])

    def stop_all(self, timeout: float = 10.0) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in reversed(sessions):
            if session.state != "stopped":  # a failed one still has its worker to stop
                try:
                    session.stop(timeout)
                except Exception:  # noqa: BLE001 - stop the others whatever one does
                    logger.exception("stopping session %s", session.id)
