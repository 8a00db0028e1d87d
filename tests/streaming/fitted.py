"""What the windower and acquisition tests share: a checkpoint's window and a fitted config."""

from __future__ import annotations

from glimpse.streaming.preprocess import PreprocessConfig

N_TIMES, HOP_OUT = 30, 6  # 250 ms windows, 50 ms hop at the 120 Hz output


def names(n: int) -> list[str]:
    return [f"EEG{i:03d}" for i in range(n)]


def fitted_config(ch_names, scale: float = 1e-5) -> PreprocessConfig:
    """A fitted config, as a checkpoint stores it (center/scale set directly)."""
    return PreprocessConfig(ch_names=tuple(ch_names), center=(0.0,) * len(ch_names),
                            scale=(scale,) * len(ch_names))
