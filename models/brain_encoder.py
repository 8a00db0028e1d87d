"""The brain encoder: Défossez et al. 2023's brain module with Benchetrit et al. 2023's heads.

Implemented from the papers (Défossez, Caucheteux, Rapin, Kabeli & King 2023,
"Decoding speech perception from non-invasive brain recordings", Nature MI;
Benchetrit, Banville & King 2023, "Brain decoding: toward real-time reconstruction
of visual perception"), no code from either paper's repository.

One window ``(B, C, T)`` goes through::

    spatial attention  C sensors -> 270 virtual channels (softmax over sensors, by 2-D position)
    1x1 conv           270 -> 270
    subject layer      one 270 x 270 matrix per subject
    5 conv blocks      [conv k3 dil 2^(2k mod 5), conv k3 dil 2^(2k+1 mod 5)] residual, BN, GELU;
                       then conv to 2 x 320 and GLU                         -> (B, 320, T) = trunk
    projection         1x1 conv 320 -> 640, GELU                          (Défossez's first final conv)
    aggregation        learned affine map over time, T -> 1               (Benchetrit)
    projection_out     linear 640 -> F                                    (Défossez's second final conv)
    two heads          LayerNorm, GELU, Linear F -> D: CLIP head and MSE head

Choices made where the papers leave room (from memory of the papers' text):

- **GLU convolution.** The paper's text can be read as "every convolution has kernel
  3", the GLU one included. That reading gives 8.91 M parameters for THINGS-MEG,
  far above the ~6.4 M Benchetrit et al. report, whereas a 1x1 GLU convolution
  gives 6.86 M, so ``glu_kernel=1`` is the default (``glu_kernel=3`` is available;
  a kernel-3 GLU convolution uses dilation 2).
- **F** (``out_channels``), the width before the heads, defaults to ``embed_dim``:
  Défossez's last 1x1 conv outputs the target's dimension, and Benchetrit's heads
  then map F -> D.
- **Dilations** cycle with the block index k = 0..n_blocks-1, so that a model with
  fewer blocks keeps the small dilations (1, 2, then 4, 8, ...).
- **Spatial attention**: harmonics i, j in 0..K-1 of period 1 over positions shrunk
  into [0.1, 0.9] (so opposite borders do not alias); no bias (it cancels in the
  softmax). Spatial dropout removes the sensors within ``spatial_dropout`` of a
  random point, never all of them. The subject layer starts as the identity.
- **Aggregation** is initialised to the mean over time. Défossez's second final
  1x1 conv is linear, so it commutes with the affine aggregation: it is applied
  after it, on one vector instead of T (the same functions, ~10 % fewer
  multiply-adds on a live window).
- **Window length.** With 5 blocks the receptive field is 125 samples (1.04 s at
  120 Hz), longer than a 250 ms live window (30 samples). All convolutions are
  zero-padded ('same'), as in the paper, so every window length gives an output. The
  construction check is that the outermost tap of the most dilated convolution
  reaches a real sample for some output (``n_times >= 16 * (kernel - 1) / 2 + 1``,
  17 samples by default): below that, those weights only ever see padding.
- ``dropout`` (after each GELU of the blocks) defaults to 0: the papers regularise
  with spatial dropout.
- **Demeaning** (``demean``; on in the models ``glimpse train`` builds, off in older
  checkpoints): each sensor's mean over the window is subtracted first. The papers
  baseline-correct epochs on a pre-stimulus interval, which a live window lacks; a
  250 ms window's mean is dominated by the background's slow fluctuations (1/f power
  below its 4 Hz resolution), which carry nothing about the image. On the default
  simulated EEG session it lifted single-trial top-5 from chance to about 30 %.

Parameter count, THINGS-MEG sizes (272 sensors, 181 samples at 120 Hz, 4 subjects,
D = 768), every trainable parameter above, heads included: 6,860,696 = spatial
attention 552,960 + 1x1 conv 73,170 + subject layers 291,600 + blocks 4,060,800 +
projection 205,440 + aggregation 182 + projection_out 492,288 + two heads 1,184,256.
Without the two heads (Défossez's brain module alone) it is 5.68 M.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glimpse.streaming.config_dict import config_from_dict
from glimpse.streaming.errors import InputError

from .blocks import Conv1d, ConvBlock, MLPHead, SpatialAttention, SubjectLayer

logger = logging.getLogger("glimpse.models.brain_encoder")

#: The submodules that :meth:`BrainEncoder.trunk` runs and pretraining trains.
TRUNK_MODULES = ("spatial", "conv_in", "subject_layer", "blocks")


def block_dilations(k: int) -> tuple[int, int]:
    """Dilations of block ``k``'s two residual convolutions: 2^(2k mod 5), 2^(2k+1 mod 5)."""
    return 2 ** ((2 * k) % 5), 2 ** ((2 * k + 1) % 5)


