"""Retrieval metrics: pure functions on arrays, each figure with its chance level.

Predictions are ranked by cosine among candidate embeddings (:func:`cosine_scores`).
Ties between scores count as random tie-breaking would, in expectation, so a
constant prediction scores chance, never better. :func:`retrieval_metrics` gives
top-k, the median relative rank (``rank / (n_candidates - 1)``: 0 best, 1 worst,
exactly 0.5 by chance at any size) and the MinD-Vis n-way top-1
(:func:`n_way_top1`); :func:`pre_onset_check` tells whether a time-resolved curve
sits at chance before image onset. Used by evaluation and by training's validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError

__all__ = ["N_WAY", "N_WAY_DRAWS", "PRE_ONSET_Z", "cosine_scores", "n_way_top1", "per_query_topk",
           "pre_onset_check", "relative_ranks", "retrieval_metrics", "topk_accuracy"]

#: n of the n-way top-1 (MinD-Vis reports 50-way).
N_WAY = 50
#: Random distractor draws the n-way figure is averaged over.
N_WAY_DRAWS = 20
#: Standard errors above chance that the pre-onset curve may reach.
PRE_ONSET_Z = 3.0


def cosine_scores(pred: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``(N, M)`` cosine similarity of each prediction with each candidate, float64.

    A zero row (a collapsed prediction, a blank image) scores 0 against everything.
    """
    p = np.asarray(pred, np.float64)
    c = np.asarray(candidates, np.float64)
    if p.ndim != 2 or c.ndim != 2 or p.shape[1] != c.shape[1]:
        raise InputError("predictions (N, D) and candidates (M, D) of one dimension D",
                         f"{p.shape} and {c.shape}", "embed both with the same embedder")
    if not (np.isfinite(p).all() and np.isfinite(c).all()):
        raise InputError("finite predictions and candidate embeddings", "NaN or inf values",
                         "check the model's output and the image embeddings")
    pn = np.linalg.norm(p, axis=1, keepdims=True)
    cn = np.linalg.norm(c, axis=1, keepdims=True)
    p = np.divide(p, pn, out=np.zeros_like(p), where=pn > 0)
    c = np.divide(c, cn, out=np.zeros_like(c), where=cn > 0)
    return p @ c.T


