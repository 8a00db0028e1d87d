"""The experiment: which images exist, and when each subject sees them (THINGS-MEG design)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .config import SimulationConfig
from .stimuli import FAMILIES, VARIANTS, Stimulus, catch_stimulus, choose_concepts, sample_stimulus

LEAD_IN = 2.0  # s of fixation before the first image
TAIL = 1.0  # s after the last image's fixation period
TRIGGER_CODES = {"exp": 1, "test": 2, "catch": 3}
TRIGGER_DURATION = 0.01  # s, STI101 pulse


def build_catalogue(config: SimulationConfig) -> list[Stimulus]:
    """Training images, then test images, then the catch image; ``image_nr`` counts from 1.

    Each exemplar's properties are drawn from a generator keyed by (seed, family,
    variant, exemplar), so they do not depend on how many other images exist.
    """
    train, test = choose_concepts(config.concepts, config.test_concepts, np.random.default_rng([config.seed, 101]))
    stimuli: list[Stimulus] = []
    for split, pairs, n_exemplars in (("train", train, config.exemplars), ("test", test, config.test_exemplars)):
        for family, variant in pairs:
            for exemplar in range(1, n_exemplars + 1):
                rng = np.random.default_rng([config.seed, 102, FAMILIES.index(family), VARIANTS.index(variant), exemplar])
                stim = sample_stimulus(len(stimuli) + 1, split, family, variant, exemplar, rng)
                path = f"stimuli/{split}/{stim.concept}/{stim.concept}_{exemplar:02d}.png"
                stimuli.append(dataclasses.replace(stim, path=path))
    if config.catch_fraction > 0:
        stimuli.append(catch_stimulus(len(stimuli) + 1))
    return stimuli


@dataclass(frozen=True)
class Schedule:
    """One subject's run: per trial the stimulus row, trial type, repeat and onset sample."""

    rows: np.ndarray  # index into the stimulus catalogue
    trial_types: list[str]
    repeats: np.ndarray  # 1-based repeat number of that image
    onsets: np.ndarray  # samples from the start of the recording
    n_times: int
    sfreq: float

    @property
    def counts(self) -> dict[str, int]:
        return {t: self.trial_types.count(t) for t in TRIGGER_CODES}


def make_schedule(config: SimulationConfig, stimuli: list[Stimulus], subject_index: int) -> Schedule:
    """Randomised order and jittered timing: 500 ms image, 1000 +- 200 ms fixation (uniform)."""
    rng = np.random.default_rng([config.seed, 201, subject_index])
    entries: list[tuple[int, str, int]] = []
    for row, stim in enumerate(stimuli):
        if stim.split == "train":
            entries.append((row, "exp", 1))
        elif stim.split == "test":
            entries += [(row, "test", k) for k in range(1, config.test_repeats + 1)]
    if config.catch_fraction > 0:
        n_catch = max(1, round(config.catch_fraction * len(entries) / (1 - config.catch_fraction)))
        entries += [(len(stimuli) - 1, "catch", k) for k in range(1, n_catch + 1)]
    order = rng.permutation(len(entries))
    entries = [entries[i] for i in order]
    sfreq = config.resolved_sfreq
    soa = config.stim_duration + config.isi + rng.uniform(-config.isi_jitter, config.isi_jitter, len(entries))
    onset_s = LEAD_IN + np.r_[0.0, np.cumsum(soa[:-1])]
    onsets = np.round(onset_s * sfreq).astype(np.int64)
    n_times = int(math.ceil((onset_s[-1] + config.stim_duration + config.isi + config.isi_jitter + TAIL) * sfreq))
    return Schedule(
        rows=np.array([e[0] for e in entries]),
        trial_types=[e[1] for e in entries],
        repeats=np.array([e[2] for e in entries]),
        onsets=onsets,
        n_times=n_times,
        sfreq=sfreq,
    )
