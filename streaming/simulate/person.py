"""A simulated person: the world they live in, and what each image evokes in them.

The **world** is everything a simulated session shares between subjects: the
:class:`SimulationConfig` (seed, stimuli, sensors, sfreq, SNR), the head model
and the visual source groups. The default world is the config's defaults; a
world read from a session root (``simulation.json``) is the world a base model
trained on that session knows.

A **person** is one subject of that world. The offline simulator numbers its
subjects ``1..subjects`` (``sub-01`` is subject_index 1); a live person with
subject seed N is subject_index ``SUBJECT_INDEX_BASE + N`` (1000 + N), so it
never coincides with a subject of a session (at most 99) and every seed is a new
person: new dipole orientations, gains and latency shifts, the same shared
patterns. Its response to an image is exactly what :func:`build_response_model`
gives that subject_index for the same :class:`Stimulus`.

Which image a marker names (``stim_file``, matched on its trailing
``stimuli/...`` part, so an absolute path, a path under a data root and a URL
path all match):

- an image of the world's catalogue (``build_catalogue``): its own response;
- ``stimuli/<split>/<concept>/<concept>_<N>.png`` of any concept the simulator
  draws (shape family x variant) but not in the catalogue: the exemplar is
  regenerated from the world's seed exactly as :func:`build_catalogue` draws
  exemplar N (so :func:`fresh_stimuli` images, drawn for calibration, evoke
  their own responses without being shipped to the person);
- a stimulus registered with :meth:`SimulatedPerson.add_stimuli` (by its path);
- ``trial_type == "catch"``: the catch image's response, whatever the file;
- anything else: the person's **generic** response, the mean of their responses
  over the world's training and test images (what an image shows cannot be
  known, that an image came can), counted as unknown.

:class:`PersonSignal` is what the person's sensors carry: the offline simulator's
noise for that subject_index (noise model, SNR scaling, seeds), plus the evoked
responses added from their onset samples, rendered forwards in any pieces with
the same result (the live stream and :meth:`LivePerson.render
<glimpse.streaming.simulate.live.LivePerson.render>` share it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..errors import InputError
from .config import SimulationConfig
from .design import build_catalogue, make_schedule
from .noise import ARTEFACTS, NoiseStream, build_noise_model
from .physics import HeadModel, ResponseModel, build_head_model, build_response_model, sensor_info, source_groups
from .stimuli import CATCH_CONCEPT, CATCH_PATH, FAMILIES, VARIANTS, Stimulus, catch_stimulus, sample_stimulus

__all__ = ["SUBJECT_INDEX_BASE", "Evoked", "PersonSignal", "SimulatedPerson", "World", "exemplar_stimulus",
           "fresh_stimuli", "load_world", "stimulus_key", "subject_index_for"]

#: subject_index of the live person with subject seed 0; the offline simulator's
#: subjects are 1..99, so a live person is never one of a session's subjects.
SUBJECT_INDEX_BASE = 1000
SIMULATION_JSON = "simulation.json"
NOISE_BLOCK_S = 0.25  # noise is generated this much at a time, ahead of the pushes
MAX_PENDING = 256  # responses in flight; beyond, the oldest is dropped and counted
_BLINK_MARGIN_S = 5.0
_EXEMPLAR = re.compile(r"^stimuli/(?P<split>[A-Za-z0-9_-]+)/(?P<concept>[a-z]+_[a-z]+)/(?P=concept)_(?P<nr>\d+)\.png$")


def subject_index_for(subject_seed: int) -> int:
    """The simulator's subject_index of the live person with this seed: ``1000 + seed``."""
    if not (isinstance(subject_seed, (int, np.integer)) and not isinstance(subject_seed, bool)
            and 0 <= subject_seed < 2**31):
        raise InputError("--subject-seed, an integer in [0, 2**31)", repr(subject_seed),
                         "pass e.g. --subject-seed 0 (each seed is another person)")
    return SUBJECT_INDEX_BASE + int(subject_seed)