def _check_truth(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    truth = np.asarray(truth)
    if scores.ndim != 2 or truth.shape != (scores.shape[0],) or not np.issubdtype(truth.dtype,
                                                                                    np.integer):
        raise InputError(f"one integer candidate index per query ({scores.shape[0]},)",
                         f"{truth.dtype} {truth.shape}", "pass the row of each query's true image")
    if len(truth) and (truth.min() < 0 or truth.max() >= scores.shape[1]):
        raise InputError(f"candidate indices in [0, {scores.shape[1] - 1}]",
                         f"{truth.min()}..{truth.max()}", "index the candidates, not all images")
    return truth.astype(np.int64)


def _greater_and_ties(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: candidates scoring strictly above the true one, and others tying with it."""
    truth = _check_truth(scores, truth)
    true = scores[np.arange(len(truth)), truth][:, None]
    greater = (scores > true).sum(axis=1)
    ties = (scores == true).sum(axis=1) - 1
    return greater, ties


def per_query_topk(scores: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per query, the probability that its true candidate is in the top ``k``.

    With ``g`` candidates above the true one and ``t`` tying with it, the true one's
    rank is uniform in ``g..g+t`` under random tie-breaking, so it is in the top k
    with probability ``clip((k - g) / (t + 1), 0, 1)``: a constant prediction scores
    k / M, not 1.
    """
    g, t = _greater_and_ties(scores, truth)
    return np.clip((k - g) / (t + 1), 0.0, 1.0)


def topk_accuracy(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of queries whose true candidate is in the top ``k`` (see :func:`per_query_topk`)."""
    hit = per_query_topk(scores, truth, k)
    return float(hit.mean()) if len(hit) else float("nan")


def relative_ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Expected rank of the true candidate over ``M - 1``: 0 best, 1 worst, 0.5 by chance."""
    g, t = _greater_and_ties(scores, truth)
    m = scores.shape[1]
    return (g + t / 2) / max(m - 1, 1)


def _se(p: float, n: int) -> float | None:
    """Binomial standard error of a proportion ``p`` over ``n`` independent queries."""
    return None if n == 0 or not math.isfinite(p) else float(math.sqrt(p * (1 - p) / n))


def n_way_top1(scores: np.ndarray, truth: np.ndarray, n_way: int = N_WAY, *,
               draws: int = N_WAY_DRAWS, seed: int = 0) -> dict[str, Any]:
    """MinD-Vis n-way top-1: the true candidate against ``n_way - 1`` random others.

    For each draw and query, ``n_way - 1`` distractors are drawn without replacement
    from the other candidates; the query counts as correct when the true one scores
    highest (a share ``1 / (t + 1)`` when it ties with ``t`` of them). The accuracy is
    averaged over queries and ``draws`` seeded draws. ``n_way`` is capped at the
    number of candidates (``capped`` says so; then every draw is the full top-1).
    """
    truth = _check_truth(scores, truth)
    if isinstance(n_way, bool) or not isinstance(n_way, (int, np.integer)) or n_way < 2:
        raise InputError("n_way an integer >= 2", repr(n_way), "use e.g. n_way=50")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise InputError("draws an integer >= 1", repr(draws), "use e.g. draws=20")
    n, m = scores.shape
    n_eff = int(min(n_way, m))
    out = {"n_way_requested": int(n_way), "n_way": n_eff, "capped": n_eff < n_way,
           "n_candidates": int(m), "draws": int(draws), "seed": int(seed),
           "chance": 1.0 / n_eff if n_eff else float("nan")}
    if n_eff < n_way:
        out["note"] = (f"{n_way}-way asked, only {m} candidate images: reported as {n_eff}-way "
                       "(the full top-1)")
    if n == 0 or m < 2:
        out["top1"] = float("nan")
        return out
    true = scores[np.arange(n), truth]
    rng = np.random.default_rng(seed)
    hits = np.zeros(n)
    rows = np.arange(n)[:, None]
    for _ in range(draws if n_eff < m else 1):  # at the cap every draw is the same
        keys = rng.random((n, m))
        keys[np.arange(n), truth] = np.inf  # never the true one as its own distractor
        pick = np.argpartition(keys, n_eff - 2, axis=1)[:, :n_eff - 1] if n_eff > 1 else \
            np.empty((n, 0), np.int64)
        d = scores[rows, pick]
        above = (d > true[:, None]).any(axis=1)
        ties = (d == true[:, None]).sum(axis=1)
        hits += np.where(above, 0.0, 1.0 / (ties + 1))
    out["top1"] = float(hits.mean() / (draws if n_eff < m else 1))
    return out


def retrieval_metrics(pred: np.ndarray, candidates: np.ndarray, truth: np.ndarray, *,
                      ks: Sequence[int] = (1, 5), n_way: int | None = N_WAY,
                      n_way_draws: int = N_WAY_DRAWS, seed: int = 0) -> dict[str, Any]:
    """Retrieval of each prediction among ``candidates``; every figure with its chance level.

    ``pred`` ``(N, D)``, ``candidates`` ``(M, D)``, ``truth`` ``(N,)`` rows of
    ``candidates``. Returns ``top{k}`` (with ``chance_top{k} = min(k, M) / M`` and a
    binomial ``se_top{k}``), ``median_relative_rank`` (chance 0.5), ``n_queries``,
    ``n_candidates`` and, unless ``n_way`` is None, ``n_way`` (see :func:`n_way_top1`).
    """
    scores = cosine_scores(pred, candidates)
    truth = _check_truth(scores, truth)
    n, m = scores.shape
    out: dict[str, Any] = {"n_queries": int(n), "n_candidates": int(m)}
    for k in ks:
        acc = topk_accuracy(scores, truth, k)
        out[f"top{k}"] = acc
        out[f"chance_top{k}"] = min(k, m) / m if m else float("nan")
        out[f"se_top{k}"] = _se(acc, n)
    rel = relative_ranks(scores, truth) if n else np.empty(0)
    out["median_relative_rank"] = float(np.median(rel)) if n else float("nan")
    out["chance_median_relative_rank"] = 0.5
    if n_way is not None:
        out["n_way"] = n_way_top1(scores, truth, n_way, draws=n_way_draws, seed=seed)
    return out


def pre_onset_check(curve: Sequence[dict[str, Any]], *, z: float = PRE_ONSET_Z,
                    key: str = "top5") -> dict[str, Any]:
    """Is the curve at chance before onset? Mean over points whose window ends before 0.

    The bound is chance + ``z`` binomial standard errors at chance, with ``n`` the
    smallest number of trials among those points. Pre-onset points share trials and
    overlap in time, so their mean is not ``n_points`` times better determined than
    one point: one point's SE is the conservative (wider) choice.
    """
    pts = [p for p in curve if p["offset_s"] < 0 and p.get("n", 0) > 0 and p.get(key) is not None]
    if not pts:
        return {"n_points": 0, "at_chance": None, "reason": "no window ends before onset"}
    chance = float(np.mean([p[f"chance_{key}"] for p in pts]))
    n = int(min(p["n"] for p in pts))
    se = math.sqrt(chance * (1 - chance) / n)
    mean = float(np.mean([p[key] for p in pts]))
    bound = chance + z * se
    return {"metric": key, "n_points": len(pts), "mean": mean, "chance": chance, "se": se,
            "z": z, "bound": bound, "at_chance": bool(mean <= bound),
            "offsets_s": [p["offset_s"] for p in pts]}
