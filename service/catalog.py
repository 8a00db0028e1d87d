"""What the data roots hold: checkpoints, galleries, recordings and generators, with the facts
a person picks by (modality, channels, embedder, size).

A scan walks each root (to ``max_depth`` folders down; virtual environments, VCS,
caches and hidden folders skipped) and is reused for ``ttl_s`` seconds. Facts are read
cheaply (config.json, the gallery's sidecar, a recording opened without its data,
session.json) and cached by each file's (mtime, size); an entry that fails to read is
listed with ``"error"`` instead of failing the listing. Scans block: callers on the
event loop run them in a thread (``run_in_threadpool``).

Every entry has a stable id, ``f"{slug(stem)}-{sha1(real path)[:8]}"``; lookups take
the id or a path inside the roots (:class:`~glimpse.service.roots.DataRoots`).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import itertools
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from glimpse.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from glimpse.models.gallery import gallery_files
from glimpse.models.generators import GENERATOR_FILE
from glimpse.streaming.channels import listing

from .errors import InputError, NotFound
from .roots import DataRoots

logger = logging.getLogger("glimpse.service.catalog")

__all__ = ["Catalog", "entry_id"]

KINDS = ("checkpoints", "galleries", "recordings", "generators")
SKIP_FOLDERS = {".venv", "venv", ".git", "node_modules", "__pycache__", "cache"}
# File extension -> recording kind, for the raw files open_recording reads.
RAW_KINDS = {".fif": "fif", ".fif.gz": "fif", ".vhdr": "brainvision", ".edf": "edf",
             ".bdf": "bdf", ".set": "eeglab", ".xdf": "xdf"}
# FIF files that hold something other than raw data (MNE's naming convention).
_NOT_RAW_FIF = re.compile(r"[-_](epo|ave|cov|fwd|inv|trans|src|bem|sol|proj|tfr|annot)\.fif(\.gz)?$")
_MEG_TYPES = {"mag", "grad", "ref_meg", "meg"}
# CTF (MLC11), Neuromag (MEG0113), KIT/BTi style sensor names.
_MEG_NAME = re.compile(r"^(M[LRZ][CFOPT]\d|MEG[\s_]?\d|A\d+$)")
_CHECKPOINT_KEYS = ("model", "modality", "n_chans", "sfreq", "window_s", "embedder", "dim",
                    "subjects", "metrics", "size_bytes", "has_onnx")
_GALLERY_KEYS = ("embedder", "dim", "n", "size_bytes")
_RECORDING_KEYS = ("modality", "n_chans", "sfreq", "duration_s", "n_trials", "size_bytes")
_GENERATOR_KEYS = ("kind", "embedder", "dim", "size", "metrics")
_FIX_BUILD = "rebuild it with `glimpse gallery build IMAGES_DIR --embedder NAME --out FILE`"


def entry_id(stem: str, path: Path) -> str:
    """The stable, URL-safe id of the entry at (real) ``path``."""
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "item"
    return f"{slug}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


class Catalog:
    """Checkpoints, galleries and recordings in ``roots``; thread-safe."""

    def __init__(self, roots: DataRoots, *, max_depth: int = 4, ttl_s: float = 5.0):
        self.roots, self.max_depth, self.ttl_s = roots, max_depth, ttl_s
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
        self._scanned_at = -float("inf")
        self._facts: dict[tuple[str, Path], tuple[tuple, dict[str, Any]]] = {}
        self._image_index: dict[Path, tuple[tuple, dict[str, tuple[str, str]]]] = {}

    # ------------------------------------------------------------------ listings

    def checkpoints(self) -> list[dict[str, Any]]:
        """``/api/checkpoints``: every checkpoint folder, JSON-ready."""
        return self._listing("checkpoints")

    def galleries(self) -> list[dict[str, Any]]:
        """``/api/galleries``: every gallery (FILE.safetensors + FILE.json), JSON-ready."""
        return self._listing("galleries")

    def recordings(self) -> list[dict[str, Any]]:
        """``/api/recordings``: raw files, BIDS recordings and session folders, JSON-ready."""
        return self._listing("recordings")

    def generators(self) -> list[dict[str, Any]]:
        """``/api/generators``: every generator folder (generator.json), JSON-ready."""
        return self._listing("generators")

    def refresh(self) -> None:
        """Forget the last scan: the next call walks the roots again (a session was recorded)."""
        with self._lock:
            self._scanned_at = -float("inf")

    def _listing(self, kind: str) -> list[dict[str, Any]]:
        entries = self._scan()[kind].values()
        return [{k: v for k, v in e.items() if k != "abspath"} for e in entries]

    # ------------------------------------------------------------------ lookups

    def checkpoint(self, ref: str) -> dict[str, Any]:
        """The checkpoint named by id or path (a folder with config.json + model.safetensors).

        Lookups return the entry with ``"abspath"``; Forbidden outside the roots, NotFound
        (listing the ids) when nothing matches, InputError when its files do not read.
        """
        return self._lookup("checkpoints", ref, "a checkpoint folder (config.json + "
                            "model.safetensors)")

    def gallery(self, ref: str) -> dict[str, Any]:
        """The gallery named by id or path (FILE, FILE.safetensors or FILE.json)."""
        return self._lookup("galleries", ref, "a gallery (FILE.safetensors + FILE.json)")

    def recording(self, ref: str) -> dict[str, Any]:
        """The recording named by id or path (a raw file, .ds folder, BIDS root or session)."""
        return self._lookup("recordings", ref, "a recording (FIF, BrainVision, EDF, BDF, "
                            "EEGLAB, XDF, a CTF .ds folder, a BIDS root or a session folder)")

    def generator(self, ref: str) -> dict[str, Any]:
        """The generator folder named by id or path (generator.json beside its weights)."""
        return self._lookup("generators", ref, "a generator folder (generator.json beside its weights)")

    def gallery_image(self, gallery_id: str, image_id: str) -> tuple[Path, str]:
        """``(real path, sha256)`` of image ``image_id`` of a gallery, from its sidecar."""
        entry = self.gallery(gallery_id)
        tensor = entry["abspath"]
        sidecar = gallery_files(tensor)[1]
        with self._lock:
            signature = _signature(tensor, sidecar)
            cached = self._image_index.get(tensor)
            if cached is None or cached[0] != signature:
                cached = signature, _read_image_index(sidecar)
                self._image_index[tensor] = cached
        index = cached[1]
        if image_id not in index:
            shown = list(itertools.islice(index, 5))  # a gallery may hold a million ids
            more = f", and {len(index) - len(shown)} more" if len(index) > len(shown) else ""
            raise NotFound(f"an image id of gallery {entry['id']}",
                           f"{image_id!r}; its ids are {', '.join(shown)}{more}",
                           "use an id from the gallery's sidecar (frames' topk[i].id)")
        path, sha256 = index[image_id]
        image = Path(path) if Path(path).is_absolute() else sidecar.parent / path
        return self.roots.resolve(str(image)), sha256

    def _lookup(self, kind: str, ref: str, what: str) -> dict[str, Any]:
        entries = self._scan()[kind]
        if ref in entries:
            return _readable(kind, entries[ref])

        def not_found(why: str) -> NotFound:
            return NotFound(f"{what}: an id from /api/{kind} or a path inside the data roots",
                            f"{ref!r}, {why}; the ids are {listing(list(entries)) or 'none'}",
                            f"pick one of those (GET /api/{kind}), or put the file in a data root")

        try:
            path = self.roots.resolve(ref)
        except NotFound:
            if kind != "galleries":
                raise not_found("which names nothing") from None
            try:  # a gallery is named FILE as often as FILE.safetensors
                path = self.roots.resolve(ref + ".safetensors")
            except NotFound:
                raise not_found("which names nothing") from None
        found = _classify(path, kind)
        if found is None:
            raise not_found(f"which is {self.roots.relative(path)}, not one")
        entry = next((e for e in entries.values() if e["abspath"] == found[0]), None)
        return _readable(kind, entry or self._entry(kind, *found))

    # ------------------------------------------------------------------ scanning

    def _scan(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self._lock:
            if time.monotonic() - self._scanned_at < self.ttl_s:
                return self._entries
            started = time.monotonic()
            entries: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
            for kind, path, rkind in self._walk():
                entry = self._entry(kind, path, rkind)
                entries[kind].setdefault(entry["id"], entry)
            for kind in KINDS:
                entries[kind] = dict(sorted(entries[kind].items(), key=lambda kv: kv[1]["path"]))
            seen = {(k, e["abspath"]) for k in KINDS for e in entries[k].values()}
            self._facts = {key: value for key, value in self._facts.items() if key in seen}
            self._entries, self._scanned_at = entries, time.monotonic()
            logger.debug("scanned %s in %.2f s: %s", self.roots, time.monotonic() - started,
                         {k: len(v) for k, v in entries.items()})
            return entries

    def _walk(self) -> Iterator[tuple[str, Path, str | None]]:
        """``(kind, real path, recording kind)`` of everything in the roots, each once."""
        depth_left: dict[Path, int] = {}  # real folder -> depth left when last walked
        found: set[Path] = set()
        stack = [(root, self.max_depth, False) for root in reversed(self.roots.paths)]
        while stack:
            folder, left, in_bids = stack.pop()
            if depth_left.get(folder, -1) >= left:
                continue  # walked already, as deep (nested roots, symlinked folders)
            depth_left[folder] = left
            try:
                children = sorted(os.scandir(folder), key=lambda d: d.name)
            except OSError as err:
                logger.debug("cannot list %s: %s", folder, err)
                continue
            names = {c.name for c in children}
            in_bids = in_bids or "dataset_description.json" in names
            leaf = _classify_folder(folder, names, in_bids)
            if leaf is not None:
                yield leaf
                continue
            for child in children:
                if child.is_dir():
                    if left > 0 and not child.name.startswith(".") and child.name not in SKIP_FOLDERS:
                        real = Path(child.path).resolve()
                        if self.roots.contains(real):  # else a symlink out of the roots
                            stack.append((real, left - 1, in_bids))
                    continue
                item = _classify_file(Path(child.path), child.name, names, in_bids)
                if item is None:
                    continue
                real = item[1].resolve()
                if self.roots.contains(real) and real not in found:
                    found.add(real)
                    yield item[0], real, item[2]

    def _entry(self, kind: str, path: Path, rkind: str | None) -> dict[str, Any]:
        """The entry for a classified path, with facts from the cache where still valid."""
        stem = path.name
        if path.is_file() or path.suffix.lower() == ".ds":
            stem = stem.removesuffix(".gz").rsplit(".", 1)[0]
        reader, keys, files = _READERS[kind]
        signature = _signature(*files(path))
        with self._lock:
            cached = self._facts.get((kind, path))
            if cached is None or cached[0] != signature:
                cached = signature, _read_facts(reader, keys, path, rkind)
                self._facts[(kind, path)] = cached
        entry = {"id": entry_id(stem, path), "name": stem, "path": self.roots.relative(path)}
        if kind == "recordings":
            entry["kind"] = rkind
        return {**entry, **cached[1], "abspath": path}


def _readable(kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``entry``; InputError (400) when its files did not read: never load those."""
    if entry.get("error"):
        raise InputError(f"a readable entry of /api/{kind}", f"{entry['path']} ({entry['id']}): "
                         f"{entry['error']}", _FIX_BUILD if kind == "galleries" else
                         "fix or replace the files as the error says, then try again")
    return dict(entry)


