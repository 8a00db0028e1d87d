"""The confidence head: is there a fresh image in this window? Trained, calibrated, plotted.

A small confidence head, separate from the decoder: a logistic regression on
per-channel statistics of the window (:func:`glimpse.models.checkpoint.window_stats`:
log variance, mean, rise), trained on training-trial windows with a fresh image
against "nothing new" windows (the fixation before an image) by :func:`fit_presence`.
:func:`calibrate` then Platt-scales it on validation windows (stimulus windows every
50 ms from 0.15 to 0.8 s after onset, nothing-new ones every 50 ms from -0.25 to
0.04 s) and folds it into one ``weight`` vector and ``bias``, plain numbers in
``config.json``, with the expected calibration error and AUC:
``confidence = 1 / (1 + exp(-(window_stats(x) . weight + bias)))``. The same head
serves every model, costs microseconds live, and does not compete with the decoder
for its capacity (a probe on the decoder's LayerNorm-ed heads, which discard a
window's power, did not learn presence within the CPU budget).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from glimpse.streaming.errors import InputError

from .checkpoint import WINDOW_STATS, window_stats
from .data import SessionData
from .windows import WindowSampler, WindowSet, fixed_windows

if TYPE_CHECKING:  # only annotations: train_config.py needs nothing from here
    from .train_config import TrainConfig

logger = logging.getLogger("glimpse.models.confidence")

__all__ = ["CALIB_NOTHING_OFFSETS", "CALIB_STIM_OFFSETS", "apply_platt", "calibrate",
           "calibration_offsets", "expected_calibration_error", "fit_presence", "platt_fit",
           "plot_reliability"]

#: Window ends (s after onset) of the windows the confidence is calibrated on.
CALIB_STIM_OFFSETS = tuple(np.round(np.arange(0.15, 0.8001, 0.05), 3).tolist())
CALIB_NOTHING_OFFSETS = tuple(np.round(np.arange(-0.25, 0.0401, 0.05), 3).tolist())


def platt_fit(score: np.ndarray, label: np.ndarray, *, iters: int = 100) -> tuple[float, float]:
    """Logistic calibration ``p = sigmoid(a * score + b)`` by Newton's method (Platt 1999).

    Platt's smoothed targets ((n+ + 1) / (n+ + 2), 1 / (n- + 2)) keep ``a`` finite
    when the classes separate perfectly.
    """
    s, y = np.asarray(score, float), np.asarray(label, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("calibration windows of both kinds (stimulus and nothing new)",
                         f"{n_pos} stimulus and {n_neg} nothing-new windows",
                         "use more validation trials")
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    mu, sd = s.mean(), s.std() or 1.0
    z = (s - mu) / sd  # standardised for conditioning; mapped back below
    a, b = 0.0, math.log((n_pos + 1) / (n_neg + 1))
    for _ in range(iters):
        p = expit(a * z + b)
        w = np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a / sd), float(b - a * mu / sd)


def apply_platt(score: np.ndarray, a: float, b: float) -> np.ndarray:
    """The Platt-calibrated probability of each score."""
    return expit(a * np.asarray(score, float) + b)


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, n_bins: int = 10
                               ) -> tuple[float, list[dict[str, float]]]:
    """ECE over ``n_bins`` equal-width bins, and the bins (for the reliability plot)."""
    prob, label = np.asarray(prob, float), np.asarray(label, float)
    idx = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    ece, bins = 0.0, []
    for i in range(n_bins):
        m = idx == i
        if m.any():
            conf, acc = float(prob[m].mean()), float(label[m].mean())
            ece += m.mean() * abs(conf - acc)
            bins.append({"low": i / n_bins, "high": (i + 1) / n_bins, "count": int(m.sum()),
                         "confidence": conf, "frequency": acc})
    return float(ece), bins


def calibration_offsets() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(stimulus, nothing-new) window ends used for calibration, s after onset."""
    return CALIB_STIM_OFFSETS, CALIB_NOTHING_OFFSETS


