"""The one preprocessing definition, shared by training (offline) and live decoding.

A :class:`PreprocessConfig` is plain data (it lives in a checkpoint's
``config.json``). It has two faces over one implementation:

* online: :class:`OnlinePreprocessor` takes chunks of any size (0, 1, 12, 4096
  samples...) and carries every filter's state between calls;
* offline: :func:`preprocess_raw` runs that same object over a whole recording,
  block by block, so training and serving cannot drift apart.

Chain, in order (every stage is causal, so the live numbers are the training numbers)::

    pick channels -> hold non-finite samples -> notch (input rate, IIR)
    -> anti-alias FIR + rational polyphase resampling (to ``sfreq``)
    -> Butterworth band-pass (output rate, IIR) -> robust scaling -> clamp

Why this order: line noise is notched before it can alias; the band-pass runs at
the output rate, where it is ~10x cheaper and its 0.1 Hz high-pass is far better
conditioned than at 1200 Hz.

Time alignment. Count input samples ``n = 0, 1, ...`` and output samples
``k = 0, 1, ...`` from the first sample after construction or :meth:`reset`, and
let ``t0`` be the time of input sample 0. Output ``k`` sits at time
``t0 + k / sfreq_out`` (input position ``k * down / up``); it depends on input
samples up to ``floor(k * down / up)`` only, and is emitted by the call that
delivers that sample; ``process(chunk, timestamps)`` returns that sample's LSL
timestamp for each output, so a window can carry the time of its last sample.
Its content lags by the anti-alias FIR's constant group delay
(:attr:`OnlinePreprocessor.group_delay`: ~61 ms for a 120 Hz output from any
faster input) plus the IIR filters' frequency-dependent delay
(:meth:`OnlinePreprocessor.group_delay_at`; 0.1-40 Hz band-pass: ~8 ms at 10 Hz).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import mne
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from .errors import InputError

logger = logging.getLogger("glimpse.streaming.preprocess")

__all__ = ["OnlinePreprocessor", "PreprocessConfig", "fit_scaler", "preprocess_raw"]

# Shorthands beside MNE's own channel types. "meg" leaves out reference magnetometers
# (CTF "ref_meg"): they record the environment, not the brain.
_ALIASES = {
    "meg": ("mag", "grad"),
    "data": ("mag", "grad", "eeg", "seeg", "ecog", "dbs"),
}
# Largest up or down factor of the rational resampler: it bounds the polyphase bank
# (up x taps-per-phase coefficients) while keeping the output rate within ~1e-6 of
# the request for awkward rates such as 300.3074951 Hz (Neuromag) or measured rates.
_MAX_FACTOR = 2000
# Input samples handled per pass; bounds memory offline (272 chans: ~9 MB buffer).
_BLOCK = 4096
# Live chunks are short (a hop: ~6 outputs, 60 inputs): up to this many samples, the
# FIR and the IIR filters run as one small matrix product each (_fir_band, _SosBlock)
# instead of per-phase strided products and scipy's sosfilt, whose fixed costs dominate
# there (60 x 272 samples: 411 -> 176 us).
_SMALL = 64


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
        if not isinstance(data, dict):
            raise InputError("a JSON object of preprocessing fields",
                             type(data).__name__, "pass the 'preprocess' object of config.json")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"preprocessing fields among {sorted(known)}", f"unknown {unknown}",
                             "remove them, or upgrade glimpse to the version that wrote them")
        return cls(**data)

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
        missing = [n for n in self.include if n not in names]
        if missing:
            raise InputError("include names that the recording has", f"missing {missing}",
                             "check the names with `mne.io.read_raw(path).ch_names`")
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
        where = {n: i for i, n in enumerate(ch_names)}
        missing = [n for n in self.ch_names if n not in where]
        if missing:
            raise InputError(
                f"a recording or stream with the {len(self.ch_names)} trained channels",
                f"{len(missing)} missing, e.g. {missing[:5]}",
                "stream the same montage as the training data, or retrain on these channels",
            )
        return [where[n] for n in self.ch_names]

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


def _ratio(sfreq_in: float, sfreq_out: float) -> tuple[int, int]:
    """``up / down`` ~ ``sfreq_out / sfreq_in``, both at most ``_MAX_FACTOR``."""
    # Decimal strings make 300.3 exactly 3003/10 (binary floats would not).
    exact = Fraction(repr(float(sfreq_out))) / Fraction(repr(float(sfreq_in)))
    if exact <= 1:
        ratio = exact.limit_denominator(_MAX_FACTOR)
        up, down = ratio.numerator, ratio.denominator
    else:
        inv = (1 / exact).limit_denominator(_MAX_FACTOR)
        up, down = inv.denominator, inv.numerator
    if up == 0:
        raise InputError(f"an input rate at most {_MAX_FACTOR}x the output rate",
                         f"{sfreq_in:g} Hz for {sfreq_out:g} Hz", "decimate the input first")
    return up, down


@dataclass(frozen=True)
class _Resampler:
    """Polyphase bank of a causal, linear-phase Kaiser FIR at rate ``sfreq_in * up``."""

    up: int
    down: int
    bank: np.ndarray  # (up, taps): row p is phase p, oldest input first
    delay_s: float  # (n_taps - 1) / 2 samples at sfreq_in * up: constant, exact

    @classmethod
    def design(cls, sfreq_in: float, sfreq_out: float, pass_frac: float, atten_db: float
               ) -> _Resampler:
        up, down = _ratio(sfreq_in, sfreq_out)
        if up == down == 1:  # same rate: nothing can alias, so no filter and no delay
            return cls(1, 1, np.ones((1, 1)), 0.0)
        rate = sfreq_in * up
        low = min(sfreq_in, sfreq_in * up / down)
        f_pass = pass_frac * low / 2
        # Only what folds into [0, f_pass] must go: stopping at low - f_pass instead
        # of at the Nyquist doubles the transition band and halves the delay.
        f_stop = low - f_pass
        n_taps, beta = signal.kaiserord(atten_db, (f_stop - f_pass) / (rate / 2))
        n_taps += 1 - n_taps % 2  # odd: the delay is a whole number of samples at `rate`
        proto = signal.firwin(n_taps, low / 2, window=("kaiser", beta), fs=rate)
        taps = -(-n_taps // up)
        proto = np.concatenate([proto, np.zeros(taps * up - n_taps)])
        bank = proto.reshape(taps, up)[::-1].T.copy()  # bank[p, i] = h[p + (taps-1-i) * up]
        # Each phase passes DC with gain exactly 1: MEG offsets are large, and a
        # per-phase gain error would turn them into a periodic artefact.
        bank /= bank.sum(axis=1, keepdims=True)
        return cls(up, down, bank, (n_taps - 1) / (2.0 * rate))


class _SosBlock:
    """An SOS cascade applied to short blocks as matrix products, state carried.

    The cascade is linear, so for a block of ``m`` samples, with the state ``s``
    (scipy's ``zi`` per channel, flattened) and the input ``x``::

        y = s @ O + x @ T        s' = s @ A + x @ R

    The four matrices are scipy's own ``sosfilt`` applied to unit states and unit
    impulses, so this is the same recursion as ``sosfilt`` (to rounding). Built once
    per block length.
    """

    def __init__(self, sos: np.ndarray):
        self.sos, self.n_sec = sos, len(sos)
        self._mats: dict[int, tuple[np.ndarray, ...]] = {}

    def _build(self, m: int) -> tuple[np.ndarray, ...]:
        ns = 2 * self.n_sec
        zi = np.zeros((self.n_sec, ns, 2))
        for i in range(ns):
            zi[i // 2, i, i % 2] = 1.0
        o, a = signal.sosfilt(self.sos, np.zeros((ns, m)), axis=-1, zi=zi)
        t, r = signal.sosfilt(self.sos, np.eye(m), axis=-1, zi=np.zeros((self.n_sec, m, 2)))
        flat = (lambda z: z.transpose(1, 0, 2).reshape(z.shape[1], ns))
        mats = (o, t, flat(a), flat(r))
        self._mats[m] = mats
        return mats

    def __call__(self, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``sosfilt(sos, x, axis=-1, zi=zi)`` for ``x`` ``(n_chans, m)``, ``zi`` ``(n_sec, n_chans, 2)``."""
        m = x.shape[1]
        o, t, a, r = self._mats.get(m) or self._build(m)
        n = x.shape[0]
        state = zi.transpose(1, 0, 2).reshape(n, 2 * self.n_sec)
        y = state @ o
        y += x @ t
        state = state @ a
        state += x @ r
        return y, state.reshape(n, self.n_sec, 2).transpose(1, 0, 2)


class OnlinePreprocessor:
    """Chunk-by-chunk preprocessing with carried state; see the module docstring.

    ``process(chunk)`` takes ``(n_chans, n_samples)`` in the config's channel order
    (use :meth:`PreprocessConfig.pick_indices` on a stream) and returns float32
    ``(n_chans, n_out)``. Filters start in the steady state of the first sample, so
    DC offsets cause no start-up transient. Non-finite samples are replaced by the
    channel's last finite value so they cannot poison the filters' state forever;
    they are counted in ``n_nonfinite`` and the caller must mark the windows they
    touch as invalid.
    """

    def __init__(self, config: PreprocessConfig, sfreq_in: float, n_chans: int | None = None):
        config.validate(sfreq_in)
        if config.ch_names is not None:
            if n_chans is not None and n_chans != len(config.ch_names):
                raise InputError(f"n_chans={len(config.ch_names)} (the config's channels)",
                                 f"n_chans={n_chans}",
                                 "leave n_chans out or resolve the config again")
            n_chans = len(config.ch_names)
        if n_chans is None or n_chans < 1:
            raise InputError("a config with resolved channels, or n_chans >= 1",
                             f"n_chans={n_chans}", "call config.resolve(raw.info), or pass n_chans")
        self.config, self.sfreq_in, self.n_chans = config, float(sfreq_in), int(n_chans)

        rs = _Resampler.design(self.sfreq_in, config.sfreq, config.antialias_pass,
                               config.antialias_atten_db)
        self.up, self.down, self._bank = rs.up, rs.down, rs.bank
        self.sfreq_out = self.sfreq_in * rs.up / rs.down
        self.group_delay = rs.delay_s  # seconds, constant (linear-phase FIR)
        if abs(self.sfreq_out / config.sfreq - 1) > 1e-9:
            logger.info("output rate %.9g Hz approximates %s Hz (ratio %d/%d)",
                        self.sfreq_out, config.sfreq, rs.up, rs.down)

        # Notch at the input rate: the fundamental and each harmonic that the
        # anti-alias filter would let through (above it, the FIR removes it anyway).
        self._notch_sos = None
        if config.notch is not None:
            reach = self.sfreq_in / 2
            if (rs.up, rs.down) != (1, 1):
                low = min(self.sfreq_in, self.sfreq_out)
                reach = min(reach, low * (1 - config.antialias_pass / 2))
            freqs = [f for f in np.arange(1, 1000) * config.notch if f < reach]
            if freqs:
                self._notch_sos = np.concatenate([
                    signal.tf2sos(*signal.iirnotch(f, config.notch_q, fs=self.sfreq_in))
                    for f in freqs])
            else:
                logger.info("notch %s Hz lies in the anti-alias stop band; nothing to notch",
                            config.notch)
        self._band_sos = None
        edges = [e for e in (config.l_freq, config.h_freq) if e is not None]
        if edges:
            btype = {2: "bandpass", 1: "highpass" if config.l_freq is not None else "lowpass"}
            self._band_sos = signal.butter(config.filter_order,
                                           edges if len(edges) == 2 else edges[0],
                                           btype=btype[len(edges)], fs=self.sfreq_out,
                                           output="sos")
        self._center = self._inv_scale = None
        if config.is_fitted:
            self._center = np.asarray(config.center, dtype=np.float64)[:, None]
            self._inv_scale = 1.0 / np.asarray(config.scale, dtype=np.float64)[:, None]

        # Working buffer: `taps - 1` samples of history, then room for a block. Windows
        # are views into it, so the hot path allocates only chunk-sized arrays.
        self._hist = self._bank.shape[1] - 1
        self._cap = max(_BLOCK, 2 * self._hist)
        self._buf = np.zeros((self.n_chans, self._hist + self._cap))
        self._windows = sliding_window_view(self._buf, self._bank.shape[1], axis=1)
        self._notch_zi_unit = (None if self._notch_sos is None
                               else signal.sosfilt_zi(self._notch_sos))
        self._band_zi_unit = None if self._band_sos is None else signal.sosfilt_zi(self._band_sos)
        self._notch_small = None if self._notch_sos is None else _SosBlock(self._notch_sos)
        self._band_small = None if self._band_sos is None else _SosBlock(self._band_sos)
        self._fir_small: dict[tuple[int, int], np.ndarray] = {}
        logger.debug("preprocess %s -> %.6g Hz: up %d down %d, %d taps/phase, "
                     "FIR delay %.1f ms, %d notch sections",
                     self.sfreq_in, self.sfreq_out, self.up, self.down,
                     self._bank.shape[1], 1e3 * self.group_delay,
                     0 if self._notch_sos is None else len(self._notch_sos))
        self.reset()

    def reset(self) -> OnlinePreprocessor:
        """Forget all state; the next sample is input sample 0 again."""
        self.n_samples_in = 0  # input samples consumed since reset
        self.n_samples_out = 0  # output samples emitted since reset
        self.n_nonfinite = 0
        self._pos = self._hist
        self._last = np.zeros(self.n_chans)
        self._notch_zi = self._band_zi = None  # set from the first sample
        return self

    # --------------------------------------------------------------- timing
    def input_position(self, k: int | np.ndarray) -> float | np.ndarray:
        """Input-sample position of output ``k``; its time is ``t0 + position / sfreq_in``."""
        return np.asarray(k) * self.down / self.up

    def group_delay_at(self, freq: float) -> float:
        """Total delay (s) at ``freq`` Hz: the FIR's constant one plus the IIR filters'."""
        delay = self.group_delay
        for sos, fs in ((self._notch_sos, self.sfreq_in), (self._band_sos, self.sfreq_out)):
            for sec in [] if sos is None else sos:
                delay += signal.group_delay((sec[:3], sec[3:]), w=[freq], fs=fs)[1][0] / fs
        return float(delay)

    # ------------------------------------------------------------- hot path
    def process(self, chunk: np.ndarray, timestamps: np.ndarray | None = None):
        """Feed ``(n_chans, n)`` samples; return the float32 outputs they complete.

        With ``timestamps`` (``(n,)``, the LSL times of the chunk's samples), also
        return, per output, the timestamp of the newest input sample it depends on
        (``floor(k * down / up)``): the moment from which live latency counts. Its
        nominal time on the regular output grid is up to one input sample later,
        ``+ (input_position(k) % 1) / sfreq_in``.
        """
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.n_chans:
            raise InputError(f"a chunk of shape ({self.n_chans}, n_samples)",
                             f"shape {np.shape(chunk)}",
                             "pick the config's channels with config.pick_indices(ch_names), "
                             "samples on the last axis")
        n = x.shape[1]
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.float64)
            if timestamps.shape != (n,):
                raise InputError(f"one timestamp per sample, shape ({n},)",
                                 f"shape {timestamps.shape}", "pass the chunk's own timestamps")
        k_first = self.n_samples_out
        parts = []
        for start in range(0, n, self._cap):
            parts.append(self._process_block(x[:, start:start + self._cap]))
        out = parts[0] if len(parts) == 1 else (
            np.concatenate(parts, axis=1) if parts else np.empty((self.n_chans, 0), np.float32))
        if timestamps is None:
            return out
        k = np.arange(k_first, self.n_samples_out, dtype=np.int64)
        newest = k * self.down // self.up  # exact integer floor, no float rounding
        return out, timestamps[newest - (self.n_samples_in - n)]

    def _process_block(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        if not np.isfinite(x).all():
            x = self._hold_nonfinite(x)
        if self.n_samples_in == 0:  # first sample since reset: steady state, no transient
            if self._notch_sos is not None:
                self._notch_zi = self._notch_zi_unit[:, None, :] * x[None, :, 0, None]
            self._buf[:, :self._hist] = x[:, :1]
        self._last[:] = x[:, -1]
        if self._notch_sos is not None:
            if n <= _SMALL:
                x, self._notch_zi = self._notch_small(x, self._notch_zi)
            else:
                x, self._notch_zi = signal.sosfilt(self._notch_sos, x, axis=-1,
                                                   zi=self._notch_zi)

        if self._pos + n > self._buf.shape[1]:  # keep the history, make room (once a block)
            self._buf[:, :self._hist] = self._buf[:, self._pos - self._hist:self._pos]
            self._pos = self._hist
        self._buf[:, self._pos:self._pos + n] = x
        base = self._pos - self._hist - self.n_samples_in  # window index = base + input index
        self._pos += n
        self.n_samples_in += n

        # Outputs k whose last input floor(k * down / up) is now available.
        up, down = self.up, self.down
        k0, k1 = self.n_samples_out, -(-self.n_samples_in * up // down)
        m = k1 - k0
        if 0 < m <= _SMALL:
            band = self._fir_band(k0, m)
            s = base + k0 * down // up
            y = self._buf[:, s:s + len(band)] @ band
        else:
            y = np.empty((self.n_chans, m))
            for i in range(min(up, m)):  # outputs of one phase are `down` inputs apart
                k = k0 + i
                last, phase = divmod(k * down, up)
                count = len(range(i, m, up))
                s = base + last
                y[:, i::up] = (self._windows[:, s:s + (count - 1) * down + 1:down]
                               @ self._bank[phase])
        self.n_samples_out = k1
        if m == 0:
            return y.astype(np.float32)

        if self._band_sos is not None:
            if k0 == 0:
                self._band_zi = self._band_zi_unit[:, None, :] * y[None, :, 0, None]
            if m <= _SMALL:
                y, self._band_zi = self._band_small(y, self._band_zi)
            else:
                y, self._band_zi = signal.sosfilt(self._band_sos, y, axis=-1,
                                                  zi=self._band_zi)
        if self._center is not None:
            y -= self._center
            y *= self._inv_scale
            if self.config.clamp is not None:
                np.clip(y, -self.config.clamp, self.config.clamp, out=y)
        return y.astype(np.float32)

    def _fir_band(self, k0: int, m: int) -> np.ndarray:
        """The FIR for outputs ``k0 .. k0 + m - 1`` as one banded matrix over their inputs.

        Output ``k`` is ``window(floor(k down / up)) @ bank[k down % up]``; relative to
        output ``k0`` the offsets and phases depend on ``k0 % up`` only, so the matrix
        ``(span, m)`` is built once per ``(k0 % up, m)`` (at most 256 kept: awkward rates
        such as Neuromag's 300.3 Hz have ``up`` in the hundreds).
        """
        key = (k0 % self.up, m)
        if key not in self._fir_small:
            if len(self._fir_small) >= 256:
                self._fir_small.clear()
            taps = self._bank.shape[1]
            first = k0 * self.down // self.up
            lasts = [(k0 + j) * self.down // self.up - first for j in range(m)]
            band = np.zeros((lasts[-1] + taps, m))
            for j, off in enumerate(lasts):
                band[off:off + taps, j] = self._bank[(k0 + j) * self.down % self.up]
            self._fir_small[key] = band
        return self._fir_small[key]

    def _hold_nonfinite(self, x: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(x)
        self.n_nonfinite += int(bad.sum())
        logger.debug("held %d non-finite samples", int(bad.sum()))
        full = np.concatenate([self._last[:, None], x], axis=1)
        idx = np.where(np.concatenate([np.zeros((len(x), 1), bool), bad], axis=1), 0,
                       np.arange(full.shape[1]))
        np.maximum.accumulate(idx, axis=1, out=idx)
        return np.take_along_axis(full, idx, axis=1)[:, 1:]


# -------------------------------------------------------------------- offline face
def _blocks(data: Any, config: PreprocessConfig, sfreq_in: float | None):
    """(resolved config, sfreq_in, n_times, iterator of float64 blocks) for a Raw or array."""
    if isinstance(data, mne.io.BaseRaw):
        if sfreq_in is not None and not math.isclose(sfreq_in, data.info["sfreq"]):
            raise InputError(f"sfreq_in equal to the recording's {data.info['sfreq']:g} Hz",
                             f"{sfreq_in:g}", "leave sfreq_in out for a Raw")
        config = config.resolve(data.info)
        picks = list(config.ch_names)

        def gen():
            for start in range(0, data.n_times, _BLOCK):
                yield data.get_data(picks=picks, start=start, stop=start + _BLOCK)
        return config, data.info["sfreq"], data.n_times, gen()
    if sfreq_in is None:
        raise InputError("sfreq_in for an array", "None", "pass sfreq_in=<rate in Hz>")
    array = np.asarray(data)
    if array.ndim != 2:
        raise InputError("an array of shape (n_chans, n_times)", f"shape {array.shape}",
                         "put channels first and samples last")
    if config.ch_names is not None and array.shape[0] != len(config.ch_names):
        raise InputError(f"{len(config.ch_names)} channels (the config's ch_names)",
                         f"{array.shape[0]}", "pick the config's channels in its order")
    return config, sfreq_in, array.shape[1], (array[:, s:s + _BLOCK]
                                               for s in range(0, array.shape[1], _BLOCK))


def _run(data: Any, config: PreprocessConfig, sfreq_in: float | None, flat: list | None = None):
    """Run the online face over ``data`` block by block: (online object, float32 output)."""
    config, sfreq_in, _, blocks = _blocks(data, config, sfreq_in)
    n_chans = len(config.ch_names) if config.ch_names is not None else np.shape(data)[0]
    online = OnlinePreprocessor(config, sfreq_in, n_chans=n_chans)
    parts, low, high = [], np.inf, -np.inf
    for block in blocks:
        if flat is not None:  # input range, to tell dead channels from quiet ones
            low = np.fmin(low, np.fmin.reduce(block, axis=1))
            high = np.fmax(high, np.fmax.reduce(block, axis=1))
        parts.append(online.process(block))
    if flat is not None:
        flat.append(~(high > low))
    out = np.concatenate(parts, axis=1) if parts else np.empty((n_chans, 0), np.float32)
    return online, out


def preprocess_raw(data: mne.io.BaseRaw | np.ndarray, config: PreprocessConfig,
                   sfreq_in: float | None = None, *, return_times: bool = False):
    """Preprocess a whole recording: the online face run over it in blocks.

    ``data`` is an MNE Raw (channels picked by ``config``, ``sfreq_in`` read from it)
    or an array ``(n_chans, n_times)`` already in the config's channel order. Returns
    float32 ``(n_chans, n_out)`` with ``n_out = ceil(n_times * up / down)``; with
    ``return_times``, also the times (s) of the outputs, ``k / sfreq_out``, where 0 is
    the first input sample. Scaling and clamping apply only to a fitted config.
    """
    online, out = _run(data, config, sfreq_in)
    if not return_times:
        return out
    return out, online.input_position(np.arange(out.shape[1])) / online.sfreq_in


def fit_scaler(data: Any, config: PreprocessConfig, sfreq_in: float | None = None, *,
               skip_s: float = 0.0) -> PreprocessConfig:
    """Fit the robust scaler (median, interquartile range) on training data.

    ``data``: a Raw, an array, or a sequence of them (runs, each filtered from a
    fresh state); statistics are taken after filtering and resampling, skipping the
    first ``skip_s`` seconds of each run (filter warm-up). Returns a new, resolved
    config, whose ``ch_names`` are ``ch0, ch1...`` when fitted on bare arrays.

    Zero-IQR guard, per channel (never across channels: MEG in T and EEG in V differ
    by 1e8): a channel whose input is constant (dead) gets scale 1, so its output
    stays at round-off, ~0; a channel whose IQR is under 1e-3 of its standard
    deviation (coarsely quantised, mostly-constant) gets 1.349 x std, the IQR of a
    normal law with that spread.
    """
    runs = [data] if isinstance(data, (mne.io.BaseRaw, np.ndarray)) else list(data)
    if not runs:
        raise InputError("at least one recording", "none", "pass a Raw, an array or a list")
    base = dataclasses.replace(config, center=None, scale=None)
    outs, flats = [], []
    for run in runs:
        if isinstance(run, mne.io.BaseRaw):
            base = base.resolve(run.info)  # the first run fixes the channels; later ones need them
        _, out = _run(run, base, sfreq_in, flats)
        if outs and out.shape[0] != outs[0].shape[0]:
            raise InputError(f"runs with the same {outs[0].shape[0]} channels",
                             f"a run with {out.shape[0]}", "pick the same channels in every run")
        outs.append(out[:, int(round(skip_s * base.sfreq)):])
    stacked = np.concatenate(outs, axis=1).astype(np.float64)
    if stacked.shape[1] < 2:
        raise InputError("at least 2 output samples to fit the scaler",
                         f"{stacked.shape[1]}", "pass longer recordings or a smaller skip_s")
    q25, center, q75 = np.percentile(stacked, [25, 50, 75], axis=1)
    scale = q75 - q25
    std = stacked.std(axis=1)
    flat = np.logical_and.reduce(flats)
    spiky = ~flat & ~(scale > 1e-3 * std)
    scale[spiky] = np.where(std[spiky] > 0, 1.349 * std[spiky], 1.0)
    scale[flat] = 1.0
    n = stacked.shape[0]
    ch_names = base.ch_names if base.ch_names is not None else tuple(f"ch{i}" for i in range(n))
    for mask, what in ((flat, "constant input (dead?); scale 1"),
                       (spiky, "zero interquartile range; scale 1.349 x std")):
        if mask.any():
            logger.warning("%d channel(s) with %s: %s", int(mask.sum()), what,
                           [ch_names[i] for i in np.flatnonzero(mask)[:10]])
    logger.info("fitted robust scaler on %d channels x %d samples", n, stacked.shape[1])
    return dataclasses.replace(base, ch_names=ch_names, center=tuple(center.tolist()),
                               scale=tuple(scale.tolist()))
