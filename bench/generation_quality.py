"""Quality and speed of the embedded generator; prints JSON.

Quality: PixCorr, SSIM and 2-way identification (handcrafted embedder) on held-out
images drawn with the simulator's stimulus code from a seed training never uses,
generated from their TRUE embeddings. Speed: generated frames per second one
embedding at a time (the live path), on ``--threads`` CPU threads. With
``--checkpoint`` and ``--data``, also the reconstruction report from DECODED
test-trial embeddings (``glimpse reconstruct``), with and without ``--finetuned``.

Usage: ``python bench/generation_quality.py [--generator DIR] [--images 500]
[--threads 2] [--checkpoint CKPT --data DATA [--finetuned DIR] --out REPORT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from glimpse.models.embedders import load_embedder
from glimpse.models.generators import load_generator
from glimpse.models.generators.embedded import default_folder
from glimpse.models.generators.metrics import reconstruction_metrics
from glimpse.models.generators.train_embedded import draw_stimuli

HELD_OUT_SEED = 7_654_321  # neither the training seed (0) nor the training's evaluation seed


def speed(generator, embeddings: np.ndarray, seconds: float = 5.0) -> dict[str, float]:
    """Frames per second and latency per frame, one embedding per call."""
    generator.warmup()
    latencies, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        generator.generate(embeddings[i % len(embeddings)][None])
        latencies.append(time.perf_counter() - t)
        i += 1
    ms = 1e3 * np.asarray(latencies)
    return {"frames_per_s": round(len(ms) / ms.sum() * 1e3, 1), "latency_ms_p50": round(float(np.median(ms)), 2),
            "latency_ms_p95": round(float(np.percentile(ms, 95)), 2), "frames": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path, default=None, help="generator folder (default: the shipped one)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="1: two OpenMP threads spin-wait on a shared 2-core machine")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--finetuned", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reconstruction"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.generator or default_folder("handcrafted")
    generator = load_generator(folder)
    embedder = load_embedder(generator.embedder)
    held_out = draw_stimuli(args.images, np.random.default_rng(HELD_OUT_SEED), embedder, size=generator.size)
    started = time.perf_counter()
    generated = generator.generate(held_out.embeddings)
    result = {"bench": "generation_quality", "generator": str(folder), "size": generator.size,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": args.threads, "load_average": os.getloadavg()},
              "held_out_true_embeddings": reconstruction_metrics(generated, held_out.images, embedder,
                                                                 size=generator.size),
              "batch_generation_s": round(time.perf_counter() - started, 3),
              "live_speed": speed(generator, held_out.embeddings)}
    if args.checkpoint is not None and args.data is not None:
        from glimpse.models.generators.reconstruct import reconstruct

        report = reconstruct(args.checkpoint, args.data, folder, args.out, finetuned=args.finetuned)
        result["decoded"] = {"report": str(args.out), "blocks": report["blocks"]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
