"""Exact cosine top-5 latency of a gallery (random entries), and embedding speed; prints JSON.

For each size and dimension: p50/p95 latency of ``Gallery.topk(queries, k=5)`` over
``--queries`` calls with batch 1 and batch 8, and the gallery's memory. fp32 on the CPU;
also fp32 and fp16 on CUDA when available, and fp16 on the CPU with ``--cpu-half``
(slow on most CPUs: no fast fp16 GEMM). Building a gallery is bound by the embedder:
``--embed-images`` images of the simulator's size (128x128) are embedded with the
default (handcrafted) embedder and its images/s reported. Usage:
``python bench/gallery.py [--sizes 1e4 1e5 1e6] [--dim 256 1024] [--queries 50] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
import torch

from glimpse.models.gallery import Gallery


def make_gallery(n: int, dim: int, seed: int = 0) -> Gallery:
    e = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    ids = [str(i) for i in range(n)]
    return Gallery(e, ids, ids, "bench", dim, ids)


def latency(gallery: Gallery, batch: int, n_queries: int, warmup: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(n_queries + warmup, batch, gallery.dim, generator=g)
    costs = []
    for i, q in enumerate(queries):
        q = q.to(gallery.device)
        if gallery.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        gallery.topk(q, k=5)
        if gallery.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            costs.append(time.perf_counter() - t)
    ms = np.asarray(costs) * 1e3
    return {f"batch{batch}_p50_ms": round(float(np.median(ms)), 3),
            f"batch{batch}_p95_ms": round(float(np.percentile(ms, 95)), 3)}


def embed_rate(n_images: int, size: int = 128, seed: int = 0) -> dict:
    """Images/s of the default embedder on figures over a background, ``size`` pixels square."""
    from PIL import Image, ImageDraw

    from glimpse.models.embedders import DEFAULT_EMBEDDER, load_embedder

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
        x, y = rng.integers(size // 8, size // 2, 2)
        w, h = rng.integers(size // 4, size // 2, 2)
        ImageDraw.Draw(image).ellipse((int(x), int(y), int(x + w), int(y + h)),
                                      fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        images.append(image)
    embedder = load_embedder(DEFAULT_EMBEDDER)
    embedder.embed(images[:2], progress=False)  # warm-up (imports, caches)
    t = time.perf_counter()
    embedder.embed(images, progress=False)
    seconds = time.perf_counter() - t
    return {"embedder": embedder.name, "images": n_images, "size": size,
            "images_per_s": round(n_images / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    parser.add_argument("--dim", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--queries", type=int, default=50, help="timed calls per batch size")
    parser.add_argument("--cpu-half", action="store_true", help="also time fp16 on the CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--embed-images", type=int, default=66,
                        help="images embedded to time the default embedder (0: skip)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = [("cpu", torch.float32)] + ([("cpu", torch.float16)] if args.cpu_half else [])
    if torch.cuda.is_available():
        targets += [("cuda", torch.float32), ("cuda", torch.float16)]
    results = []
    for dim in args.dim:
        for n in (int(s) for s in args.sizes):
            t = time.perf_counter()
            base = make_gallery(n, dim)
            build_s = time.perf_counter() - t
            for device, dtype in targets:
                gallery = base if (device, dtype) == ("cpu", torch.float32) else base.to(device, dtype)
                results.append({"n": n, "dim": dim, "device": device, "dtype": str(dtype).removeprefix("torch."),
                                "gallery_mib": round(gallery.nbytes / 2**20, 1), "make_s": round(build_s, 2),
                                **latency(gallery, 1, args.queries), **latency(gallery, 8, args.queries)})
                del gallery
            del base
    print(json.dumps({
        "bench": "gallery_topk", "k": 5, "queries_per_batch_size": args.queries,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "embedding": embed_rate(args.embed_images) if args.embed_images > 0 else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
