"""Baselines beside the brain encoder, and the model registry.

- :class:`RidgeBaseline`: ridge regression from a flattened window (C x T features)
  to an image embedding, alpha chosen by efficient leave-one-out (GCV), the linear
  decoder that Benchetrit et al. 2023 compare against. Exports plain arrays (for
  safetensors; never pickle).
- :class:`BraindecodeEncoder`: a braindecode model (ShallowFBCSPNet or EEGNet) with
  the brain encoder's signature, so one training loop and one worker serve all models.
- :data:`MODELS` and :func:`build_model`: name -> class, used by checkpoints
  (``config.json`` stores the name and ``get_config()``).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glimpse.streaming.config_dict import config_from_dict
from glimpse.streaming.errors import InputError

from .brain_encoder import BrainEncoder

logger = logging.getLogger("glimpse.models.baselines")

#: Registry names of the braindecode architectures -> their braindecode class names.
BRAINDECODE_ARCHS: dict[str, str] = {"shallow_fbcsp": "ShallowFBCSPNet", "eegnet": "EEGNet"}


def _braindecode_class(arch: str) -> type[nn.Module]:
    """Imported on first use: braindecode pulls in skorch and takes seconds to import."""
    with warnings.catch_warnings():
        # Importing braindecode.models runs third-party module-level code that warns:
        # braindecode's EEGPT builds MNE's deprecated 'standard_1020' montage, and wfdb
        # uses a pandas keyword that pandas deprecates. Both are harmless here.
        warnings.filterwarnings("ignore", message=r"Montage name 'standard_1020' is deprecated",
                                category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"The inplace keyword", module=r"wfdb")
        import braindecode.models
    return getattr(braindecode.models, BRAINDECODE_ARCHS[arch])


# --------------------------------------------------------------------- ridge
class RidgeBaseline:
    """Ridge regression ``(N, C, T) -> (N, D)`` on standardised, flattened windows.

    One alpha for all targets: fixed (``alpha``), or picked from ``alphas`` by
    scikit-learn's ``RidgeCV`` (efficient leave-one-out, no refit per fold).
    Features are z-scored with the training mean and standard deviation, so alpha
    means the same for MEG and EEG. ``subject`` arguments exist for the shared
    training/serving signature and are ignored (one map for all subjects).

    Checkpoints: ``get_config()`` (sizes and alpha choice, JSON) plus ``arrays()``
    (named numpy arrays for safetensors, never pickle); ``from_config(cfg)`` then
    ``load_arrays(arrays)`` restores it (``from_arrays`` does both from the arrays).
    """

    name = "ridge"

    def __init__(self, n_chans: int | None = None, n_times: int | None = None, embed_dim: int | None = None,
                 alphas: np.ndarray | list[float] | None = None, alpha: float | None = None):
        self.n_chans, self.n_times, self.embed_dim = n_chans, n_times, embed_dim
        self.alphas = np.logspace(-3, 7, 21) if alphas is None else np.asarray(alphas, dtype=float).ravel()
        self.fixed_alpha = None if alpha is None else float(alpha)
        if self.fixed_alpha is not None and not self.fixed_alpha > 0:
            raise InputError("alpha > 0 (or None to choose it by cross-validation)", f"alpha={alpha}",
                             "pass a positive alpha such as 10.0")
        self.coef: np.ndarray | None = None  # (D, C*T), on standardised features
        self.intercept: np.ndarray | None = None  # (D,)
        self.alpha: float | None = None  # the alpha in use once fitted
        self.mean: np.ndarray | None = None  # (C*T,)
        self.scale: np.ndarray | None = None  # (C*T,)

    @property
    def window_shape(self) -> tuple[int, int] | None:
        return None if self.n_chans is None or self.n_times is None else (self.n_chans, self.n_times)

    # ------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        return {"n_chans": self.n_chans, "n_times": self.n_times, "embed_dim": self.embed_dim,
                "alphas": [float(a) for a in self.alphas], "alpha": self.fixed_alpha}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RidgeBaseline:
        known = {"n_chans", "n_times", "embed_dim", "alphas", "alpha"}
        if not set(config) <= known:
            raise InputError(f"ridge config keys among {sorted(known)}", f"unknown {sorted(set(config) - known)}",
                             "save with RidgeBaseline.get_config()")
        return cls(**config)

    # ---------------------------------------------------------------- fit
    def fit(self, X: np.ndarray, Y: np.ndarray, subject: np.ndarray | None = None) -> RidgeBaseline:
        """Fit on windows ``X`` (N, C, T) and embeddings ``Y`` (N, D); returns ``self``."""
        from sklearn.linear_model import Ridge, RidgeCV

        X, Y = np.asarray(X), np.asarray(Y)
        if X.ndim != 3 or Y.ndim != 2 or len(X) != len(Y):
            raise InputError("X of shape (N, C, T) and Y of shape (N, D) with the same N",
                             f"X {X.shape}, Y {Y.shape}", "pass one embedding per window")
        declared_sizes = (("n_chans", self.n_chans, X.shape[1]), ("n_times", self.n_times, X.shape[2]),
                          ("embed_dim", self.embed_dim, Y.shape[1]))
        for name, declared, got in declared_sizes:
            if declared is not None and declared != got:
                raise InputError(f"{name}={declared} as declared", f"{got}",
                                 f"build the baseline with {name}={got}")
        if len(X) < 3:
            raise InputError("at least 3 windows to fit", f"{len(X)}", "fit on more windows")
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise InputError("finite windows and embeddings", "NaN or inf values",
                             "drop windows marked invalid before fitting")
        flat = X.reshape(len(X), -1).astype(np.float64)
        self.mean = flat.mean(0)
        std = flat.std(0)
        self.scale = np.where(std > 0, std, 1.0)
        z = (flat - self.mean) / self.scale
        if self.fixed_alpha is None:
            model = RidgeCV(alphas=self.alphas).fit(z, Y.astype(np.float64))
            alpha = float(model.alpha_)
            if alpha in (self.alphas.min(), self.alphas.max()):
                logger.warning("ridge alpha %s is at the edge of the grid [%s, %s]; widen alphas",
                               alpha, self.alphas.min(), self.alphas.max())
        else:
            model, alpha = Ridge(alpha=self.fixed_alpha).fit(z, Y.astype(np.float64)), self.fixed_alpha
        self.coef, self.intercept = np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
        self.alpha = alpha
        self.n_chans, self.n_times, self.embed_dim = X.shape[1], X.shape[2], Y.shape[1]
        logger.info("ridge fitted on %s windows of %s: alpha=%s", len(X), self.window_shape, self.alpha)
        return self

    def predict(self, X: np.ndarray, subject: np.ndarray | None = None) -> np.ndarray:
        """``(N, C, T) -> (N, D)`` float32."""
        if self.coef is None:
            raise InputError("a fitted RidgeBaseline", "an unfitted one",
                             "fit first with `baseline.fit(X, Y)` or load with RidgeBaseline.from_arrays")
        X = np.asarray(X)
        if X.ndim != 3 or X.shape[1:] != self.window_shape:
            raise InputError(f"windows of shape (N, {self.n_chans}, {self.n_times})",
                             f"{X.shape}", "cut windows as in training")
        flat = (X.reshape(len(X), -1) - self.mean) / self.scale
        return (flat @ self.coef.T + self.intercept).astype(np.float32)

    # ------------------------------------------------------------- arrays
    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as named arrays (``safetensors.numpy.save_file`` ready).

        Unfitted but sized (from a config), it returns zero arrays of the right
        shapes: the template a checkpoint loader checks the file against.
        """
        fitted = self.coef is not None
        if not fitted and None in (self.n_chans, self.n_times, self.embed_dim):
            raise InputError("a fitted RidgeBaseline", "an unfitted one", "fit first with `baseline.fit(X, Y)`")
        n_features = self.n_chans * self.n_times
        arrays = {
            "coef": self.coef if fitted else np.zeros((self.embed_dim, n_features)),
            "intercept": self.intercept if fitted else np.zeros(self.embed_dim),
            "alpha": np.asarray([self.alpha if fitted else 0.0]),
            "mean": self.mean if fitted else np.zeros(n_features),
            "scale": self.scale if fitted else np.ones(n_features),
        }
        # float32 on disk; C order, since sklearn's coef_ can be Fortran-ordered and
        # safetensors writes raw bytes.
        out = {k: np.ascontiguousarray(v, dtype=np.float64 if k == "alpha" else np.float32)
               for k, v in arrays.items()}
        out["window_shape"] = np.asarray([self.n_chans, self.n_times], dtype=np.int64)
        return out

    to_arrays = arrays

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> RidgeBaseline:
        """Load :meth:`arrays` into this (sized or unsized) baseline; returns ``self``."""
        needed = {"coef", "intercept", "alpha", "mean", "scale"}
        if not needed <= set(arrays):
            raise InputError(f"arrays {sorted(needed)}", f"missing {sorted(needed - set(arrays))}",
                             "save with RidgeBaseline.arrays()")
        coef = np.asarray(arrays["coef"], dtype=np.float64)
        n_features = self.n_chans * self.n_times if self.window_shape else None
        if coef.ndim != 2 or (n_features is not None and coef.shape[1] != n_features) \
                or (self.embed_dim is not None and coef.shape[0] != self.embed_dim) \
                or np.shape(arrays["mean"]) != (coef.shape[1],) or np.shape(arrays["scale"]) != (coef.shape[1],) \
                or np.shape(arrays["intercept"]) != (coef.shape[0],):
            raise InputError(f"coef (D={self.embed_dim}, C*T={n_features}), intercept (D,), mean and scale (C*T,)",
                             f"coef {coef.shape}", "load the arrays saved with this baseline's config")
        self.coef = coef
        self.intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        self.mean = np.asarray(arrays["mean"], dtype=np.float64)
        self.scale = np.asarray(arrays["scale"], dtype=np.float64)
        self.alpha = float(np.asarray(arrays["alpha"]).ravel()[0])
        self.embed_dim = coef.shape[0]
        return self

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], window_shape: tuple[int, int] | None = None
                    ) -> RidgeBaseline:
        """A fitted baseline from :meth:`arrays` and the window shape ``(C, T)``.

        ``window_shape`` may be left out when ``arrays`` has a ``window_shape`` entry.
        """
        shape = window_shape if window_shape is not None else arrays.get("window_shape")
        if shape is None or len(np.ravel(shape)) != 2:
            raise InputError("the window shape (n_chans, n_times)", "none", "pass window_shape=(C, T)")
        n_chans, n_times = (int(v) for v in np.ravel(shape))
        return cls(n_chans=n_chans, n_times=n_times).load_arrays(arrays)