@dataclass
class World:
    """The config, head model, source groups and stimulus catalogue a person lives in."""

    config: SimulationConfig
    head: HeadModel
    groups: dict[str, np.ndarray]
    stimuli: list[Stimulus]
    root: Path | None = None

    @classmethod
    def build(cls, config: SimulationConfig | None = None, *, modality: str | None = None,
              root: str | os.PathLike | None = None) -> World:
        """The world of ``config`` (default: the defaults, with ``modality`` if given).

        Costs the forward model: about a second for MEG at the default 12 mm spacing.
        """
        if config is None:
            config = SimulationConfig(modality="meg" if modality is None else modality)
        elif not isinstance(config, SimulationConfig):
            raise InputError("a SimulationConfig", type(config).__name__,
                             "build one with SimulationConfig(...)")
        elif modality is not None and modality != config.modality:
            raise InputError(f"--modality to match the world's ({config.modality!r})",
                             repr(modality), "leave --modality out, or pick a world of that modality")
        config.validate()
        info = sensor_info(config.modality, config.resolved_sfreq, config.line_freq)
        head = build_head_model(info, config.modality, config.source_spacing_mm)
        return cls(config=config, head=head, groups=source_groups(head, config.seed),
                   stimuli=build_catalogue(config), root=None if root is None else Path(root))

    @property
    def sfreq(self) -> float:
        return self.config.resolved_sfreq

    @property
    def ch_names(self) -> list[str]:
        return list(self.head.info.ch_names)

    @property
    def n_chans(self) -> int:
        return len(self.head.info.ch_names)


def world_config(root: str | os.PathLike) -> SimulationConfig:
    """The :class:`SimulationConfig` recorded in ``root/simulation.json``."""
    root = Path(root)
    path = root / SIMULATION_JSON
    fix = ("pass the --out folder of a finished `glimpse simulate` run as --world, "
           "or leave --world out to use the default world")
    if not root.is_dir():
        raise InputError("--world, a folder written by `glimpse simulate`",
                         f"{root}: no such folder", fix)
    if not path.is_file():
        raise InputError(f"{path} (written by `glimpse simulate --out {root}`)", "no such file", fix)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path} as JSON", f"unreadable: {err}",
                         "regenerate it with `glimpse simulate`") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise InputError(f"{path} with a 'config' object", "none in the file",
                         "regenerate it with `glimpse simulate`")
    return SimulationConfig.from_dict(record["config"])


def load_world(root: str | os.PathLike, *, modality: str | None = None) -> World:
    """The world of a simulated session root (its ``simulation.json``)."""
    return World.build(world_config(root), modality=modality, root=root)


def stimulus_key(stim_file: object) -> str | None:
    """The trailing ``stimuli/...`` part of a marker's ``stim_file``, or None.

    Accepts absolute and relative paths, Windows separators and URL paths (a
    scheme and host, a query and a fragment are dropped; %-escapes decoded).
    """
    if not isinstance(stim_file, str) or not stim_file.strip():
        return None
    text = stim_file.strip()
    if "://" in text:
        text = text.split("://", 1)[1].partition("/")[2]
    text = unquote(text.split("#", 1)[0].split("?", 1)[0]).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    starts = [i for i, p in enumerate(parts[:-1]) if p == "stimuli"]
    return "/".join(parts[starts[-1]:]) if starts else None


def exemplar_stimulus(config: SimulationConfig, split: str, family: str, variant: str,
                      exemplar_nr: int, image_nr: int = 0) -> Stimulus:
    """Exemplar ``exemplar_nr`` of a concept, drawn as :func:`build_catalogue` draws it.

    The properties come from the generator keyed by (seed, family, variant,
    exemplar), so exemplars beyond the catalogue's are new images of the same
    world; ``split`` only names the folder of the path.
    """
    rng = np.random.default_rng([config.seed, 102, FAMILIES.index(family), VARIANTS.index(variant), exemplar_nr])
    stim = sample_stimulus(image_nr, split, family, variant, exemplar_nr, rng)
    return dataclasses.replace(stim, path=f"stimuli/{split}/{stim.concept}/{stim.concept}_{exemplar_nr:02d}.png")


def fresh_stimuli(config: SimulationConfig, n_per_concept: int, *, concepts: list[str] | None = None,
                  split: str = "fresh", first: int | None = None) -> list[Stimulus]:
    """New exemplars of the world's concepts (default: its training concepts), for calibration.

    Numbered from ``first`` (default: after the catalogue's exemplars); their paths
    (``stimuli/<split>/<concept>/<concept>_NN.png``) are all a live person needs to
    respond to them. Draw them with :func:`glimpse.streaming.simulate.stimuli.draw_stimulus`.
    """
    train = sorted({s.concept for s in build_catalogue(config) if s.split == "train"})
    concepts = train if concepts is None else list(concepts)
    start = max(config.exemplars, config.test_exemplars) + 1 if first is None else int(first)
    out = []
    for concept in concepts:
        family, _, variant = concept.partition("_")
        if family not in FAMILIES or variant not in VARIANTS:
            raise InputError("concepts named <family>_<variant> of the simulator's shapes",
                             repr(concept), f"pick from the world's training concepts, e.g. {train[:3]}")
        out += [exemplar_stimulus(config, split, family, variant, k) for k in range(start, start + n_per_concept)]
    return out


