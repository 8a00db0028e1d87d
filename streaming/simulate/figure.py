"""The evoked-response figure, computed from the written files so it proves them right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import signal

BASELINE = 0.2  # s before onset
LOWPASS = 40.0  # Hz, applied to averages only (linear, so equal to filtering trials)


def average_epochs(raw, picks: list[str], onsets: np.ndarray, n_pre: int, n_post: int, chunk: int) -> np.ndarray:
    """Baseline-corrected mean over trials of ``picks``, reading ``chunk`` samples at a time.

    Each FIF buffer is read once, and only the picked channels are converted to
    float64, so memory stays at one chunk whatever the session length.
    """
    onsets = np.sort(np.asarray(onsets))
    onsets = onsets[(onsets - n_pre >= 0) & (onsets + n_post <= raw.n_times)]
    total = np.zeros((len(picks), n_pre + n_post))
    k = 0
    while k < len(onsets):
        start = int(onsets[k] - n_pre)
        stop = min(start + max(chunk, n_pre + n_post), raw.n_times)
        data = raw.get_data(picks=picks, start=start, stop=stop)
        while k < len(onsets) and onsets[k] + n_post <= stop:
            seg = data[:, onsets[k] - n_pre - start : onsets[k] + n_post - start]
            total += seg - seg[:, :n_pre].mean(axis=1, keepdims=True)
            k += 1
    return total / max(len(onsets), 1)


def lowpass(evoked: np.ndarray, sfreq: float, cutoff: float = LOWPASS) -> np.ndarray:
    sos = signal.butter(4, cutoff, "lowpass", fs=sfreq, output="sos")
    return signal.sosfiltfilt(sos, evoked, axis=-1)


def plot_evoked(
    path: Path,
    times: np.ndarray,
    rms: dict[str, np.ndarray],
    latencies: dict[str, float],
    stim_duration: float,
    *,
    unit: str,
    title: str,
) -> Path:
    """RMS over posterior sensors per subject and their mean, with the configured peaks marked."""
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axvspan(0, stim_duration, color="0.9", zorder=0, label="image on screen")
    for name, curve in rms.items():
        ax.plot(times, curve, lw=0.8, alpha=0.6, label=f"sub-{name}")
    grand = np.mean(list(rms.values()), axis=0)
    ax.plot(times, grand, color="k", lw=2, label="mean")
    top = max(float(c.max()) for c in rms.values()) * 1.1
    for name, latency in latencies.items():
        ax.axvline(latency, color="tab:red", ls="--", lw=1)
        ax.text(latency, top, f"{name}\n{latency * 1000:.0f} ms", color="tab:red", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, top * 1.25)
    ax.set_xlim(times[0], times[-1])
    ax.set_xlabel("time from image onset (s)")
    ax.set_ylabel(f"RMS over posterior sensors ({unit})")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No Software tag: the PNG then depends only on the data, not the matplotlib version.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path