# --------------------------------------------------------------- braindecode
@dataclass
class BraindecodeEncoderConfig:
    """A braindecode model's sizes; round-trips through JSON."""

    arch: str  # a key of BRAINDECODE_ARCHS
    n_chans: int
    n_times: int
    sfreq: float
    embed_dim: int
    n_subjects: int = 1  # only to check subject indices like the BrainEncoder
    ch_names: list[str] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the braindecode class

    def __post_init__(self) -> None:
        if self.arch not in BRAINDECODE_ARCHS:
            raise InputError(f"arch one of {sorted(BRAINDECODE_ARCHS)}", f"{self.arch!r}", "pick a listed arch")
        for name in ("n_chans", "n_times", "embed_dim", "n_subjects"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} a positive integer", f"{name}={value!r}", f"set {name} to at least 1")
        if not self.sfreq > 0:
            raise InputError("sfreq a positive number of Hz", f"sfreq={self.sfreq!r}", "pass the windows' rate")
        if self.arch == "shallow_fbcsp":
            self.model_kwargs = {**_shallow_time_constants(self.sfreq, self.n_times), **self.model_kwargs}
        if self.ch_names is not None:
            self.ch_names = [str(n) for n in self.ch_names]
            if len(self.ch_names) != self.n_chans:
                raise InputError(f"one channel name per channel (n_chans={self.n_chans})",
                                 f"{len(self.ch_names)} ch_names", "pass the windows' channel names, in order")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BraindecodeEncoderConfig:
        return config_from_dict(cls, data, fix="remove them, or load with the glimpse version "
                                               "that wrote this config")