@dataclass(frozen=True)
class Evoked:
    """What one marker evokes: ``topography @ time_courses`` from the onset.

    ``kind``: "world" (catalogue image), "fresh" (regenerated or registered
    exemplar), "catch" or "unknown" (generic response).
    """

    topography: np.ndarray  # (n_chans, n_components)
    kind: str
    stim_path: str | None  # the stimuli/... key, or the marker's stim_file when it has none


class SimulatedPerson:
    """One subject of a world: a topography per image, one set of component time courses.

    ``subject_index`` overrides the seed's (``subject_index=k`` is the offline
    session's ``sub-0k``: the check that the live person responds as the written
    session's subjects do).
    """

    def __init__(self, world: World, subject_seed: int = 0, *, subject_index: int | None = None):
        self.world = world
        self.subject_seed = subject_seed
        self.subject_index = subject_index_for(subject_seed) if subject_index is None else int(subject_index)
        self.stimuli = list(world.stimuli)
        if not any(s.split == "catch" for s in self.stimuli):  # the catch image exists in every world
            self.stimuli.append(catch_stimulus(len(self.stimuli) + 1))
        self.model = self._response_model(self.stimuli)
        self.time_courses = self.model.time_courses
        self.latencies = dict(self.model.latencies)
        self._lock = threading.Lock()
        # path -> (stimulus, topography, kind): the catalogue, then fresh exemplars as they come.
        self._known = {s.path: (s, self.model.topographies[row], "catch" if s.split == "catch" else "world")
                       for row, s in enumerate(self.stimuli)}
        rows = [row for row, s in enumerate(self.stimuli) if s.split in ("train", "test")]
        self.generic = self.model.topographies[rows].mean(axis=0)
        self.catch = self._known[CATCH_PATH][1]

    def _response_model(self, stimuli: list[Stimulus]) -> ResponseModel:
        from .session import RESPONSE_TAIL  # the offline simulator's response length

        config = self.world.config
        return build_response_model(
            self.world.head, self.world.groups, stimuli, seed=config.seed,
            subject_index=self.subject_index, variability=config.subject_variability,
            latencies=config.latencies, sfreq=config.resolved_sfreq,
            response_duration=config.latencies["offset"] + RESPONSE_TAIL,
        )

    @property
    def n_times(self) -> int:
        """Samples of one evoked response, from the onset."""
        return int(self.time_courses.shape[1])

    def topography(self, stim: Stimulus) -> np.ndarray:
        """``(n_chans, n_components)``: this person's response to any stimulus."""
        with self._lock:
            known = self._known.get(stim.path)
        if known is not None and known[0] == dataclasses.replace(stim, image_nr=known[0].image_nr):
            return known[1]  # the same image (image_nr does not drive the response)
        return self._response_model([stim]).topographies[0]

    def response(self, stim: Stimulus) -> np.ndarray:
        """``(n_chans, n_times)`` noise-free response from the onset (T or V)."""
        return self.topography(stim) @ self.time_courses

    def add_stimuli(self, stimuli: list[Stimulus]) -> SimulatedPerson:
        """Register stimuli by ``path`` (``stimuli/...``), so markers naming them evoke their response."""
        for stim in stimuli:
            if not isinstance(stim, Stimulus) or stimulus_key(stim.path) != stim.path:
                raise InputError("Stimulus objects whose path starts with 'stimuli/'",
                                 repr(getattr(stim, "path", stim)),
                                 "set path=f'stimuli/<split>/<concept>/<name>.png' (dataclasses.replace)")
        fresh = [s for s in stimuli if s.path not in self._known]
        if fresh:
            topographies = self._response_model(fresh).topographies
            with self._lock:
                self._known.update({s.path: (s, t, "fresh") for s, t in zip(fresh, topographies)})
        return self

    def evoke(self, marker: dict[str, Any]) -> Evoked:
        """The response one image marker ``{"stim_file", "concept", "trial_type"}`` evokes."""
        key = stimulus_key(marker.get("stim_file"))
        if marker.get("trial_type") == CATCH_CONCEPT:
            return Evoked(self.catch, "catch", key)
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return Evoked(known[1], known[2], key)
        match = _EXEMPLAR.match(key or "")  # an exemplar the world's seed can draw
        if match is not None:
            family, _, variant = match["concept"].partition("_")
            if family in FAMILIES and variant in VARIANTS and int(match["nr"]) >= 1:
                stim = exemplar_stimulus(self.world.config, match["split"], family, variant, int(match["nr"]))
                if stim.path == key:  # the same zero-padding as the simulator writes
                    self.add_stimuli([stim])
                    return Evoked(self._known[key][1], "fresh", key)
        stim_file = marker.get("stim_file")
        return Evoked(self.generic, "unknown", key or (None if stim_file is None else str(stim_file)))


