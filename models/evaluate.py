"""Honest evaluation of a checkpoint: zero-shot retrieval among unseen test images.

What is measured (``evaluate(checkpoint, data)``, ``glimpse evaluate CKPT DATA``):

- **Queries and candidates.** Test trials (``split == "test"``; events.tsv
  ``trial_type`` "test" in THINGS and the simulator) are decoded and each
  prediction is ranked by cosine among the embeddings of ALL distinct test images
  (the candidates). Test concepts must be absent from training: checked against
  the concepts the checkpoint recorded (``config.json`` ``data.train_concepts``),
  else against this data's training split, and reported (``disjoint``).
- **Metrics** (:mod:`glimpse.models.metrics`, pure functions on arrays): top-1,
  top-5, median relative rank (``rank / (n_candidates - 1)``: 0 best, 1 worst,
  exactly 0.5 by chance at any size) and n-way top-1 (MinD-Vis style: the true image
  against ``n - 1`` random other candidates, seeded, averaged over draws; ``n`` is
  capped at the number of candidates, and the report says so). Ties between scores
  count as random tie-breaking would, in expectation, so a constant prediction
  scores chance, never better. Every metric comes with its chance level.
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
``summary.txt`` (:func:`glimpse.models.report.format_report`).

Pieces: :mod:`glimpse.models.metrics` (the pure metrics), :mod:`glimpse.models.adapter`
(the data fed to the checkpoint), :mod:`glimpse.models.ceiling` (the oracle ceiling)
and :mod:`glimpse.models.report` (the text and figures); this module runs them.
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

from .adapter import Adapter, encode_windows
from .ceiling import ceiling as noise_free_ceiling
from .checkpoint import Checkpoint, json_ready, load_checkpoint
from .data import SessionData, image_targets, load_session
from .metrics import N_WAY, N_WAY_DRAWS, pre_onset_check, retrieval_metrics
from .report import format_report, write_report
from .windows import fixed_windows

logger = logging.getLogger("glimpse.models.evaluate")

__all__ = ["CURVE_OFFSETS", "DEFAULT_OFFSET", "evaluate", "headline_offset"]

#: Window ends (s after onset) of the time-resolved curve: -200..1000 ms, 25 ms steps.
CURVE_OFFSETS = tuple(np.round(np.arange(-0.2, 1.0 + 1e-9, 0.025), 3).tolist())
#: Headline window end (s after onset) when the checkpoint recorded no validation
#: curve. A 0.25 s window ending at 0.35 s holds input from 0.10 to 0.35 s, i.e.
#: responses at ~0.04-0.29 s once the causal filters' ~61 ms delay is counted:
#: the early (~0.1 s) and both late (~0.17, ~0.28 s) visual responses.
DEFAULT_OFFSET = 0.35
_CURVE_WINDOWS = 4096  # windows cut at once for the curve


def _load_data(data: SessionData | str | os.PathLike, ckpt, subjects, progress: bool
               ) -> SessionData:
    if isinstance(data, SessionData):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise InputError("a SessionData or the path of a dataset", type(data).__name__,
                         "pass load_session(...) or a BIDS root / recording path")
    # The checkpoint's channels and filters; load_session refits the scaler on the
    # data's training trials, which Adapter maps back to the checkpoint's.
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


def headline_offset(checkpoint: Any) -> float:
    """The window end (s after onset) that :func:`evaluate` scores ``checkpoint`` at by default."""
    from .checkpoint import load_checkpoint

    ckpt = checkpoint if hasattr(checkpoint, "metrics") else load_checkpoint(checkpoint)
    return _headline(ckpt, None)["offset_s"]


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
        with f.open("rb") as fh:  # both files into one digest: file_digest updates the one given
            hashlib.file_digest(fh, lambda: digest)
    return digest.hexdigest()


# --------------------------------------------------------------------------- evaluation


def _windows(data: SessionData, adapter: Adapter, trials: np.ndarray, window_s: float,
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
    adapter = Adapter(ckpt, data)
    test = _test_trials(data)
    _check_subjects(ckpt, data, adapter, test)
    targets = _targets(ckpt, data, embedder, targets, cache_dir, progress)
    cand_rows = np.unique(data.trials.image[test])
    candidates = targets[cand_rows]
    column = np.full(len(data.images), -1, np.int64)
    column[cand_rows] = np.arange(len(cand_rows))
    head = _headline(ckpt, offset)
    if data.n_times(ckpt.window_s) != ckpt.n_times:
        raise InputError(f"windows of {ckpt.n_times} samples at {ckpt.sfreq:g} Hz",
                         f"{data.n_times(ckpt.window_s)} at {data.sfreq:g} Hz",
                         "load the data with the checkpoint's preprocessing")
    kw = dict(n_way=n_way, n_way_draws=n_way_draws, seed=seed)
    blocks, example = _headline_blocks(ckpt, data, adapter, test, column, candidates,
                                       head["offset_s"], kw)
    curve = _curve(ckpt, data, adapter, test, column, candidates, ckpt.window_s, curve_offsets,
                   progress)
    pre = pre_onset_check(curve)
    if pre.get("at_chance") is False:
        logger.warning("the curve is above chance before onset (mean top-5 %.3f > bound %.3f): "
                       "look for leakage (acausal filtering, overlapping trials)",
                       pre["mean"], pre["bound"])
    ceiling_block, reason = None, "not computed (ceiling=False)"
    if ceiling:
        ceiling_block, reason = noise_free_ceiling(ckpt, data, test, cand_rows, candidates,
                                                   head["offset_s"], curve_offsets, kw)
    stim_duration, stim_source = _stim_duration(data, stim_duration_s)
    single = blocks["single_trial"]
    metrics: dict[str, Any] = {
        "format": "glimpse-evaluation", "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_provenance(ckpt, data, adapter, test, cand_rows),
        "window": {"seconds": ckpt.window_s, "n_times": ckpt.n_times, "sfreq": ckpt.sfreq,
                   "end_offset_s": head["offset_s"], "offset_source": head["source"],
                   **({"validation_top5_by_offset": head["validation_top5_by_offset"]}
                      if "validation_top5_by_offset" in head else {}),
                   "meaning": "the window's LAST sample is offset_s after image onset"},
        "n_way": {"requested": int(n_way), "effective": single["n_way"]["n_way"],
                  "capped": single["n_way"]["capped"], "draws": int(n_way_draws), "seed": seed},
        **blocks,
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
        example.update(candidates=candidates, cand_rows=cand_rows, images=data.images)
        write_report(metrics, out_dir, examples=example, n_examples=n_examples)
    logger.info("%s", format_report(metrics).splitlines()[0])
    return json_ready(metrics)


def _check_subjects(ckpt, data: SessionData, adapter: Adapter, test: np.ndarray) -> None:
    unknown = sorted({data.subjects[s] for s in data.trials.subject[test]}
                     & set(adapter.unknown_subjects))
    if unknown:
        raise InputError(f"test trials of subjects the checkpoint was trained on "
                         f"{list(ckpt.subjects)}", f"subjects {unknown}",
                         "evaluate on those subjects (subjects=[...]); a new subject needs a "
                         "model trained with it (its subject layer)")


def _targets(ckpt, data: SessionData, embedder, targets: np.ndarray | None, cache_dir,
             progress: bool) -> np.ndarray:
    """Each image's target embedding, from the checkpoint's embedder (or checked as its)."""
    if targets is None:
        emb = _embedder(ckpt, embedder)
        targets = image_targets(data, emb, cache_dir=cache_dir, progress=progress)
        embedder_name = emb.name
    else:
        embedder_name = embedder if isinstance(embedder, str) else getattr(embedder, "name", None)
        if embedder_name is None:
            raise InputError("the name of the embedder that made `targets`", "None",
                             f"pass embedder={ckpt.embedder_name!r} with targets")
    return _check_targets(ckpt, targets, embedder_name, len(data.images))


def _headline_blocks(ckpt, data: SessionData, adapter: Adapter, test: np.ndarray,
                     column: np.ndarray, candidates: np.ndarray, offset_s: float,
                     kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Single trials, then repeats averaged per (subject, image) two ways, at the headline
    window; and the averaged predictions the examples figure shows."""
    ws, x, subj = _windows(data, adapter, test, ckpt.window_s, offset_s)
    if not len(ws):
        raise InputError(f"test windows ending {offset_s:g} s after onset inside the data",
                         "none (every one falls outside its run or epoch)",
                         "pass an offset inside the recorded epochs (offset=...)")
    pred = encode_windows(ckpt, x, subj)
    single = retrieval_metrics(pred, candidates, column[ws.target], **kw)
    single.update({"n_trials": int(len(ws)), "how": "one window per test trial, each its own "
                   "query (what a live decoder sees)"})
    keys = np.stack([ws.subject, ws.target], axis=1)
    groups, mean_emb = _group_mean(_unit(pred), keys)
    averaged = retrieval_metrics(mean_emb, candidates, column[groups[:, 1]], **kw)
    _, mean_x = _group_mean(x, keys)
    pred_w = encode_windows(ckpt, mean_x, adapter.subject_map[groups[:, 0]])
    averaged_w = retrieval_metrics(pred_w, candidates, column[groups[:, 1]], **kw)
    repeats = np.bincount(np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1))
    for block, how in ((averaged, "mean of the unit-normalised predicted embeddings of all "
                        "repeats of an image, per subject"),
                       (averaged_w, "mean of the preprocessed brain windows of all repeats of an "
                        "image, per subject, then one prediction")):
        block.update({"how": how, "repeats_min": int(repeats.min()),
                      "repeats_median": float(np.median(repeats)),
                      "repeats_max": int(repeats.max())})
    blocks = {"single_trial": single, "averaged": averaged, "averaged_windows": averaged_w}
    return blocks, {"pred": mean_emb, "groups": groups}


def _provenance(ckpt, data: SessionData, adapter: Adapter, test: np.ndarray,
                cand_rows: np.ndarray) -> dict[str, Any]:
    """The metrics' ``checkpoint``, ``data`` and ``test`` sections: what was evaluated on what."""
    path = getattr(ckpt, "path", None)
    training_fp = ckpt.config.get("data_fingerprint")
    return {
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
                 "n_subjects": int(len(np.unique(data.trials.subject[test]))),
                 "candidates": "all distinct test images", **_disjointness(ckpt, data, test)},
    }


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
            pred = encode_windows(ckpt, x, subj)
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

