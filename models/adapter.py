"""A dataset's windows fed to a checkpoint: channel order, scaler, subjects, batched encoding.

Evaluation and the noise-free ceiling both decode offline windows with a trained
checkpoint; :class:`Adapter` maps the data's windows onto the checkpoint's input
exactly as the live path would feed them, and :func:`encode_windows` runs the model
in bounded batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from glimpse.streaming.errors import InputError

from .checkpoint import channel_index
from .data import SessionData

logger = logging.getLogger("glimpse.models.adapter")

__all__ = ["Adapter", "encode_windows"]

_ENCODE_BATCH = 256  # windows per forward pass: bounded memory at any test-set size


class Adapter:
    """Maps this data's windows onto the checkpoint's input: channel order, scaler, subjects.

    The data must have been preprocessed like the checkpoint (same channels, rate and
    filters). Its robust scaler may differ (``load_session`` fits one on the data's own
    training trials); windows are then mapped back to the checkpoint's scaler,
    ``clip((x * s_data + c_data - c_ckpt) / s_ckpt)``, exactly what the live path
    feeds the model except where the data's own clamp already clipped a sample.
    """

    def __init__(self, ckpt, data: SessionData):
        self.index = np.asarray(_channel_index(ckpt, data))
        self.identity_channels = bool(np.array_equal(self.index, np.arange(data.n_chans)))
        mine = dataclasses.replace(data.preprocess, center=None, scale=None, ch_names=None,
                                   picks=(), include=(), exclude=(), exclude_bads=True)
        theirs = dataclasses.replace(ckpt.preprocess, center=None, scale=None, ch_names=None,
                                     picks=(), include=(), exclude=(), exclude_bads=True)
        if mine != theirs or not math.isclose(data.sfreq, ckpt.sfreq, rel_tol=1e-9):
            diff = {f.name: (getattr(mine, f.name), getattr(theirs, f.name))
                    for f in dataclasses.fields(mine)
                    if getattr(mine, f.name) != getattr(theirs, f.name)}
            diff = diff or {"sfreq": (data.sfreq, ckpt.sfreq)}
            raise InputError("data preprocessed as the checkpoint was (same rate and filters)",
                             f"differences (data, checkpoint): {diff}",
                             "load the data with the checkpoint's preprocessing: "
                             "load_session(path, preprocess=checkpoint.preprocess), or pass the "
                             "path and let evaluate() load it")
        self.rescale = None
        if data.preprocess.is_fitted and ckpt.preprocess.is_fitted:
            c_d = np.asarray(data.preprocess.center, np.float64)[self.index]
            s_d = np.asarray(data.preprocess.scale, np.float64)[self.index]
            c_k = np.asarray(ckpt.preprocess.center, np.float64)
            s_k = np.asarray(ckpt.preprocess.scale, np.float64)
            if not (np.allclose(c_d, c_k, rtol=1e-6, atol=0) and np.allclose(s_d, s_k, rtol=1e-6)):
                self.rescale = (s_d / s_k, (c_d - c_k) / s_k)
                logger.info("data scaler differs from the checkpoint's: windows are mapped back "
                            "to the checkpoint's scaler (median |log scale ratio| %.3f)",
                            float(np.median(np.abs(np.log(s_d / s_k)))))
        elif data.preprocess.is_fitted != ckpt.preprocess.is_fitted:
            raise InputError("data and checkpoint both scaled (or both unscaled)",
                             f"data scaled: {data.preprocess.is_fitted}, checkpoint scaled: "
                             f"{ckpt.preprocess.is_fitted}", "load the data with load_session")
        self.clamp = ckpt.preprocess.clamp
        # Data subject index -> checkpoint subject index (-1: a subject it never saw).
        self.subject_map = np.array([ckpt.subjects.index(s) if s in ckpt.subjects else -1
                                     for s in data.subjects], np.int64)
        self.unknown_subjects = [s for s in data.subjects if s not in ckpt.subjects]

    def windows(self, x: np.ndarray) -> np.ndarray:
        if not self.identity_channels:
            x = x[:, self.index]
        if self.rescale is not None:
            gain, shift = self.rescale
            x = (x * gain[None, :, None].astype(np.float32)
                 + shift[None, :, None].astype(np.float32)).astype(np.float32)
            if self.clamp is not None:
                np.clip(x, -self.clamp, self.clamp, out=x)
        return np.ascontiguousarray(x, np.float32)


def _channel_index(ckpt, data: SessionData) -> list[int]:
    """:func:`channel_index` on preprocessed data.

    Not ``check_compatible``: that one also validates the preprocessing against the
    RAW input rate, which preprocessed data no longer has (a 60 Hz notch would fail
    against the 120 Hz output rate).
    """
    return channel_index(ckpt, data.ch_names, fix="evaluate on recordings of the same montage, "
                                                  "or retrain on the channels you have")


def encode_windows(ckpt, x: np.ndarray, subject: np.ndarray) -> np.ndarray:
    """Retrieval embeddings ``(N, D)`` for windows ``x`` of checkpoint subjects ``subject``."""
    out = np.empty((len(x), ckpt.embed_dim), np.float32)
    for s in np.unique(subject):
        rows = np.flatnonzero(subject == s)
        for start in range(0, len(rows), _ENCODE_BATCH):
            part = rows[start:start + _ENCODE_BATCH]
            emb, _ = ckpt.encode(x[part], int(s))
            if emb.shape != (len(part), ckpt.embed_dim):
                raise InputError(f"model outputs of shape ({len(part)}, {ckpt.embed_dim}) "
                                 f"(embedder {ckpt.embedder_name})", f"{emb.shape}",
                                 "the checkpoint's model and embedder disagree: retrain it")
            out[part] = emb
    return out
