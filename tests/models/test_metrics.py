"""glimpse.models.metrics: retrieval metrics with known answers, chance levels, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glimpse.models.evaluate import CURVE_OFFSETS
from glimpse.models.metrics import (cosine_scores, n_way_top1, pre_onset_check, relative_ranks,
                                    retrieval_metrics, topk_accuracy)
from glimpse.streaming.errors import InputError


def ranked(ranks: list[int], m: int, seed: int = 0):
    """Predictions whose true candidate ranks ``ranks[i]`` (0 = best) among ``m`` one-hot candidates."""
    rng = np.random.default_rng(seed)
    candidates = np.eye(m) * rng.uniform(0.5, 3, size=(m, 1))  # norms must not matter
    truth = rng.integers(0, m, size=len(ranks))
    pred = np.empty((len(ranks), m))
    levels = np.linspace(1.0, 0.1, m)  # distinct, descending scores
    for i, (r, t) in enumerate(zip(ranks, truth)):
        others = rng.permutation([j for j in range(m) if j != t])
        order = np.insert(others, r, t)  # candidate at each rank
        pred[i, order] = levels
    return pred * rng.uniform(0.1, 10, size=(len(ranks), 1)), candidates, truth


def test_topk_and_relative_rank_known_answers():
    ranks = [0, 0, 1, 4, 5, 9, 3, 2]
    pred, cand, truth = ranked(ranks, 10)
    s = cosine_scores(pred, cand)
    r = np.array(ranks)
    assert topk_accuracy(s, truth, 1) == pytest.approx(np.mean(r < 1))
    assert topk_accuracy(s, truth, 5) == pytest.approx(np.mean(r < 5))
    np.testing.assert_allclose(relative_ranks(s, truth), r / 9)
    m = retrieval_metrics(pred, cand, truth, n_way=None)
    assert m["top1"] == pytest.approx(0.25) and m["top5"] == pytest.approx(6 / 8)
    assert m["median_relative_rank"] == pytest.approx(np.median(r / 9))
    assert (m["chance_top1"], m["chance_top5"], m["chance_median_relative_rank"]) == (0.1, 0.5, 0.5)
    assert m["se_top1"] == pytest.approx(math.sqrt(0.25 * 0.75 / 8))
    perfect = retrieval_metrics(cand, cand, np.arange(10), n_way=5)
    assert perfect["top1"] == perfect["n_way"]["top1"] == 1.0 and perfect["median_relative_rank"] == 0
    worst = retrieval_metrics(-cand + 1e-3, cand, np.arange(10), n_way=None)
    assert worst["top1"] == 0 and worst["median_relative_rank"] == 1.0


def test_constant_prediction_scores_chance_never_better():
    # Ties are broken at random in expectation: a collapsed model must not look perfect.
    cand = np.random.default_rng(1).standard_normal((8, 16))
    zeros = np.zeros((5, 16))
    m = retrieval_metrics(zeros, cand, np.arange(5), n_way=4)
    assert m["top1"] == pytest.approx(1 / 8) and m["top5"] == pytest.approx(5 / 8)
    assert m["median_relative_rank"] == 0.5 and m["n_way"]["top1"] == pytest.approx(1 / 4)


def test_random_predictions_sit_at_chance():
    rng = np.random.default_rng(2)
    cand = rng.standard_normal((40, 32))
    pred = rng.standard_normal((4000, 32))
    truth = rng.integers(0, 40, 4000)
    m = retrieval_metrics(pred, cand, truth, n_way=10, n_way_draws=5)
    for k in (1, 5):
        assert abs(m[f"top{k}"] - k / 40) < 4 * math.sqrt(k / 40 * (1 - k / 40) / 4000)
    assert abs(m["median_relative_rank"] - 0.5) < 0.03
    assert abs(m["n_way"]["top1"] - 0.1) < 0.02 and m["n_way"]["chance"] == 0.1


def test_n_way_matches_the_exact_probability():
    # True candidate at rank r among m: it beats n-1 random others with probability
    # C(m-1-r, n-1) / C(m-1, n-1).
    m, n = 20, 5
    ranks = list(range(m)) * 3
    pred, cand, truth = ranked(ranks, m, seed=3)
    out = n_way_top1(cosine_scores(pred, cand), truth, n, draws=400, seed=0)
    exact = np.mean([math.comb(m - 1 - r, n - 1) / math.comb(m - 1, n - 1) for r in ranks])
    assert out["top1"] == pytest.approx(exact, abs=0.015)
    assert (out["n_way"], out["capped"], out["chance"]) == (5, False, 0.2)
    # Seeded: the same seed gives the same figure.
    again = n_way_top1(cosine_scores(pred, cand), truth, n, draws=400, seed=0)
    assert again["top1"] == out["top1"]


def test_n_way_is_capped_at_the_candidate_count_and_says_so():
    pred, cand, truth = ranked([0, 1, 2, 0], 8)
    out = n_way_top1(cosine_scores(pred, cand), truth, 50)
    assert out["n_way"] == 8 and out["capped"] and "only 8 candidate" in out["note"]
    assert out["top1"] == pytest.approx(0.5)  # = the full top-1
    assert out["chance"] == 1 / 8


def test_metric_bad_input():
    with pytest.raises(InputError, match="same embedder"):
        cosine_scores(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(InputError, match="finite"):
        cosine_scores(np.full((1, 3), np.nan), np.ones((4, 3)))
    with pytest.raises(InputError, match=r"indices in \[0, 3\]"):
        retrieval_metrics(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 4]))
    with pytest.raises(InputError, match="n_way an integer >= 2"):
        n_way_top1(np.zeros((2, 4)), np.array([0, 1]), 1)


def test_pre_onset_check():
    def curve(pre_value):
        return [{"offset_s": o, "n": 48, "top5": pre_value if o < 0 else 0.9,
                 "chance_top5": 5 / 8} for o in CURVE_OFFSETS]
    ok = pre_onset_check(curve(0.66))
    assert ok["at_chance"] and ok["n_points"] == 8 and ok["bound"] == pytest.approx(
        5 / 8 + 3 * math.sqrt(5 / 8 * 3 / 8 / 48))
    assert pre_onset_check(curve(0.95))["at_chance"] is False