class PersonSignal:
    """A person's sensor signal: noise plus evoked responses, rendered forwards in any pieces.

    The noise is the offline simulator's for ``person.subject_index`` (its noise model,
    SNR scaling and seeds), generated in fixed blocks of ``NOISE_BLOCK_S``: the samples
    depend on the seeds alone, never on how they are asked for. ``noise=False`` gives the
    evoked responses alone.
    """

    def __init__(self, person: SimulatedPerson, noise: bool):
        world = person.world
        self.person, self.n_chans, self.sfreq = person, world.n_chans, world.sfreq
        self.pending: list[tuple[int, np.ndarray]] = []
        self.n_dropped = 0
        self._buf = np.zeros((self.n_chans, 0))
        self._buf_start = 0
        self._stream = _noise_stream(person) if noise else None
        self._block = max(1, int(round(NOISE_BLOCK_S * self.sfreq)))
        self._blink_rng = np.random.default_rng([world.config.seed, 404, person.subject_index])
        self._blink_rate = self._blink_rng.uniform(0.15, 0.3)  # blinks per second, as the noise model draws

    def add(self, onset: int, topography: np.ndarray) -> None:
        """Add ``topography @ time_courses`` from sample ``onset``; samples already rendered keep none of it."""
        if len(self.pending) >= MAX_PENDING:
            self.pending.pop(0)
            self.n_dropped += 1
        self.pending.append((int(onset), topography))

    def render(self, a: int, b: int) -> np.ndarray:
        """``(n_chans, b - a)``: samples ``[a, b)``; ``a`` never goes back."""
        out = self._noise(a, b)
        tc, n_resp = self.person.time_courses, self.person.n_times
        kept = []
        for onset, topo in self.pending:
            lo, hi = max(onset, a), min(onset + n_resp, b)
            if lo < hi:
                out[:, lo - a: hi - a] += topo @ tc[:, lo - onset: hi - onset]
            if onset + n_resp > b:
                kept.append((onset, topo))
        self.pending = kept
        return out

    def _noise(self, a: int, b: int) -> np.ndarray:
        if self._stream is None:
            return np.zeros((self.n_chans, b - a))
        if a < self._buf_start:
            raise RuntimeError(f"PersonSignal.render: sample {a} was rendered already")
        while self._buf_start + self._buf.shape[1] < b:
            self._extend_blinks(self._stream.sample + self._block)
            self._buf = np.concatenate([self._buf, self._stream.next(self._block)], axis=1)
        out = self._buf[:, a - self._buf_start: b - self._buf_start].copy()
        self._buf = self._buf[:, b - self._buf_start:]
        self._buf_start = b
        return out

    def _extend_blinks(self, until: int) -> None:
        """EEG blinks beyond the session length the noise model drew them for (same statistics)."""
        model, sfreq = self._stream.model, self.sfreq
        amplitude = ARTEFACTS[self.person.world.config.modality]["blink"]
        onsets = list(model.blink_onsets)
        if amplitude <= 0 or (onsets and onsets[-1] > until + _BLINK_MARGIN_S * sfreq):
            return
        amps = list(model.blink_amps)
        last = onsets[-1] if onsets else 0
        while last <= until + 2 * _BLINK_MARGIN_S * sfreq:
            last += int(round(max(self._blink_rng.exponential(1 / self._blink_rate), 1.0) * sfreq))
            onsets.append(last)
            amps.append(amplitude * self._blink_rng.uniform(0.7, 1.3))
        model.blink_onsets, model.blink_amps = np.array(onsets, np.int64), np.array(amps)


def _noise_stream(person: SimulatedPerson) -> NoiseStream:
    """The noise of the offline simulator's subject ``person.subject_index`` (seeds 401, 402)."""
    from .session import _signal_power  # the SNR's definition, shared with the sessions

    world, config = person.world, person.world.config
    index, sfreq = person.subject_index, world.sfreq
    schedule = make_schedule(config, person.stimuli[: len(world.stimuli)], index)
    n_window = int(round((config.stim_duration + config.offset_latency) * sfreq))
    power = _signal_power(person.model, schedule, world.head.posterior, n_window)
    model = build_noise_model(
        world.head, world.groups, sfreq=sfreq, line_freq=config.line_freq, signal_power=power,
        snr_db=config.snr_db, mix=config.noise_mix, rng=np.random.default_rng([config.seed, 401, index]),
        n_times=schedule.n_times,
    )
    return NoiseStream(model, np.random.default_rng([config.seed, 402, index]), world.head.posterior)
