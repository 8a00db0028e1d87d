"""Honest evaluation of a checkpoint: zero-shot retrieval among unseen test images.

What is measured (``evaluate(checkpoint, data)``, ``glimpse evaluate CKPT DATA``):

- **Queries and candidates.** Test trials (``split == "test"``; events.tsv
  ``trial_type`` "test" in THINGS and the simulator) are decoded and each
  prediction is ranked by cosine among the embeddings of ALL distinct test images
  (the candidates). Test concepts must be absent from training: checked against
  the concepts the checkpoint recorded (``config.json`` ``data.train_concepts``),
  else against this data's training split, and reported (``disjoint``).
- **Metrics** (pure functions on arrays, below): top-1, top-5, median relative
  rank (``rank / (n_candidates - 1)``: 0 best, 1 worst, exactly 0.5 by chance at
  any size) and n-way top-1 (MinD-Vis style: the true image against ``n - 1``
  random other candidates, seeded, averaged over draws; ``n`` is capped at the
  number of candidates, and the report says so). Ties between scores count as
  random tie-breaking would, in expectation, so a constant prediction scores
  chance, never better. Every metric comes with its chance level.
- **Single-trial and repeat-averaged.** ``single_trial``: one window per trial.
  ``averaged``: per (subject, test image), the mean of the unit-normalised
  predicted embeddings of all repeats (one query per subject and image);
  ``averaged_windows``: per (subject, test image), the mean of the preprocessed
  brain windows of all repeats, then one prediction. Published MEG/EEG figures
  average repeats (THINGS-EEG2: 80, THINGS-MEG: 12), so compare them with the
  averaged rows, and a live decoder with the single-trial row.
- **Headline window.** The checkpoint's live window (``window.seconds``) ending at
  the offset where the model decodes best on VALIDATION data: the best entry of
  ``metrics.val_top5_by_offset`` that training recorded on held-out training
  concepts (earliest on ties). Without it, a fixed :data:`DEFAULT_OFFSET`. Never
  chosen on the test set.
- **Time-resolved curve.** Single-trial top-1/top-5 for windows whose END runs
  from -200 to +1000 ms around onset in 25 ms steps. Before onset it must sit at
  chance (``pre_onset`` reports the check); a window "ending at t" holds the
  causal filters' output up to t, exactly as live.
- **Oracle ceiling** (simulated data only). Each test image's noise-free sensor
  response (``glimpse.streaming.simulate.clean_responses``) is placed in a silent
  recording, run through the checkpoint's own preprocessing (the same causal
  ``OnlinePreprocessor``, with the checkpoint's fitted scaler), cut into the same
  windows and decoded by the same model: what this model achieves without noise.
  Other data get ``"ceiling": null`` and a ``ceiling_reason``.

The report folder holds ``metrics.json``, ``curve.png``, ``examples.png`` and
``summary.txt`` (:func:`format_report`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import OnlinePreprocessor

from .checkpoint import Checkpoint, channel_index, json_ready, load_checkpoint
from .data import SessionData, cut_windows, fixed_windows, image_targets, load_session, window_ends

logger = logging.getLogger("glimpse.models.evaluate")

__all__ = ["CURVE_OFFSETS", "DEFAULT_OFFSET", "N_WAY", "clean_windows", "cosine_scores", "evaluate",
           "format_report", "n_way_top1", "pre_onset_check", "relative_ranks",
           "retrieval_metrics", "topk_accuracy", "write_report"]

#: Window ends (s after onset) of the time-resolved curve: -200..1000 ms, 25 ms steps.
CURVE_OFFSETS = tuple(np.round(np.arange(-0.2, 1.0 + 1e-9, 0.025), 3).tolist())
#: Headline window end (s after onset) when the checkpoint recorded no validation
#: curve. A 0.25 s window ending at 0.35 s holds input from 0.10 to 0.35 s, i.e.
#: responses at ~0.04-0.29 s once the causal filters' ~61 ms delay is counted:
#: the early (~0.1 s) and both late (~0.17, ~0.28 s) visual responses.
DEFAULT_OFFSET = 0.35
#: n of the n-way top-1 (MinD-Vis reports 50-way).
N_WAY = 50
#: Random distractor draws the n-way figure is averaged over.
N_WAY_DRAWS = 20
#: Standard errors above chance that the pre-onset curve may reach.
PRE_ONSET_Z = 3.0
_ENCODE_BATCH = 256  # windows per forward pass: bounded memory at any test-set size
_CURVE_WINDOWS = 4096  # windows cut at once for the curve
_QUIET_PRE_S = 1.0  # silence before each noise-free response in the ceiling's recording
_QUIET_POST_S = 0.2  # silence after the last curve offset


# --------------------------------------------------------------------------- metrics (pure)


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


# --------------------------------------------------------------------------- data against checkpoint


class _Adapter:
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


def _encode(ckpt, x: np.ndarray, subject: np.ndarray) -> np.ndarray:
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


def _load_data(data: SessionData | str | os.PathLike, ckpt, subjects, progress: bool
               ) -> SessionData:
    if isinstance(data, SessionData):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise InputError("a SessionData or the path of a dataset", type(data).__name__,
                         "pass load_session(...) or a BIDS root / recording path")
    # The checkpoint's channels and filters; load_session refits the scaler on the
    # data's training trials, which _Adapter maps back to the checkpoint's.
    config = dataclasses.replace(ckpt.preprocess, center=None, scale=None)
    return load_session(data, preprocess=config, subjects=subjects, progress=progress)


def _test_trials(data: SessionData) -> np.ndarray:
    test = data.trials.select(split="test")
    if not len(test):
        splits = {str(s): int(np.sum(data.trials.split == s)) for s in np.unique(data.trials.split)}
        raise InputError("test trials (split 'test') with a stimulus image",
                         f"none among {len(data.trials)} trials of {data.source} (splits: {splits})",
                         "mark held-out trials of concepts never used in training with "
                         "trial_type 'test' in events.tsv (or map your label to 'test' with "
                         "EventColumns(splits={...: 'test'}))")
    return test


def _embedder(ckpt, embedder) -> Any:
    """The checkpoint's embedder, or the caller's after checking that it is the same one."""
    from .embedders import ImageEmbedder, embedding_space, load_embedder

    if embedder is None:
        return load_embedder(ckpt.embedder_name)
    if isinstance(embedder, str):
        embedder = load_embedder(embedder)
    if not isinstance(embedder, ImageEmbedder):
        raise InputError("an ImageEmbedder or an embedder spec", type(embedder).__name__,
                         f"pass {ckpt.embedder_name!r}")
    if int(embedder.dim) != ckpt.embed_dim or \
            embedding_space(embedder.name) != embedding_space(ckpt.embedder_name):
        raise InputError(f"image embeddings from the checkpoint's embedder {ckpt.embedder_name} "
                         f"({ckpt.embed_dim}-d)",
                         f"embedder {embedder.name} ({embedder.dim}-d)",
                         f"evaluate with --embedder {ckpt.embedder_name} (or leave it out), or "
                         f"retrain with --embedder {embedder.name}")
    return embedder


def _check_targets(ckpt, targets: np.ndarray, name: str, n_images: int) -> np.ndarray:
    from .embedders import embedding_space

    targets = np.asarray(targets, np.float32)
    if targets.shape != (n_images, ckpt.embed_dim) or \
            embedding_space(name) != embedding_space(ckpt.embedder_name):
        raise InputError(f"target embeddings ({n_images}, {ckpt.embed_dim}) from the checkpoint's "
                         f"embedder {ckpt.embedder_name}",
                         f"{targets.shape} from {name}",
                         f"embed the images with {ckpt.embedder_name}")
    return targets


def _headline(ckpt, offset: float | None) -> dict[str, Any]:
    if offset is not None:
        if not (isinstance(offset, (int, float)) and math.isfinite(offset)):
            raise InputError("offset a finite number of seconds", repr(offset), "use e.g. 0.35")
        return {"offset_s": float(offset), "source": "given by the caller"}
    by_offset = ckpt.metrics.get("val_top5_by_offset") or {}
    valid = {float(k): v for k, v in by_offset.items() if v is not None and math.isfinite(v)}
    if valid:
        best = max(valid.values())
        chosen = min(o for o, v in valid.items() if v == best)  # earliest on ties
        return {"offset_s": chosen,
                "source": "best validation top-5 recorded at training (held-out training "
                          "concepts; never the test set)",
                "validation_top5_by_offset": {f"{o:g}": valid[o] for o in sorted(valid)}}
    return {"offset_s": DEFAULT_OFFSET,
            "source": f"fixed default {DEFAULT_OFFSET:g} s (the checkpoint recorded no validation "
                      "curve)"}


def _disjointness(ckpt, data: SessionData, test: np.ndarray) -> dict[str, Any]:
    test_concepts = sorted(set(data.trials.concept[test].tolist()))
    recorded = (ckpt.config.get("data") or {}).get("train_concepts")
    if recorded:
        train, against = set(recorded) | set((ckpt.config.get("data") or {}).get(
            "val_concepts") or []), "concepts recorded in the checkpoint (training + validation)"
    else:
        train = set(data.trials.concept[data.trials.select(split="train")].tolist())
        against = "this data's training split (the checkpoint recorded no concepts)"
    overlap = sorted(set(test_concepts) & train)
    if overlap:
        logger.warning("%d test concept(s) were seen in training (%s): retrieval of their "
                       "images is not zero-shot", len(overlap), overlap[:5])
    return {"disjoint": not overlap, "checked_against": against, "overlap": overlap,
            "n_test_concepts": len(test_concepts), "n_train_concepts": len(train)}


def _fingerprint_dir(path: Path | None) -> str | None:
    """sha256 over config.json and model.safetensors, the checkpoint's identity."""
    if path is None:
        return None
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        f = Path(path) / name
        if not f.is_file():
            return None
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- evaluation


