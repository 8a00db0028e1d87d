"""The worker process's generation thread: images from the newest decoded embedding.

The decoder hands every batch's embeddings to :meth:`Generation.offer` (on the
decoding thread: it files one row per stream and returns). The generation thread
runs at its own pace: it takes the newest embedding of every stream that has one,
rescales it to the checkpoint's target norm (:meth:`Generator.rescale`), generates
(``two_stage``: image-to-image from the retrieved top-1's file, with ``strength``)
and sends each image as JPEG with the frame it came from. An embedding that a newer
one of its stream replaced before the thread took it is dropped and counted
(``n_stale``); nothing queues.

Retrieval keeps its rate: the thread runs at a lower scheduling priority (``nice``
+10, Linux threads have their own) and torch's thread count is the worker's
(``threads``, 1 by default: one core each for decoding and generating on 2 cores).

A generator that fails (an exception, CUDA out of memory) or does not load is
reported (``("generation_failed", {"message"})``) and generation turns off: the
mode falls back to ``retrieval``, decoding goes on; switching a generation mode on
again tries again (and loads again after a failed load).

Messages sent (``send``, the worker's pipe): ``("generator_ready", {"kind",
"size", "warmup_ms"})``, ``("generated", {"seq" (the decoder's), "stream",
"t_window_end", "mode", "format", "width", "height", "generate_ms", "image"})``,
``("generation_failed", {"message"})``.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.streaming.errors import InputError

__all__ = ["GENERATION_MODES", "MODES", "Generation", "InitImages", "decode_generated",
           "encode_generated", "encode_jpeg"]

logger = logging.getLogger("glimpse.service.sessions.generation")

MODES = ("retrieval", "generation", "two_stage")
GENERATION_MODES = MODES[1:]
NICE = 10  # the generation thread's scheduling niceness above the decoder's
JPEG_QUALITY = 85
_RING = 512  # generation times kept for the percentiles
_PREFIX = struct.Struct("<QI")  # a generated image's message: session frame seq, header length


def encode_generated(seq: int, header: dict, image: bytes) -> bytes:
    """A generated image's binary message: seq (uint64 LE), header length (uint32 LE),
    the JSON header ({"type": "generated", "session", "seq", "stream", "t_window_end",
    "age_ms", "mode", "format", "width", "height", "generate_ms"}), the image bytes."""
    head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    return _PREFIX.pack(seq, len(head)) + head + image


def decode_generated(data: bytes) -> tuple[int, dict, bytes]:
    """``(seq, header, image)`` of a message made by :func:`encode_generated`."""
    seq, n = _PREFIX.unpack_from(data)
    return seq, json.loads(data[_PREFIX.size:_PREFIX.size + n]), data[_PREFIX.size + n:]


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """uint8 RGB ``(H, W, 3)`` -> JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness (Linux schedules threads apart; elsewhere a no-op)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as err:
        logger.info("generation thread keeps its priority: %s", err)


class InitImages:
    """The gallery's images as generator inputs (two-stage), by gallery index.

    ``paths``: the gallery sidecar's (absolute, or relative to ``base``); only files
    inside ``roots`` (real paths) are read. Resized to the generator's size and kept
    (the newest ``cache`` of them): the top-1 repeats from one window to the next.
    """

    def __init__(self, paths: Sequence[str], base: str | Path, roots: Sequence[str | Path],
                 cache: int = 64):
        self.paths, self.base = paths, Path(base)
        self.roots = [Path(r).resolve() for r in roots]
        self._cache: collections.OrderedDict[tuple[int, int], np.ndarray | None] = collections.OrderedDict()
        self.size = cache

    def __call__(self, index: int, size: int) -> np.ndarray | None:
        """The image of gallery entry ``index`` at ``size`` px, or None (outside the roots, unreadable)."""
        key = (index, size)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        image = self._read(index, size)
        self._cache[key] = image
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return image

    def _read(self, index: int, size: int) -> np.ndarray | None:
        from PIL import Image

        path = Path(self.paths[index])
        real = (path if path.is_absolute() else self.base / path).resolve()
        if not any(real.is_relative_to(root) for root in self.roots):
            logger.warning("two-stage: %s is outside the data roots; generating without it", real)
            return None
        try:
            with Image.open(real) as img:
                return np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC))
        except OSError as err:
            logger.warning("two-stage: cannot read %s (%s); generating without it", real, err)
            return None