@dataclass
class BrainEncoderConfig:
    """Architecture and sizes of a :class:`BrainEncoder`; round-trips through JSON."""

    n_chans: int
    sfreq: float
    n_times: int
    embed_dim: int
    n_subjects: int
    ch_names: list[str]
    positions: list[list[float]]  # (n_chans, 2) in [0, 1]^2, see sensor_positions_2d
    spatial_channels: int = 270
    fourier_k: int = 32
    hidden: int = 320
    n_blocks: int = 5
    kernel_size: int = 3
    glu_kernel: int = 1
    out_channels: int | None = None  # F, the width before the heads; None = embed_dim
    dropout: float = 0.0
    spatial_dropout: float = 0.2  # radius in the [0, 1]^2 layout; training only
    demean: bool = False  # subtract each sensor's mean over the window first (glimpse train: on)

    def __post_init__(self) -> None:
        self.ch_names = [str(name) for name in self.ch_names]
        self.validate()

    def validate(self) -> None:
        """Fail on any conflict, naming the values (braindecode's habit); normalises types for JSON."""
        if not isinstance(self.demean, (bool, np.bool_)):
            raise InputError("demean true or false", f"demean={self.demean!r}", "use true (glimpse train's)")
        self.demean = bool(self.demean)
        for name in ("n_chans", "n_times", "embed_dim", "n_subjects", "spatial_channels", "fourier_k",
                     "hidden", "n_blocks", "kernel_size", "glu_kernel"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} a positive integer", f"{name}={value!r}", f"set {name} to at least 1")
            setattr(self, name, int(value))
        sfreq = self.sfreq
        if not (isinstance(sfreq, (int, float, np.floating)) and math.isfinite(sfreq) and sfreq > 0):
            raise InputError("sfreq a positive number of Hz", f"sfreq={self.sfreq!r}",
                             "pass the windows' sampling rate")
        self.sfreq = float(self.sfreq)
        try:
            pos = np.asarray(self.positions, dtype=float)
        except (TypeError, ValueError):
            pos = np.empty((0, 0))
        if pos.shape != (self.n_chans, 2):
            raise InputError(f"positions of shape (n_chans={self.n_chans}, 2)",
                             f"shape {pos.shape if pos.size else 'ragged or empty'}",
                             "build them with glimpse.models.brain_encoder.sensor_positions_2d(info, ch_names)")
        self.positions = pos.tolist()
        for name in ("kernel_size", "glu_kernel"):
            value = getattr(self, name)
            if value % 2 == 0:
                raise InputError(f"{name} an odd positive integer", f"{name}={value}",
                                 f"use an odd {name} such as 1 or 3 ('same' padding stays symmetric)")
        if self.out_channels is not None and self.out_channels < 1:
            raise InputError("out_channels a positive integer or null", f"out_channels={self.out_channels}",
                             "leave out_channels null to use embed_dim")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError("dropout in [0, 1)", f"dropout={self.dropout}", "use a probability such as 0.1")
        if not (math.isfinite(self.spatial_dropout) and self.spatial_dropout >= 0):
            raise InputError("spatial_dropout a radius >= 0", f"spatial_dropout={self.spatial_dropout}",
                             "use 0.2 (the paper's) or 0 to disable it")
        if len(self.ch_names) != self.n_chans:
            raise InputError(f"one channel name per channel (n_chans={self.n_chans})",
                             f"{len(self.ch_names)} ch_names", "pass the windows' channel names, in order")
        if not np.isfinite(pos).all() or pos.min() < 0 or pos.max() > 1:
            bad = int(np.flatnonzero(~(np.isfinite(pos).all(1) & (pos >= 0).all(1) & (pos <= 1).all(1)))[0])
            raise InputError("sensor positions finite and inside [0, 1]^2",
                             f"{self.ch_names[bad]!r} at {self.positions[bad]}",
                             "build them with glimpse.models.brain_encoder.sensor_positions_2d(info, ch_names)")
        minimum = min_n_times(self.n_blocks, self.kernel_size)
        if self.n_times < minimum:
            raise InputError(
                f"a window of at least {minimum} samples", f"n_times={self.n_times}",
                f"the window is too short for this model: n_times={self.n_times} < {minimum} samples "
                f"({1000 * minimum / self.sfreq:.0f} ms at {self.sfreq:g} Hz), below which its most dilated "
                f"convolution sees only padding (receptive field "
                f"{receptive_field(self.n_blocks, self.kernel_size, self.glu_kernel)} samples); "
                "use a longer window or fewer blocks")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (it goes into a checkpoint's config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainEncoderConfig:
        """The inverse of :meth:`to_dict`; unknown or missing keys are errors."""
        return config_from_dict(cls, data, fix="remove them, or load with the glimpse version "
                                               "that wrote this config")


def min_n_times(n_blocks: int, kernel_size: int = 3) -> int:
    """Shortest window: the outermost tap of the most dilated conv must reach a real sample."""
    return max(max(block_dilations(k)) for k in range(n_blocks)) * (kernel_size - 1) // 2 + 1


def receptive_field(n_blocks: int, kernel_size: int = 3, glu_kernel: int = 1) -> int:
    """Receptive field in samples of the convolution stack."""
    reach = sum((kernel_size - 1) * d for k in range(n_blocks) for d in block_dilations(k))
    reach += n_blocks * (glu_kernel - 1) * (2 if glu_kernel > 1 else 1)
    return 1 + reach


class BrainEncoder(nn.Module):
    """MEG/EEG window -> (CLIP embedding, MSE embedding); see the module docstring.

    ``forward(x (B, C, T) float32, subject (B,) long, chan_mask (B, C) bool | None)``
    returns a tuple ``(clip (B, D), mse (B, D))``, so ONNX export stays simple.
    Construction is CPU and fp32; the caller moves the model.
    """

    name = "brain_encoder"

    def __init__(self, config: BrainEncoderConfig):
        super().__init__()
        if not isinstance(config, BrainEncoderConfig):
            raise InputError("a BrainEncoderConfig", type(config).__name__,
                             "use BrainEncoder.from_config(dict) for a plain dict")
        self.config = config
        c = config
        out_channels = c.out_channels or c.embed_dim
        self.spatial = SpatialAttention(torch.tensor(c.positions, dtype=torch.float32), c.spatial_channels,
                                        c.fourier_k, c.spatial_dropout)
        self.conv_in = Conv1d(c.spatial_channels, c.spatial_channels, 1)
        self.subject_layer = SubjectLayer(c.n_subjects, c.spatial_channels)
        self.blocks = nn.Sequential(*(
            ConvBlock(c.spatial_channels if k == 0 else c.hidden, c.hidden, block_dilations(k), c.kernel_size,
                      c.glu_kernel, dropout=c.dropout)
            for k in range(c.n_blocks)))
        self.projection = nn.Sequential(Conv1d(c.hidden, 2 * c.hidden, 1), nn.GELU())
        self.aggregation = nn.Linear(c.n_times, 1)
        # Défossez's last 1x1 conv; linear, so it commutes with the affine aggregation
        # over time and runs once on the pooled vector instead of at every sample.
        self.projection_out = nn.Linear(2 * c.hidden, out_channels)
        with torch.no_grad():  # start as the mean over time
            self.aggregation.weight.fill_(1.0 / c.n_times)
            self.aggregation.bias.zero_()
        self.clip_head = MLPHead(out_channels, c.embed_dim)
        self.mse_head = MLPHead(out_channels, c.embed_dim)
        logger.debug("BrainEncoder: %s parameters, receptive field %s samples", self.n_parameters,
                     self.receptive_field)

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_config(cls, config: dict[str, Any] | BrainEncoderConfig) -> BrainEncoder:
        if isinstance(config, dict):
            config = BrainEncoderConfig.from_dict(config)
        return cls(config)

    @property
    def receptive_field(self) -> int:
        """Samples of input that one output sample of the trunk depends on."""
        return receptive_field(self.config.n_blocks, self.config.kernel_size, self.config.glu_kernel)

    @property
    def min_n_times(self) -> int:
        return min_n_times(self.config.n_blocks, self.config.kernel_size)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor, subject: Tensor, chan_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, C, T), (B,), (B, C) | None -> (clip (B, D), mse (B, D))``."""
        self._check_inputs(x, subject, chan_mask, exact_times=True)
        features = self.projection(self._trunk(x, subject, chan_mask))
        pooled = self.projection_out(self.aggregation(features).squeeze(-1))
        return self.clip_head(pooled), self.mse_head(pooled)

    def trunk(self, x: Tensor, subject: Tensor, chan_mask: Tensor | None = None) -> Tensor:
        """``(B, C, T) -> (B, hidden, T)``: the features that pretraining learns.

        Any ``T >= min_n_times`` is accepted (the trunk is fully convolutional), so
        pretraining may use windows longer than the decoding window.
        """
        self._check_inputs(x, subject, chan_mask, exact_times=False)
        return self._trunk(x, subject, chan_mask)

    def _trunk(self, x: Tensor, subject: Tensor, chan_mask: Tensor | None) -> Tensor:
        if self.config.demean:
            x = x - x.mean(dim=-1, keepdim=True)
        h = self.conv_in(self.spatial(x, chan_mask))
        return self.blocks(self.subject_layer(h, subject))

    def _check_inputs(self, x: Tensor, subject: Tensor, chan_mask: Tensor | None, *, exact_times: bool) -> None:
        """Short errors for bad inputs (diffusers' check_inputs); skipped while exporting."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return
        c = self.config
        if not isinstance(x, Tensor) or x.ndim != 3:
            raise InputError("x of shape (batch, n_chans, n_times)",
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}",
                             "stack windows into a (B, C, T) float32 tensor")
        if x.shape[1] != c.n_chans:
            raise InputError(f"x with n_chans={c.n_chans} channels", f"{x.shape[1]} channels",
                             "pick the model's ch_names from the stream, in order (missing ones via chan_mask)")
        if exact_times and x.shape[2] != c.n_times:
            raise InputError(f"x with n_times={c.n_times} samples", f"{x.shape[2]} samples",
                             "cut windows of the length the model was built for")
        if x.shape[2] < self.min_n_times:
            raise InputError(f"at least {self.min_n_times} samples", f"{x.shape[2]} samples",
                             "use longer windows")
        dtype = self.aggregation.weight.dtype
        if x.dtype != dtype:
            raise InputError(f"x of dtype {dtype}", f"{x.dtype}", f"convert with x.to({dtype})")
        if not isinstance(subject, Tensor) or subject.shape != (x.shape[0],) or subject.is_floating_point() \
                or subject.dtype == torch.bool:
            raise InputError(f"subject a (B,)=({x.shape[0]},) integer tensor",
                             f"{subject.dtype} {tuple(subject.shape)}" if isinstance(subject, Tensor)
                             else type(subject).__name__,
                             "pass torch.full((B,), index, dtype=torch.long)")
        if len(subject) and (int(subject.min()) < 0 or int(subject.max()) >= c.n_subjects):
            raise InputError(f"subject indices in [0, {c.n_subjects - 1}] (n_subjects={c.n_subjects})",
                             f"indices {int(subject.min())}..{int(subject.max())}",
                             "map subjects to the indices used in training, or rebuild with more subjects")
        if chan_mask is not None:
            if not isinstance(chan_mask, Tensor) or chan_mask.dtype != torch.bool \
                    or chan_mask.shape != (x.shape[0], c.n_chans):
                raise InputError(f"chan_mask a bool tensor of shape ({x.shape[0]}, {c.n_chans})",
                                 f"{chan_mask.dtype} {tuple(chan_mask.shape)}" if isinstance(chan_mask, Tensor)
                                 else type(chan_mask).__name__,
                                 "pass True for present channels, False for missing")
            if not bool(chan_mask.any(dim=1).all()):
                raise InputError("at least one present channel per window", "a chan_mask row with none",
                                 "drop windows whose channels are all missing")

    # -------------------------------------------------------- trunk weights
    def trunk_state_dict(self) -> dict[str, Tensor]:
        """The trunk's weights: keys ``spatial.*``, ``conv_in.*``, ``subject_layer.*``, ``blocks.*``.

        The spatial attention holds no per-sensor weight (its scores are a function of
        position), so these load into a model with other channels; sensor positions
        are in the config, not here.
        """
        return {f"{name}.{key}": value for name in TRUNK_MODULES
                for key, value in getattr(self, name).state_dict().items()}

    def load_trunk_state_dict(self, state_dict: dict[str, Tensor], *, subjects: bool = True) -> BrainEncoder:
        """Load :meth:`trunk_state_dict` weights (e.g. from pretraining); returns ``self``.

        ``n_chans`` may differ; ``hidden``, ``spatial_channels``, ``fourier_k``,
        ``n_blocks``, ``kernel_size``, ``glu_kernel`` may not. With ``subjects=False``
        the subject layer keeps its own weights (pretrained on other subjects).
        """
        expected = self.trunk_state_dict()
        skip = () if subjects else ("subject_layer.",)
        expected = {k: v for k, v in expected.items() if not k.startswith(skip)}
        given = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
        missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        if missing or unexpected:
            raise InputError("the keys of BrainEncoder.trunk_state_dict()",
                             f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                             f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}",
                             "save with model.trunk_state_dict() from a model with the same n_blocks")
        for key, value in given.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                hint = ("the number of subjects differs; load with subjects=False"
                        if key.startswith("subject_layer.") else
                        "build the model with the pretrained hidden, spatial_channels, fourier_k, kernel_size "
                        "and glu_kernel (n_chans may differ)")
                raise InputError(f"{key} of shape {tuple(expected[key].shape)}", f"{tuple(value.shape)}", hint)
        for name in TRUNK_MODULES:
            prefix = f"{name}."
            part = {k[len(prefix):]: v for k, v in given.items() if k.startswith(prefix)}
            if part:
                getattr(self, name).load_state_dict(part, strict=True)
        return self


