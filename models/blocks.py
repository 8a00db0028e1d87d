"""Building blocks of the brain encoder (Défossez et al. 2023, Nature MI), from the paper.

Kept apart from ``brain_encoder.py`` (braindecode's habit) so that pretraining and
future encoders can reuse them:

- :class:`SpatialAttention`: sensors -> virtual channels, a softmax over sensors
  whose scores are a learned function of each sensor's 2-D position;
- :class:`SubjectLayer`: one square matrix per subject;
- :class:`ConvBlock`: two residual dilated convolutions (BatchNorm, GELU), then a
  convolution with twice the channels and a GLU;
- :class:`MLPHead`: LayerNorm, GELU, Linear (Benchetrit et al. 2023's heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Positions in [0, 1] are shrunk into [margin, 1 - margin] before the Fourier
#: features: with harmonics of period 1, x = 0 and x = 1 would alias.
POSITION_MARGIN = 0.1


def fourier_features(positions: Tensor, k: int, margin: float = POSITION_MARGIN) -> Tensor:
    """``(C, 2) -> (C, 2 k^2)``: cos and sin of 2 pi (i x + j y) for i, j in 0..k-1."""
    pos = margin + (1.0 - 2.0 * margin) * positions.to(torch.float64)
    freqs = torch.arange(k, dtype=torch.float64)
    x, y = pos[:, 0, None, None], pos[:, 1, None, None]
    phase = 2 * math.pi * (freqs[None, :, None] * x + freqs[None, None, :] * y)
    phase = phase.reshape(len(positions), k * k)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1).to(torch.float32)


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` with 'same' padding and stride 1, computed as one matrix product on CPU.

    Same parameters and state_dict as ``nn.Conv1d``. On this project's CPU builds,
    PyTorch runs dilated and 1x1 convolutions of a short window through its slow
    reference kernels (a 320-channel dilated conv over 30 samples: ~14 ms, against
    ~0.3 ms as an explicit im2col product), which would miss the live latency target.
    Other devices, and ONNX export, keep the native kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding="same")

    def forward(self, x: Tensor) -> Tensor:
        k, d = self.kernel_size[0], self.dilation[0]
        pad = d * (k - 1) // 2  # odd kernels: 'same' is symmetric
        if x.device.type != "cpu" or torch.onnx.is_in_onnx_export():
            # Explicit pads: onnxruntime rejects auto_pad SAME with dilation.
            return F.conv1d(x, self.weight, self.bias, padding=pad, dilation=d)
        if k == 1:
            cols = x
        else:
            padded = F.pad(x, (pad, pad))
            # Tap i is the padded window shifted by i*d; slicing from both ends needs no
            # runtime shape (tracing and ONNX export stay shape-free).
            taps = [padded[:, :, i * d:(i - k + 1) * d or None] for i in range(k)]
            # (B, C, k, T) flattened to (B, C*k, T) matches weight.flatten(1): no weight copy.
            cols = torch.stack(taps, dim=2).flatten(1, 2)
        y = torch.matmul(self.weight.flatten(1), cols)
        return y if self.bias is None else y + self.bias[:, None]


class SpatialAttention(nn.Module):
    """Sensors -> ``out_channels`` virtual channels, a softmax over the sensors.

    Each output channel j scores every sensor with a learned function of its
    position, ``a_j(x, y) = sum_{i,l} w_j,il cos(2 pi (i x + l y)) + w'_j,il sin(...)``
    (a linear map from the 2 K^2 Fourier features), and outputs the softmax-weighted
    sum of the sensors. The parameters depend on positions only, never on the number
    of sensors, so one trained layer serves any montage of the same system; a missing
    sensor is removed by masking its score to -inf before the softmax.

    No bias: a per-channel constant cancels in a softmax over sensors.
    """

    def __init__(self, positions: Tensor, out_channels: int, fourier_k: int, dropout_radius: float = 0.0):
        super().__init__()
        self.out_channels, self.fourier_k, self.dropout_radius = out_channels, fourier_k, float(dropout_radius)
        self.query = nn.Linear(2 * fourier_k * fourier_k, out_channels, bias=False)
        # Montage-specific, rebuilt from the config: not part of the state_dict.
        self.register_buffer("positions", positions.to(torch.float32), persistent=False)
        self.register_buffer("features", fourier_features(positions, fourier_k), persistent=False)
        self._cache: tuple[Tensor, Tensor] | None = None
        self._cache_key: tuple | None = None

    def scores(self) -> Tensor:
        """``(out_channels, C)`` attention logits.

        At inference they are constant (C x 2K^2 x out_channels multiply-adds, more
        than the whole conv stack on a 250 ms window), so they are cached until the
        weights change (an optimiser step or load_state_dict bumps their version).
        """
        return self.query(self.features).T if self._fresh() else self._cached()[0]

    def _fresh(self) -> bool:
        """Recompute when gradients must flow, or under torch.compile/export (no Python state there)."""
        return (torch.is_grad_enabled() and self.query.weight.requires_grad) or torch.compiler.is_compiling()

    def _cached(self) -> tuple[Tensor, Tensor]:
        """Inference-time (scores, softmax weights), recomputed when the weights change."""
        weight = self.query.weight
        key = (weight._version, weight.data_ptr(), self.features.data_ptr(), weight.dtype)
        if self._cache is None or self._cache_key != key:
            # Normal tensors even under inference_mode, so that a later grad-mode
            # forward with frozen weights can still use them.
            with torch.inference_mode(False), torch.no_grad():
                scores = self.query(self.features).T.contiguous()
                self._cache = (scores, torch.softmax(scores, dim=-1))
            self._cache_key = key
        return self._cache

    def forward(self, x: Tensor, chan_mask: Tensor | None = None) -> Tensor:
        """``(B, C, T) -> (B, out_channels, T)``; ``chan_mask`` (B, C), True = present."""
        if self.training and self.dropout_radius > 0:
            chan_mask = self._spatial_dropout(x, chan_mask)
        if chan_mask is None:
            weights = torch.softmax(self.scores(), dim=-1) if self._fresh() else self._cached()[1]
            return torch.matmul(weights, x)
        logits = self.scores().unsqueeze(0).masked_fill(~chan_mask.unsqueeze(1), float("-inf"))
        return torch.matmul(torch.softmax(logits, dim=-1), x)

    def _spatial_dropout(self, x: Tensor, chan_mask: Tensor | None) -> Tensor:
        """Défossez et al.: drop every sensor within ``dropout_radius`` of a random point."""
        batch = x.shape[0]
        present = chan_mask
        if present is None:
            present = torch.ones(batch, len(self.positions), dtype=torch.bool, device=x.device)
        centre = torch.rand(batch, 2, device=x.device)
        dropped = torch.cdist(centre, self.positions) < self.dropout_radius
        kept = present & ~dropped
        # Never drop every sensor of a window: the softmax would have nothing left.
        return torch.where(kept.any(dim=1, keepdim=True), kept, present)


class SubjectLayer(nn.Module):
    """One ``channels x channels`` matrix per subject, picked by a subject index.

    Initialised to the identity, so a subject starts from the shared path and an
    unseen subject's matrix is harmless.
    """

    def __init__(self, n_subjects: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(channels).repeat(n_subjects, 1, 1))

    def forward(self, x: Tensor, subject: Tensor) -> Tensor:
        """``(B, channels, T), (B,) -> (B, channels, T)``."""
        return torch.bmm(self.weight[subject], x)


class ConvBlock(nn.Module):
    """Two residual dilated convolutions (BatchNorm, GELU), then a conv with 2x channels and a GLU.

    The first convolution of the first block changes the channel count, so it has
    no residual skip (as in the paper).
    """

    def __init__(self, in_channels: int, hidden: int, dilations: tuple[int, int], kernel_size: int = 3,
                 glu_kernel: int = 1, glu_dilation: int = 2, dropout: float = 0.0):
        super().__init__()
        self.convs = nn.ModuleList(Conv1d(in_channels if i == 0 else hidden, hidden, kernel_size, dilation=d)
                                   for i, d in enumerate(dilations))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in dilations)
        self.residual = [in_channels == hidden] + [True] * (len(dilations) - 1)
        self.dropout = nn.Dropout(dropout)
        self.glu = Conv1d(hidden, 2 * hidden, glu_kernel, dilation=glu_dilation if glu_kernel > 1 else 1)

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm, residual in zip(self.convs, self.norms, self.residual):
            y = self.dropout(F.gelu(norm(conv(x))))
            x = x + y if residual else y
        return F.glu(self.glu(x), dim=1)


class MLPHead(nn.Module):
    """LayerNorm, GELU, Linear: one of the two heads (CLIP and MSE) of Benchetrit et al."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_features), nn.GELU(), nn.Linear(in_features, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