class Generation:
    """One thread generating from the newest embedding of each stream.

    Parameters
    ----------
    load : callable
        ``load() -> Generator``, run on the thread (loading may take a while; decoding
        goes on meanwhile).
    send : callable
        ``send(message_tuple)``: the worker's pipe to the service.
    embedder : (str, int)
        The checkpoint's embedder; a generator of another is refused when loaded.
    mean_norm : float or None
        The checkpoint's target norm, to which decoded embeddings are rescaled.
    init_images : callable or None
        ``init_images(gallery_index, size)`` for two-stage (:class:`InitImages`).
    """

    def __init__(self, load: Callable[[], Any], *, send: Callable[[tuple], None],
                 embedder: tuple[str, int], mode: str = "retrieval", steps: int = 1,
                 strength: float = 0.6, mean_norm: float | None = None,
                 init_images: Callable[[int, int], np.ndarray | None] | None = None,
                 nice: int = NICE, seed: int = 0):
        self._load_fn, self.send, self.embedder = load, send, embedder
        self.steps, self.strength, self.mean_norm, self.seed = steps, strength, mean_norm, seed
        self.init_images, self.nice = init_images, nice
        self.mode = mode
        self.state = "loading"  # loading -> ready | failed
        self.generator = None
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[dict, np.ndarray, int]] = {}
        self._stop = False
        self._times: collections.deque = collections.deque(maxlen=_RING)
        self._done: collections.deque = collections.deque(maxlen=_RING)  # perf_counter per image
        self.n_offered = self.n_generated = self.n_stale = self.n_failed = 0
        self._thread = threading.Thread(target=self._run, name="glimpse-generation", daemon=True)

    # ------------------------------------------------------------- any thread

    def start(self) -> Generation:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def set_mode(self, mode: str) -> None:
        """Switch mode; a generation mode after a failed load loads again."""
        with self._cond:
            self.mode = mode
            self._pending.clear()
            if mode in GENERATION_MODES and self.state == "failed":
                self.state = "loading"
            self._cond.notify_all()

    def offer(self, frames: list[dict], embeddings, indices: list[list[int]]) -> None:
        """The decoder's hook: keep each stream's newest embedding (the decoding thread)."""
        if self.mode == "retrieval" or self.state != "ready":
            return
        rows = np.asarray(embeddings.detach().float().cpu() if hasattr(embeddings, "detach")
                          else embeddings, np.float32)
        with self._cond:
            for frame, row, top in zip(frames, rows, indices):
                self.n_offered += 1
                if frame["stream"] in self._pending:
                    self.n_stale += 1
                self._pending[frame["stream"]] = (frame, row.copy(), top[0] if top else -1)
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            times = np.asarray(self._times, float)
            now = time.perf_counter()
            recent = sum(1 for t in self._done if now - t <= 5.0)
            gen = self.generator
            body = {"mode": self.mode, "state": self.state, "n_offered": self.n_offered,
                    "n_generated": self.n_generated, "n_stale": self.n_stale, "n_failed": self.n_failed}
        pct = ({q: float(np.percentile(times, p)) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
               if len(times) else {"p50": None, "p95": None, "p99": None})
        return {**body, "kind": getattr(gen, "kind", None), "size": getattr(gen, "size", None),
                "generate_rate": recent / 5.0, "generate_ms": pct}

    # -------------------------------------------------------------- the thread

    def _run(self) -> None:
        _lower_priority(self.nice)
        while True:
            with self._cond:
                while not self._stop and self.state != "loading" and (
                        self.mode == "retrieval" or not self._pending):
                    self._cond.wait(0.5)
                if self._stop:
                    return
                loading = self.state == "loading"
                items, mode = list(self._pending.values()), self.mode
                self._pending.clear()
            if loading:
                self._load()
            elif items:
                self._generate(items, mode)

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            generator = self._load_fn()
            generator.check_embedder(*self.embedder)
            generator.warmup(self.steps)
        except Exception as err:  # noqa: BLE001 - reported; decoding goes on
            self._fail(f"the generator did not load: {_describe(err)}", loaded=False)
            return
        ms = 1e3 * (time.perf_counter() - t0)
        logger.info("generator ready: %s at %d px on %s (%.0f ms with warm-up)", generator.kind,
                    generator.size, generator.device, ms)
        # Announced before the state says so: "ready" means the service was told.
        self.send(("generator_ready", {"kind": generator.kind, "size": generator.size,
                                       "warmup_ms": ms}))
        with self._cond:
            self.generator, self.state = generator, "ready"

    def _generate(self, items: list[tuple[dict, np.ndarray, int]], mode: str) -> None:
        gen = self.generator
        embeddings = gen.rescale(np.stack([row for _, row, _ in items]), self.mean_norm)
        inits = None
        if mode == "two_stage" and self.init_images is not None:
            inits = [self.init_images(top, gen.size) if top >= 0 else None for _, _, top in items]
            if any(i is None for i in inits):  # one batch, one kind: all from the embedding
                inits, mode = None, "generation"
        t0 = time.perf_counter()
        try:
            images = gen.generate(embeddings, init_images=inits, steps=self.steps,
                                  strength=self.strength, seed=self.seed)
        except Exception as err:  # noqa: BLE001 - reported; the session falls back to retrieval
            _free_gpu_memory(gen)
            self._fail(f"generation failed: {_describe(err)}", loaded=True)
            return
        ms = 1e3 * (time.perf_counter() - t0)
        for (frame, _, _), image in zip(items, images):
            self.send(("generated", {
                "seq": frame["seq"], "stream": frame["stream"], "t_window_end": frame["t_window_end"],
                "mode": mode, "format": "jpeg", "width": int(image.shape[1]),
                "height": int(image.shape[0]), "generate_ms": ms, "image": encode_jpeg(image)}))
        with self._cond:
            self.n_generated += len(items)
            self._times.append(ms)
            now = time.perf_counter()
            self._done.extend([now] * len(items))

    def _fail(self, message: str, *, loaded: bool) -> None:
        logger.error("%s; falling back to retrieval", message)
        with self._cond:
            self.n_failed += 1
            self.mode = "retrieval"
            self._pending.clear()
            if not loaded:
                self.state = "failed"
        self.send(("generation_failed", {"message": message}))


def _describe(err: BaseException) -> str:
    """An error in a line; CUDA out of memory said plainly."""
    text = str(err).replace("\n", " ")[:400]
    if "out of memory" in text.lower():
        return f"the GPU ran out of memory ({type(err).__name__}: {text}); use fewer steps, a smaller " \
               "size or another device"
    return text if isinstance(err, InputError) else f"{type(err).__name__}: {text}"


def _free_gpu_memory(generator) -> None:
    """After a failure on a CUDA device, hand its cached blocks back (an OOM leaves many)."""
    if "cuda" not in str(getattr(generator, "device", "")):
        return
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort after a failure already reported
        logger.debug("empty_cache failed", exc_info=True)
