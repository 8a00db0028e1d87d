"""What a running session's checkpoint may be swapped for, and the worker's side of it.

A session's acquisition process keeps running through a swap
(:meth:`~.session.LiveSession.swap_checkpoint`): it goes on cutting windows of the
channels, rate and length it started with, filtered and scaled as it started. So a
new checkpoint must take those windows (:func:`check_swap`): the same channel set
(the order may differ), the same rate, window length and filters, and the embedder
of the session's gallery. Only the scaler may differ: a checkpoint adapted to a new
person carries that person's robust scaler (:mod:`glimpse.models.new_subject`), and
the worker maps each window from the acquisition's channel order and scaler to the
checkpoint's (:class:`WindowMap`), exactly but for samples the acquisition clipped.

:func:`checkpoint_subject` resolves a ``"subject"`` of a request to a training
subject id of the checkpoint (a 400 listing them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError
from glimpse.streaming.window import Window

__all__ = ["SCALER_KEYS", "WindowMap", "check_swap", "checkpoint_subject"]

#: Preprocessing fields a swapped-in checkpoint may change: its scaler, and the channel
#: selection (decided by ``ch_names``, checked as a set on its own).
SCALER_KEYS = ("center", "scale", "clamp")
_CHANNEL_KEYS = ("ch_names", "picks", "include", "exclude", "exclude_bads")


def checkpoint_subject(config: dict[str, Any], subject: str | None, checkpoint_id: str) -> str:
    """The training subject id ``subject`` names in a checkpoint's config.json (None: the
    first); InputError listing the checkpoint's subjects when it names none."""
    subjects = [str(s) for s in config["subjects"]]
    if subject is None:
        return subjects[0]
    name = str(subject).removeprefix("sub-")
    if name not in subjects:
        raise InputError(f"a training subject of checkpoint {checkpoint_id}: one of {subjects}",
                         repr(subject), "pick one of those (a person calibrated with `glimpse "
                         "calibrate` is a subject of the adapted checkpoint, by the name given there)")
    return name


def _channels_of(spec: dict[str, Any]) -> str:
    names = spec["ch_names"]
    return f"{len(names)} channels ({', '.join(names[:3])}, ...)"


def check_swap(spec: dict[str, Any], config: dict[str, Any], checkpoint_id: str,
               gallery: tuple[str, int]) -> None:
    """InputError (naming both sides) unless checkpoint ``config`` (config.json) can decode the
    windows the running session ``spec`` cuts, into its ``gallery`` (embedder name, dim)."""
    fix = ("the acquisition keeps cutting the session's windows: pick a checkpoint trained on them "
           "(GET /api/checkpoints lists each one's channels, rate and window), or start a new "
           "session with this one")
    names = [str(n) for n in config["channels"]["names"]]
    if set(names) != set(spec["ch_names"]) or len(names) != len(spec["ch_names"]):
        missing = sorted(set(spec["ch_names"]) - set(names))
        extra = sorted(set(names) - set(spec["ch_names"]))
        raise InputError(f"a checkpoint with the session's {_channels_of(spec)}",
                         f"checkpoint {checkpoint_id} with {len(names)} channels (missing "
                         f"{missing[:4]}{' ...' if len(missing) > 4 else ''}, not in the session "
                         f"{extra[:4]}{' ...' if len(extra) > 4 else ''})", fix)
    sfreq, n_times = float(config["sfreq"]), int(config["window"]["n_times"])
    if not np.isclose(sfreq, spec["sfreq"]) or n_times != spec["n_times"]:
        raise InputError(f"a checkpoint with the session's windows: {spec['n_times']} samples at "
                         f"{spec['sfreq']:g} Hz", f"checkpoint {checkpoint_id}: {n_times} samples at "
                         f"{sfreq:g} Hz", fix)
    ours, theirs = spec["preprocess"], config["preprocess"]
    skip = set(SCALER_KEYS) | set(_CHANNEL_KEYS)
    differ = sorted(k for k in set(ours) | set(theirs) if k not in skip and ours.get(k) != theirs.get(k))
    if differ:
        raise InputError("a checkpoint with the session's filters and rate (only the scaler may "
                         "differ): " + ", ".join(f"{k}={ours.get(k)!r}" for k in differ),
                         f"checkpoint {checkpoint_id}: " + ", ".join(f"{k}={theirs.get(k)!r}"
                                                                      for k in differ), fix)
    emb = config["embedder"]
    if (emb["name"], int(emb["dim"])) != (gallery[0], int(gallery[1])):
        raise InputError(f"a checkpoint with the session gallery's embedder ({gallery[0]}, "
                         f"{gallery[1]} dims)", f"checkpoint {checkpoint_id} of {emb['name']} "
                         f"({emb['dim']} dims)", "pick a checkpoint trained with that embedder, or "
                         "start a new session with a gallery of this one's")


@dataclasses.dataclass(frozen=True)
class WindowMap:
    """The acquisition's windows made a checkpoint's: rows reordered, rescaled, clipped.

    ``order[i]``: the acquisition's row of the checkpoint's channel ``i``; then
    ``y = clip(x * gain + offset, -clamp, clamp)`` per channel (``clamp`` None: no clip).
    """

    order: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    clamp: float | None
    ch_names: tuple[str, ...]

    @classmethod
    def between(cls, acq_names, acq_preprocess: dict[str, Any], ckpt_names,
                ckpt_preprocess: dict[str, Any]) -> WindowMap | None:
        """The map from windows cut with ``acq_preprocess`` in ``acq_names`` order to what a
        checkpoint of ``ckpt_names`` and ``ckpt_preprocess`` expects; None when they agree."""
        acq_names, ckpt_names = [str(n) for n in acq_names], tuple(str(n) for n in ckpt_names)
        if sorted(acq_names) != sorted(ckpt_names):
            raise InputError(f"a checkpoint of the session's channels ({len(acq_names)})",
                             f"{len(ckpt_names)} channels", "swap to a checkpoint of the same montage")
        order = np.array([acq_names.index(n) for n in ckpt_names])
        same_scaler = all(acq_preprocess.get(k) == ckpt_preprocess.get(k) for k in SCALER_KEYS)
        if same_scaler and np.array_equal(order, np.arange(len(order))):
            return None
        n = len(order)
        # The raw (filtered) signal is x * s_acq + c_acq; the checkpoint wants (raw - c) / s.
        c_acq, s_acq = _scaler(acq_preprocess, order, n)
        c_new, s_new = _scaler(ckpt_preprocess, np.arange(n), n)
        gain, offset = s_acq / s_new, (c_acq - c_new) / s_new
        clamp = ckpt_preprocess.get("clamp") if ckpt_preprocess.get("center") is not None else None
        return cls(order, gain.astype(np.float32)[:, None], offset.astype(np.float32)[:, None],
                   None if clamp is None else float(clamp), ckpt_names)

    def __call__(self, window: Window) -> Window:
        data = window.data[self.order] * self.gain + self.offset
        if self.clamp is not None:
            np.clip(data, -self.clamp, self.clamp, out=data)
        mask = window.chan_mask
        if mask is not None:
            mask = mask[self.order]
            data[~mask] = 0.0  # a missing channel stays zeros, as the acquisition sends it
        return dataclasses.replace(window, data=data, ch_names=self.ch_names, chan_mask=mask)


def _scaler(preprocess: dict[str, Any], order: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) in ``order`` (0 and 1 without a scaler)."""
    if preprocess.get("center") is None:
        return np.zeros(n), np.ones(n)
    return (np.asarray(preprocess["center"], float)[order],
            np.asarray(preprocess["scale"], float)[order])
