"""The noise-free ceiling of a checkpoint on simulated data: what it decodes without noise.

Each test image's noise-free sensor response
(:func:`glimpse.streaming.simulate.clean_responses`) is placed in a silent recording,
run through the checkpoint's own preprocessing (the same causal
``OnlinePreprocessor``, with the checkpoint's fitted scaler), cut into the same
windows and decoded by the same model. Data that are not a simulated session have
no ceiling; :func:`ceiling` then says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.channels import find_channels, listing
from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import OnlinePreprocessor

from .adapter import encode_windows
from .data import SessionData
from .metrics import cosine_scores, retrieval_metrics, topk_accuracy
from .windows import cut_windows, window_ends

__all__ = ["ceiling", "clean_windows"]

_QUIET_PRE_S = 1.0  # silence before each noise-free response in the ceiling's recording
_QUIET_POST_S = 0.2  # silence after the last curve offset


def _is_simulated(root: Path) -> str | None:
    """None when ``root`` is a simulated session with noise-free responses, else why not."""
    if not (root / "simulation.json").is_file():
        return f"not a simulated session ({root} has no simulation.json): no noise-free responses"
    if not (root / "derivatives" / "clean" / "clean.json").is_file():
        return f"{root / 'derivatives/clean'} is missing: no noise-free responses"
    return None


def clean_windows(ckpt, clean, image_path: str, offsets: Sequence[float]) -> np.ndarray:
    """``(len(offsets), n_chans, n_times)`` model windows of one image's noise-free response.

    The response (from ``clean.response``, at the simulator's rate, in T or V) is put
    ``_QUIET_PRE_S`` into an otherwise silent recording of the checkpoint's channels,
    run through the checkpoint's preprocessing (causal filters, resampling, fitted
    scaler and clamp: the live path) from a fresh state, and cut like the data's
    windows: each one's last sample ``offset`` after onset.
    """
    where, missing = find_channels(ckpt.ch_names, clean.ch_names)
    if missing:
        raise InputError(f"noise-free responses for the checkpoint's {ckpt.n_chans} channels",
                         f"{len(missing)} missing: {listing(missing, 5)}",
                         "evaluate the ceiling on the simulated session the model was trained on")
    response = clean.response(image_path)[[where[n] for n in ckpt.ch_names]]
    sfreq_in = clean.sfreq
    n_pre = int(round(_QUIET_PRE_S * sfreq_in))
    n_post = max(response.shape[1], int(math.ceil((max(max(offsets), 0.0) + _QUIET_POST_S)
                                                  * sfreq_in)))
    n_total = n_pre + n_post
    signal = np.zeros((ckpt.n_chans, n_total))
    signal[:, n_pre:n_pre + response.shape[1]] = response
    online = OnlinePreprocessor(ckpt.preprocess, sfreq_in)
    out = online.process(signal)
    onset = n_pre / sfreq_in  # on the output's time axis, k / sfreq_out from input sample 0
    ends = window_ends(np.full(len(offsets), onset), np.asarray(offsets, float), online.sfreq_out)
    return cut_windows(out, ends, ckpt.n_times)


def ceiling(ckpt, data: SessionData, test: np.ndarray, cand_rows: np.ndarray,
            candidates: np.ndarray, headline: float, curve_offsets: Sequence[float],
            kw: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the ceiling's metrics block, None), or (None, why there is none) when ``data`` is
    not a simulated session. ``kw``: :func:`retrieval_metrics`' n-way options."""
    from glimpse.streaming.simulate import clean_responses

    root = Path(data.source)
    reason = _is_simulated(root)
    if reason is not None:
        return None, reason
    offsets = [float(headline)] + [float(o) for o in curve_offsets]
    subjects = np.unique(data.trials.subject[test])
    xs, subj, truth = [], [], []
    try:  # clean.json names images relative to the simulated BIDS root
        rel = [Path(data.images[r]).resolve().relative_to(root.resolve()).as_posix()
               for r in cand_rows]
    except ValueError:
        return None, f"the test images are not under the simulated session's root {root}"
    for s in subjects:
        sid = data.subjects[s]
        clean = clean_responses(root, sid)
        for j in range(len(cand_rows)):
            xs.append(clean_windows(ckpt, clean, rel[j], offsets))
            subj.append(ckpt.subjects.index(sid))
            truth.append(j)
    x = np.stack(xs)  # (n_queries, n_offsets, C, T)
    subj, truth = np.asarray(subj, np.int64), np.asarray(truth, np.int64)
    n_q, n_off = x.shape[:2]
    pred = encode_windows(ckpt, x.reshape((n_q * n_off,) + x.shape[2:]), np.repeat(subj, n_off))
    pred = pred.reshape(n_q, n_off, -1)
    block = retrieval_metrics(pred[:, 0], candidates, truth, **kw)
    block.update({
        "offset_s": float(headline),
        "n_subjects": int(len(subjects)),
        "how": "each test image's noise-free response (derivatives/clean) in a silent recording, "
               "through the checkpoint's preprocessing (causal filters, fitted scaler) and model; "
               "one query per (subject, image), so single-trial and averaged coincide",
        "curve": [],
    })
    for i, o in enumerate(offsets[1:], start=1):
        scores = cosine_scores(pred[:, i], candidates)
        block["curve"].append({"offset_s": o, "top1": topk_accuracy(scores, truth, 1),
                               "top5": topk_accuracy(scores, truth, 5)})
    return block, None
