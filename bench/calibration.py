"""How much data a new person needs: single-trial top-5 against minutes of their data; JSON.

For each simulation seed (a different world: concepts, held-out concepts, patterns):

1. the base: the default ``glimpse simulate`` session (its subjects, default size) and
   the default ``glimpse train`` brain encoder on it, the multi-subject model glimpse
   adapts (as ``glimpse demo`` builds it);
2. the new person: one more subject of the same world (``first_subject`` after the
   base's, so their own dipole orientations, gains and latencies), shown enough new
   exemplars of the training concepts for the largest budget, plus the held-out
   test images (concepts the base never trained on) with their repeats;
3. for each budget (minutes of calibration trials at THINGS-MEG timing, 1.5 s a trial:
   the first ``40 x minutes`` training trials the person saw):
   (a) ``adapted``: the base adapted to the person (:mod:`glimpse.models.new_subject`);
   (b) ``scratch``: the same architecture trained on the person's budget alone
       (default ``TrainConfig``, early stopping);
   (c) ``unadapted``: the base with the subjects' mean matrix and its own scaler
       (no calibration at all; the same at every budget);
   each scored on ALL the person's held-out test trials (single trial, top-5 among
   the test images; chance = 5 / n_images), all three at the window the base chose
   on its validation concepts (the budgets' few validation trials would choose by
   noise).

The new person's scaler is fitted on all their training trials (load_session); (b) uses
it, (a) maps the data back to the base's scaler as :func:`adapt_to_subject` does. Figures are per seed, then mean and standard deviation over seeds.
Each budget's row is kept in ``CACHE/runs/<modality>-seed<N>-<M>min/row.json`` with what
made it (the person's world, the adaptation's settings, the base's fingerprint): a run cut
short resumes from the budgets it finished (their rows say ``"resumed": true``; their
``wall_s`` are the first run's), and a budget whose adapted arm finished resumes from its
``adapted.json`` (that arm says ``"resumed": true``).

    python bench/calibration.py --seeds 0,1,2 --budgets 1,2,5,10,20,60 --jobs 3 --figure docs/_static/calibration-curve.png
    python bench/calibration.py --quick      # smoke test: tiny world, figures mean nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from glimpse.models.checkpoint import load_checkpoint
from glimpse.models.data import SessionData, load_session
from glimpse.models.evaluate import evaluate
from glimpse.models.new_subject import AdaptConfig, adapt_to_subject
from glimpse.models.train import TrainConfig, train
from glimpse.streaming.simulate import SimulationConfig, simulate_session, simulated_with

REPO = Path(__file__).resolve().parents[1]
TRIAL_S = 1.5  # THINGS-MEG: 500 ms on, 1000 +- 200 ms off
QUICK = {"subjects": 1, "concepts": 8, "exemplars": 2, "test_concepts": 4, "test_exemplars": 2, "image_size": 48}


def _simulated(root: Path, config: SimulationConfig) -> Path:
    """Simulate ``config`` into ``root`` unless it is already there with that config."""
    if simulated_with(root, config):
        return root
    simulate_session(config, root, overwrite=True, progress=False)
    return root


def _top5(checkpoint: Path, data: SessionData, cache: Path, offset: float) -> dict:
    single = evaluate(checkpoint, data, offset=offset, ceiling=False, curve_offsets=(),
                      cache_dir=cache)["single_trial"]
    return {k: single[k] for k in ("top5", "chance_top5", "se_top5", "top1", "n_trials")}


def _budget(data: SessionData, minutes: float) -> tuple[SessionData, int]:
    """The person's first ``40 x minutes`` training trials (the rest left out), and how many."""
    table = data.trials
    train_rows = np.flatnonzero(table.split == "train")
    keep = train_rows[np.argsort(table.onset[train_rows], kind="stable")][: int(round(minutes * 60 / TRIAL_S))]
    split = np.where(table.split == "train", "unknown", table.split)
    split[keep] = "train"
    return dataclasses.replace(data, trials=dataclasses.replace(table, split=split)), len(keep)


def run_seed(seed: int, args, cache: Path) -> dict:
    world = SimulationConfig(modality=args.modality, seed=seed, **(QUICK if args.quick else {}))
    emb_cache = cache / "embeddings"
    base_root = _simulated(cache / f"{args.modality}-seed{seed}-base", world)
    base_dir = cache / f"{args.modality}-seed{seed}-base-model"
    t0 = time.perf_counter()
    if not (base_dir / "config.json").is_file():
        train(load_session(base_root, progress=False),
              TrainConfig(seed=seed, cache_dir=str(emb_cache), **({"epochs": 2} if args.quick else {})),
              base_dir, progress=False)
    base_s = time.perf_counter() - t0
    trials_needed = max(args.budgets) * 60 / TRIAL_S
    person = dataclasses.replace(world, subjects=1, first_subject=world.subjects + 1,
                                 exemplars=max(world.exemplars, math.ceil(trials_needed / world.concepts)))
    person_root = _simulated(cache / f"{args.modality}-seed{seed}-person", person)
    base = load_checkpoint(base_dir)
    data = load_session(person_root, preprocess=base.preprocess, progress=False)
    rows = []
    for minutes in args.budgets:
        out = cache / "runs" / f"{args.modality}-seed{seed}-{minutes:g}min"
        adapt = AdaptConfig(seed=seed, cache_dir=str(emb_cache), min_trials=1,
                            **({"epochs": 2} if args.quick else {}))
        key = json.loads(json.dumps({"minutes": minutes, "person": dataclasses.asdict(person),
                                     "adapt": dataclasses.asdict(adapt), "base": base.fingerprint}))
        done = out / "row.json"
        kept = json.loads(done.read_text()) if done.is_file() else {}
        if kept.get("key") == key:  # a run cut short resumes from the budgets it finished
            rows.append({**kept["row"], "resumed": True})
            continue
        rows.append(_run_budget(data, minutes, base_dir, adapt, out, seed, args.quick, key))
        done.write_text(json.dumps({"key": key, "row": rows[-1]}))
        print(json.dumps({"seed": seed, **rows[-1]}), file=sys.stderr, flush=True)
    return {"seed": seed, "base": str(base_dir), "base_train_s": round(base_s, 1),
            "base_val_top5": base.metrics.get("val_top5"), "n_test_trials": rows[0]["adapted"]["n_trials"],
            "budgets": rows}


