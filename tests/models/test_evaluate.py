"""Evaluation: metrics with known answers, pre-onset chance, the oracle ceiling, the report, bad input.

The session tests use a stand-in model (a linear map in torch with the brain
encoder's forward signature) fitted in the test: ridge from the simulator's
noise-free windows of every image, plus real noise windows of training trials, to
the image embeddings. It is an oracle (it has seen the test images' clean
responses), which is what a machinery test needs: it decodes, so the curve must
rise after onset and sit at chance before it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from glimpse.models.checkpoint import Checkpoint
from glimpse.models.data import load_session
from glimpse.models.embedders import load_embedder
from glimpse.models.ceiling import clean_windows
from glimpse.models.evaluate import DEFAULT_OFFSET, evaluate
from glimpse.models.report import format_report
from glimpse.models.windows import fixed_windows
from glimpse.streaming.errors import InputError
from glimpse.streaming.simulate import clean_responses

WINDOW_S = 0.25


# --------------------------------------------------------------------------- on a simulated session


class LinearStandIn(torch.nn.Module):
    """A linear map with the brain encoder's forward: (x (B, C, T), subject (B,), chan_mask) -> (clip, mse)."""

    name = "stand_in"

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.as_tensor(weight, dtype=torch.float32))
        self.bias = torch.nn.Parameter(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x, subject, chan_mask=None):
        y = x.flatten(1) @ self.weight + self.bias
        return y, y


def stand_in_checkpoint(session, model, *, dim=256, embedder="handcrafted", **changes) -> Checkpoint:
    fields = dict(path=None, model=model, config={"data_fingerprint": session.fingerprint,
                                                  "metrics": {}, "data": {}},
                  preprocess=session.preprocess, model_name="stand_in", embedder_name=embedder,
                  embed_dim=dim, ch_names=session.ch_names, positions=session.positions,
                  sfreq=session.sfreq, n_times=session.n_times(WINDOW_S), window_s=WINDOW_S,
                  subjects=tuple(session.subjects), retrieval_head="clip", confidence=None)
    fields.update(changes)
    return Checkpoint(**fields)


@pytest.fixture(scope="module")
def session(small_meg_session):
    root, _, _ = small_meg_session
    return load_session(root, progress=False)


@pytest.fixture(scope="module")
def targets(session):
    return load_embedder("handcrafted").embed_files(list(session.images), progress=False)


@pytest.fixture(scope="module")
def oracle(session, targets, small_meg_session) -> Checkpoint:
    """Ridge from (clean window of image i + a real noise window) to image i's embedding."""
    root = small_meg_session[0]
    dim = targets.shape[1]
    blank = stand_in_checkpoint(session, LinearStandIn(np.zeros((1, dim)), np.zeros(dim)), dim=dim)
    clean = clean_responses(root, session.subjects[0])
    offsets = [0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7]
    x = np.concatenate([clean_windows(blank, clean, Path(p).relative_to(root).as_posix(), offsets)
                        for p in session.images]).reshape(len(session.images) * len(offsets), -1)
    y = np.repeat(targets, len(offsets), axis=0)
    train = session.trials.select(split="train")
    noise = fixed_windows(session, train, window_s=WINDOW_S,
                          offsets=list(np.arange(-0.45, 1.0, 0.05))).x.reshape(-1, x.shape[1])
    rng = np.random.default_rng(0)
    # The clean windows themselves too, so that the noise-free ceiling is reachable.
    xa = np.concatenate([x, np.repeat(x, 8, axis=0)
                         + noise[rng.integers(0, len(noise), 8 * len(x))]]).astype(np.float64)
    ya = np.concatenate([y, np.repeat(y, 8, axis=0)])
    mu = ya.mean(axis=0)
    gram = xa @ xa.T
    w = xa.T @ np.linalg.solve(gram + 0.1 * np.trace(gram) / len(gram) * np.eye(len(gram)), ya - mu)
    return stand_in_checkpoint(session, LinearStandIn(w, mu), dim=dim)


