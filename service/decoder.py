"""The model side of the live path: windows in, decoded frames out, no threads.

:class:`Decoder`: a batch of :class:`~glimpse.streaming.window.Window` -> the
checkpoint's brain encoder (torch, or onnxruntime on an exported file) -> the
retrieval head's embedding -> exact cosine top-k in the gallery, plus the
checkpoint's confidence; one decoded frame (contract 5) per window. The
:class:`~glimpse.service.worker.Worker` runs it on its own thread.

Frame (JSON-ready; every number a Python float or int)::

    {"type": "frame", "v": 1, "session", "seq", "stream", "window_seq",
     "t_window_end", "t_decoded",                       # LSL clock (pylsl.local_clock)
     "latency_ms": {"acquire", "preprocess", "queue", "encode", "retrieve",
                    "generate": None, "total"},        # total = 1e3 (t_decoded - t_window_end)
     "topk": [{"id", "score", "url"}, ...],             # best first
     "confidence", "mode": "retrieval", "truth"}

``encode`` and ``retrieve`` are the batch's times (every frame of a batch shares them):
encode = batch assembly + forward pass + confidence, retrieve = gallery top-k.

``Decoder.on_embeddings(frames, embeddings, indices)``, when set, is handed each
batch's decoded embeddings (the retrieval head's output, ``(batch, D)``, on the
decoder's device) and top-k gallery indices after the frames are stamped: the live
worker's generation thread takes them from there (:mod:`glimpse.service.sessions.generation`).
It runs on the decoding thread, so it only files references and returns.
"""

from __future__ import annotations

import itertools
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pylsl
import torch
from torch import nn

from glimpse.models.checkpoint import Checkpoint
from glimpse.models.gallery import Gallery
from glimpse.streaming.errors import InputError
from glimpse.streaming.window import Window

logger = logging.getLogger("glimpse.service.decoder")

__all__ = ["BACKENDS", "FRAME_VERSION", "STAGES", "Decoder", "default_image_url"]

FRAME_VERSION = 1
BACKENDS = ("torch", "onnx")
#: Latency stages kept by :meth:`Worker.stats` (ms), in the frame's ``latency_ms`` order.
STAGES = ("acquire", "preprocess", "queue", "encode", "retrieve", "total")
#: Largest |onnx - torch| accepted on the load-time check that an ONNX file is this checkpoint's.
ONNX_ATOL = 1e-3


def default_image_url(image_id: str) -> str:
    """``/images/<id>``, the id URL-quoted (``/`` kept): where the service serves gallery images."""
    return "/images/" + urllib.parse.quote(image_id)