# --------------------------------------------------------------------------- classifying


def _classify_folder(folder: Path, names: set[str], in_bids: bool
                     ) -> tuple[str, Path, str | None] | None:
    """A folder that is one entry (not walked into): generator, checkpoint, session or CTF .ds."""
    if GENERATOR_FILE in names:
        return "generators", folder, None
    if CONFIG_FILE in names and WEIGHTS_FILE in names:
        return "checkpoints", folder, None
    if "session.json" in names:
        return "recordings", folder, "session"
    if folder.suffix.lower() == ".ds":
        return "recordings", folder, "bids" if in_bids and folder.name.startswith("sub-") else "ctf"
    return None


def _classify_file(path: Path, name: str, siblings: set[str], in_bids: bool
                   ) -> tuple[str, Path, str | None] | None:
    lower = name.lower()
    if lower.endswith(".safetensors") and name[: -len(".safetensors")] + ".json" in siblings:
        return "galleries", path, None
    ext = ".fif.gz" if lower.endswith(".fif.gz") else Path(lower).suffix
    if ext in RAW_KINDS and not _NOT_RAW_FIF.search(lower):
        return "recordings", path, "bids" if in_bids and name.startswith("sub-") else RAW_KINDS[ext]
    return None


def _classify(path: Path, kind: str) -> tuple[Path, str | None] | None:
    """``(entry path, recording kind)`` when ``path`` (real, in the roots) is a ``kind``."""
    from glimpse.streaming.bids import bids_root_of, is_bids_root

    if kind == "galleries":
        tensor, sidecar = gallery_files(path)
        return (tensor, None) if tensor.is_file() and sidecar.is_file() else None
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        leaf = _classify_folder(path, names, bids_root_of(path) is not None)
        if leaf is not None and leaf[0] == kind:
            return leaf[1], leaf[2]
        return (path, "bids") if kind == "recordings" and is_bids_root(path) else None
    if kind == "recordings":
        item = _classify_file(path, path.name, set(), bids_root_of(path) is not None)
        return (path, item[2]) if item is not None else None
    return None