@pytest.fixture(scope="module")
def report(oracle, session, targets, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return evaluate(oracle, session, targets=targets, embedder="handcrafted", out_dir=out), out


def test_report_folder_and_counts(report, session):
    metrics, out = report
    for name in ("metrics.json", "curve.png", "examples.png", "summary.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    t = metrics["test"]
    assert (t["n_trials"], t["n_images"], t["n_subjects"]) == (48, 8, 1)
    assert t["disjoint"] and t["overlap"] == [] and "training split" in t["checked_against"]
    s = metrics["single_trial"]
    assert (s["n_queries"], s["n_candidates"], s["chance_top1"], s["chance_top5"]) == (48, 8, 1 / 8, 5 / 8)
    assert s["n_way"]["n_way"] == 8 and s["n_way"]["capped"] and metrics["n_way"]["capped"]
    for key in ("averaged", "averaged_windows"):
        a = metrics[key]
        assert a["n_queries"] == 8 and a["repeats_min"] == a["repeats_max"] == 6 and "per subject" in a["how"]
    w = metrics["window"]
    assert w["seconds"] == WINDOW_S and w["end_offset_s"] == DEFAULT_OFFSET and "fixed default" in w["offset_source"]
    assert metrics["data"]["fingerprint"] == session.fingerprint and metrics["data"]["same_as_training_data"]
    assert len(metrics["curve"]["points"]) == 49 and metrics["curve"]["stim_duration_s"] == 0.5
    text = (out / "summary.txt").read_text()
    assert text.strip() == format_report(metrics) and "single trial" in text and "averaged" in text


def test_curve_at_chance_before_onset_and_above_after(report):
    metrics, _ = report
    pts = metrics["curve"]["points"]
    pre = [p for p in pts if p["offset_s"] < 0]
    assert len(pre) == 8 and all(p["n"] == 48 for p in pre)
    chance = 5 / 8
    se = math.sqrt(chance * (1 - chance) / 48)
    assert np.mean([p["top5"] for p in pre]) < chance + 3 * se
    assert metrics["curve"]["pre_onset"]["at_chance"] is True
    # The stand-in decodes: its best post-onset window clears the same band.
    assert max(p["top5"] for p in pts if 0.1 <= p["offset_s"] <= 0.6) > chance + 3 * se


def test_oracle_ceiling_is_causal_and_reached(report):
    metrics, _ = report
    ceiling = metrics["ceiling"]
    assert ceiling is not None and ceiling["n_queries"] == 8 and "noise-free" in ceiling["how"]
    # Before onset every noise-free window is the same silence: exactly chance (ties).
    for p in ceiling["curve"]:
        if p["offset_s"] < 0:
            assert p["top1"] == pytest.approx(1 / 8) and p["top5"] == pytest.approx(5 / 8)
    # The stand-in saw these clean responses in its fit (beside noisy copies): above chance.
    assert ceiling["top5"] == 1.0 and ceiling["top1"] > 1 / 8


def test_ceiling_windows_align_with_the_data_windows(oracle, session, small_meg_session):
    # Independent of any model: the repeat-averaged data windows of each test image
    # correlate best with that image's noise-free windows cut at the SAME offset, so
    # the ceiling's silent recording and the data share one time axis (a filter
    # delay or onset error would move the peak).
    root = small_meg_session[0]
    clean = clean_responses(root, session.subjects[0])
    test = session.trials.select(split="test")
    rows = np.unique(session.trials.image[test])
    offsets = np.round(np.arange(0.2, 0.55, 0.025), 3)
    ref = np.stack([clean_windows(oracle, clean, Path(session.images[r]).relative_to(root).as_posix(),
                                  offsets) for r in rows])  # (images, offsets, C, T)
    ref = ref - ref.mean(-1, keepdims=True)
    ref /= np.linalg.norm(ref.reshape(ref.shape[:2] + (-1,)), axis=2)[..., None, None]
    for offset in (0.25, 0.35, 0.45):
        ws = fixed_windows(session, test, window_s=WINDOW_S, offsets=[offset])
        avg = np.stack([ws.x[ws.target == r].mean(0) for r in rows])
        avg = avg - avg.mean(-1, keepdims=True)
        avg /= np.linalg.norm(avg.reshape(len(rows), -1), axis=1)[:, None, None]
        corr = np.einsum("ict,ioct->o", avg, ref) / len(rows)  # same image, each clean offset
        assert offsets[corr.argmax()] == pytest.approx(offset), (offset, corr.round(2))


def test_headline_offset_is_the_best_validation_offset(oracle, session, targets):
    recorded = {"0.2": 0.3, "0.3": 0.6, "0.4": 0.6, "0.5": 0.1}
    ckpt = dataclasses.replace(oracle, config={**oracle.config, "metrics": {
        "val_top5_by_offset": recorded}, "data": {"train_concepts": ["x"], "val_concepts": []}})
    m = evaluate(ckpt, session, targets=targets, embedder="handcrafted", curve_offsets=(-0.1, 0.3),
                 ceiling=False)
    assert m["window"]["end_offset_s"] == 0.3  # earliest of the tied best
    assert "validation" in m["window"]["offset_source"] and m["ceiling"] is None
    assert "ceiling=False" in m["ceiling_reason"]
    assert m["test"]["checked_against"].startswith("concepts recorded in the checkpoint")
    fixed = evaluate(ckpt, session, targets=targets, embedder="handcrafted", offset=0.2,
                     curve_offsets=(0.3,), ceiling=False)
    assert fixed["window"]["end_offset_s"] == 0.2 and fixed["window"]["offset_source"] == "given by the caller"


def test_overlapping_concepts_are_reported(oracle, session, targets):
    test_concept = str(session.trials.concept[session.trials.select(split="test")[0]])
    ckpt = dataclasses.replace(oracle, config={**oracle.config,
                                               "data": {"train_concepts": [test_concept]}})
    m = evaluate(ckpt, session, targets=targets, embedder="handcrafted", curve_offsets=(0.3,),
                 ceiling=False)
    assert m["test"]["disjoint"] is False and m["test"]["overlap"] == [test_concept]
    assert "NO" in format_report(m)


def test_ceiling_is_null_with_a_reason_on_real_data(oracle, session, targets, tmp_path):
    elsewhere = dataclasses.replace(session, source=tmp_path)  # no simulation.json there
    m = evaluate(oracle, elsewhere, targets=targets, embedder="handcrafted", curve_offsets=(0.3,))
    assert m["ceiling"] is None and "not a simulated session" in m["ceiling_reason"]
    assert m["curve"]["stim_duration_s"] is None
    assert "n/a: not a simulated session" in format_report(m)


# --------------------------------------------------------------------------- bad input


def test_embedder_mismatch_names_both(oracle, session, targets):
    with pytest.raises(InputError) as err:
        evaluate(oracle, session, embedder="handcrafted:dim=64", ceiling=False)
    assert "handcrafted (256-d)" in str(err.value) and "handcrafted:dim=64 (64-d)" in str(err.value)
    other = dataclasses.replace(oracle, embedder_name="open_clip:ViT-B-32:weights.bin")
    with pytest.raises(InputError) as err:
        evaluate(other, session, embedder="handcrafted", ceiling=False)
    assert "open_clip:ViT-B-32:weights.bin" in str(err.value) and "handcrafted" in str(err.value)
    with pytest.raises(InputError, match="open_clip:ViT-B-32:weights.bin"):
        evaluate(other, session, targets=targets, embedder="handcrafted", ceiling=False)


def test_missing_channels_are_named(oracle, session):
    renamed = dataclasses.replace(oracle, ch_names=oracle.ch_names[:-2] + ("MZO99", "MLO99"))
    with pytest.raises(InputError, match="missing: MZO99, MLO99"):
        evaluate(renamed, session, ceiling=False)
    fewer = dataclasses.replace(session, ch_names=session.ch_names[3:])
    with pytest.raises(InputError) as err:
        evaluate(oracle, fewer, ceiling=False)
    assert ", ".join(session.ch_names[:3]) in str(err.value) and "has 271 of the 274" in str(err.value)


def test_no_test_trials_says_how_to_mark_them(oracle, session):
    table = session.trials
    no_test = dataclasses.replace(session, trials=dataclasses.replace(
        table, split=np.where(table.split == "test", "catch", table.split)))
    with pytest.raises(InputError, match="trial_type 'test' in events.tsv"):
        evaluate(oracle, no_test, ceiling=False)


def test_unknown_subject_and_other_preprocessing(oracle, session, targets):
    with pytest.raises(InputError, match=r"subjects \['01'\]"):
        evaluate(dataclasses.replace(oracle, subjects=("02",)), session, targets=targets,
                 embedder="handcrafted", ceiling=False)
    other = dataclasses.replace(oracle, preprocess=dataclasses.replace(oracle.preprocess, l_freq=1.0))
    with pytest.raises(InputError, match="l_freq"):
        evaluate(other, session, targets=targets, embedder="handcrafted", ceiling=False)


# --------------------------------------------------------------------------- a real checkpoint


def test_trained_checkpoint_folder_and_dataset_path(session, small_meg_session, tmp_path):
    # The path the CLI takes: a checkpoint folder written by glimpse.models.train and the BIDS
    # root, loaded here with the checkpoint's preprocessing. A tiny brain encoder
    # trained for one epoch: what matters is the plumbing, not the figure.
    from glimpse.models.train import TrainConfig, train

    root = small_meg_session[0]
    config = TrainConfig(model="brain_encoder", epochs=1, hidden=8, spatial_channels=8, n_blocks=1,
                         num_threads=2)
    ckpt_dir = train(session, config, tmp_path / "ckpt", progress=False).checkpoint_dir
    m = evaluate(ckpt_dir, root, curve_offsets=(-0.1, 0.3), out_dir=tmp_path / "report",
                 n_examples=1)
    assert m["checkpoint"]["path"] == str(ckpt_dir) and len(m["checkpoint"]["sha256"]) == 64
    assert m["data"]["same_as_training_data"] and m["data"]["scaler"] == "checkpoint's"
    assert "validation" in m["window"]["offset_source"]
    assert m["window"]["end_offset_s"] in config.eval_offsets
    assert m["test"]["disjoint"] and "recorded in the checkpoint" in m["test"]["checked_against"]
    assert m["ceiling"] is not None and m["test"]["n_trials"] == 48
    assert (tmp_path / "report" / "summary.txt").read_text().startswith("brain_encoder on 48")
