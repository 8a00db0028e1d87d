"""Checkpoint directories: ``config.json`` + ``model.safetensors``; loading never unpickles.

The contract (ARCHITECTURE.md, "Checkpoint directory")::

    config.json
      format, version            "glimpse-checkpoint", 1
      model                      {"name": "brain_encoder" | "shallow_fbcsp" | "eegnet" | "ridge",
                                  "config": the model's own config dict}
      channels                   {"names": [...], "positions": [[x, y], ...] in [0, 1]^2}
      sfreq                      model input rate, Hz (the preprocessing's output rate)
      window                     {"n_times": 30, "seconds": 0.25}
      preprocess                 PreprocessConfig.to_dict(), with the fitted scaler
      subjects                   training subject ids; subject index i = subjects[i]
      embedder                   {"name", "dim", "mean_norm"} of the target image embeddings
      retrieval_head             "clip" or "mse": the output to search the gallery with
      confidence                 {"features": "window_stats_v1", "weight": [3 C floats],
                                  "bias", "calibrated", "ece", "auc", ...}: the calibrated
                                  probability that a window holds a fresh image,
                                  p = 1 / (1 + exp(-(dot(window_stats(x), weight) + bias)))
                                  (:func:`window_stats`: per-channel statistics of the window)
      data_fingerprint           sha256 of the training recordings' identity + preprocessing
      data, training, metrics    where the data came from, TrainConfig, validation figures
      lineage, calibration       (adapted checkpoints) the base checkpoint and calibration data,
                                 held-out top-5 before and after the adaptation
      glimpse_version, created
    model.safetensors            the model's tensors (ridge: its arrays)

:func:`load_checkpoint` rebuilds the model from ``model.config`` and loads the
tensors strictly; :class:`Checkpoint` then encodes windows
(:meth:`Checkpoint.encode`) and :func:`check_compatible` tells whether a recording
or stream can feed it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from glimpse.streaming.channels import find_channels, listing
from glimpse.streaming.errors import InputError
from glimpse.streaming.preprocess import PreprocessConfig
from glimpse.streaming.version import glimpse_version

logger = logging.getLogger("glimpse.models.checkpoint")

__all__ = ["CONFIG_FILE", "FORMAT", "VERSION", "WEIGHTS_FILE", "WINDOW_STATS", "Checkpoint",
           "channel_index", "check_compatible", "json_ready", "load_checkpoint", "read_safetensors", "save_checkpoint",
           "window_stats"]

FORMAT = "glimpse-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Keys ``save_checkpoint``'s ``meta`` must hold (the rest of config.json is optional).
REQUIRED_META = ("ch_names", "positions", "sfreq", "window", "preprocess", "subjects",
                 "embedder", "data_fingerprint")
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip container; a bare pickle
#: Name of the confidence's input features (:func:`window_stats`), stored in config.json.
WINDOW_STATS = "window_stats_v1"


def window_stats(windows: np.ndarray) -> np.ndarray:
    """``(B, C, T) -> (B, 3 C)`` float64: the confidence's features of each window.

    Per channel: the log variance over time (an evoked response adds power), the mean
    (its slow deflection) and the mean of the last third minus that of the first (its
    rise or fall). Cheap (a few operations per sample) and the same for every model.
    """
    x = np.asarray(windows, np.float64)
    if x.ndim == 2:
        x = x[None]
    n = x.shape[-1]
    third = max(1, n // 3)
    mean = x.mean(axis=-1)
    # E[x^2] - mean^2: one pass instead of var's four (4x faster on a batch of 16 windows
    # of 272 x 30); the inputs are scaled and clamped (|x| <= 20), so nothing cancels badly.
    var = np.einsum("...t,...t->...", x, x) / n - mean * mean
    np.maximum(var, 0.0, out=var)
    return np.concatenate([np.log(var + 1e-6), mean,
                           x[..., -third:].mean(-1) - x[..., :third].mean(-1)], axis=-1)


# --------------------------------------------------------------------------- the loaded object


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on ``device``) and its contract.

    ``config`` is config.json as a dict; the other fields are its typed views.
    """

    path: Path
    model: Any = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    preprocess: PreprocessConfig = field(repr=False)
    model_name: str
    embedder_name: str
    embed_dim: int
    ch_names: tuple[str, ...] = field(repr=False)
    positions: np.ndarray = field(repr=False)
    sfreq: float
    n_times: int
    window_s: float
    subjects: tuple[str, ...]
    retrieval_head: str
    confidence: dict[str, Any] | None = field(repr=False)
    device: str = "cpu"

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.config.get("metrics") or {}

    @property
    def fingerprint(self) -> str:
        return self.config["data_fingerprint"]

    def subject_index(self, subject: int | str | None) -> int:
        """Index of a training subject (id such as "01", or an index); None -> 0."""
        if subject is None:
            return 0
        if isinstance(subject, (int, np.integer)) and not isinstance(subject, bool):
            if 0 <= subject < len(self.subjects):
                return int(subject)
        elif str(subject).removeprefix("sub-") in self.subjects:
            return self.subjects.index(str(subject).removeprefix("sub-"))
        raise InputError(f"a training subject of this checkpoint ({list(self.subjects)} or an "
                         f"index below {len(self.subjects)})", repr(subject),
                         "pick one of those (an unseen subject can use any: subject layers "
                         "start from the identity)")

    def forward(self, windows: np.ndarray | torch.Tensor, subject: int | str | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Both outputs ``(clip (B, D), mse (B, D))`` for ``(B, C, T)`` or ``(C, T)`` windows."""
        x = torch.as_tensor(np.asarray(windows, np.float32) if not isinstance(windows, torch.Tensor)
                            else windows, dtype=torch.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_chans, self.n_times):
            raise InputError(f"windows of shape (B, {self.n_chans}, {self.n_times}) or "
                             f"({self.n_chans}, {self.n_times})", f"{tuple(x.shape)}",
                             "preprocess with checkpoint.preprocess and cut windows of "
                             f"{self.n_times} samples in the checkpoint's channel order")
        s = self.subject_index(subject)
        if not isinstance(self.model, nn.Module):  # ridge: one prediction serves both heads
            pred = np.asarray(self.model.predict(x.numpy()), np.float32)
            return pred, pred
        with torch.no_grad():
            clip, mse = self.model(x.to(self.device), torch.full((len(x),), s, dtype=torch.long,
                                                                 device=self.device))
        return clip.cpu().numpy(), mse.cpu().numpy()

    def encode(self, windows: np.ndarray | torch.Tensor, subject: int | str | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(embedding (B, D), confidence (B,) or None)``: what the live worker needs.

        The embedding is the ``retrieval_head`` output (search the gallery by cosine);
        the confidence is the calibrated probability that each window holds a fresh,
        decodable image (None when the checkpoint has no calibration).
        """
        clip, mse = self.forward(windows, subject)
        emb = clip if self.retrieval_head == "clip" else mse
        x = windows.cpu().numpy() if isinstance(windows, torch.Tensor) else windows
        return emb, self.confidence_of(x)

    def confidence_of(self, windows: np.ndarray) -> np.ndarray | None:
        """config.json's confidence of ``(B, C, T)`` or ``(C, T)`` windows: ``(B,)`` in [0, 1]."""
        c = self.confidence
        if c is None:
            return None
        logit = window_stats(windows) @ np.asarray(c["weight"], np.float64) + c["bias"]
        return expit(logit).astype(np.float32)


# --------------------------------------------------------------------------- save


def save_checkpoint(directory: str | os.PathLike, model: Any, meta: Mapping[str, Any]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; returns it.

    ``model``: an ``nn.Module`` with ``name`` and ``get_config()`` (BrainEncoder,
    the braindecode peers) or a fitted ``RidgeBaseline`` (its ``to_arrays()``).
    ``meta``: the keys of :data:`REQUIRED_META` and optionally ``retrieval_head``,
    ``confidence``, ``training``, ``metrics``, ``data``. Files are written under
    temporary names and renamed, so a crash never leaves a half checkpoint.
    """
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InputError(f"checkpoint metadata with {list(REQUIRED_META)}",
                         f"missing {missing}", "pass them to save_checkpoint")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError("a folder for the checkpoint", f"{directory}, a file",
                         "choose another --out")
    directory.mkdir(parents=True, exist_ok=True)
    name, model_config, tensors = _model_parts(model)
    config = {
        "format": FORMAT, "version": VERSION,
        "glimpse_version": glimpse_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": name, "config": model_config},
        "channels": {"names": list(meta["ch_names"]),
                     "positions": np.asarray(meta["positions"], float).tolist()},
        "sfreq": float(meta["sfreq"]),
        "window": dict(meta["window"]),
        "preprocess": dict(meta["preprocess"]),
        "subjects": list(meta["subjects"]),
        "embedder": dict(meta["embedder"]),
        "retrieval_head": meta.get("retrieval_head", "clip"),
        "confidence": meta.get("confidence"),
        "data_fingerprint": meta["data_fingerprint"],
        "data": meta.get("data", {}),
        "training": meta.get("training", {}),
        "metrics": meta.get("metrics", {}),
        # Where an adapted checkpoint came from (models.new_subject): kept when given.
        **{k: meta[k] for k in ("lineage", "calibration") if meta.get(k) is not None},
    }
    text = json.dumps(json_ready(config), indent=2, allow_nan=False) + "\n"
    tmp_weights, tmp_config = directory / f".{WEIGHTS_FILE}.tmp", directory / f".{CONFIG_FILE}.tmp"
    save_file(tensors, str(tmp_weights), metadata={"format": "pt", "model": name})
    tmp_config.write_text(text, encoding="utf-8")
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_config, directory / CONFIG_FILE)
    logger.info("saved %s checkpoint (%d tensors) to %s", name, len(tensors), directory)
    return directory


def _model_parts(model: Any) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(name, config dict, contiguous CPU tensors) of a model."""
    from .baselines import RidgeBaseline

    if isinstance(model, RidgeBaseline):
        arrays = model.to_arrays()
        n_chans, n_times = (int(v) for v in arrays["window_shape"])
        config = {"n_chans": n_chans, "n_times": n_times, "embed_dim": int(arrays["coef"].shape[0]),
                  "alpha": float(arrays["alpha"][0])}
        return "ridge", config, {k: torch.from_numpy(np.ascontiguousarray(v)).clone()
                                 for k, v in arrays.items()}
    name = getattr(model, "name", None)
    if not isinstance(model, nn.Module) or not name or not hasattr(model, "get_config"):
        raise InputError("a glimpse model (an nn.Module with .name and .get_config(), or a "
                         "RidgeBaseline)", type(model).__name__,
                         "save a model built by glimpse.models.baselines.build_model")
    # Copies: safetensors refuses tensors that share memory (views, tied weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return name, model.get_config(), tensors


def json_ready(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


# --------------------------------------------------------------------------- load


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refusing pickles and truncated files clearly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_PICKLE_MAGIC):
        raise InputError(f"{path.name} in safetensors format",
                         f"{path}, a pickle (torch.save output), which glimpse never loads "
                         "(unpickling runs code)",
                         "convert it where you trust it: safetensors.torch.save_file("
                         "torch.load(f), 'model.safetensors'), or retrain with glimpse train")
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
    if n is None or len(head) < 9 or head[8:9] != b"{":
        raise InputError(f"{path.name} in safetensors format",
                         f"{path} ({size} bytes), which is not one",
                         "point at a checkpoint written by glimpse train")
    if 8 + n > size:
        raise InputError(f"a complete {path.name}", f"{path} truncated ({size} bytes; its header "
                         f"alone needs {8 + n})", "copy the checkpoint again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"a complete, valid {path.name}",
                         f"{path} ({size} bytes), which fails to load ({err})",
                         "the file is truncated or corrupt: copy the checkpoint again") from None


def load_checkpoint(directory: str | os.PathLike, *, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint directory (json + safetensors only); the model is in eval mode."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise InputError("a checkpoint folder (config.json + model.safetensors)",
                         f"{directory}, which {what}", "pass the --out folder of glimpse train")
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / n).is_file()]
    if missing:
        raise InputError("a checkpoint folder with config.json and model.safetensors",
                         f"{directory} without {' and '.join(missing)}",
                         "pass the --out folder of a finished glimpse train (an interrupted "
                         "one writes nothing)")
    config = _read_config(directory / CONFIG_FILE)
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    name, model_config = config["model"]["name"], config["model"]["config"]
    model = _build(name, model_config, tensors, directory)
    if isinstance(model, nn.Module):
        model.to(device).eval()
    preprocess = PreprocessConfig.from_dict(config["preprocess"])
    window = config["window"]
    ckpt = Checkpoint(
        path=directory, model=model, config=config, preprocess=preprocess, model_name=name,
        embedder_name=config["embedder"]["name"], embed_dim=int(config["embedder"]["dim"]),
        ch_names=tuple(config["channels"]["names"]),
        positions=np.asarray(config["channels"]["positions"], np.float32),
        sfreq=float(config["sfreq"]), n_times=int(window["n_times"]),
        window_s=float(window["seconds"]), subjects=tuple(config["subjects"]),
        retrieval_head=config.get("retrieval_head", "clip"), confidence=config.get("confidence"),
        device=device)
    conf = ckpt.confidence
    if conf is not None and (conf.get("features") != WINDOW_STATS
                             or len(conf.get("weight") or ()) != 3 * ckpt.n_chans
                             or not isinstance(conf.get("bias"), (int, float))):
        raise InputError(f"a confidence of features {WINDOW_STATS!r} with {3 * ckpt.n_chans} "
                         "weights and a bias in config.json",
                         f"features {conf.get('features')!r}, "
                         f"{len(conf.get('weight') or ())} weights",
                         "re-save the checkpoint with this glimpse version's train")
    if preprocess.ch_names is not None and tuple(preprocess.ch_names) != ckpt.ch_names:
        raise InputError("channels.names equal to preprocess.ch_names in config.json",
                         "two different lists", "re-save the checkpoint with glimpse train")
    logger.info("loaded %s checkpoint from %s (%d channels, %d samples at %g Hz, embedder %s)",
                name, directory, ckpt.n_chans, ckpt.n_times, ckpt.sfreq, ckpt.embedder_name)
    return ckpt


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError("a JSON config.json", f"{path}: {err}",
                         "restore it from the checkpoint's source") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise InputError(f"config.json of format {FORMAT!r}", f"format {got!r} in {path}",
                         "pass a checkpoint written by glimpse train")
    version = config.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise InputError(f"checkpoint format version {VERSION}",
                         f"version {version!r} in {path}",
                         "upgrade glimpse to read it" if newer else
                         "re-export the checkpoint with this glimpse version")
    needed = ("model", "channels", "sfreq", "window", "preprocess", "subjects", "embedder",
              "data_fingerprint")
    absent = [k for k in needed if k not in config]
    model = config.get("model")
    if not absent and not (isinstance(model, dict) and "name" in model and "config" in model):
        absent = ["model.name/model.config"]
    if absent:
        raise InputError(f"config.json with {list(needed)}", f"missing {absent} in {path}",
                         "pass a complete checkpoint written by glimpse train")
    return config


