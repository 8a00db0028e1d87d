"""A presentation's design: which images, in which order, for how long, with catch trials.

:class:`PresentationRequest` is what a client posts (JSON, unknown fields refused);
:func:`build_design` turns it into a :class:`Design`: the stimuli (from an image
folder inside the data roots, or a gallery's sidecar) and the trials, seeded, so the
same request always gives the same design.

Defaults follow THINGS-MEG (Hebart et al. 2023): each image 500 ms on a grey
background, then a fixation cross for 1000 +- 200 ms (uniform jitter). Catch trials
keep attention: either an image from ``catch_folder`` (THINGS-MEG's catch images) or,
without one, an immediate repeat of the image just shown (a one-back task); the
subject presses ``response_key`` (a ``KeyboardEvent.code``, "Space" by default). Two
catch trials never follow each other and none comes first.

One design may also hold held-out images (``test_folder``: trial_type "test", each
shown ``test_repeats`` times) beside the calibration images of ``folder`` (trial_type
"exp"), interleaved at seeded places as THINGS-MEG interleaves its test images, or in
a block after them (``mix``). ``n_trials`` asks for exactly that many trials of the
folder's images (whole shuffled passes over them, the last one cut), and
``first_trial`` keeps the design's trials from that index on: the rest of a run that
stopped, re-timed from the lead-in (a calibration that resumes).

Files are only ever taken from the data roots (:class:`~glimpse.service.roots.DataRoots`):
every image path is resolved, symlinks followed, before it enters a design.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from glimpse.models.embedders import IMAGE_SUFFIXES
from glimpse.models.gallery import gallery_files
from glimpse.streaming.channels import listing
from glimpse.streaming.trials import concept_of

from ..errors import Forbidden, InputError, NotFound

__all__ = ["MAX_TRIALS", "Design", "DesignTrial", "PresentationRequest", "Stimulus",
           "build_design", "check_image_file", "folder_images"]

MAX_TRIALS = 20_000  # about 8 h at THINGS-MEG's pace: a bound, not a plan
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
# The first bytes of the image formats of IMAGE_SUFFIXES: PNG, JPEG, BMP, WebP (RIFF....WEBP).
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF")
_SUFFIXES = ", ".join(IMAGE_SUFFIXES)


class PresentationRequest(BaseModel):
    """``POST /api/presentations``: where the images come from, the timings, the markers stream.

    Exactly one of ``folder`` (a folder of images inside the data roots, searched
    recursively unless ``recursive`` is false) and ``gallery`` (a gallery id or path).
    Durations are in ms; ``fixation_ms`` +- ``jitter_ms`` (uniform) is the fixation
    after each image. ``catch_rate`` is the number of catch trials per image trial.
    """

    model_config = ConfigDict(extra="forbid")

    stream: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                        description="the LSL stream the person is recorded on; markers go to <stream>-markers")
    folder: str | None = None
    gallery: str | None = None
    images: list[str] | None = Field(None, min_length=1, max_length=MAX_TRIALS,
                                     description="ids of the images to show (default: all)")
    max_images: int | None = Field(None, ge=1, le=MAX_TRIALS,
                                   description="a seeded sample of at most this many images")
    recursive: bool = True
    ignore_other_files: bool = Field(False, description="skip files that are not images instead of refusing the folder")
    repeats: int = Field(1, ge=1, le=100)
    n_trials: int | None = Field(None, ge=1, le=MAX_TRIALS,
                                 description="exactly this many trials of the images (instead of repeats)")
    trial_type: Literal["exp", "test"] = "exp"
    test_folder: str | None = Field(None, description="held-out images (trial_type test) inside the data roots")
    test_max_images: int | None = Field(None, ge=1, le=MAX_TRIALS,
                                        description="a seeded sample of at most this many held-out images")
    test_repeats: int = Field(1, ge=1, le=100, description="times each held-out image is shown")
    mix: Literal["interleaved", "blocks"] = Field(
        "interleaved", description="held-out trials at seeded places among the others, or in a block after them")
    first_trial: int = Field(0, ge=0, le=MAX_TRIALS, description="the design's trials from this index on (resume)")
    image_ms: float = Field(500.0, ge=10.0, le=10_000.0)
    fixation_ms: float = Field(1000.0, ge=0.0, le=10_000.0)
    jitter_ms: float = Field(200.0, ge=0.0, le=5_000.0)
    lead_in_ms: float = Field(1000.0, ge=0.0, le=30_000.0, description="fixation before the first image")
    catch_rate: float = Field(0.1, ge=0.0, le=0.5)
    catch_folder: str | None = None
    response_key: str = Field("Space", pattern=r"^[A-Za-z0-9]{1,32}$", description="a KeyboardEvent.code")
    response_window_ms: float = Field(1500.0, ge=100.0, le=10_000.0)
    photodiode: Literal["top-left", "top-right", "bottom-left", "bottom-right"] | None = None
    photodiode_px: int = Field(60, ge=8, le=400)
    background: str = Field("#808080", pattern=r"^#[0-9a-fA-F]{6}$")
    image_fraction: float = Field(0.6, gt=0.05, le=1.0, description="image side / the screen's shorter side")
    fixation_px: int = Field(24, ge=4, le=200)
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _check(self) -> PresentationRequest:
        if (self.folder is None) == (self.gallery is None):
            given = "both" if self.folder is not None else "neither"
            raise ValueError(f"exactly one of folder or gallery, not {given}")
        if self.jitter_ms > self.fixation_ms:
            raise ValueError(f"jitter_ms ({self.jitter_ms:g}) at most fixation_ms ({self.fixation_ms:g})")
        if self.n_trials is not None and self.repeats != 1:
            raise ValueError(f"either repeats ({self.repeats}) or n_trials ({self.n_trials}), not both")
        if self.test_folder is not None and self.trial_type != "exp":
            raise ValueError('trial_type "exp" with a test_folder (its images are the "test" trials)')
        return self


@dataclass(frozen=True)
class Stimulus:
    """One image of a design: ``id`` (its path in the folder, or its gallery id; held-out
    images "test/<path>", catch images "catch/<path>"), real path."""

    index: int
    id: str
    path: Path
    concept: str
    catch: bool = False
    test: bool = False


@dataclass(frozen=True)
class DesignTrial:
    """One trial: ``stimulus`` indexes the design's stimuli; times in ms from the run's start."""

    index: int
    stimulus: int
    stim_id: str
    trial_type: str
    catch: bool
    image_ms: float
    isi_ms: float
    planned_onset_ms: float


@dataclass(frozen=True)
class Design:
    """The request, its stimuli and its trials; JSON-ready with :meth:`to_dict`."""

    request: PresentationRequest
    stimuli: tuple[Stimulus, ...]
    trials: tuple[DesignTrial, ...]

    @property
    def duration_ms(self) -> float:
        last = self.trials[-1]
        return last.planned_onset_ms + last.image_ms + last.isi_ms

    def stimulus_of(self, stim_id: str) -> Stimulus | None:
        return next((s for s in self.stimuli if s.id == stim_id), None)

    def to_dict(self, url_of=lambda stimulus: None) -> dict[str, Any]:
        """The design as JSON: settings, stimuli (real paths, ``url_of(stimulus)``), trials."""
        stimuli = [{"index": s.index, "id": s.id, "stim_file": str(s.path), "concept": s.concept,
                    "catch": s.catch, "test": s.test, "url": url_of(s)} for s in self.stimuli]
        return {"settings": self.request.model_dump(mode="json"), "stimuli": stimuli,
                "trials": [asdict(t) for t in self.trials], "n_trials": len(self.trials),
                "n_catch": sum(t.catch for t in self.trials),
                "n_test": sum(t.trial_type == "test" for t in self.trials), "duration_ms": self.duration_ms,
                "catch_task": _catch_task(self.request, sum(t.catch for t in self.trials))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Design:
        """Back from :meth:`to_dict` (a presentation folder's design.json)."""
        request = PresentationRequest.model_validate(data["settings"])
        stimuli = tuple(Stimulus(index=s["index"], id=s["id"], path=Path(s["stim_file"]),
                                 concept=s["concept"], catch=s["catch"], test=s.get("test", False))
                        for s in data["stimuli"])
        return cls(request, stimuli, tuple(DesignTrial(**t) for t in data["trials"]))


def _catch_task(request: PresentationRequest, n_catch: int) -> str:
    """The instruction shown before the run."""
    key = request.response_key.removeprefix("Key").removeprefix("Digit")
    if n_catch == 0:
        return "Keep your eyes on the cross."
    if request.catch_folder is not None:
        return f"Keep your eyes on the cross. Press {key} when you see a catch image."
    return f"Keep your eyes on the cross. Press {key} when an image repeats right away."


def build_design(request: PresentationRequest, roots, catalog) -> Design:
    """The design of ``request``: stimuli from the data roots, seeded trial order.

    Parameters
    ----------
    request : PresentationRequest
    roots : DataRoots
        Only files inside them are used.
    catalog : Catalog
        Finds a gallery by id or path.

    Raises InputError naming the problem: an empty folder, files that are not images,
    ids that are not in the folder or gallery, more trials than :data:`MAX_TRIALS`, a
    ``first_trial`` past the design's end.
    """
    if request.folder is not None:
        found = folder_images(roots, request.folder, recursive=request.recursive,
                              ignore_other_files=request.ignore_other_files)
    else:
        found = _gallery_images(roots, catalog, request.gallery)
    found = _select(found, request, roots)
    test_found: list[tuple[str, Path]] = []
    if request.test_folder is not None:
        test_found = folder_images(roots, request.test_folder, recursive=request.recursive,
                                   ignore_other_files=request.ignore_other_files)
        if request.test_max_images is not None and len(test_found) > request.test_max_images:
            keep = sorted(random.Random(request.seed + 1).sample(range(len(test_found)), request.test_max_images))
            test_found = [test_found[k] for k in keep]
    _check_count(request, len(found), len(test_found))
    catch_found: list[tuple[str, Path]] = []
    if request.catch_folder is not None and request.catch_rate > 0:
        catch_found = folder_images(roots, request.catch_folder, recursive=request.recursive,
                                    ignore_other_files=request.ignore_other_files)
    stimuli = [Stimulus(i, sid, path, _concept(sid, path)) for i, (sid, path) in enumerate(found)]
    stimuli += [Stimulus(len(stimuli) + i, f"test/{sid}", path, _concept(sid, path), test=True)
                for i, (sid, path) in enumerate(test_found)]
    stimuli += [Stimulus(len(stimuli) + i, f"catch/{sid}", path, _concept(sid, path), catch=True)
                for i, (sid, path) in enumerate(catch_found)]
    trials = _trials(request, stimuli)
    if request.first_trial:
        trials = _rest(request, trials)
    return Design(request, tuple(stimuli), tuple(trials))


def _check_count(request: PresentationRequest, n_images: int, n_test: int) -> None:
    n_main = request.n_trials if request.n_trials is not None else n_images * request.repeats
    n_trials = (n_main + n_test * request.test_repeats) * (1 + request.catch_rate)
    if n_trials > MAX_TRIALS:
        raise InputError(f"at most {MAX_TRIALS} trials", f"about {n_trials:.0f} ({n_main} image trials, "
                         f"{n_test} held-out images x {request.test_repeats} + catch trials)",
                         "set max_images, n_trials or fewer repeats")


def _concept(stim_id: str, path: Path) -> str:
    """THINGS' layout names the concept by the folder (<concept>/<image>); a flat folder by
    the file name without its exemplar suffix (aardvark_01b.jpg -> aardvark)."""
    if "/" in stim_id:
        return concept_of(path)
    return re.sub(r"[_-]\d+[a-z]?$", "", Path(stim_id).stem)


def folder_images(roots, folder: str, *, recursive: bool = True,
                  ignore_other_files: bool = False) -> list[tuple[str, Path]]:
    """``(id, real path)`` of every image in ``folder`` (inside the roots), sorted by id.

    The id is the path relative to the folder (posix). Hidden files and folders are
    skipped. InputError when there is no image, when other files are there (named;
    unless ``ignore_other_files``), or when a file named as an image is not one.
    """
    base = roots.resolve(folder)
    if not base.is_dir():
        raise InputError(f"a folder of images ({_SUFFIXES}) inside the data roots",
                         f"{folder!r}, which is a file", "name the folder that holds the images")
    files = base.rglob("*") if recursive else base.iterdir()
    images: list[tuple[str, Path]] = []
    others: list[str] = []
    for path in sorted(files):
        rel = path.relative_to(base)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append((rel.as_posix(), roots.resolve(path)))
        else:
            others.append(rel.as_posix())
    where = roots.relative(base)
    if not images:
        raise InputError(f"a folder with at least one image ({_SUFFIXES})",
                         f"{where}, which holds no image" + (f" (only {listing(others, 5)})" if others else ""),
                         "point folder at a folder of images inside the data roots")
    if others and not ignore_other_files:
        raise InputError(f"a folder holding only images ({_SUFFIXES})",
                         f"{where} with {len(others)} other file(s): {listing(others, 8)}",
                         "move them out, point folder at the images' own folder, or pass "
                         "ignore_other_files=true")
    _check_images([p for _, p in images], lambda p: p.relative_to(base).as_posix()
                  if p.is_relative_to(base) else str(p), where)
    return images


def check_image_file(path: Path) -> str | None:
    """None when ``path`` starts as an image does (PNG, JPEG, BMP, WebP), else why not.

    Any of them, whatever the suffix says: browsers sniff the content, and collections
    hold PNG files named .jpg.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if any(head.startswith(m) for m in _MAGIC) and (not head.startswith(b"RIFF") or head[8:12] == b"WEBP"):
        return None
    return f"starts with {head[:8]!r}" if head else "empty"


def _check_images(paths: list[Path], shown, where: str) -> None:
    bad = [(p, why) for p in paths if (why := check_image_file(p)) is not None]
    if bad:
        raise InputError(f"image files ({_SUFFIXES} content)",
                         f"{len(bad)} in {where} that are not images: "
                         + listing([f"{shown(p)} ({why})" for p, why in bad], 5),
                         "replace or remove them (a browser could not show them)")


def _gallery_images(roots, catalog, ref: str | None) -> list[tuple[str, Path]]:
    """``(gallery id, real path)`` of every image of a gallery, in the sidecar's order."""
    entry = catalog.gallery(ref)
    sidecar = gallery_files(entry["abspath"])[1]
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        ids, paths = [str(i) for i in data["ids"]], [str(p) for p in data["paths"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError("a gallery sidecar with ids and paths", f"{sidecar} ({err})",
                         "rebuild it with `glimpse gallery build`") from None
    if not ids or len(ids) != len(paths):
        raise InputError("a gallery with one path per image id", f"{len(ids)} ids, {len(paths)} paths "
                         f"in {sidecar}", "rebuild it with `glimpse gallery build`")
    return [(i, Path(p) if Path(p).is_absolute() else sidecar.parent / p) for i, p in zip(ids, paths)]


def _select(found: list[tuple[str, Path]], request: PresentationRequest,
            roots) -> list[tuple[str, Path]]:
    """The requested ``images`` (in their order), then a seeded sample of ``max_images``;
    every chosen path resolved inside the roots and checked."""
    if request.images is not None:
        by_id = dict(found)
        unknown = [i for i in request.images if i not in by_id]
        if unknown:
            source = request.folder if request.folder is not None else request.gallery
            raise NotFound(f"image ids of {source!r}", f"{listing(unknown, 5)}, which are not in it; "
                           f"its ids are {listing(list(by_id), 5)}", "name images the folder or "
                           "gallery holds (ids are paths relative to it)")
        found = [(i, by_id[i]) for i in dict.fromkeys(request.images)]
    if request.max_images is not None and len(found) > request.max_images:
        keep = sorted(random.Random(request.seed).sample(range(len(found)), request.max_images))
        found = [found[k] for k in keep]
    if request.gallery is not None:  # folder images were resolved and checked as they were listed
        missing = [i for i, p in found if not p.exists()]
        if missing:
            raise NotFound("the gallery's image files", f"{listing(missing, 5)} missing",
                           "restore the images or rebuild the gallery")
        # Sidecar paths are relative to the sidecar and may climb ("../images/x.png"):
        # judged by where they really are, as every path here.
        outside = [i for i, p in found if not roots.contains(p)]
        if outside:
            raise Forbidden(f"gallery images inside the data roots ({roots})", f"{listing(outside, 5)} outside",
                            "move the images into a data root, or add their folder with --data")
        found = [(i, p.resolve()) for i, p in found]
        _check_images([p for _, p in found], str, f"gallery {request.gallery!r}")
    return found


def _trials(request: PresentationRequest, stimuli: list[Stimulus]) -> list[DesignTrial]:
    """Images x repeats in a seeded order (no image twice in a row), held-out images mixed
    in, catch trials inserted."""
    rng = random.Random(request.seed)
    main = [s for s in stimuli if not s.catch and not s.test]
    catch_images = [s for s in stimuli if s.catch]
    order = _main_order(request, [s.index for s in main], rng)
    test = [s.index for s in stimuli if s.test for _ in range(request.test_repeats)]
    if test:
        rng.shuffle(test)
        if request.mix == "blocks":  # each block spread on its own: no test image moves up
            _spread_repeats(order, rng)
            _spread_repeats(test, rng)
            order = order + test
        else:  # seeded places among the others, as THINGS-MEG spreads its test images
            places = set(rng.sample(range(len(order) + len(test)), len(test)))
            rest, held = iter(order), iter(test)
            order = [next(held) if k in places else next(rest) for k in range(len(order) + len(test))]
    if not (test and request.mix == "blocks"):
        _spread_repeats(order, rng)
    n_catch = round(request.catch_rate * len(order))
    if request.catch_folder is not None and not catch_images:
        n_catch = 0
    after = set(rng.sample(range(len(order)), n_catch)) if n_catch else set()
    rng.shuffle(catch_images)
    sequence: list[tuple[Stimulus, bool]] = []
    n_catch_shown = 0
    for k, index in enumerate(order):
        sequence.append((stimuli[index], False))
        if k in after:  # a catch image in turn, or this image again (one-back)
            shown = catch_images[n_catch_shown % len(catch_images)] if catch_images else stimuli[index]
            sequence.append((shown, True))
            n_catch_shown += 1
    trials, onset = [], request.lead_in_ms
    for i, (stimulus, catch) in enumerate(sequence):
        isi = request.fixation_ms + rng.uniform(-request.jitter_ms, request.jitter_ms)
        isi = round(max(isi, 0.0), 1)
        kind = "catch" if catch else "test" if stimulus.test else request.trial_type
        trials.append(DesignTrial(index=i, stimulus=stimulus.index, stim_id=stimulus.id, trial_type=kind, catch=catch,
                                  image_ms=request.image_ms, isi_ms=isi, planned_onset_ms=round(onset, 1)))
        onset += request.image_ms + isi
    return trials


def _main_order(request: PresentationRequest, indices: list[int], rng: random.Random) -> list[int]:
    """The folder's images x repeats, shuffled; with ``n_trials``, whole shuffled passes
    over the images (each shown k or k+1 times), the last pass cut."""
    if request.n_trials is None:
        order = [i for i in indices for _ in range(request.repeats)]
        rng.shuffle(order)
        return order
    order: list[int] = []
    while len(order) < request.n_trials:
        block = list(indices)
        rng.shuffle(block)
        order += block
    return order[:request.n_trials]


def _rest(request: PresentationRequest, trials: list[DesignTrial]) -> list[DesignTrial]:
    """Trials ``first_trial`` on, numbered from 0 and re-timed from the lead-in; a catch
    trial that would come first is dropped (its one-back image was in the other run)."""
    n = len(trials)
    if request.first_trial >= n:
        raise InputError(f"first_trial below the design's {n} trials", str(request.first_trial),
                         "resume from a trial that was not shown (or create a new design)")
    rest = list(trials[request.first_trial:])
    while rest and rest[0].catch:
        rest.pop(0)
    if not rest:
        raise InputError(f"image trials from first_trial {request.first_trial} on", "catch trials only",
                         "nothing is left to show: the run had ended")
    out, onset = [], request.lead_in_ms
    for i, t in enumerate(rest):
        out.append(replace(t, index=i, planned_onset_ms=round(onset, 1)))
        onset += t.image_ms + t.isi_ms
    return out


def _spread_repeats(order: list[int], rng: random.Random, tries: int = 64) -> None:
    """Swap away immediate repeats where a random other place allows it: a repeat is the
    one-back task's catch signal, so ordinary trials should not make one by chance."""
    n = len(order)
    for i in range(1, n):
        if order[i] != order[i - 1]:
            continue
        for j in rng.sample(range(n), min(n, tries)):
            if order[j] == order[i]:
                continue
            order[i], order[j] = order[j], order[i]
            if all(order[k] != order[k - 1] for k in {i, i + 1, j, j + 1} if 0 < k < n):
                break
            order[i], order[j] = order[j], order[i]