def _shallow_time_constants(sfreq: float, n_times: int) -> dict[str, int]:
    """ShallowFBCSPNet's published time constants, rescaled to ``sfreq`` and fitted to the window.

    Its defaults are counted in samples at 250 Hz (25-sample filters = 100 ms,
    75-sample pools = 300 ms, stride 15 = 60 ms) and need >= 99 samples, longer than
    the 250 ms live window; here the same durations at ``sfreq``, with the pool
    capped so that at least two pooling steps fit.
    """
    filt = max(2, round(0.100 * sfreq))
    stride = max(1, round(0.060 * sfreq))
    room = n_times - filt + 1 - stride
    pool = max(1, min(round(0.300 * sfreq), room))
    return {"filter_time_length": filt, "pool_time_length": pool, "pool_time_stride": stride}


def _build_braindecode(config: BraindecodeEncoderConfig, n_times: int, n_outputs: int) -> nn.Module:
    with warnings.catch_warnings():
        # EEGNet warns that its default final layer is "deprecated" while offering
        # no replacement argument; the default (a conv classifier) is what we want.
        warnings.filterwarnings("ignore", message=r"Parameter 'final_layer_with_constraint=False'",
                                category=DeprecationWarning)
        return _braindecode_class(config.arch)(n_chans=config.n_chans, n_outputs=n_outputs, n_times=n_times,
                                              sfreq=config.sfreq, **config.model_kwargs)


