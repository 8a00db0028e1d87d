"""The preprocessing configuration: plain data that round-trips through JSON.

It lives in a checkpoint's ``config.json``; :mod:`glimpse.streaming.preprocess`
explains the chain it configures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mne
import numpy as np

from ..channels import require_channels
from ..config_dict import config_from_dict
from ..errors import InputError

logger = logging.getLogger("glimpse.streaming.preprocess")

# Shorthands beside MNE's own channel types. "meg" leaves out reference magnetometers
# (CTF "ref_meg"): they record the environment, not the brain.
_ALIASES = {
    "meg": ("mag", "grad"),
    "data": ("mag", "grad", "eeg", "seeg", "ecog", "dbs"),
}


def _known_types() -> set[str]:
    return set(mne.io.get_channel_type_constants(include_defaults=True)) | set(_ALIASES)


def _as_tuple(value: Any, cast: type) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str):  # ("mag") is a string, not a tuple: accept it as one name
        value = (value,)
    return tuple(cast(v) for v in value)


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns raw samples into model input; JSON-serialisable.

    Channels: ``picks`` (MNE channel types, or ``"meg"``/``"data"``) and ``include``
    (names) select, ``exclude`` (names) and, if ``exclude_bads``, ``info["bads"]``
    remove. :meth:`resolve` freezes the result into ``ch_names`` (recording order);
    once set, ``ch_names`` alone decides, since a checkpoint must know its exact
    channels.

    Filters: ``l_freq``/``h_freq`` (Hz) give a causal Butterworth band-pass of
    ``filter_order`` (per edge) at the output rate; the defaults 0.1-40 Hz remove
    drift and DC offsets (which robust scaling cannot follow live) while keeping the
    slow evoked responses, and stay under the anti-alias pass edge (45 Hz at 120 Hz).
    Order 2, not 4: a causal filter cannot undo its phase, and order 4 doubles the
    delay (7 -> 4 ms at 10 Hz) and the settling after a jump (18 -> 8 s to 1 %);
    aliasing is the FIR's job and mains the notch's, so a gentle edge suffices.
    ``notch`` (Hz, e.g. 50 or 60; ``None`` since mains frequency is local) removes
    that frequency and the harmonics that could reach the output, with quality
    factor ``notch_q``. The anti-alias FIR passes up to ``antialias_pass`` times the
    lower Nyquist and attenuates by ``antialias_atten_db`` everything that would
    alias into that band.

    Scaling: ``center`` (median) and ``scale`` (interquartile range) per channel,
    fitted by :func:`fit_scaler`; then values are clipped to +-``clamp``.
    """

    picks: tuple[str, ...] = ("data",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_bads: bool = True
    ch_names: tuple[str, ...] | None = None
    sfreq: float = 120.0
    l_freq: float | None = 0.1
    h_freq: float | None = 40.0
    filter_order: int = 2
    notch: float | None = None
    notch_q: float = 30.0
    antialias_pass: float = 0.75
    antialias_atten_db: float = 60.0
    center: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    clamp: float | None = 20.0

    def __post_init__(self) -> None:
        # Lists from JSON or callers become tuples, so equality and hashing hold.
        for name, cast in (("picks", str), ("include", str), ("exclude", str),
                           ("ch_names", str), ("center", float), ("scale", float)):
            try:
                value = _as_tuple(getattr(self, name), cast)
            except (TypeError, ValueError):
                raise InputError(f"{name} a list of {cast.__name__}", repr(getattr(self, name)),
                                 "fix that field of the preprocessing config") from None
            if value is None and name in ("picks", "include", "exclude"):
                value = ()
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (lists, floats, strings, None)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        return config_from_dict(cls, data, where="the 'preprocess' object of config.json",
                                fix="remove them, or upgrade glimpse to the version that wrote them")

    @classmethod
    def from_json(cls, text: str) -> PreprocessConfig:
        return cls.from_dict(json.loads(text))

    @property
    def is_fitted(self) -> bool:
        return self.center is not None

    # ------------------------------------------------------------- channels
    def resolve(self, info: mne.Info) -> PreprocessConfig:
        """Return a config whose ``ch_names`` are the channels it picks from ``info``."""
        names = list(info["ch_names"])
        if self.ch_names is not None:
            self.pick_indices(names)  # every stored channel must be there
            return self
        self._check_picks()
        types = set()
        for pick in self.picks:
            types.update(_ALIASES.get(pick, (pick,)))
        require_channels(self.include, names, expected="include names that the recording has",
                         source="the recording",
                         fix="check the names with `mne.io.read_raw(path).ch_names`")
        drop = set(self.exclude) | (set(info["bads"]) if self.exclude_bads else set())
        picked = tuple(
            n for n, t in zip(names, info.get_channel_types(), strict=True)
            if (t in types or n in self.include) and n not in drop
        )
        if not picked:
            present = sorted(set(info.get_channel_types()))
            raise InputError(
                "picks that select at least one channel",
                f"none from picks={list(self.picks)}, include={list(self.include)} "
                f"(the recording has types {present})",
                "pick a type the recording has, e.g. --picks " + (present[0] if present else "eeg"),
            )
        logger.debug("resolved %s channels from picks=%s", len(picked), self.picks)
        return dataclasses.replace(self, ch_names=picked)

    def pick_indices(self, ch_names: Sequence[str]) -> list[int]:
        """Indices, into a stream's ``ch_names``, of this config's channels, in order."""
        if self.ch_names is None:
            raise InputError("a config with resolved channels", "ch_names=None",
                             "call config.resolve(raw.info) (or fit_scaler) first")
        return require_channels(
            self.ch_names, list(ch_names),
            expected=f"a recording or stream with the {len(self.ch_names)} trained channels",
            source="the recording or stream",
            fix="stream the missing channels (the training data's montage), or retrain on "
                "these channels")

    def _check_picks(self) -> None:
        unknown = [p for p in self.picks if p not in _known_types()]
        if unknown:
            raise InputError(f"channel types among {sorted(_known_types())}", f"unknown {unknown}",
                             "use MNE's type names, e.g. --picks mag, --picks eeg or --picks meg")
        if self.ch_names is None and not self.picks and not self.include:
            raise InputError("picks that select at least one channel",
                             "picks=() and include=()", "set --picks (e.g. eeg) or include names")

    # ----------------------------------------------------------- validation
    def validate(self, sfreq_in: float | None = None, info: mne.Info | None = None
                 ) -> PreprocessConfig:
        """Raise :class:`InputError` on any inconsistency; return ``self``.

        ``sfreq_in`` (the recording's or stream's rate) enables the checks against
        the input Nyquist; ``info`` checks that the picks select something.
        """
        _positive("sfreq", self.sfreq, "set --sfreq to the output rate in Hz, e.g. 120")
        if sfreq_in is not None:
            _positive("the input sfreq", sfreq_in,
                      "pass the recording's rate, e.g. raw.info['sfreq']")
        self._check_picks()
        if self.ch_names is not None:
            if not self.ch_names:
                raise InputError("at least one channel name", "ch_names=[]",
                                 "resolve the config against a recording again")
            if len(set(self.ch_names)) != len(self.ch_names):
                raise InputError("unique channel names", "duplicates in ch_names",
                                 "resolve the config against a recording again")
        for name in ("l_freq", "h_freq", "notch"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name), f"pass a positive --{name.replace('_', '-')} "
                          "in Hz, or leave it out to disable that filter")
        _positive("notch_q", self.notch_q, "use a quality factor such as 30")
        if isinstance(self.filter_order, bool) or not isinstance(self.filter_order, int) \
                or not 1 <= self.filter_order <= 10:
            raise InputError("filter_order an integer from 1 to 10", repr(self.filter_order),
                             "use 2 (Butterworth order per band edge)")
        if not (_is_number(self.antialias_pass) and 0.0 < self.antialias_pass < 1.0):
            raise InputError("0 < antialias_pass < 1", repr(self.antialias_pass), "use 0.75")
        if not (_is_number(self.antialias_atten_db) and 20.0 <= self.antialias_atten_db <= 150.0):
            raise InputError("antialias_atten_db from 20 to 150", repr(self.antialias_atten_db),
                             "use 60")

        # Band edges run at the output rate, and cannot exceed what the input holds.
        nyquists = [(self.sfreq / 2, f"Nyquist of the {self.sfreq:g} Hz output",
                     "lower --{opt} or raise --sfreq")]
        if sfreq_in is not None:
            nyquists.append((sfreq_in / 2, f"Nyquist of the {sfreq_in:g} Hz input",
                             "lower --{opt}; the recording holds nothing above it"))
        for name in ("h_freq", "l_freq"):
            value = getattr(self, name)
            for nyq, what, fix in nyquists:
                if value is not None and value >= nyq:
                    raise InputError(f"{name} < {nyq!r} Hz ({what})", repr(value),
                                     fix.format(opt=name.replace("_", "-")))
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise InputError("l_freq < h_freq", f"l_freq={self.l_freq!r}, h_freq={self.h_freq!r}",
                             "swap them, or leave one out for a high-pass or low-pass only")
        if self.notch is not None and sfreq_in is not None and self.notch >= sfreq_in / 2:
            raise InputError(f"notch < {sfreq_in / 2!r} Hz (Nyquist of the {sfreq_in:g} Hz input; "
                             "the notch runs before resampling)", repr(self.notch),
                             "use the mains frequency (50 or 60), or leave --notch out")
        if self.clamp is not None and not (_is_number(self.clamp) and self.clamp > 0):
            raise InputError("clamp > 0 (or None to disable clipping)", repr(self.clamp),
                             "use --clamp 20")

        if (self.center is None) != (self.scale is None):
            raise InputError("center and scale both set or both None",
                             f"center={'set' if self.center else None}, "
                             f"scale={'set' if self.scale else None}", "refit with fit_scaler")
        if self.center is not None:
            n = None if self.ch_names is None else len(self.ch_names)
            if n is None or len(self.center) != n or len(self.scale) != n:
                raise InputError(f"center and scale with one value per channel ({n})",
                                 f"{len(self.center)} and {len(self.scale)}",
                                 "refit with fit_scaler")
            if not all(math.isfinite(c) for c in self.center) or \
                    not all(math.isfinite(s) and s > 0 for s in self.scale):
                raise InputError("finite center and positive finite scale",
                                 "non-finite or non-positive values", "refit with fit_scaler")
        if info is not None:
            self.resolve(info)
        return self


def _is_number(value: Any) -> bool:
    """A finite real number (bools and strings from a hand-edited JSON are not)."""
    return (isinstance(value, (int, float, np.floating, np.integer))
            and not isinstance(value, bool) and math.isfinite(value))


def _positive(name: str, value: Any, fix: str) -> None:
    if not _is_number(value) or value <= 0:
        raise InputError(f"{name} a positive number", repr(value), fix)
