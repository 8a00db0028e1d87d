"""The evaluation report: the summary text the CLI prints, ``metrics.json`` and the figures.

:func:`write_report` fills a folder with ``metrics.json``, ``summary.txt``
(:func:`format_report`), ``curve.png`` (:func:`plot_curve`: single-trial accuracy
vs window end, with chance, onset and the ceiling) and ``examples.png``
(:func:`plot_examples`: a few test images and what was retrieved for them).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError

from .checkpoint import json_ready
from .metrics import PRE_ONSET_Z, cosine_scores

logger = logging.getLogger("glimpse.models.report")

__all__ = ["format_report", "plot_curve", "plot_examples", "write_report"]


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