def fit_presence(data: SessionData, trials: np.ndarray, config: TrainConfig
                 ) -> tuple[np.ndarray, float]:
    """The confidence head before calibration: (weight (3 C,), bias) on ``window_stats``.

    A logistic regression (L2, C = 0.1, on standardised features, folded back) of
    stimulus against nothing-new windows of the training trials, ``presence_draws``
    random draws of each.
    """
    from sklearn.linear_model import LogisticRegression

    sampler = WindowSampler(data, trials, window_s=config.window_s,
                            stim_offsets=config.stim_offsets,
                            nothing_offsets=config.nothing_offsets,
                            nothing_fraction=config.nothing_fraction,
                            seed=config.seed + 1)
    ws = WindowSet.concatenate([sampler.sample(e) for e in range(config.presence_draws)])
    feats = window_stats(ws.x)
    n_chans = ws.x.shape[1]
    if ws.is_stimulus.all():
        logger.warning("no nothing-new windows in the training trials (no quiet time before "
                       "onsets): the confidence is constant")
        return np.zeros(3 * n_chans), 0.0
    mu, sd = feats.mean(0), feats.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    lr = LogisticRegression(C=0.1, max_iter=2000).fit((feats - mu) / sd, ws.is_stimulus)
    weight = lr.coef_[0] / sd
    return weight, float(lr.intercept_[0] - weight @ mu)


def calibrate(probe: tuple[np.ndarray, float], data: SessionData, trials: np.ndarray,
              window_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The confidence for config.json: the head, Platt-calibrated on ``trials``' windows.

    Platt's ``a, b`` fold into the head, so the checkpoint stores one ``weight`` and one
    ``bias``. Without validation windows of both kinds, the head is stored as trained
    (``calibrated: false``). Returns (confidence, reliability-plot data).
    """
    weight, bias = probe
    base = {"features": WINDOW_STATS,
            "formula": "1 / (1 + exp(-(dot(window_stats(x), weight) + bias)))"}
    stim_off, nothing_off = calibration_offsets()
    windows = [fixed_windows(data, trials, window_s=window_s, offsets=stim_off),
               fixed_windows(data, trials, window_s=window_s, offsets=nothing_off,
                             is_stimulus=False)] if len(trials) else []
    if not windows or not len(windows[0]) or not len(windows[1]):
        logger.warning("no validation windows of both kinds to calibrate the confidence on; "
                       "the checkpoint stores the confidence head uncalibrated")
        return {**base, "weight": weight.tolist(), "bias": bias, "calibrated": False,
                "ece": None, "auc": None}, {}
    ws = WindowSet.concatenate(windows)
    score = window_stats(ws.x) @ weight + bias
    a, b = platt_fit(score, ws.is_stimulus)
    prob = apply_platt(score, a, b)
    ece, bins = expected_calibration_error(prob, ws.is_stimulus)
    # How well the head separates the two kinds (calibration keeps it); ties count half.
    auc = roc_auc_score(ws.is_stimulus, score)
    confidence = {**base, "weight": (a * weight).tolist(), "bias": a * bias + b,
                  "calibrated": True, "method": "logistic head + Platt scaling",
                  "ece": ece, "auc": float(auc), "n_windows": len(ws),
                  "stim_offsets": list(stim_off), "nothing_offsets": list(nothing_off)}
    return confidence, {"bins": bins, "prob": prob, "label": ws.is_stimulus,
                        "offset": ws.offset_s}


def plot_reliability(plot: dict[str, Any], confidence: dict[str, Any], path: Path) -> None:
    """``figures/reliability.png``: the reliability curve and confidence vs window position."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    bins = plot["bins"]
    ax1.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax1.plot([b["confidence"] for b in bins], [b["frequency"] for b in bins], "o-")
    ax1.set(xlabel="predicted confidence", ylabel="fraction with a fresh stimulus",
            title=f"reliability (ECE {confidence['ece']:.3f})", xlim=(0, 1), ylim=(0, 1))
    offs = np.round(plot["offset"], 2)
    uniq = np.unique(offs)
    ax2.plot(uniq, [plot["prob"][offs == o].mean() for o in uniq], "o-")
    ax2.axvspan(uniq.min(), 0.04, color="grey", alpha=0.15, label="nothing new")
    ax2.set(xlabel="window end after onset (s)", ylabel="mean confidence",
            title=f"confidence vs window position (AUC {confidence['auc']:.2f})", ylim=(0, 1))
    ax2.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)

