"""glimpse.models.confidence: Platt scaling, calibration error, AUC with ties, no overflow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from glimpse.models.checkpoint import Checkpoint
from glimpse.models.confidence import (apply_platt, calibrate, expected_calibration_error,
                                       platt_fit)
from glimpse.models.data import load_session
from glimpse.models.windows import split_trials


def test_platt_and_ece():
    rng = np.random.default_rng(0)
    score = rng.normal(0, 1, 20000)
    label = rng.random(20000) < 1 / (1 + np.exp(-(3 * score - 1)))
    a, b = platt_fit(score, label)
    assert a == pytest.approx(3, rel=0.1) and b == pytest.approx(-1, abs=0.1)
    prob = 1 / (1 + np.exp(-(a * score + b)))
    ece, bins = expected_calibration_error(prob, label)
    assert ece < 0.02 and sum(b_["count"] for b_ in bins) == 20000
    assert expected_calibration_error(np.full(4, 0.9), np.zeros(4))[0] == pytest.approx(0.9)


def test_large_negative_logits_do_not_overflow():
    # 1 / (1 + exp(1000)) overflowed (a RuntimeWarning, an error under the test settings).
    assert apply_platt(np.array([-1000.0, 1000.0]), 1.0, 0.0).tolist() == [0.0, 1.0]
    n_chans = 2
    ckpt = Checkpoint(path=None, model=None, config={}, preprocess=None, model_name="stub",
                      embedder_name="handcrafted", embed_dim=4, ch_names=("A", "B"),
                      positions=np.zeros((n_chans, 2)), sfreq=120.0, n_times=30, window_s=0.25,
                      subjects=("01",), retrieval_head="clip",
                      confidence={"weight": [0.0] * (3 * n_chans), "bias": -1000.0})
    conf = ckpt.confidence_of(np.ones((3, n_chans, 30), np.float32))
    assert conf.dtype == np.float32 and conf.tolist() == [0.0, 0.0, 0.0]
    high = dataclasses.replace(ckpt, confidence={**ckpt.confidence, "bias": 1000.0})
    assert high.confidence_of(np.ones((n_chans, 30), np.float32)).tolist() == [1.0]


def test_auc_counts_ties_as_half(small_meg_session):
    # A head that scores every window alike cannot separate them: AUC 0.5. Ranking the
    # ties in their order (stimulus windows first) made it 0.
    session = load_session(small_meg_session[0], progress=False)
    splits = split_trials(session, 0.25, seed=0)
    flat = (np.zeros(3 * session.n_chans), 0.0)
    confidence, plot = calibrate(flat, session, splits.val, 0.25)
    assert confidence["calibrated"] and confidence["auc"] == 0.5
    assert plot["label"].any() and not plot["label"].all()