def _run_budget(data: SessionData, minutes: float, base_dir: Path, adapt: AdaptConfig, out: Path,
                seed: int, quick: bool, key: dict) -> dict:
    """The three arms at one budget; the adapted arm is kept on its own (at 60 minutes each
    arm takes most of an hour), so a run cut short during (b) resumes from it."""
    part, n = _budget(data, minutes)
    arm_file = out / "adapted.json"
    kept = json.loads(arm_file.read_text()) if arm_file.is_file() else {}
    if kept.get("key") == key:
        before, after = kept["unadapted"], {**kept["adapted"], "resumed": True}
    else:
        t1 = time.perf_counter()
        adapted = adapt_to_subject(base_dir, part, out / "adapted", adapt, subject=f"new-{seed}", progress=False)
        before, after = adapted.before, {**adapted.after, "wall_s": round(time.perf_counter() - t1, 1)}
        arm_file.write_text(json.dumps({"key": key, "adapted": after, "unadapted": before}))
    t2 = time.perf_counter()
    train(part, TrainConfig(seed=seed, cache_dir=adapt.cache_dir, **({"epochs": 2} if quick else {})),
          out / "scratch", progress=False)
    scratch_s = time.perf_counter() - t2
    return {"minutes": minutes, "n_train_trials": n, "adapted": after,
            "scratch": {**_top5(out / "scratch", part, Path(adapt.cache_dir), after["offset_s"]),
                        "wall_s": round(scratch_s, 1)},
            "unadapted": before}


def _run_seed_alone(seed: int, args) -> dict:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return run_seed(seed, args, args.cache)


def summarise(results: list[dict]) -> list[dict]:
    """Mean and SD over seeds of each budget's top-5, per condition."""
    out = []
    for i, row in enumerate(results[0]["budgets"]):
        entry = {"minutes": row["minutes"], "chance_top5": row["adapted"]["chance_top5"]}
        for cond in ("adapted", "scratch", "unadapted"):
            values = np.array([r["budgets"][i][cond]["top5"] for r in results])
            entry[cond] = {"mean": round(float(values.mean()), 4), "sd": round(float(values.std(ddof=1)), 4)
                           if len(values) > 1 else None, "per_seed": values.round(4).tolist()}
        out.append(entry)
    return out


def figure(summary: list[dict], path: Path, modality: str, n_seeds: int) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["minutes"] for s in summary]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for cond, colour, label in (("adapted", "#1f77b4", "base adapted to the person"),
                                ("scratch", "#d62728", "trained on the person alone"),
                                ("unadapted", "#7f7f7f", "base, no adaptation")):
        mean = np.array([s[cond]["mean"] for s in summary])
        sd = np.array([s[cond]["sd"] or 0.0 for s in summary])
        ax.errorbar(minutes, 100 * mean, yerr=100 * sd, marker="o", capsize=3, color=colour, label=label)
    chance = 100 * summary[0]["chance_top5"]
    ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
    if 2 * chance < 100:
        ax.axhline(2 * chance, color="k", ls="--", lw=0.8, label="2 x chance (target at 5 min)")
    ax.set_xscale("log")
    ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("minutes of the new person's calibration data")
    ax.set_ylabel("single-trial top-5 on unseen concepts (%)")
    ax.set_title(f"A new simulated person ({modality.upper()}), mean ± SD over {n_seeds} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seeds", default="0,1,2", help="simulation seeds (at least 3 for a figure)")
    parser.add_argument("--budgets", default="1,2,5,10,20,60", help="minutes of calibration data")
    parser.add_argument("--modality", default="meg", choices=["meg", "eeg"])
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "bench-calibration")
    parser.add_argument("--figure", type=Path, default=None, help="write the curve (PNG) here")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run in parallel processes, one torch thread each (1: in turn)")
    parser.add_argument("--quick", action="store_true", help="tiny world and 2 epochs (smoke test)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.jobs > 1:  # one process per seed, one thread each (the embedding cache is process-safe)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_run_seed_alone, seeds, [args] * len(seeds)))
    else:
        results = [run_seed(seed, args, args.cache) for seed in seeds]
    summary = summarise(results)
    if args.figure:
        figure(summary, args.figure, args.modality, len(results))
    print(json.dumps({"bench": "calibration", "modality": args.modality, "quick": args.quick,
                      "cpus": os.cpu_count(), "jobs": args.jobs,
                      "torch_threads": 1 if args.jobs > 1 else torch.get_num_threads(),
                      "python": platform.python_version(), "adapt": dataclasses.asdict(AdaptConfig()), "wall_s": round(time.perf_counter() - started),
                      "summary": summary, "seeds": results}, indent=1))


if __name__ == "__main__":
    main()
