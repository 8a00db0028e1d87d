"""Offline reconstruction report: true vs retrieved vs generated images of the test trials.

``glimpse reconstruct CKPT DATA --generator GEN --out DIR`` decodes every test
trial, retrieves the top-1 among the test images (what the live viewer shows), and
generates from the decoded embedding: plain, two-stage (image-to-image from the
retrieved top-1, MindDiffuser's structure stage), and with a fine-tuned
conditioning when one is given; the plain generated images are then refined by
gradient steps on their latent towards the decoded embedding (:mod:`.refine`: on
up to ``refine_trials`` single trials and on every per-image average), and scored
beside the same images unrefined. Each is scored against the true images with
PixCorr, SSIM and 2-way identification in the checkpoint embedder's space (and in
extra embedders' spaces, e.g. OpenCLIP, when given), beside their chance levels
and beside the same generator fed the clean embeddings of the true images (its
ceiling). Single trials (what a live decoder sees) and per-image averages of the
repeats are reported apart.

Written to DIR: ``metrics.json``, ``summary.md`` and ``grid_*.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError

from .base import Generator, load_generator
from .finetune import decoded_trials, load_images
from .metrics import reconstruction_metrics
from .refine import refine

__all__ = ["reconstruct"]

logger = logging.getLogger("glimpse.models.generators.reconstruct")

GRID_EXAMPLES = 8


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _averaged(embeddings: np.ndarray, rows: np.ndarray, mean_norm: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean unit embedding per image row (all repeats, all subjects), rescaled."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    sums = np.zeros((len(uniq), embeddings.shape[1]))
    np.add.at(sums, inverse.reshape(-1), _unit(embeddings))
    return Generator.rescale(sums.astype(np.float32), mean_norm), uniq


def _grid(columns: dict[str, np.ndarray], path: Path, n: int = GRID_EXAMPLES) -> Path:
    """One row per example, one labelled column per image source."""
    from PIL import Image, ImageDraw

    size, pad, label = 96, 4, 16
    names = list(columns)
    n = min(n, len(next(iter(columns.values()))))
    sheet = Image.new("RGB", (len(names) * (size + pad) + pad, label + n * (size + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(names):
        draw.text((pad + c * (size + pad), 2), name, fill=(235, 235, 235))
        for r in range(n):
            tile = Image.fromarray(columns[name][r]).resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(tile, (pad + c * (size + pad), label + pad + r * (size + pad)))
    sheet.save(path)
    return path


def _score(name: str, generated: np.ndarray, true: np.ndarray, embedders: list[Any], size: int) -> dict[str, Any]:
    first, *others = embedders
    block = reconstruction_metrics(generated, true, first, size=size)
    for extra in others:
        block[f"two_way_{extra.name}"] = reconstruction_metrics(generated, true, extra, size=size)["two_way"]
    logger.info("%s: 2-way %.3f (chance 0.5), PixCorr %.3f (chance %.3f), SSIM %.3f (chance %.3f)", name,
                block["two_way"], block["pixcorr"], block["pixcorr_chance"], block["ssim"], block["ssim_chance"])
    return block


def _variants(generators: dict[str, Generator], embeddings: np.ndarray, retrieved: np.ndarray,
              strength: float) -> dict[str, np.ndarray]:
    images = {}
    for label, generator in generators.items():
        images[f"generated{label}"] = generator.generate(embeddings)
        images[f"two_stage{label}"] = generator.generate(embeddings, init_images=list(retrieved), strength=strength)
    return images


def _refined(generator: Generator, embedders: list[Any], embeddings: np.ndarray, generated: np.ndarray,
             true: np.ndarray, *, steps: int, size: int, seed: int, grid: Path) -> dict[str, Any]:
    """The generated images and the same refined towards their decoded embeddings, scored alike."""
    result = refine(generator, embedders[0], embeddings, steps=steps, seed=seed)
    _grid({"true": true, "generated": generated, "refined": result.images}, grid)
    scores = {"generated": _score("generated (refinement subset)", generated, true, embedders, size),
              "refined": _score("refined", result.images, true, embedders, size)}
    scores["refined"]["refinement"] = {**result.summary(), "steps": steps, "n_images": len(generated)}
    return scores


def reconstruct(checkpoint: Any, data: Any, generator: str | Path, out: str | Path, *,
                finetuned: str | Path | None = None, extra_embedders: list[str] | None = None,
                offset: float | None = None, head: str = "retrieval", strength: float = 0.6,
                max_trials: int = 1000, size: int = 64, seed: int = 0, refine_steps: int = 20,
                refine_trials: int = 100) -> dict[str, Any]:
    """Decode the test trials of ``data`` with ``checkpoint``; score and draw the report."""
    from ..checkpoint import load_checkpoint
    from ..embedders import load_embedder

    ckpt = load_checkpoint(checkpoint)
    generators = {"": load_generator(generator)}
    if finetuned is not None:
        generators[" (fine-tuned)"] = load_generator(finetuned)
    for g in generators.values():
        g.check_embedder(ckpt.embedder_name, ckpt.embed_dim)
    if max_trials < 2:
        raise InputError("max_trials >= 2", str(max_trials), "pass --max-trials 2 or more")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    embedders = [load_embedder(ckpt.embedder_name)] + [load_embedder(s) for s in extra_embedders or []]
    decoded = decoded_trials(ckpt, data, split="test", offset=offset, head=head)
    rows = np.unique(decoded.image_rows)
    paths = [decoded.images[r] for r in rows]
    candidates = _unit(embedders[0].embed(paths, progress=False))
    true_by_row = dict(zip(rows.tolist(), load_images(paths, size)))
    mean_norm = (ckpt.config.get("embedder") or {}).get("mean_norm")
    pick = np.random.default_rng(seed).permutation(len(decoded.embeddings))[:max_trials]
    averaged, averaged_rows = _averaged(decoded.embeddings, decoded.image_rows, mean_norm)
    report: dict[str, Any] = {"checkpoint": str(ckpt.path), "generator": str(generator),
                              "finetuned": str(finetuned) if finetuned else None, "head": head,
                              "offset_s": decoded.offset_s, "strength": strength, "size": size,
                              "n_test_trials": int(len(decoded.embeddings)), "n_scored_trials": int(len(pick)),
                              "n_test_images": int(len(rows)), "blocks": {}}
    clean = Generator.rescale(candidates, mean_norm)
    true_images = np.stack([true_by_row[r] for r in rows])
    report["blocks"]["clean_embeddings"] = {
        f"generated{label}": _score(f"clean generated{label}", g.generate(clean), true_images, embedders, size)
        for label, g in generators.items()}
    for block, embeddings, image_rows in (("single_trial", decoded.embeddings[pick], decoded.image_rows[pick]),
                                          ("averaged", averaged, averaged_rows)):
        true = np.stack([true_by_row[r] for r in image_rows])
        top1 = rows[np.argmax(_unit(embeddings) @ candidates.T, axis=1)]
        retrieved = np.stack([true_by_row[r] for r in top1])
        images = {"retrieved": retrieved, **_variants(generators, embeddings, retrieved, strength)}
        report["blocks"][block] = {name: _score(f"{block} {name}", im, true, embedders, size)
                                   for name, im in images.items()}
        report["blocks"][block]["retrieved"]["top1_accuracy"] = float(np.mean(top1 == image_rows))
        _grid({"true": true, **images}, out / f"grid_{block}.png")
        if refine_steps > 0:
            n = len(embeddings) if block == "averaged" else min(refine_trials, len(embeddings))
            report["blocks"][f"{block}_refined"] = _refined(
                generators[""], embedders, embeddings[:n], images["generated"][:n], true[:n],
                steps=refine_steps, size=size, seed=seed, grid=out / f"grid_{block}_refined.png")
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(format_summary(report), encoding="utf-8")
    return report


def format_summary(report: dict[str, Any]) -> str:
    """A Markdown table per block: each image source's metrics beside chance."""
    lines = [f"# Reconstruction report\n\ncheckpoint `{report['checkpoint']}`, generator "
             f"`{report['generator']}`, fine-tuned `{report['finetuned']}`; window ending "
             f"{report['offset_s']:g} s after onset; {report['n_scored_trials']} of "
             f"{report['n_test_trials']} test trials scored, {report['n_test_images']} test images.\n"]
    for block, rows in report["blocks"].items():
        lines += [f"\n## {block.replace('_', ' ')}\n", "| images | 2-way | PixCorr (chance) | SSIM (chance) |",
                  "|---|---|---|---|"]
        for name, m in rows.items():
            lines.append(f"| {name} | {m['two_way']:.3f} | {m['pixcorr']:.3f} ({m['pixcorr_chance']:.3f}) | "
                         f"{m['ssim']:.3f} ({m['ssim_chance']:.3f}) |")
        done = rows.get("refined", {}).get("refinement")
        if done:
            lines.append(f"\nRefinement ({done['gradient']}, {done['steps']} steps, {done['n_images']} images): "
                         f"cosine to the decoded embedding {done['cosine_before']:.3f} -> "
                         f"{done['cosine_after']:.3f}, higher for {done['improved']:.0%} of the images.")
    lines.append("\n2-way chance: 0.5. Chance of PixCorr and SSIM: the same images against "
                 "mismatched true images.\n")
    return "\n".join(lines)
