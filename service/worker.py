"""The decoding worker: windows in, decoded frames out, off the asyncio event loop.

Two parts, following one window (ARCHITECTURE.md, "Real-time rules"):

- :class:`Decoder`, the model side, no threads: a batch of :class:`~glimpse.streaming.window.Window`
  -> the checkpoint's brain encoder (torch, or onnxruntime on an exported file) ->
  the retrieval head's embedding -> exact cosine top-k in the gallery, plus the
  checkpoint's confidence; one decoded frame (contract 5) per window.
- :class:`Worker`, one thread: acquisition threads :meth:`Worker.submit` windows
  into small per-stream queues; the thread takes the newest pending windows of every
  stream, decodes them in one forward pass and hands the frames to callbacks. When
  decoding falls behind, the oldest windows are dropped and counted, never queued
  without limit.

Frame (JSON-ready; every number a Python float or int)::

    {"type": "frame", "v": 1, "session", "seq", "stream", "window_seq",
     "t_window_end", "t_decoded",                       # LSL clock (pylsl.local_clock)
     "latency_ms": {"acquire", "preprocess", "queue", "encode", "retrieve",
                    "generate": None, "total"},        # total = 1e3 (t_decoded - t_window_end)
     "topk": [{"id", "score", "url"}, ...],             # best first
     "confidence", "mode": "retrieval", "truth"}

``encode`` and ``retrieve`` are the batch's times (every frame of a batch shares them):
encode = batch assembly + forward pass + confidence, retrieve = gallery top-k.
"""

from __future__ import annotations

import collections
import gc
import itertools
import logging
import threading
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

logger = logging.getLogger("glimpse.service.worker")

__all__ = ["BACKENDS", "FRAME_VERSION", "STAGES", "Decoder", "Worker", "default_image_url",
           "freeze_heap"]

FRAME_VERSION = 1
BACKENDS = ("torch", "onnx")
#: Latency stages kept by :meth:`Worker.stats` (ms), in the frame's ``latency_ms`` order.
STAGES = ("acquire", "preprocess", "queue", "encode", "retrieve", "total")
#: Largest |onnx - torch| accepted on the load-time check that an ONNX file is this checkpoint's.
ONNX_ATOL = 1e-3


def default_image_url(image_id: str) -> str:
    """``/images/<id>``, the id URL-quoted (``/`` kept): where the service serves gallery images."""
    return "/images/" + urllib.parse.quote(image_id)


# =============================================================================== Decoder


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
        return frames


def freeze_heap() -> None:
    """Collect once, then exempt every object alive now from the garbage collector.

    Call it when a live session is set up (models, gallery, threads). With torch, MNE
    and onnxruntime loaded the heap holds ~230,000 container objects, and a full
    collection walks them all under the GIL: ~125 ms during which no acquisition or
    decoding thread runs, longer than the 50 ms hop. Frozen (``gc.freeze``), a full
    collection sees only what the session allocates since: ~1 ms.
    """
    gc.collect()
    gc.freeze()


# =============================================================================== Worker