def _windows(data: SessionData, adapter: _Adapter, trials: np.ndarray, window_s: float,
             offset: float):
    ws = fixed_windows(data, trials, window_s=window_s, offsets=[offset])
    return ws, adapter.windows(ws.x), adapter.subject_map[ws.subject]


def _group_mean(values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` per distinct row of ``keys`` ``(N, k)``: (unique keys, means)."""
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(uniq),) + values.shape[1:], np.float64)
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=len(uniq)).reshape((-1,) + (1,) * (values.ndim - 1))
    return uniq, (sums / counts).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def evaluate(checkpoint: Any, data: SessionData | str | os.PathLike, *,
             offset: float | None = None, curve_offsets: Sequence[float] = CURVE_OFFSETS,
             n_way: int = N_WAY, n_way_draws: int = N_WAY_DRAWS, seed: int = 0,
             embedder: Any = None, targets: np.ndarray | None = None,
             cache_dir: str | os.PathLike | None = None, subjects: Sequence[str] | None = None,
             ceiling: bool = True, stim_duration_s: float | None = None,
             out_dir: str | os.PathLike | None = None, n_examples: int = 6,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the test trials of ``data``; see the module docstring.

    ``checkpoint``: a :class:`glimpse.models.checkpoint.Checkpoint` or its folder. ``data``: a
    :class:`SessionData` (preprocessed as the checkpoint was) or a dataset path (loaded
    with the checkpoint's channels and filters; ``subjects`` selects BIDS subjects).
    ``offset``: the headline window's end (s after onset); leave it None to take the
    best validation offset the checkpoint recorded. ``embedder`` (spec or object) or
    ``targets`` (``(len(data.images), D)`` with ``embedder`` naming their embedder)
    must match the checkpoint's embedder. ``out_dir``: write the report folder there.
    Returns the metrics dict (what ``metrics.json`` holds).
    """
    t0 = time.perf_counter()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    data = _load_data(data, ckpt, subjects, progress)
    adapter = _Adapter(ckpt, data)
    test = _test_trials(data)
    unknown = sorted({data.subjects[s] for s in data.trials.subject[test]}
                     & set(adapter.unknown_subjects))
    if unknown:
        raise InputError(f"test trials of subjects the checkpoint was trained on "
                         f"{list(ckpt.subjects)}", f"subjects {unknown}",
                         "evaluate on those subjects (subjects=[...]); a new subject needs a "
                         "model trained with it (its subject layer)")
    if targets is None:
        emb = _embedder(ckpt, embedder)
        targets = image_targets(data, emb, cache_dir=cache_dir, progress=progress)
        embedder_name = emb.name
    else:
        embedder_name = embedder if isinstance(embedder, str) else getattr(embedder, "name", None)
        if embedder_name is None:
            raise InputError("the name of the embedder that made `targets`", "None",
                             f"pass embedder={ckpt.embedder_name!r} with targets")
    targets = _check_targets(ckpt, targets, embedder_name, len(data.images))

    table = data.trials
    cand_rows = np.unique(table.image[test])
    candidates = targets[cand_rows]
    column = np.full(len(data.images), -1, np.int64)
    column[cand_rows] = np.arange(len(cand_rows))
    head = _headline(ckpt, offset)
    window_s = ckpt.window_s
    if data.n_times(window_s) != ckpt.n_times:
        raise InputError(f"windows of {ckpt.n_times} samples at {ckpt.sfreq:g} Hz",
                         f"{data.n_times(window_s)} at {data.sfreq:g} Hz",
                         "load the data with the checkpoint's preprocessing")
    kw = dict(n_way=n_way, n_way_draws=n_way_draws, seed=seed)

    # Headline: single trials, then repeats averaged per (subject, image) two ways.
    ws, x, subj = _windows(data, adapter, test, window_s, head["offset_s"])
    if not len(ws):
        raise InputError(f"test windows ending {head['offset_s']:g} s after onset inside the data",
                         "none (every one falls outside its run or epoch)",
                         "pass an offset inside the recorded epochs (offset=...)")
    pred = _encode(ckpt, x, subj)
    truth = column[ws.target]
    single = retrieval_metrics(pred, candidates, truth, **kw)
    single.update({"n_trials": int(len(ws)), "how": "one window per test trial, each its own "
                   "query (what a live decoder sees)"})
    keys = np.stack([ws.subject, ws.target], axis=1)
    groups, mean_emb = _group_mean(_unit(pred), keys)
    averaged = retrieval_metrics(mean_emb, candidates, column[groups[:, 1]], **kw)
    _, mean_x = _group_mean(x, keys)
    pred_w = _encode(ckpt, mean_x, adapter.subject_map[groups[:, 0]])
    averaged_w = retrieval_metrics(pred_w, candidates, column[groups[:, 1]], **kw)
    repeats = np.bincount(np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1))
    for block, how in ((averaged, "mean of the unit-normalised predicted embeddings of all "
                        "repeats of an image, per subject"),
                       (averaged_w, "mean of the preprocessed brain windows of all repeats of an "
                        "image, per subject, then one prediction")):
        block.update({"how": how, "repeats_min": int(repeats.min()),
                      "repeats_median": float(np.median(repeats)),
                      "repeats_max": int(repeats.max())})

    curve = _curve(ckpt, data, adapter, test, column, candidates, window_s, curve_offsets, progress)
    pre = pre_onset_check(curve)
    if pre.get("at_chance") is False:
        logger.warning("the curve is above chance before onset (mean top-5 %.3f > bound %.3f): "
                       "look for leakage (acausal filtering, overlapping trials)",
                       pre["mean"], pre["bound"])

    ceiling_block, reason = None, None
    if ceiling:
        ceiling_block, reason = _ceiling(ckpt, data, test, cand_rows, candidates, head["offset_s"],
                                         curve_offsets, kw)
    else:
        reason = "not computed (ceiling=False)"

    disjoint = _disjointness(ckpt, data, test)
    stim_duration, stim_source = _stim_duration(data, stim_duration_s)
    path = getattr(ckpt, "path", None)
    training_fp = ckpt.config.get("data_fingerprint")
    metrics: dict[str, Any] = {
        "format": "glimpse-evaluation", "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(path) if path is not None else None,
                       "sha256": _fingerprint_dir(path), "model": ckpt.model_name,
                       "embedder": ckpt.embedder_name, "embed_dim": ckpt.embed_dim,
                       "retrieval_head": ckpt.retrieval_head,
                       "training_data_fingerprint": training_fp},
        "data": {"source": str(data.source), "fingerprint": data.fingerprint,
                 "same_as_training_data": data.fingerprint == training_fp,
                 "kind": data.kind, "subjects": list(data.subjects),
                 "scaler": "checkpoint's" if adapter.rescale is None
                 else "data's own, mapped back to the checkpoint's",
                 "group_delay_s": data.group_delay},
        "test": {"n_trials": int(len(test)), "n_images": int(len(cand_rows)),
                 "n_subjects": int(len(np.unique(table.subject[test]))),
                 "candidates": "all distinct test images", **disjoint},
        "window": {"seconds": window_s, "n_times": ckpt.n_times, "sfreq": ckpt.sfreq,
                   "end_offset_s": head["offset_s"], "offset_source": head["source"],
                   **({"validation_top5_by_offset": head["validation_top5_by_offset"]}
                      if "validation_top5_by_offset" in head else {}),
                   "meaning": "the window's LAST sample is offset_s after image onset"},
        "n_way": {"requested": int(n_way), "effective": single["n_way"]["n_way"],
                  "capped": single["n_way"]["capped"], "draws": int(n_way_draws), "seed": seed},
        "single_trial": single,
        "averaged": averaged,
        "averaged_windows": averaged_w,
        "curve": {"metric": "single-trial retrieval among the test images vs the window's END "
                            "(s after onset)",
                  "points": curve, "pre_onset": pre, "stim_duration_s": stim_duration,
                  "stim_duration_source": stim_source},
        "ceiling": ceiling_block,
        **({"ceiling_reason": reason} if ceiling_block is None else {}),
        "wall_s": None,
    }
    metrics["wall_s"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        example = {"pred": mean_emb, "groups": groups, "candidates": candidates,
                   "cand_rows": cand_rows, "images": data.images}
        write_report(metrics, out_dir, examples=example, n_examples=n_examples)
    logger.info("%s", format_report(metrics).splitlines()[0])
    return json_ready(metrics)


def _curve(ckpt, data, adapter, test, column, candidates, window_s, offsets, progress
           ) -> list[dict[str, Any]]:
    """Single-trial retrieval per window end; offsets are decoded in groups of ~4096 windows
    (fewer, larger forward passes; ~130 MB of 272-channel windows at a time)."""
    from tqdm import tqdm

    offsets = [float(o) for o in offsets]
    per_group = max(1, _CURVE_WINDOWS // max(len(test), 1))
    points = []
    with tqdm(total=len(offsets), desc="curve", unit="offset", disable=not progress) as bar:
        for g in range(0, len(offsets), per_group):
            group = offsets[g:g + per_group]
            parts = [fixed_windows(data, test, window_s=window_s, offsets=[off]) for off in group]
            x = np.concatenate([adapter.windows(ws.x) for ws in parts])
            subj = np.concatenate([adapter.subject_map[ws.subject] for ws in parts])
            pred = _encode(ckpt, x, subj)
            start = 0
            for off, ws in zip(group, parts):
                point = {"offset_s": off, "n": int(len(ws))}
                if len(ws):
                    m = retrieval_metrics(pred[start:start + len(ws)], candidates,
                                          column[ws.target], n_way=None)
                    point.update({k: m[k] for k in ("top1", "top5", "chance_top1", "chance_top5",
                                                    "median_relative_rank")})
                start += len(ws)
                points.append(point)
            bar.update(len(group))
    return points


def _stim_duration(data: SessionData, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return float(given), "given by the caller"
    sim = Path(data.source) / "simulation.json"
    if sim.is_file():
        try:
            return float(json.loads(sim.read_text())["config"]["stim_duration"]), "simulation.json"
        except (ValueError, KeyError, TypeError):
            pass
    return None, "unknown (pass stim_duration_s)"


# --------------------------------------------------------------------------- oracle ceiling


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
    where = {n: i for i, n in enumerate(clean.ch_names)}
    missing = [n for n in ckpt.ch_names if n not in where]
    if missing:
        raise InputError(f"noise-free responses for the checkpoint's {ckpt.n_chans} channels",
                         f"{len(missing)} missing, e.g. {missing[:5]}",
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


def _ceiling(ckpt, data: SessionData, test: np.ndarray, cand_rows: np.ndarray,
             candidates: np.ndarray, headline: float, curve_offsets: Sequence[float],
             kw: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
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
    pred = _encode(ckpt, x.reshape((n_q * n_off,) + x.shape[2:]), np.repeat(subj, n_off))
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


# --------------------------------------------------------------------------- report


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.1f}%"


def format_report(metrics: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`evaluate`'s metrics (what the CLI prints)."""
    m = json_ready(metrics)
    w, t = m["window"], m["test"]
    lines = [
        f"{m['checkpoint']['model']} on {t['n_trials']} test trials of {t['n_images']} unseen "
        f"images ({t['n_subjects']} subject(s)); retrieval among all {t['n_images']} test images",
        f"window: {w['seconds']:g} s ending {w['end_offset_s']:+.3f} s after onset "
        f"({w['offset_source']})",
        f"test concepts disjoint from training: {'yes' if t['disjoint'] else 'NO'} "
        f"(checked against {t['checked_against']})"
        + ("" if t["disjoint"] else f"; overlap: {', '.join(t['overlap'][:5])}"),
        "",
        f"{'':<28}{'top-1':>8}{'top-5':>8}{'med.rank':>10}{'n-way':>8}{'queries':>9}",
    ]

    def row(label: str, b: dict[str, Any] | None) -> str:
        if b is None:
            return f"{label:<28}{'n/a':>8}"
        nw = b.get("n_way") or {}
        rank = b["median_relative_rank"]
        rank = "n/a" if rank is None else f"{rank:.3f}"
        return (f"{label:<28}{_pct(b['top1']):>8}{_pct(b['top5']):>8}{rank:>10}"
                f"{_pct(nw.get('top1')):>8}{b['n_queries']:>9}")

    s = m["single_trial"]
    nw = s["n_way"]
    lines += [
        row("single trial", s),
        row("averaged (embeddings)", m["averaged"]),
        row("averaged (brain windows)", m["averaged_windows"]),
        row("ceiling (noise-free)", m["ceiling"]) if m.get("ceiling") else
        f"{'ceiling (noise-free)':<28}n/a: {m.get('ceiling_reason')}",
        f"{'chance':<28}{_pct(s['chance_top1']):>8}{_pct(s['chance_top5']):>8}"
        f"{0.5:>10.3f}{_pct(nw['chance']):>8}",
        "",
        f"n-way: {nw['n_way']}-way top-1 over {nw['draws']} draws" + (
            f" ({nw['note']})" if nw.get("note") else ""),
    ]
    pre = m["curve"]["pre_onset"]
    pts = [p for p in m["curve"]["points"] if p.get("top5") is not None]
    best = max(pts, key=lambda p: p["top5"]) if pts else None
    if best is not None and best["top5"] <= best["chance_top5"] + 1e-9:
        lines.append("curve: single-trial top-5 never above chance at any window end")
    elif best is not None:
        lines.append(f"curve: single-trial top-5 peaks at {_pct(best['top5'])} with the window "
                     f"ending {best['offset_s']:+.3f} s (test set; for reading only, not used to "
                     "pick the headline window)")
    if pre.get("n_points"):
        lines.append(f"before onset: mean top-5 {_pct(pre['mean'])} vs chance {_pct(pre['chance'])}"
                     f" (bound {_pct(pre['bound'])}, {pre['z']:g} SE): "
                     + ("at chance" if pre["at_chance"] else "ABOVE CHANCE: check for leakage"))
    lines.append("single trial: one window per trial, what a live decoder sees; averaged: repeats "
                 "of an image averaged per subject, as published MEG/EEG figures are")
    return "\n".join(lines)


def write_report(metrics: dict[str, Any], out_dir: str | os.PathLike, *,
                 examples: dict[str, Any] | None = None, n_examples: int = 6) -> Path:
    """Write ``metrics.json``, ``summary.txt``, ``curve.png`` and (with ``examples``) ``examples.png``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("a folder for the report", f"{out}, a file", "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    plain = json_ready(metrics)
    (out / "metrics.json").write_text(json.dumps(plain, indent=1, allow_nan=False) + "\n",
                                      encoding="utf-8")
    (out / "summary.txt").write_text(format_report(plain) + "\n", encoding="utf-8")
    plot_curve(plain, out / "curve.png")
    if examples is not None and n_examples > 0:
        plot_examples(examples, out / "examples.png", n_examples)
    logger.info("evaluation report written to %s", out)
    return out


def plot_curve(metrics: dict[str, Any], path: str | os.PathLike) -> None:
    """Single-trial top-5 (and top-1) vs window end, with chance, onset, offset, ceiling."""
    from matplotlib.figure import Figure

    c = metrics["curve"]
    pts = [p for p in c["points"] if p.get("top5") is not None]
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    if pts:
        t = np.array([p["offset_s"] for p in pts])
        top5 = np.array([p["top5"] for p in pts])
        chance = np.array([p["chance_top5"] for p in pts])
        n = np.array([p["n"] for p in pts])
        band = PRE_ONSET_Z * np.sqrt(chance * (1 - chance) / n)
        ax.fill_between(t, chance - band, chance + band, color="grey", alpha=0.15,
                        label=f"chance ± {PRE_ONSET_Z:g} SE")
        ax.plot(t, chance, color="grey", ls="--", lw=1, label="chance (top-5)")
        ax.plot(t, top5, "o-", ms=3, label="top-5, single trial")
        ax.plot(t, [p["top1"] for p in pts], "o-", ms=2, lw=1, alpha=0.7,
                label="top-1, single trial")
    ceil = metrics.get("ceiling")
    if ceil and ceil.get("curve"):
        ax.plot([p["offset_s"] for p in ceil["curve"]], [p["top5"] for p in ceil["curve"]],
                color="green", lw=1.2, alpha=0.8, label="top-5, noise-free ceiling")
    ax.axvline(0, color="k", lw=1, label="image onset")
    if c.get("stim_duration_s") is not None:
        ax.axvline(c["stim_duration_s"], color="k", lw=1, ls=":", label="image offset")
    w = metrics["window"]
    ax.axvline(w["end_offset_s"], color="tab:red", lw=1, ls="-.", label="headline window end")
    ax.set(xlabel="window end relative to image onset (s)", ylabel="accuracy", ylim=(0, 1.02),
           title=f"{metrics['checkpoint']['model']}: retrieval among "
                 f"{metrics['test']['n_images']} test images, {w['seconds']:g} s windows")
    ax.legend(fontsize=7, loc="upper right")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_examples(ex: dict[str, Any], path: str | os.PathLike, n_examples: int = 6) -> None:
    """For a few test images: the image, then the top-5 retrieved (green border: correct).

    Queries are the repeat-averaged predictions of the first subject that saw each image.
    """
    from matplotlib.figure import Figure
    from PIL import Image

    groups, pred, cand_rows = ex["groups"], ex["pred"], ex["cand_rows"]
    _, first = np.unique(groups[:, 1], return_index=True)  # one query per image
    first = first[:n_examples]
    scores = cosine_scores(pred[first], ex["candidates"])
    k = min(5, scores.shape[1])
    # A fixed layout: the constrained one costs seconds for a grid of images.
    fig = Figure(figsize=(1.6 * (k + 1), 1.75 * len(first) + 0.3))
    axes = fig.subplots(len(first), k + 1, squeeze=False,
                        gridspec_kw={"left": 0.01, "right": 0.99, "bottom": 0.01,
                                     "top": 1 - 0.45 / (1.75 * len(first) + 0.3),
                                     "wspace": 0.08, "hspace": 0.35})

    def show(ax, row, title, color=None):
        with Image.open(ex["images"][row]) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7)
        for spine in ax.spines.values():
            spine.set_edgecolor(color or "lightgrey")
            spine.set_linewidth(4 if color else 1)

    for r, q in enumerate(first):
        true_row = int(groups[q, 1])
        show(axes[r, 0], true_row, f"shown\n{Path(ex['images'][true_row]).parent.name}")
        order = np.argsort(-scores[r])[:k]
        for j, c in enumerate(order):
            row = int(cand_rows[c])
            show(axes[r, j + 1], row, f"#{j + 1}  {scores[r, c]:.2f}",
                 "green" if row == true_row else None)
    fig.suptitle("repeat-averaged predictions (first subject): true image, then top-5 by cosine",
                 fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