def sensor_positions_2d(info, ch_names: list[str]) -> np.ndarray:
    """``(C, 2)`` positions in [0, 1]^2 of ``ch_names``, from MNE's 2-D layout of ``info``.

    Uses :func:`mne.channels.find_layout`: the system's layout file for MEG (CTF,
    Neuromag, ...), MNE's topomap projection of the montage for EEG. Positions are
    scaled per axis over the whole layout, not over ``ch_names``, so that a sensor
    keeps its position in any subset of channels (and a pretrained spatial attention
    transfers across montages of the same system).
    """
    import mne

    missing = [name for name in ch_names if name not in info.ch_names]
    if missing:
        raise InputError("channel names present in the recording's info", f"missing {missing[:5]}",
                         "pick channels that the recording has")
    if not ch_names:
        raise InputError("at least one channel name", "none", "pass the model's ch_names")
    types = set(info.get_channel_types(picks=list(ch_names)))
    if types <= {"mag", "grad"}:
        ch_type = "meg"
    elif types == {"eeg"}:
        ch_type = "eeg"
        unplaced = [n for n in ch_names if not _has_position(info["chs"][info.ch_names.index(n)])]
        if unplaced:
            raise InputError("EEG channels with 3-D positions", f"no position for {unplaced[:5]}",
                             "set a montage first, e.g. raw.set_montage('standard_1020')")
    else:
        raise InputError("channels of one sensor type (MEG or EEG)", f"types {sorted(types)}",
                         "decode MEG and EEG channels with separate models")
    with mne.utils.use_log_level("error"):
        layout = mne.channels.find_layout(info, ch_type=ch_type, exclude=())
    centres = layout.pos[:, :2] + layout.pos[:, 2:4] / 2
    low, span = centres.min(0), np.ptp(centres, axis=0)
    scaled = np.where(span > 0, (centres - low) / np.where(span > 0, span, 1), 0.5)
    index = {name: i for i, name in enumerate(layout.names)}
    index.update({_clean_name(name): i for i, name in enumerate(layout.names) if _clean_name(name) not in index})
    rows = []
    for name in ch_names:
        i = index.get(name, index.get(_clean_name(name)))
        if i is None:
            raise InputError(f"{name!r} in MNE's {layout.kind} layout", "no such sensor in the layout",
                             "check the channel names, or set a montage that covers them")
        rows.append(scaled[i])
    return np.clip(np.asarray(rows, dtype=np.float64), 0.0, 1.0)