class Decoder:
    """A loaded checkpoint and gallery, decoding batches of windows into frames.

    Loads nothing itself: pass a :class:`~glimpse.models.checkpoint.Checkpoint`
    (``load_checkpoint``) and a :class:`~glimpse.models.gallery.Gallery` (``Gallery.load``).

    ``backend``: "torch" (the checkpoint's model under ``torch.inference_mode``) or
    "onnx" (onnxruntime on ``onnx_path``, written by ``glimpse export``; CUDA when
    ``device`` is a CUDA device and onnxruntime has it, else the CPU). ``device``:
    None = the checkpoint's (for torch, load the checkpoint on the device you want).
    ``subject``: the training subject whose subject layer decodes (id or index;
    None = the first). ``threads``: CPU threads of torch (process-wide,
    ``torch.set_num_threads``) or of onnxruntime; None leaves torch's setting and gives
    onnxruntime as many. ``warmup``: batch sizes run once at construction, so the first
    live window pays for no lazy initialisation (:meth:`warmup` runs more).

    Not thread-safe: one thread (the :class:`Worker`'s) calls :meth:`decode`.

    On 2 CPU cores (272 channels, 250 ms, 10,000-image gallery), one thread gave the
    steadiest latency, and onnxruntime ran the encoder 2-3x faster than torch eager
    at batch 1 (figures in the issue 4 report; bench/latency.py measures them).
    """

    def __init__(self, checkpoint: Checkpoint, gallery: Gallery, *, k: int = 5,
                 backend: str = "torch", onnx_path: str | Path | None = None,
                 device: str | None = None, subject: int | str | None = None,
                 threads: int | None = None,
                 image_url: Callable[[str], str] | None = None,
                 warmup: Sequence[int] = (1,)):
        if not isinstance(checkpoint, Checkpoint):
            raise InputError("a loaded Checkpoint (glimpse.models.checkpoint.load_checkpoint)",
                             type(checkpoint).__name__, "load it with load_checkpoint(DIR)")
        if not isinstance(gallery, Gallery):
            raise InputError("a loaded Gallery (glimpse.models.gallery.Gallery.load)",
                             type(gallery).__name__, "load it with Gallery.load(FILE)")
        # The embedder's name and dimension must agree, naming both and the fix
        # (`glimpse gallery build ... --embedder <checkpoint's embedder>`).
        gallery.check_embedder(checkpoint.embedder_name, checkpoint.embed_dim)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(gallery):
            raise InputError(f"k in [1, {len(gallery)}] (the gallery's size)", f"k={k!r}",
                             f"pass k <= {len(gallery)}, or a larger gallery")
        if backend not in BACKENDS:
            raise InputError(f"backend in {list(BACKENDS)}", repr(backend),
                             "pass backend='torch', or 'onnx' with an exported file")
        if checkpoint.retrieval_head not in ("clip", "mse"):
            raise InputError("retrieval_head 'clip' or 'mse' in the checkpoint",
                             repr(checkpoint.retrieval_head), "re-save the checkpoint with glimpse train")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise InputError("threads a positive integer or None", repr(threads),
                             "pass the number of CPU cores to use, e.g. 2")
        self.checkpoint, self.k, self.backend = checkpoint, int(k), backend
        self.ch_names, self.n_chans, self.n_times = checkpoint.ch_names, checkpoint.n_chans, checkpoint.n_times
        self.subject = checkpoint.subject_index(subject)
        self.image_url = image_url or default_image_url
        self._head = 0 if checkpoint.retrieval_head == "clip" else 1
        self._seq = itertools.count()
        self._urls: dict[int, str] = {}
        self._buffers: dict[int, tuple[np.ndarray, torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]] = {}
        self._session = None
        self._onnx_checked = False
        self.on_embeddings: Callable[[list[dict], torch.Tensor, list[list[int]]], None] | None = None
        self.device = torch.device(device if device is not None else checkpoint.device)
        model = checkpoint.model
        self._module = model if isinstance(model, nn.Module) else None

        if backend == "torch":
            if threads is not None:
                torch.set_num_threads(threads)
            if self._module is not None:
                model_device = next(self._module.parameters()).device
                if model_device.type != self.device.type or (
                        self.device.index is not None and model_device.index != self.device.index):
                    raise InputError(f"the checkpoint's model on {self.device}", f"a model on {model_device}",
                                     f"load the checkpoint with load_checkpoint(DIR, device='{self.device}')")
            # Both nn encoders take a chan_mask (BrainEncoder masks the spatial attention;
            # the braindecode peers zero the channels); the ridge baseline cannot.
            self.supports_mask = self._module is not None
        else:
            self._session, self.supports_mask = self._open_onnx(onnx_path, threads)
        if gallery.device.type != self.device.type:
            logger.info("moving the gallery to %s", self.device)
            gallery = gallery.to(self.device)
        self.gallery = gallery
        self.warmup(warmup)
        logger.info("decoder ready: %s backend on %s, %s (%d channels x %d samples), %s, k=%d",
                    backend, self.device, checkpoint.model_name, self.n_chans, self.n_times,
                    gallery.summary(), self.k)

    # ------------------------------------------------------------------ onnx

    def _open_onnx(self, onnx_path: str | Path | None, threads: int | None):
        """An onnxruntime session on ``onnx_path``, checked against the checkpoint."""
        import onnxruntime as ort

        ckpt = self.checkpoint
        fix_export = f"export it with `glimpse export {ckpt.path} --onnx FILE`"
        if onnx_path is None:
            raise InputError("onnx_path with backend='onnx'", "none", fix_export)
        path = Path(onnx_path).expanduser()
        if not path.is_file():
            raise InputError("an ONNX file exported from the checkpoint", f"{path}, which does not exist",
                             fix_export)
        if self._module is None:
            raise InputError("a neural checkpoint for the onnx backend", f"a {ckpt.model_name} checkpoint",
                             "use backend='torch' (a ridge model is one matrix product)")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle pool threads spinning between windows would take the cores the
        # acquisition threads need (2-core target): on a 2-core run it cut the worker's
        # p99 from ~33 to ~20 ms at the same p50 (paper-size encoder).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # onnxruntime's own warnings are not ours to raise
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
            else:
                logger.warning("device %s asked for, but this onnxruntime has no CUDA provider: "
                               "running on the CPU (install onnxruntime-gpu)", self.device)
            self.device = torch.device("cpu") if len(providers) == 1 else self.device
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise InputError("an ONNX file exported from the checkpoint",
                             f"{path}, which onnxruntime cannot load ({err})".replace("\n", " ")[:400],
                             fix_export) from None
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        c, t, d = self.n_chans, self.n_times, ckpt.embed_dim
        want_in = {"x": ("tensor(float)", [c, t]), "subject": ("tensor(int64)", [])}
        if "chan_mask" in inputs:
            want_in["chan_mask"] = ("tensor(bool)", [c])
        want_out = {"clip": ("tensor(float)", [d]), "mse": ("tensor(float)", [d])}
        got = {n: (v.type, list(v.shape)) for n, v in {**inputs, **outputs}.items()}
        ok = set(inputs) == set(want_in) and set(want_out) <= set(outputs)
        for name, (dtype, shape) in {**want_in, **want_out}.items():
            if not ok:
                break
            g_type, g_shape = got[name]
            # The batch axis is dynamic (a name, or None); the others must be the checkpoint's.
            ok = g_type == dtype and len(g_shape) == 1 + len(shape) and list(g_shape[1:]) == shape
        if not ok:
            raise InputError(f"an ONNX model with inputs x (batch, {c}, {t}) float, subject (batch,) int64 "
                             f"[, chan_mask (batch, {c}) bool] and outputs clip, mse (batch, {d}) float, "
                             "as the checkpoint needs", f"{path} with {got}",
                             f"the file comes from another model: {fix_export}")
        return session, "chan_mask" in inputs

    def _check_onnx_matches_torch(self, batch: int) -> None:
        """Same shapes do not make the same model: compare random windows with torch's output."""
        x = np.random.default_rng(0).standard_normal((batch, self.n_chans, self.n_times), dtype=np.float32)
        subject = np.full(batch, self.subject, np.int64)
        model_device = next(self._module.parameters()).device
        with torch.inference_mode():
            want = self._module(torch.from_numpy(x).to(model_device),
                                torch.from_numpy(subject).to(model_device))[self._head].cpu().numpy()
        feed = {"x": x, "subject": subject}
        if self.supports_mask:
            feed["chan_mask"] = np.ones((batch, self.n_chans), bool)
        got = self._session.run([("clip", "mse")[self._head]], feed)[0]
        diff = float(np.abs(want - got).max())
        if not diff <= ONNX_ATOL:
            raise InputError(f"an ONNX file exported from the checkpoint {self.checkpoint.path}",
                             f"one whose outputs differ from the checkpoint's by {diff:.3g} > {ONNX_ATOL:g}",
                             f"export it again with `glimpse export {self.checkpoint.path} --onnx FILE`")

    # ----------------------------------------------------------------- buffers

    def _buffer(self, batch: int):
        """Preallocated ``(x, x_t, subject_t, mask, mask_t)`` per batch size.

        ``x``/``x_t`` and ``mask``/``mask_t`` are numpy and torch views of the same
        memory (pinned for a CUDA torch model, so the copy to the device is async).
        """
        buf = self._buffers.get(batch)
        if buf is None:
            cuda = self.device.type == "cuda" and self._session is None
            x_t = torch.zeros((batch, self.n_chans, self.n_times), dtype=torch.float32, pin_memory=cuda)
            mask_t = torch.ones((batch, self.n_chans), dtype=torch.bool, pin_memory=cuda)
            subject_t = torch.full((batch,), self.subject, dtype=torch.long,
                                   device=self.device if cuda else "cpu")
            buf = self._buffers[batch] = (x_t.numpy(), x_t, subject_t, mask_t.numpy(), mask_t)
        return buf

    @property
    def warmed_batch_sizes(self) -> set[int]:
        """Batch sizes already run once (:meth:`warmup`, :meth:`decode`)."""
        return set(self._buffers)

    def warmup(self, batch_sizes: Sequence[int] | int = (1,)) -> "Decoder":
        """One dummy decode at each batch size (lazy init, allocations, kernel choice); returns self."""
        sizes = [batch_sizes] if isinstance(batch_sizes, int) else list(batch_sizes)
        for batch in sizes:
            if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
                raise InputError("batch sizes >= 1", repr(batch), "pass e.g. warmup=(1, 8)")
            batch = int(batch)
            if self._session is not None and not self._onnx_checked:
                self._check_onnx_matches_torch(batch)
                self._onnx_checked = True
            x = self._buffer(batch)[0]
            x[:] = np.random.default_rng(batch).standard_normal(x.shape, dtype=np.float32)
            emb = self._forward(batch, masked=False)
            self.gallery.topk(emb, self.k)
            self.checkpoint.confidence_of(x)
        return self

    # ----------------------------------------------------------------- forward

    def _forward_torch(self, batch: int, masked: bool) -> torch.Tensor:
        _, x, subject, _, mask = self._buffer(batch)
        if self._module is None:  # ridge: numpy in, numpy out
            return torch.from_numpy(self.checkpoint.forward(x, self.subject)[self._head])
        with torch.inference_mode():
            if self.device.type != "cpu":
                x = x.to(self.device, non_blocking=True)
                mask = mask.to(self.device, non_blocking=True)
            return self._module(x, subject, mask if masked else None)[self._head]

    def _forward_onnx(self, batch: int, masked: bool) -> torch.Tensor:
        x, _, subject, mask, _ = self._buffer(batch)
        feed = {"x": x, "subject": subject.numpy()}
        if self.supports_mask:
            feed["chan_mask"] = mask
        out = self._session.run([("clip", "mse")[self._head]], feed)[0]
        return torch.from_numpy(out)

    def _forward(self, batch: int, masked: bool) -> torch.Tensor:
        if self._session is not None:
            return self._forward_onnx(batch, masked)
        return self._forward_torch(batch, masked)

    # ------------------------------------------------------------------ decode

    def check_window(self, window: Window) -> None:
        """InputError unless this decoder can decode ``window`` (shape, channel order, mask)."""
        if window.data.shape != (self.n_chans, self.n_times):
            raise InputError(f"windows of shape {(self.n_chans, self.n_times)} (the checkpoint's channels "
                             "x samples)", f"{window.data.shape} from stream {window.stream_id!r}",
                             "cut windows with the checkpoint's channels and window length")
        if window.ch_names is not self.ch_names and tuple(window.ch_names) != self.ch_names:
            raise InputError("windows in the checkpoint's channel order",
                             f"other channel names from stream {window.stream_id!r}",
                             "pick the checkpoint's ch_names from the stream, in order")
        if window.chan_mask is not None and not self.supports_mask:
            raise InputError("windows with every channel present (this model cannot mask missing channels)",
                             f"a chan_mask from stream {window.stream_id!r}",
                             "stream every channel the checkpoint needs" +
                             (", or export with the mask input (export_onnx(..., with_mask=True))"
                              if self._session is not None else ""))

    def decode(self, windows: Sequence[Window], *, session: str = "",
               queue_ms: Sequence[float] | None = None) -> list[dict[str, Any]]:
        """One frame per window, in order (ARCHITECTURE.md contract 5), from one forward pass.

        ``session`` and ``queue_ms`` (each window's wait in the worker's queue; 0 when
        called directly) go into the frames; ``truth`` is None (the worker fills it).
        """
        batch = len(windows)
        if batch == 0:
            return []
        t0 = time.perf_counter()
        x, _, _, mask, _ = self._buffer(batch)
        masked = False
        for i, w in enumerate(windows):
            self.check_window(w)
            np.copyto(x[i], w.data, casting="same_kind")
            if w.chan_mask is not None:
                mask[i] = w.chan_mask
                masked = True
            else:
                mask[i] = True
        emb = self._forward(batch, masked)
        confidence = self.checkpoint.confidence_of(x)
        t1 = time.perf_counter()
        scores, indices = self.gallery.topk(emb, self.k)
        scores, indices = scores.tolist(), indices.tolist()
        t2 = time.perf_counter()
        encode_ms, retrieve_ms = 1e3 * (t1 - t0), 1e3 * (t2 - t1)
        conf = confidence.tolist() if confidence is not None else [None] * batch
        ids, urls = self.gallery.ids, self._urls
        frames = []
        for i, w in enumerate(windows):
            topk = []
            for score, index in zip(scores[i], indices[i]):
                url = urls.get(index)
                if url is None:
                    url = urls[index] = self.image_url(ids[index])
                topk.append({"id": ids[index], "score": score, "url": url})
            frames.append({
                "type": "frame", "v": FRAME_VERSION, "session": session, "seq": next(self._seq),
                "stream": w.stream_id, "window_seq": int(w.seq), "t_window_end": float(w.t_end),
                "t_decoded": 0.0,
                "latency_ms": {"acquire": float(w.acquire_ms), "preprocess": float(w.preprocess_ms),
                               "queue": float(queue_ms[i]) if queue_ms is not None else 0.0,
                               "encode": encode_ms, "retrieve": retrieve_ms, "generate": None,
                               "total": 0.0},
                "topk": topk, "confidence": conf[i], "mode": "retrieval", "truth": None})
        t_decoded = pylsl.local_clock()
        for frame in frames:
            frame["t_decoded"] = t_decoded
            frame["latency_ms"]["total"] = 1e3 * (t_decoded - frame["t_window_end"])
        if self.on_embeddings is not None:
            self.on_embeddings(frames, emb, indices)
        return frames