class Worker:
    """One thread decoding the newest windows of every stream with a :class:`Decoder`.

    ``submit`` (from acquisition threads) never blocks: each stream has a queue of
    ``queue_size`` windows, and a full queue drops its oldest window (counted). Each
    round the thread takes the newest pending windows of all streams (up to
    ``max_batch``; when more streams are pending than fit, those served least
    recently go first), decodes them in one forward pass and calls every ``on_frame`` with each
    frame, in order per stream. A stream's windows older than the newest one taken
    would arrive out of order: they are dropped and counted too.

    ``truth(stream_id, t_window_end)`` gives the true stimulus (a marker dict) or None.
    A window the decoder cannot take (:meth:`Decoder.check_window`) is rejected alone
    and counted (``n_rejected``). Exceptions in callbacks or in the decoder are logged
    and counted (``n_callback_errors``; ``n_errors`` batches, ``n_failed`` windows); the
    thread goes on.
    Use it as a context manager, or ``start()`` ... ``stop()``.
    """

    def __init__(self, decoder: Decoder, *, session: str, max_batch: int = 32, queue_size: int = 4,
                 truth: Callable[[str, float], dict | None] | None = None,
                 on_frame: Callable[[dict], None] | Sequence[Callable[[dict], None]] | None = None,
                 ring_size: int = 4096, rate_window_s: float = 5.0):
        for name, value in (("max_batch", max_batch), ("queue_size", queue_size), ("ring_size", ring_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} a positive integer", f"{name}={value!r}", f"pass {name} >= 1")
        if not isinstance(decoder, Decoder):
            raise InputError("a Decoder", type(decoder).__name__, "build one with Decoder(checkpoint, gallery)")
        self.decoder, self.session = decoder, str(session)
        self.max_batch, self.queue_size = max_batch, queue_size
        self.truth = truth
        self.on_frame: list[Callable[[dict], None]] = (
            [] if on_frame is None else [on_frame] if callable(on_frame) else list(on_frame))
        self.rate_window_s = float(rate_window_s)
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[str, collections.deque] = {}
        self._dropped: collections.Counter = collections.Counter()
        self._served: dict[str, float] = {}  # stream -> perf_counter when last taken
        self._n_submitted = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self._state = "new"
        # Statistics: written by the worker thread, read by stats() under _stats_lock.
        self._stats_lock = threading.Lock()
        self._ring = np.zeros((ring_size, len(STAGES)), np.float64)
        self._ring_batch = np.zeros(ring_size, np.float64)
        self._ring_n = 0  # frames ever written into the ring
        self._batches: collections.deque = collections.deque()  # (perf_counter, n_frames), last rate_window_s
        self._n_decoded = self._n_batches = self._n_errors = self._n_failed = 0
        self._n_callback_errors = self._n_truth_errors = self._n_rejected = 0
        self._t_started: float | None = None
        # No lazy initialisation on the first live window: the largest batch too.
        if max_batch not in decoder.warmed_batch_sizes:
            decoder.warmup(max_batch)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "Worker":
        """Start the decoding thread; returns self."""
        if self._state != "new":
            raise RuntimeError(f"Worker.start() on a {self._state} worker: a worker starts once; "
                               "build a new Worker to start again")
        self._state = "running"
        self._t_started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"glimpse-worker-{self.session}", daemon=True)
        self._thread.start()
        logger.info("worker started (session %s, max_batch %d, queue_size %d)",
                    self.session, self.max_batch, self.queue_size)
        return self

    def stop(self, timeout: float = 5.0) -> "Worker":
        """Stop the thread (pending windows are discarded) and wait up to ``timeout`` s; returns self."""
        if self._state != "running":
            self._state = "stopped"
            return self
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("worker thread still decoding after %.1f s; left to finish as a daemon", timeout)
        self._state = "stopped"
        logger.info("worker stopped: %s", {k: v for k, v in self.stats().items() if k.startswith("n_")})
        return self

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    # ------------------------------------------------------------------ intake

    def submit(self, window: Window) -> None:
        """Queue a window for decoding; never blocks (a full queue drops its oldest, counted)."""
        item = (window, time.perf_counter())
        with self._cond:
            self._n_submitted += 1
            queue = self._queues.get(window.stream_id)
            if queue is None:
                queue = self._queues[window.stream_id] = collections.deque()
            if len(queue) >= self.queue_size:
                queue.popleft()
                self._dropped[window.stream_id] += 1
            queue.append(item)
            self._cond.notify()

    def _take(self) -> list[tuple[Window, float]]:
        """The newest pending windows, at most max_batch; called with the lock held.

        Layer by layer (each stream's newest, then its second newest, ...); when a
        layer does not fit, the streams served least recently go first (then those
        whose oldest window waited longest), so no stream starves. A stream's windows
        older than its oldest taken one are dropped: decoded later, their frames
        would arrive after newer ones.
        """
        layer = [(stream, q) for stream, q in self._queues.items() if q]
        taken: list[tuple[Window, float]] = []
        n_taken: dict[str, int] = {}
        capacity, depth = self.max_batch, 0
        served = self._served
        while capacity > 0 and layer:
            if len(layer) > capacity:
                layer = sorted(layer, key=lambda sq: (served.get(sq[0], -np.inf), sq[1][0][1]))[:capacity]
            for stream, q in layer:
                taken.append(q[-1 - depth])
                n_taken[stream] = depth + 1
            capacity -= len(layer)
            depth += 1
            layer = [(stream, q) for stream, q in layer if len(q) > depth]
        now = time.perf_counter()
        for stream, n in n_taken.items():
            served[stream] = now
            q = self._queues[stream]
            if len(q) > n:
                self._dropped[stream] += len(q) - n
            q.clear()
        taken.sort(key=lambda item: item[0].t_end)
        return taken

    # --------------------------------------------------------------------- loop

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not any(self._queues.values()):
                    self._cond.wait(0.5)
                if self._stop:
                    return
                items = self._take()
            try:
                self._decode(items)
            except Exception:  # noqa: BLE001 - the thread must survive anything a batch does
                self._n_errors += 1
                self._n_failed += len(items)
                if self._n_errors <= 10 or self._n_errors % 1000 == 0:
                    logger.exception("decoding a batch of %d windows failed (%d failures so far); "
                                     "going on", len(items), self._n_errors)

    def _decode(self, items: list[tuple[Window, float]]) -> None:
        t_take = time.perf_counter()
        good = []
        for item in items:  # one stream's bad window must not fail the others' batch
            try:
                self.decoder.check_window(item[0])
                good.append(item)
            except InputError as err:
                self._n_rejected += 1
                if self._n_rejected <= 10 or self._n_rejected % 1000 == 0:
                    logger.error("window %s of stream %s rejected (%d so far): %s", item[0].seq,
                                 item[0].stream_id, self._n_rejected, err)
        items = good
        if not items:
            return
        windows = [w for w, _ in items]
        frames = self.decoder.decode(windows, session=self.session,
                                     queue_ms=[1e3 * (t_take - t) for _, t in items])
        if self.truth is not None:
            for frame in frames:
                try:
                    frame["truth"] = self.truth(frame["stream"], frame["t_window_end"])
                except Exception:  # noqa: BLE001 - a bad marker lookup never stops decoding
                    self._n_truth_errors += 1
                    if self._n_truth_errors <= 10:
                        logger.exception("truth lookup failed for stream %s", frame["stream"])
        self._record(frames)
        for frame in frames:
            for callback in self.on_frame:
                try:
                    callback(frame)
                except Exception:  # noqa: BLE001 - a consumer's bug never stops decoding
                    self._n_callback_errors += 1
                    if self._n_callback_errors <= 10 or self._n_callback_errors % 1000 == 0:
                        logger.exception("on_frame callback %r failed (%d failures so far)",
                                         callback, self._n_callback_errors)

    def _record(self, frames: list[dict]) -> None:
        n, size = len(frames), len(self._ring)
        with self._stats_lock:
            for frame in frames:
                lat = frame["latency_ms"]
                row = self._ring_n % size
                self._ring[row] = [lat[s] for s in STAGES]
                self._ring_batch[row] = n
                self._ring_n += 1
            self._n_decoded += n
            self._n_batches += 1
            now = time.perf_counter()
            batches = self._batches
            batches.append((now, n))
            while now - batches[0][0] > self.rate_window_s:  # keep only the rate's window
                batches.popleft()

    # -------------------------------------------------------------------- stats

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters, decode rate (frames/s over the last ``rate_window_s``) and latency.

        ``latency_ms[stage] = {"p50", "p95", "p99"}`` over the last ``ring_size`` frames
        (None before the first); ``batch_size_mean`` over the same frames.
        """
        with self._cond:
            dropped = dict(self._dropped)
            pending = {s: len(q) for s, q in self._queues.items()}
            n_submitted = self._n_submitted
        now = time.perf_counter()
        with self._stats_lock:
            n = min(self._ring_n, len(self._ring))
            ring, batch = self._ring[:n].copy(), self._ring_batch[:n].copy()
            recent = sum(k for t, k in self._batches if now - t <= self.rate_window_s)
            counts = dict(n_decoded=self._n_decoded, n_batches=self._n_batches, n_errors=self._n_errors,
                          n_failed=self._n_failed, n_callback_errors=self._n_callback_errors,
                          n_truth_errors=self._n_truth_errors, n_rejected=self._n_rejected)
        span = min(self.rate_window_s, now - self._t_started) if self._t_started is not None else 0.0
        if n:
            pct = np.percentile(ring, [50, 95, 99], axis=0)
            latency = {s: {"p50": float(pct[0, j]), "p95": float(pct[1, j]), "p99": float(pct[2, j])}
                       for j, s in enumerate(STAGES)}
        else:
            latency = {s: {"p50": None, "p95": None, "p99": None} for s in STAGES}
        return {"state": self._state, "n_submitted": n_submitted, **counts,
                "n_dropped": int(sum(dropped.values())), "dropped": dropped, "pending": pending,
                "decode_rate": recent / span if span > 0 else 0.0,
                "batch_size_mean": float(batch.mean()) if n else None,
                "latency_ms": latency}