def _has_position(ch: dict) -> bool:
    loc = np.asarray(ch["loc"][:3], dtype=float)
    return bool(np.isfinite(loc).all() and np.abs(loc).sum() > 0)


def _clean_name(name: str) -> str:
    """CTF names carry a sensor serial ('MLC11-2908'); layouts have 'MLC11'. Spaces vary too."""
    return name.split("-")[0].replace(" ", "")


def export_onnx(model: nn.Module, path: str | os.PathLike, *, with_mask: bool = False, opset: int = 17) -> str:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis; returns the exporter used.

    Inputs ``x`` (B, C, T) float32 and ``subject`` (B,) int64 (and ``chan_mask``
    (B, C) bool with ``with_mask``); outputs ``clip`` and ``mse``. Uses torch's
    TorchScript exporter (``dynamo=False``): torch 2.14's default torch.export
    exporter needs ``onnxscript``, which glimpse does not install; the legacy
    exporter's deprecation warning is expected and silenced here.
    """
    if importlib.util.find_spec("onnx") is None:
        raise InputError("the onnx package (torch's exporter writes through it)", "it is not installed",
                         "pip install onnx")
    c = model.config
    args: tuple = (torch.zeros(2, c.n_chans, c.n_times), torch.zeros(2, dtype=torch.long))
    names = ["x", "subject"]
    if with_mask:
        args += (torch.ones(2, c.n_chans, dtype=torch.bool),)
        names.append("chan_mask")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            torch.onnx.export(model, args, str(path), dynamo=False, input_names=names,
                              output_names=["clip", "mse"], opset_version=opset,
                              dynamic_axes={n: {0: "batch"} for n in names + ["clip", "mse"]})
    finally:
        model.train(was_training)
    logger.info("exported %s to %s (TorchScript exporter, opset %s)", type(model).__name__, path, opset)
    return "torchscript"