def _builds(config: BraindecodeEncoderConfig, n_times: int) -> bool:
    try:
        _build_braindecode(config, n_times, 2)
    except (ValueError, RuntimeError, AssertionError):
        return False
    return True


class BraindecodeEncoder(nn.Module):
    """A braindecode model with the BrainEncoder's signature.

    ``forward(x (B, C, T), subject (B,), chan_mask (B, C) | None) -> (clip, mse)``.
    The braindecode network outputs ``2 * embed_dim`` values, split into the CLIP
    half and the MSE half. These models have no subject layer, so ``subject`` is
    only checked, and no way to drop a sensor, so masked channels are zeroed (the
    robust-scaled signal's median) instead.
    """

    def __init__(self, config: BraindecodeEncoderConfig):
        super().__init__()
        if not isinstance(config, BraindecodeEncoderConfig):
            raise InputError("a BraindecodeEncoderConfig", type(config).__name__,
                             "use BraindecodeEncoder.from_config(dict) for a plain dict")
        self.config = config
        try:
            self.net = _build_braindecode(config, config.n_times, 2 * config.embed_dim)
        except (ValueError, RuntimeError, AssertionError) as error:
            if not _builds(config, 4096):
                raise InputError(f"{config.arch} arguments that braindecode accepts", str(error).splitlines()[0],
                                 "check model_kwargs") from error
            low, high = config.n_times, 4096  # fails at low, builds at high
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (low, mid) if _builds(config, mid) else (mid, high)
            raise InputError(
                f"a window of at least {high} samples for {config.arch}", f"n_times={config.n_times}",
                f"the window is too short for this model: n_times={config.n_times} < {high} samples "
                f"({1000 * high / config.sfreq:.0f} ms at {config.sfreq:g} Hz); use a longer window or "
                "shorter kernels/pools in model_kwargs") from None

    @property
    def name(self) -> str:
        return self.config.arch

    def get_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_config(cls, config: dict[str, Any] | BraindecodeEncoderConfig) -> BraindecodeEncoder:
        if isinstance(config, dict):
            config = BraindecodeEncoderConfig.from_dict(config)
        return cls(config)

    def forward(self, x: Tensor, subject: Tensor, chan_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            c = self.config
            if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[1:] != (c.n_chans, c.n_times):
                raise InputError(f"x of shape (batch, {c.n_chans}, {c.n_times})",
                                 f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}",
                                 "cut windows with the model's channels and length")
            if not isinstance(subject, Tensor) or subject.shape != (x.shape[0],) \
                    or (len(subject) and (int(subject.min()) < 0 or int(subject.max()) >= c.n_subjects)):
                raise InputError(f"subject a ({x.shape[0]},) tensor of indices in [0, {c.n_subjects - 1}]",
                                 f"{subject!r}"[:80], "pass torch.zeros(B, dtype=torch.long) for one subject")
            if chan_mask is not None and (chan_mask.dtype != torch.bool or chan_mask.shape != x.shape[:2]):
                raise InputError(f"chan_mask a bool tensor of shape {tuple(x.shape[:2])}",
                                 f"{chan_mask.dtype} {tuple(chan_mask.shape)}", "pass True for present channels")
        if chan_mask is not None:
            x = x * chan_mask.unsqueeze(-1).to(x.dtype)
        out = self.net(x)
        return out[:, :self.config.embed_dim], out[:, self.config.embed_dim:]


# ------------------------------------------------------------------ registry
#: Registry name -> model class. Every encoder class must be here (a test checks).
MODELS: dict[str, type[nn.Module]] = {
    "brain_encoder": BrainEncoder,
    "shallow_fbcsp": BraindecodeEncoder,
    "eegnet": BraindecodeEncoder,
}


def build_model(name: str, config: dict[str, Any]) -> nn.Module:
    """A model from its registry name and ``get_config()`` dict (weights loaded apart)."""
    if name not in MODELS:
        raise InputError(f"a model name among {sorted(MODELS)}", f"{name!r}", "pick a registered model")
    cls = MODELS[name]
    if cls is BraindecodeEncoder:
        if config.get("arch", name) != name:
            raise InputError(f"config arch {name!r} (the model name)", f"arch {config['arch']!r}",
                             "make the name and the config's arch agree")
        config = {**config, "arch": name}
    return cls.from_config(config)
