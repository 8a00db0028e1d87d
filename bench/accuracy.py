"""Zero-shot retrieval accuracy of every decoder on the default simulated sessions; prints JSON.

For each modality (the DEFAULT ``glimpse simulate`` MEG and EEG sessions, simulated
once into ``--cache``), train the brain encoder, the ridge baseline and the
braindecode peers (ShallowFBCSPNet, EEGNet) through ``glimpse.models.train`` (default
``TrainConfig`` but the model), evaluate each with ``glimpse.models.evaluate`` (retrieval
among the unseen test images, headline window at the best VALIDATION offset), and
report single-trial and repeat-averaged top-1/top-5, chance, the model's noise-free
ceiling and training time (wall time of ``train()``: fitting, validation,
calibration, figures). Per session, ``linear_task_ceiling`` tells how predictable
unseen concepts are at all from noise-free responses (see that function).

Every figure is measured on each of ``--seeds`` simulated sessions (default 0, 1, 2: the seed
picks the concepts, which of them are held out, the subjects and the noise) and summarised
as mean, SD, min and max over the seeds: one seed's test concepts can sit much closer to
training than another's.

Usage: ``python bench/accuracy.py [--quick] [--cache DIR] [--models a,b] [--seeds 0,1,2]
[--snr-db X] [-v]``.
``--quick`` is a smoke test (tiny sessions, 2 epochs): its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from glimpse.models.data import load_session
from glimpse.models.evaluate import evaluate
from glimpse.models.train import TrainConfig, train
from glimpse.streaming.simulate import SimulationConfig, simulate_session, simulated_with

REPO = Path(__file__).resolve().parents[1]

MODELS = ("brain_encoder", "ridge", "shallow_fbcsp", "eegnet")
# The tests' session size: seconds to simulate, enough trials for every model to run.
QUICK_SIZES = {"subjects": 1, "concepts": 8, "exemplars": 2, "test_concepts": 4,
               "test_exemplars": 2, "image_size": 48}


def session(modality: str, cache: Path, quick: bool, snr_db: float | None = None, seed: int = 0
            ) -> tuple[Path, dict, float]:
    """The cached simulated session (re-simulated when its config differs): (root, config, s)."""
    extra = {} if snr_db is None else {"snr_db": snr_db}
    config = SimulationConfig(modality=modality, seed=seed, **(QUICK_SIZES if quick else {}), **extra)
    root = cache / (f"{modality}-{'quick' if quick else 'default'}"
                    + ("" if snr_db is None else f"-snr{snr_db:g}") + f"-seed{seed}")
    if simulated_with(root, config):  # the same config, simulated by this simulator version
        return root, config.to_dict(), 0.0
    start = time.perf_counter()
    simulate_session(config, root, overwrite=True, progress=False)
    return root, config.to_dict(), time.perf_counter() - start


def pick(block: dict | None, *keys: str) -> dict:
    return {k: (None if block is None else block.get(k)) for k in keys}


def linear_task_ceiling(checkpoint_dir: Path, data, cache: Path) -> dict:
    """Ridge trained AND tested on the simulator's noise-free responses: train images -> test images.

    Not a model's ceiling (evaluate's ``ceiling`` is): how far the simulated brain's
    response, as the checkpoint's preprocessing sees it in the live window, predicts
    the embeddings of UNSEEN concepts' images at all. Windows end every 0.1 s from 0.2 to
    0.7 s after onset (the validation offsets), pooled for training and for testing,
    one ridge per subject (alpha by RidgeCV's leave-one-out).
    """
    import numpy as np
    from sklearn.linear_model import RidgeCV

    from glimpse.models.ceiling import clean_windows
    from glimpse.models.checkpoint import load_checkpoint
    from glimpse.models.data import image_targets
    from glimpse.models.metrics import retrieval_metrics
    from glimpse.models.windows import EVAL_OFFSETS
    from glimpse.streaming.simulate import clean_responses

    ckpt = load_checkpoint(checkpoint_dir)
    targets = image_targets(data, ckpt.embedder_name, cache_dir=cache / "embeddings", progress=False)
    targets = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    table, root = data.trials, Path(data.source)
    rows = {split: np.unique(table.image[table.select(split=split)]) for split in ("train", "test")}
    preds, truth = [], []
    for subject in data.subjects:
        clean = clean_responses(root, subject)

        def windows(image_rows):
            return np.concatenate([
                clean_windows(ckpt, clean, Path(data.images[r]).resolve().relative_to(
                    root.resolve()).as_posix(), EVAL_OFFSETS).reshape(len(EVAL_OFFSETS), -1)
                for r in image_rows])
        ridge = RidgeCV(alphas=np.logspace(-2, 6, 9)).fit(
            windows(rows["train"]), np.repeat(targets[rows["train"]], len(EVAL_OFFSETS), axis=0))
        preds.append(ridge.predict(windows(rows["test"])))
        truth.append(np.repeat(np.arange(len(rows["test"])), len(EVAL_OFFSETS)))
    m = retrieval_metrics(np.concatenate(preds), targets[rows["test"]], np.concatenate(truth),
                          n_way=None)
    return {"top1": m["top1"], "top5": m["top5"], "median_relative_rank": m["median_relative_rank"],
            "chance_top1": m["chance_top1"], "chance_top5": m["chance_top5"],
            "n_queries": m["n_queries"], "n_train_images": int(len(rows["train"])),
            "how": linear_task_ceiling.__doc__.split("\n\n")[0]}


def run_one(data, modality: str, model: str, cache: Path, quick: bool, tag: str) -> dict:
    out = cache / "runs" / tag / model
    options = {"model": model, "num_threads": torch.get_num_threads(),
               "cache_dir": str(cache / "embeddings"),
               "model_options": {}}
    if quick:
        options.update(epochs=2, patience=2, ridge_draws=1)
    config = TrainConfig(**options)
    start = time.perf_counter()
    result = train(data, config, out / "checkpoint", progress=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    m = evaluate(result.checkpoint_dir, data, cache_dir=cache / "embeddings", out_dir=out / "report")
    eval_s = time.perf_counter() - start
    single, avg, avg_w, ceil = m["single_trial"], m["averaged"], m["averaged_windows"], m["ceiling"]
    return {
        "modality": modality, "model": model,
        "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
        "model_options": config.model_options,
        "epochs_run": result.metrics.get("epochs_run"), "best_epoch": result.metrics.get("best_epoch"),
        "window_end_s": m["window"]["end_offset_s"], "window_source": m["window"]["offset_source"],
        "val_top5": result.metrics.get("val_top5"),
        "single_trial": pick(single, "top1", "top5", "median_relative_rank", "n_queries"),
        "averaged_embeddings": pick(avg, "top1", "top5", "median_relative_rank", "n_queries"),
        "averaged_windows": pick(avg_w, "top1", "top5", "median_relative_rank", "n_queries"),
        "n_way": {"n": single["n_way"]["n_way"], "single_trial": single["n_way"]["top1"],
                  "averaged_embeddings": avg["n_way"]["top1"], "chance": single["n_way"]["chance"]},
        "chance": {"top1": single["chance_top1"], "top5": single["chance_top5"],
                   "median_relative_rank": 0.5},
        "ceiling": pick(ceil, "top1", "top5", "median_relative_rank") if ceil else None,
        "pre_onset_at_chance": m["curve"]["pre_onset"].get("at_chance"),
        "peak_curve_top5": max((p["top5"] for p in m["curve"]["points"] if p.get("top5") is not None),
                               default=None),
        "test": {"trials": m["test"]["n_trials"], "images": m["test"]["n_images"],
                 "disjoint": m["test"]["disjoint"]},
        "report": str(out / "report"),
        "checkpoint": str(result.checkpoint_dir),
    }


def spread(values: list) -> dict | None:
    """Mean, standard deviation (ddof 1), min and max of the non-missing values."""
    import numpy as np

    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return None
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4) if len(v) > 1 else None,
            "min": round(float(v.min()), 4), "max": round(float(v.max()), 4), "n_seeds": len(v)}


def summarise(rows: list[dict], sessions: dict) -> list[dict]:
    """One entry per modality and model: each headline figure as its spread over the seeds."""
    out = []
    for key in dict.fromkeys((r["modality"], r["model"]) for r in rows):
        mine = [r for r in rows if (r["modality"], r["model"]) == key]
        out.append({
            "modality": key[0], "model": key[1], "seeds": [r["seed"] for r in mine],
            "top5_single": spread([r["single_trial"]["top5"] for r in mine]),
            "top5_averaged": spread([r["averaged_embeddings"]["top5"] for r in mine]),
            "top1_single": spread([r["single_trial"]["top1"] for r in mine]),
            "ceiling_top5": spread([(r["ceiling"] or {}).get("top5") for r in mine]),
            "train_s": spread([r["train_s"] for r in mine]),
            "chance_top5": mine[0]["chance"]["top5"]})
    for modality in dict.fromkeys(s["modality"] for s in sessions.values()):
        ceilings = [s.get("linear_task_ceiling", {}).get("top5") for s in sessions.values()
                    if s["modality"] == modality]
        out.append({"modality": modality, "model": "linear task ceiling", "top5_single": spread(ceilings)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sessions and 2 epochs (smoke test)")
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "bench-accuracy",
                        help="where sessions, checkpoints and reports go (default: build/bench-accuracy)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated models to train (default: {','.join(MODELS)})")
    parser.add_argument("--modalities", default="meg,eeg", help="comma-separated (default: meg,eeg)")
    parser.add_argument("--snr-db", type=float, default=None,
                        help="simulate at this single-trial SNR instead of the default")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma-separated simulation seeds; figures are reported per seed and as "
                             "mean and spread over them (default: 0,1,2; which concepts a seed "
                             "holds out moves top-5 by tens of points)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    start = time.perf_counter()
    cache = args.cache.expanduser().resolve()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows, sessions = [], {}
    for modality, seed in [(m.strip(), seed) for m in args.modalities.split(",") if m.strip()
                           for seed in seeds]:
        root, sim_config, sim_s = session(modality, cache, args.quick, args.snr_db, seed)
        t = time.perf_counter()
        data = load_session(root, progress=False)
        info = sessions[root.name] = {
            "modality": modality, "seed": seed, "root": str(root), "simulate_s": round(sim_s, 1),
            "load_s": round(time.perf_counter() - t, 1), "summary": data.summary(),
            "snr_db": sim_config["snr_db"]}
        for model in models:
            logging.getLogger("glimpse.bench").info("%s seed %d: training %s", modality, seed, model)
            rows.append({"seed": seed, **run_one(data, modality, model, cache, args.quick, root.name)})
        if models:
            t = time.perf_counter()
            info["linear_task_ceiling"] = linear_task_ceiling(Path(rows[-1]["checkpoint"]), data, cache)
            info["linear_task_ceiling"]["wall_s"] = round(time.perf_counter() - t, 1)
        del data
    print(json.dumps({
        "bench": "accuracy", "quick": args.quick,
        "command": " ".join(["python", "bench/accuracy.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "seeds": seeds, "summary": summarise(rows, sessions), "sessions": sessions, "results": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }, indent=1, default=str))


if __name__ == "__main__":
    main()