def _build(name: str, model_config: dict[str, Any], tensors: dict[str, torch.Tensor],
           directory: Path) -> Any:
    from . import baselines

    if name == "ridge":
        try:
            c, t, d = (int(model_config[k]) for k in ("n_chans", "n_times", "embed_dim"))
        except (KeyError, TypeError, ValueError):
            raise InputError("a ridge config with n_chans, n_times and embed_dim",
                             f"{model_config}",
                             "re-save the checkpoint with glimpse train") from None
        expected = {"coef": (d, c * t), "intercept": (d,), "mean": (c * t,), "scale": (c * t,),
                    "window_shape": (2,), "alpha": (1,)}
        # "alphas" (the searched grid) has any length.
        _check_tensors(expected, {k: v for k, v in tensors.items() if k != "alphas"}, directory)
        return baselines.RidgeBaseline.from_arrays({k: v.numpy() for k, v in tensors.items()})
    model = baselines.build_model(name, model_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_tensors(expected, tensors, directory)
    model.load_state_dict(tensors, strict=True)
    return model


def _check_tensors(expected: dict[str, tuple], tensors: dict[str, torch.Tensor],
                   directory: Path) -> None:
    """The weights must be exactly the config's model's: name the first difference."""
    where = f"{directory / WEIGHTS_FILE}"
    for key, shape in expected.items():
        if key not in tensors:
            raise InputError(f"tensor {key} of shape {shape} (as config.json's model needs)",
                             f"no such tensor in {where}",
                             "config.json and model.safetensors come from different models: "
                             "copy both from one checkpoint")
        if tuple(tensors[key].shape) != tuple(shape):
            raise InputError(f"tensor {key} of shape {tuple(shape)} (as config.json's model needs)",
                             f"shape {tuple(tensors[key].shape)} in {where}",
                             "config.json and model.safetensors come from different models: "
                             "copy both from one checkpoint")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise InputError("only the tensors of config.json's model",
                         f"{len(extra)} more in {where}, first {extra[0]}",
                         "config.json and model.safetensors come from different models: "
                         "copy both from one checkpoint")


# --------------------------------------------------------------------------- compatibility


def channel_index(checkpoint: Checkpoint, ch_names: Sequence[str], *,
                  fix: str = "stream or record the same montage, or retrain on the channels "
                             "you have") -> list[int]:
    """Indices into ``ch_names`` of the checkpoint's channels, in its order; names the missing."""
    need = checkpoint.ch_names
    where, missing = find_channels(need, ch_names)
    if missing:
        raise InputError(f"the {len(need)} channels the checkpoint was trained on",
                         f"data has {len(need) - len(missing)} of the {len(need)} channels the "
                         f"checkpoint needs; missing: {listing(missing)}", fix)
    return [where[n] for n in need]


def check_compatible(checkpoint: Checkpoint, ch_names: Sequence[str], sfreq: float) -> list[int]:
    """:func:`channel_index` for RAW data at ``sfreq``, whose rate the preprocessing must accept.

    ``sfreq`` is the recording's or stream's own rate: the checkpoint's preprocessing
    resamples it, so any rate high enough for its filters will do.
    """
    index = channel_index(checkpoint, ch_names)
    checkpoint.preprocess.validate(sfreq_in=float(sfreq))
    return index