# --------------------------------------------------------------------------- facts


def _signature(*paths: Path) -> tuple:
    """(name, mtime, size) of each file: facts are read again when one changes."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((p.name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p.name, None, None))
    return tuple(out)


def _read_facts(reader: Callable[[Path, str | None], dict[str, Any]], keys: tuple[str, ...],
                path: Path, rkind: str | None) -> dict[str, Any]:
    """``reader``'s facts, or every key None and ``"error"`` when the files do not read."""
    try:
        # MNE's warnings about one file go to the debug log with its path, not to stderr.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            facts = reader(path, rkind)
        for w in caught:
            logger.debug("%s: %s", path, w.message)
        return {**facts, "error": None}
    except Exception as err:  # noqa: BLE001 - one unreadable file must not hide the others
        message = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
        logger.info("listed %s with an error: %s", path, message)
        return {**dict.fromkeys(keys), "size_bytes": _size(path), "error": message}


def _size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (files that vanish meanwhile count 0)."""
    files = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]
    total = 0
    for p in files:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def _checkpoint_files(folder: Path) -> tuple[Path, ...]:
    return folder / CONFIG_FILE, folder / WEIGHTS_FILE, folder / "model.onnx"


def _checkpoint_facts(folder: Path, _: str | None) -> dict[str, Any]:
    """From config.json only: the weights are never read to list a checkpoint."""
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if not isinstance(config, dict) or config.get("format") != "glimpse-checkpoint":
        raise InputError("a glimpse checkpoint's config.json (format glimpse-checkpoint)",
                         f"{folder / CONFIG_FILE}", "train one with `glimpse train`")
    names = list(config["channels"]["names"])
    embedder = config["embedder"]
    metrics = {k: v for k, v in (config.get("metrics") or {}).items()
               if isinstance(v, (int, float, str, bool))}
    picks = (config.get("preprocess") or {}).get("picks") or []
    return {"model": config["model"]["name"], "modality": _checkpoint_modality(picks, names),
            "n_chans": len(names), "sfreq": float(config["sfreq"]),
            "window_s": float(config["window"]["seconds"]), "embedder": embedder["name"],
            "dim": int(embedder["dim"]), "subjects": list(config.get("subjects") or []),
            "metrics": metrics,
            "size_bytes": sum(p.stat().st_size for p in _checkpoint_files(folder) if p.is_file()),
            "has_onnx": (folder / "model.onnx").is_file()}


def _generator_facts(folder: Path, _: str | None) -> dict[str, Any]:
    """From generator.json only: a pipeline's weights (gigabytes) are never read to list it."""
    config = json.loads((folder / GENERATOR_FILE).read_text(encoding="utf-8"))
    if not isinstance(config, dict) or not all(k in config for k in ("kind", "embedder", "dim", "size")):
        raise InputError(f'a {GENERATOR_FILE} with "kind", "embedder", "dim" and "size"',
                         f"{folder / GENERATOR_FILE}", "write it again with `glimpse generator train` "
                         "or prepare_generator_folder")
    held_out = ((config.get("metrics") or {}).get("held_out_true_embeddings") or {})
    return {"kind": str(config["kind"]), "embedder": str(config["embedder"]), "dim": int(config["dim"]),
            "size": int(config["size"]),
            "metrics": {k: v for k, v in held_out.items() if isinstance(v, (int, float))}}


