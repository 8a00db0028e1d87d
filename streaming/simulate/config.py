"""The simulator's configuration: every knob, as data that round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config_dict import config_from_dict
from ..errors import InputError
from .stimuli import FAMILIES, VARIANTS

#: Sampling rate used when ``sfreq`` is None: THINGS-MEG records at 1200 Hz,
#: THINGS-EEG2 at 1000 Hz.
DEFAULT_SFREQ = {"meg": 1200.0, "eeg": 1000.0}


#: Bumped when the same config writes different data (the physics or the noise changed),
#: so that caches keyed by the config (the demo's session, the benches') are remade.
#: Sessions that record none are version 1. 2: the brain background is 1/f**1.5 (was 1/f),
#: the 2-40 Hz slope of real MEG (streaming.simulate.spectrum).
SIMULATOR_VERSION = 2


def _flag(name: str) -> str:
    """The CLI option that sets a field, so errors name what the user typed."""
    return "--" + name.replace("_", "-")


@dataclass
class SimulationConfig:
    """Everything that determines a simulated session; the same config writes the same files.

    Sizes follow THINGS-MEG's design at a smaller scale: ``concepts`` x
    ``exemplars`` training images (trial_type ``exp``) shown once each;
    ``test_concepts`` x ``test_exemplars`` test images from concepts never used in
    training, each shown ``test_repeats`` times; ``catch_fraction`` of all trials
    show the catch image. Latencies are in seconds from image onset, except
    ``offset_latency``, which counts from image offset.
    """

    modality: str = "meg"
    subjects: int = 2
    # Number of the first subject (sub-XX): each subject's dipoles, noise and order come
    # from its number, so first_subject=3 adds a new person to a world of subjects 1-2.
    first_subject: int = 1
    concepts: int = 28
    exemplars: int = 10
    test_concepts: int = 12
    test_exemplars: int = 4
    test_repeats: int = 4
    catch_fraction: float = 0.03
    snr_db: float = -5.0
    sfreq: float | None = None
    seed: int = 0
    image_size: int = 128
    line_freq: float = 50.0
    stim_duration: float = 0.5
    isi: float = 1.0
    isi_jitter: float = 0.2
    early_latency: float = 0.100
    late_latencies: tuple[float, float] = (0.170, 0.280)
    offset_latency: float = 0.100
    source_spacing_mm: float = 12.0
    subject_variability: float = 0.3
    # Shares of the scaled noise power at the posterior sensors (sum to 1):
    # 1/f brain background, alpha bursts, white sensor noise.
    noise_mix: tuple[float, float, float] = (0.55, 0.25, 0.20)
    block_duration: float = 10.0

    def __post_init__(self) -> None:
        # JSON gives lists; the dataclass holds tuples so configs compare equal.
        self.late_latencies = tuple(float(v) for v in self.late_latencies)
        self.noise_mix = tuple(float(v) for v in self.noise_mix)
        self.validate()

    @property
    def resolved_sfreq(self) -> float:
        """``sfreq``, or the modality's default when it is None."""
        return float(self.sfreq) if self.sfreq is not None else DEFAULT_SFREQ[self.modality]

    @property
    def latencies(self) -> dict[str, float]:
        """Configured component peaks in seconds from image onset."""
        return {
            "early": self.early_latency,
            "late_1": self.late_latencies[0],
            "late_2": self.late_latencies[1],
            "offset": self.stim_duration + self.offset_latency,
        }

    def validate(self) -> SimulationConfig:
        """Check every field; raise :class:`InputError` naming the option and the fix."""

        def need(ok: bool, name: str, expected: str, fix: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise InputError(f"{_flag(name)} {expected}", repr(value), fix)

        def is_int(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool)

        def finite(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        n_available = len(FAMILIES) * len(VARIANTS)
        need(self.modality in DEFAULT_SFREQ, "modality", "to be 'meg' or 'eeg'", "pass --modality meg or --modality eeg")
        need(is_int("subjects") and 1 <= self.subjects <= 99, "subjects", ">= 1 and <= 99", "pass e.g. --subjects 2")
        need(is_int("first_subject") and 1 <= self.first_subject <= 100 - self.subjects, "first_subject",
             f">= 1 and <= {100 - self.subjects} (subject numbers up to 99)", "pass e.g. first_subject=3")
        need(is_int("concepts") and self.concepts >= 2, "concepts", ">= 2 (a decoder needs two classes)", "pass e.g. --concepts 28")
        need(is_int("exemplars") and self.exemplars >= 1, "exemplars", ">= 1", "pass e.g. --exemplars 10")
        need(is_int("test_concepts") and self.test_concepts >= 1, "test_concepts", ">= 1", "pass e.g. --test-concepts 12")
        need(is_int("test_exemplars") and self.test_exemplars >= 1, "test_exemplars", ">= 1", "pass e.g. --test-exemplars 4")
        need(is_int("test_repeats") and self.test_repeats >= 1, "test_repeats", ">= 1", "pass e.g. --test-repeats 4")
        need(
            self.concepts + self.test_concepts <= n_available,
            "concepts",
            f"+ --test-concepts <= {n_available} (the shape families x variants the simulator can draw)",
            f"lower --concepts or --test-concepts (got {self.concepts} + {self.test_concepts})",
        )
        need(finite("catch_fraction") and 0 <= self.catch_fraction < 0.5, "catch_fraction", "in [0, 0.5)", "pass e.g. 0.03")
        need(finite("snr_db") and -60 <= self.snr_db <= 40, "snr_db", "a finite number in [-60, 40] dB", "pass e.g. --snr-db -5")
        need(
            self.sfreq is None or (finite("sfreq") and 200 <= self.sfreq <= 5000),
            "sfreq",
            "None or in [200, 5000] Hz",
            "leave it out (1200 Hz MEG, 1000 Hz EEG) or pass e.g. --sfreq 1000",
        )
        need(is_int("seed") and 0 <= self.seed < 2**32, "seed", "an integer in [0, 2**32)", "pass e.g. --seed 0")
        need(is_int("image_size") and 32 <= self.image_size <= 1024, "image_size", ">= 32 and <= 1024 pixels", "pass e.g. --image-size 128")
        need(
            finite("line_freq") and 0 < self.line_freq and 2 * self.line_freq < self.resolved_sfreq,
            "line_freq",
            f"> 0 and below half the sampling rate ({self.resolved_sfreq / 2:g} Hz)",
            "pass 50 (Europe) or 60 (Americas)",
        )
        need(finite("stim_duration") and 0.05 <= self.stim_duration <= 5, "stim_duration", "in [0.05, 5] s", "THINGS uses 0.5")
        need(finite("isi") and 0.2 <= self.isi <= 10, "isi", "in [0.2, 10] s", "THINGS uses 1.0")
        need(finite("isi_jitter") and 0 <= self.isi_jitter < self.isi / 2, "isi_jitter", f"in [0, isi / 2 = {self.isi / 2:g}) s", "THINGS uses 0.2")
        late = self.late_latencies
        need(len(late) == 2 and all(math.isfinite(v) for v in late), "late_latencies", "two finite latencies in s", "pass e.g. (0.17, 0.28)")
        need(
            0.03 <= self.early_latency < late[0] < late[1] <= self.stim_duration + self.isi - self.isi_jitter - 0.2,
            "early_latency",
            "0.03 <= early < late_1 < late_2, with late_2 ending before the next image",
            "keep the order early ~0.1 s, late ~0.17 and ~0.28 s",
        )
        need(finite("offset_latency") and 0.03 <= self.offset_latency <= self.isi - self.isi_jitter - 0.15, "offset_latency", "in [0.03, isi - jitter - 0.15] s", "pass e.g. 0.1")
        need(finite("source_spacing_mm") and 5 <= self.source_spacing_mm <= 25, "source_spacing_mm", "in [5, 25] mm", "pass e.g. 12")
        need(finite("subject_variability") and 0 <= self.subject_variability <= 2, "subject_variability", "in [0, 2]", "pass e.g. 0.3")
        mix = self.noise_mix
        need(
            len(mix) == 3 and all(math.isfinite(v) and v >= 0 for v in mix) and abs(sum(mix) - 1) < 1e-6 and mix[2] > 0,
            "noise_mix",
            "three non-negative shares (brain 1/f, alpha, sensor) summing to 1, sensor > 0",
            "pass e.g. (0.55, 0.25, 0.20)",
        )
        need(finite("block_duration") and 1 <= self.block_duration <= 120, "block_duration", "in [1, 120] s", "pass e.g. 10")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["late_latencies"] = list(self.late_latencies)
        out["noise_mix"] = list(self.noise_mix)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        return config_from_dict(cls, data, where="the 'config' object of simulation.json",
                                fix="remove them, or regenerate simulation.json with this glimpse version")


def simulated_with(root: str | os.PathLike, config: SimulationConfig) -> bool:
    """True when ``root/simulation.json`` records ``config`` and this simulator's version."""
    record = Path(root) / "simulation.json"
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        return (saved.get("simulator_version", 1) == SIMULATOR_VERSION
                and SimulationConfig.from_dict(saved["config"]) == config)
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return False