def _checkpoint_modality(picks: list[str], names: list[str]) -> str | None:
    """"meg" or "eeg" from the preprocessing's picks, else from the sensor names."""
    if _MEG_TYPES & set(picks):
        return "meg"
    if "eeg" in picks:
        return "eeg"
    if names and sum(bool(_MEG_NAME.match(n)) for n in names) > len(names) / 2:
        return "meg"
    standard = _standard_eeg_names()
    if names and sum(n.lower() in standard for n in names) > len(names) / 2:
        return "eeg"
    return None


@functools.cache
def _standard_eeg_names() -> frozenset[str]:
    import mne

    return frozenset(n.lower() for n in mne.channels.make_standard_montage("standard_1005").ch_names)


def _gallery_facts(tensor: Path, _: str | None) -> dict[str, Any]:
    """From the sidecar: the embeddings are never read to list a gallery."""
    sidecar = _read_sidecar(gallery_files(tensor)[1])
    return {"embedder": str(sidecar["embedder"]), "dim": int(sidecar["dim"]),
            "n": len(sidecar["ids"]), "size_bytes": sum(p.stat().st_size for p in gallery_files(tensor))}


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        ids, paths, hashes = data["ids"], data["paths"], data["hashes"]
        str(data["embedder"]), int(data["dim"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError("a gallery sidecar (JSON with embedder, dim, ids, paths, hashes)",
                         f"{sidecar}, which is unreadable ({type(err).__name__}: {err})",
                         _FIX_BUILD) from None
    if not all(isinstance(v, list) for v in (ids, paths, hashes)) or not len(ids) == len(paths) == len(hashes):
        raise InputError("a gallery sidecar with one id, path and hash per image",
                         f"{sidecar} with {len(ids)} ids, {len(paths)} paths, {len(hashes)} hashes",
                         _FIX_BUILD)
    return data


def _read_image_index(sidecar: Path) -> dict[str, tuple[str, str]]:
    """Image id -> (path, sha256), from the sidecar."""
    data = _read_sidecar(sidecar)
    return {str(i): (str(p), str(h)) for i, p, h in zip(data["ids"], data["paths"], data["hashes"],
                                                         strict=True)}


def _recording_files(path: Path) -> tuple[Path, ...]:
    if (path / "session.json").is_file():  # a live session grows: its samples and markers
        return (path / "session.json", path / "markers.jsonl", *sorted((path / "streams").glob("*/times.f64")))
    return (path,)


def _recording_facts(path: Path, rkind: str | None) -> dict[str, Any]:
    """A session from its JSON and file sizes; anything else opened without its data."""
    if rkind == "session":
        return _session_facts(path)
    from glimpse.streaming.recordings import open_recording

    rec = open_recording(path, preload=False, check_stimuli=False)
    return {"modality": _types_modality(rec.raw.get_channel_types()), "n_chans": len(rec.ch_names),
            "sfreq": rec.sfreq, "duration_s": rec.duration, "n_trials": len(rec.trials),
            "size_bytes": _recording_size(path)}


def _session_facts(folder: Path) -> dict[str, Any]:
    """The first recorded stream's facts; trials are its valid JSON markers."""
    json.loads((folder / "session.json").read_text(encoding="utf-8"))  # a session at all
    streams = sorted((folder / "streams").glob("*/stream.json"))
    if not streams:
        raise InputError("a session folder with a recorded stream", f"{folder}, no streams/*/stream.json",
                         "record at least one stream (glimpse decode --record)")
    meta = json.loads(streams[0].read_text(encoding="utf-8"))
    sfreq = float(meta["sfreq"])
    times = streams[0].parent / "times.f64"
    n_samples = times.stat().st_size // 8 if times.is_file() else 0
    n_trials = 0
    markers = folder / "markers.jsonl"
    if markers.is_file():
        for line in markers.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line
            n_trials += isinstance(record, dict) and record.get("valid", True) \
                and isinstance(record.get("marker"), dict)
    return {"modality": _types_modality(meta.get("ch_types") or []), "n_chans": int(meta["n_chans"]),
            "sfreq": sfreq, "duration_s": n_samples / sfreq if sfreq > 0 else None,
            "n_trials": n_trials, "size_bytes": _size(folder)}


def _types_modality(types: list[str]) -> str | None:
    kinds = {str(t).lower() for t in types}
    return "meg" if kinds & _MEG_TYPES else "eeg" if "eeg" in kinds else None


def _recording_size(path: Path) -> int:
    """A file with its companions of the same stem (.eeg/.vmrk, .fdt); a folder in full."""
    if path.is_dir():
        return _size(path)
    stem = path.name.removesuffix(".gz").rsplit(".", 1)[0]
    return sum(p.stat().st_size for p in path.parent.glob(f"{glob.escape(stem)}.*") if p.is_file())


_READERS: dict[str, tuple[Callable, tuple[str, ...], Callable[[Path], tuple[Path, ...]]]] = {
    "checkpoints": (_checkpoint_facts, _CHECKPOINT_KEYS, _checkpoint_files),
    "galleries": (_gallery_facts, _GALLERY_KEYS, lambda p: gallery_files(p)),
    "recordings": (_recording_facts, _RECORDING_KEYS, _recording_files),
    "generators": (_generator_facts, _GENERATOR_KEYS, lambda p: (p / GENERATOR_FILE,)),
}
