"""Galleries: image embeddings on disk and exact cosine top-k retrieval in torch.

A gallery is ``FILE.safetensors`` (one tensor, ``embeddings``, ``(N, D)`` float32 as the
embedder made them: unnormalised for OpenCLIP, whose scale generators need) plus a
``FILE.json`` sidecar (ids, image paths, sha256 of each image, embedder name,
dimension, the glimpse version that wrote it). Loading never unpickles.

Search is exact: cosine = ``(unit query . entry) / |entry|``. The gallery keeps the inverse
entry norms, ``(N,)``, rather than a normalised copy of the entries, which would double
the memory (1e6 x 1024 fp32: 4.1 GB per copy). Entries are scanned in chunks of
65,536 and the running top-k merged, so memory stays bounded at any N.

Build one with :func:`build_gallery` (what ``glimpse gallery build`` runs) and
:meth:`Gallery.save`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from glimpse.streaming.errors import InputError
from glimpse.streaming.version import glimpse_version

from .device import torch_device
from .embedders import IMAGE_SUFFIXES, ImageEmbedder, embedding_space

logger = logging.getLogger("glimpse.models.gallery")

FORMAT = "glimpse-gallery"
FORMAT_VERSION = 1
ENTRY_CHUNK = 65_536  # entries scored at once: (queries x 65,536) scores stay small
QUERY_CHUNK = 256  # queries scored at once: at most 256 x 65,536 x 4 B = 64 MiB of scores
_DTYPES = {torch.float32, torch.float16, torch.bfloat16}


def gallery_files(path: str | Path) -> tuple[Path, Path]:
    """``(FILE.safetensors, FILE.json)`` for ``FILE``, ``FILE.safetensors`` or ``FILE.json``."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


@dataclass(eq=False)  # tensors have no single truth value: compare galleries field by field
class Gallery:
    """Embeddings ``(N, D)`` and, per row, the image's id, path and sha256.

    ``ids`` are image paths relative to the images folder (posix), as trials name their
    stimuli. ``embedder`` is the canonical name of the embedder that made them.
    """

    embeddings: torch.Tensor
    ids: list[str]
    paths: list[str]
    embedder: str
    dim: int
    hashes: list[str]
    _inv_norms: torch.Tensor = field(init=False, repr=False, compare=False)
    _index: dict[str, int] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        e = self.embeddings
        if not isinstance(e, torch.Tensor) or e.ndim != 2 or not e.is_floating_point():
            raise InputError("gallery embeddings as a float tensor (N, D)",
                             f"{type(e).__name__} {tuple(getattr(e, 'shape', ()))}",
                             "pass torch.from_numpy(embeddings)")
        n, d = e.shape
        if d != self.dim:
            raise InputError(f"embeddings of dimension dim={self.dim}", f"(N, D) = {tuple(e.shape)}",
                             "rebuild the gallery (glimpse gallery build)")
        for what, values in (("ids", self.ids), ("paths", self.paths), ("hashes", self.hashes)):
            if len(values) != n:
                raise InputError(f"one entry in {what} per embedding row ({n})", f"{len(values)}",
                                 "rebuild the gallery (glimpse gallery build)")
        if e.dtype not in _DTYPES:
            raise InputError("float32, float16 or bfloat16 embeddings", str(e.dtype), "convert with .float()")
        # Norms in float32 without a float32 copy of a half gallery; a NaN or inf anywhere
        # in a row makes its norm non-finite, so no (N, D) boolean mask is needed either.
        norms = torch.linalg.vector_norm(e, dim=1, dtype=torch.float32)
        if not bool(torch.isfinite(norms).all()):
            raise InputError("finite embeddings", "NaN or inf values (or rows too large for float32)",
                             "rebuild the gallery")
        # A zero row (a blank image) scores 0 against every query instead of NaN.
        self._inv_norms = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms))

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    @property
    def nbytes(self) -> int:
        """Memory of the embeddings and inverse norms (the sidecar lists are extra)."""
        return (self.embeddings.element_size() * self.embeddings.nelement()
                + self._inv_norms.element_size() * self._inv_norms.nelement())

    def summary(self) -> str:
        """One line for the CLI: count, embedder, dimension, memory."""
        return (f"gallery: {len(self)} images, embedder {self.embedder} ({self.dim}-d), "
                f"{str(self.embeddings.dtype).removeprefix('torch.')} on {self.device}, "
                f"{self.nbytes / 2**20:.1f} MiB")

    def index_of(self, image_id: str) -> int:
        """Row of an image id (e.g. a trial's stimulus); KeyError when it is not in the gallery."""
        if self._index is None:
            self._index = {i: n for n, i in enumerate(self.ids)}
        return self._index[image_id]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Gallery":
        """A copy of the gallery on ``device`` with ``dtype`` (inverse norms stay float32)."""
        dtype = dtype or self.embeddings.dtype
        if dtype not in _DTYPES:
            raise InputError("dtype float32, float16 or bfloat16", str(dtype), "pass torch.float32")
        device = torch_device(device) if device is not None else self.device
        return Gallery(self.embeddings.to(device=device, dtype=dtype), self.ids, self.paths,
                       self.embedder, self.dim, self.hashes)

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write ``FILE.safetensors`` (float32) and ``FILE.json``; returns the safetensors path."""
        from safetensors.torch import save_file

        tensor_path, sidecar_path = gallery_files(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "embedder": self.embedder, "dim": str(self.dim), "n": str(len(self))}
        tmp = tensor_path.with_name(tensor_path.name + ".tmp")
        save_file({"embeddings": self.embeddings.detach().to("cpu", torch.float32).contiguous()},
                  str(tmp), metadata=meta)
        sidecar = {"format": FORMAT, "format_version": FORMAT_VERSION, "embedder": self.embedder,
                   "dim": self.dim, "n": len(self), "ids": list(self.ids), "paths": list(self.paths),
                   "hashes": list(self.hashes),
                   "created_with": {"glimpse": glimpse_version(), "torch": torch.__version__}}
        tmp_json = sidecar_path.with_name(sidecar_path.name + ".tmp")
        tmp_json.write_text(json.dumps(sidecar, indent=1))
        # Both files land only when both are complete.
        os.replace(tmp, tensor_path)
        os.replace(tmp_json, sidecar_path)
        logger.info("saved %s to %s", self.summary(), tensor_path)
        return tensor_path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> "Gallery":
        """Read a gallery written by :meth:`save`; checks the sidecar against the tensor."""
        from safetensors import safe_open

        path = Path(path)
        tensor_path, sidecar_path = gallery_files(path)
        if path.is_file() and path.suffix != ".json":
            tensor_path = path  # whatever it is called, it is read as safetensors only
        fix_build = "build it with `glimpse gallery build IMAGES_DIR --embedder NAME --out FILE`"
        if not tensor_path.is_file():
            raise InputError("a gallery file (FILE.safetensors + FILE.json)",
                             f"{tensor_path}, which does not exist", fix_build)
        if dtype not in _DTYPES:
            raise InputError("dtype float32, float16 or bfloat16", str(dtype), "pass torch.float32")
        try:
            with safe_open(str(tensor_path), framework="pt", device="cpu") as f:
                keys = list(f.keys())
                meta = f.metadata() or {}
                embeddings = f.get_tensor("embeddings") if "embeddings" in keys else None
        except Exception as exc:  # noqa: BLE001 - every failure here means "not a gallery file"
            raise InputError("a gallery in safetensors format (glimpse never unpickles)",
                             f"{tensor_path}, which is not a readable safetensors file ({exc})",
                             fix_build) from None
        if embeddings is None or embeddings.ndim != 2:
            raise InputError("a safetensors file with one (N, D) tensor named 'embeddings'",
                             f"{tensor_path} with tensors {keys}", fix_build)
        if not sidecar_path.is_file():
            raise InputError(f"the gallery's sidecar {sidecar_path.name} beside {tensor_path.name}",
                             f"no {sidecar_path}", f"copy it along with the gallery, or {fix_build}")
        try:
            sidecar = json.loads(sidecar_path.read_text())
            ids, paths, hashes = list(sidecar["ids"]), list(sidecar["paths"]), list(sidecar["hashes"])
            embedder, dim = str(sidecar["embedder"]), int(sidecar["dim"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError("a JSON sidecar with ids, paths, hashes, embedder and dim",
                             f"{sidecar_path}, which is unreadable ({type(exc).__name__}: {exc})",
                             fix_build) from None
        n, d = embeddings.shape
        if len(ids) != n or dim != d or len(paths) != n or len(hashes) != n:
            raise InputError(f"a sidecar that matches the tensor in {tensor_path.name} (N={n}, D={d})",
                             f"{sidecar_path.name} with N={len(ids)}, D={dim}",
                             f"the two files come from different builds; {fix_build}")
        if meta.get("embedder", embedder) != embedder:
            raise InputError(f"the same embedder in {tensor_path.name} and {sidecar_path.name}",
                             f"{meta['embedder']} and {embedder}", fix_build)
        gallery = cls(embeddings.to(device=torch_device(device), dtype=dtype), ids, paths, embedder, dim, hashes)
        logger.info("loaded %s from %s", gallery.summary(), tensor_path)
        return gallery

    # ------------------------------------------------------------------ search

    def check_embedder(self, name: str, dim: int) -> None:
        """InputError when vectors from embedder ``name`` (``dim``) cannot be searched here."""
        if int(dim) == self.dim and embedding_space(name) == embedding_space(self.embedder):
            if name != self.embedder:
                logger.warning("gallery built with %s, queries from %s: same architecture and weights "
                               "file name, assuming the same weights", self.embedder, name)
            return
        raise InputError(f"queries from the gallery's embedder {self.embedder} ({self.dim}-d)",
                         f"a brain encoder trained for {name} ({dim}-d)",
                         f"rebuild the gallery with --embedder {name} (glimpse gallery build IMAGES_DIR "
                         f"--embedder {name} --out FILE)")

    def topk(self, queries: torch.Tensor | np.ndarray, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cosine top-k: ``(scores, indices)``, both ``(B, k)``, best first.

        ``queries``: ``(B, D)`` or ``(D,)``, numpy or torch, any float dtype, any device
        (moved to the gallery's). Scores are float32, indices int64, on the gallery's
        device. A half-precision gallery on the CPU works but is slower than float32
        there (no fast fp16 GEMM on most CPUs); use half on a GPU.
        """
        q = torch.as_tensor(queries)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"queries of shape (B, {self.dim}) for this gallery ({self.embedder})",
                             f"shape {tuple(q.shape)}",
                             "embed with the gallery's embedder, or rebuild the gallery for yours")
        if not q.is_floating_point() or not bool(torch.isfinite(q).all()):
            raise InputError("finite float queries", f"dtype {q.dtype} with non-finite or integer values",
                             "check the brain encoder's output")
        n = len(self)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise InputError(f"k in [1, {n}] (the gallery's size)", f"k={k!r}", f"pass k <= {n}")
        k = int(k)
        e = self.embeddings
        q = torch.nn.functional.normalize(q.to(device=e.device, dtype=torch.float32), dim=1).to(e.dtype)
        all_scores, all_idx = [], []
        with torch.inference_mode():
            for qs in range(0, q.shape[0], QUERY_CHUNK):
                qc = q[qs:qs + QUERY_CHUNK]
                best_s = best_i = None
                for start in range(0, n, ENTRY_CHUNK):
                    stop = min(start + ENTRY_CHUNK, n)
                    # entries @ queries.T, not queries @ entries.T: same numbers, but MKL runs
                    # this skinny GEMM 2.3x faster for 8 queries (112 vs 252 ms per 65k x 1024).
                    s = (e[start:stop] @ qc.T).T.float() * self._inv_norms[start:stop]
                    top = torch.topk(s, min(k, stop - start), dim=1)
                    cand_s, cand_i = top.values, top.indices + start
                    if best_s is not None:
                        cand_s, cand_i = torch.cat([best_s, cand_s], 1), torch.cat([best_i, cand_i], 1)
                        top = torch.topk(cand_s, min(k, cand_s.shape[1]), dim=1)  # k may span chunks
                        cand_s, cand_i = top.values, torch.gather(cand_i, 1, top.indices)
                    best_s, best_i = cand_s, cand_i
                all_scores.append(best_s)
                all_idx.append(best_i)
        return torch.cat(all_scores), torch.cat(all_idx)


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by relative path.

    Hidden files and folders (``.DS_Store``, ``._x.png`` from macOS, ``.cache``) are skipped:
    they are never stimuli and some carry an image ending without being images.
    """
    folder = Path(folder)
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(
                part.startswith(".") for part in rel.parts):
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def build_gallery(images: str | Path | Sequence[str | Path], embedder: ImageEmbedder, *,
                  root: str | Path | None = None, cache_dir: str | Path | None = None,
                  progress: bool = True) -> Gallery:
    """Embed a folder of images (recursively) or a list of files into a gallery.

    Ids are paths relative to ``root`` if given, else to the folder (or, for a list, to
    the files' common folder), in posix form. Pass the dataset's root as ``root`` when
    trials name stimuli from there (the simulator's ``stimuli/train/<concept>/x.png``).
    """
    if isinstance(images, (str, Path)):
        source = Path(images)
        if not source.exists():
            raise InputError("a folder of images or a list of image files",
                             f"{source}, which does not exist", "check the path")
        if source.is_dir():
            files = find_images(source)
            if not files:
                raise InputError(f"image files ({', '.join(IMAGE_SUFFIXES)}) in {source} or its subfolders",
                                 "none", "point to the folder that holds the stimuli")
            base = source
        else:
            files, base = [source], source.parent
    else:
        files = [Path(p) for p in images]
        if not files:
            raise InputError("at least one image file", "an empty list", "pass image files or a folder")
        base = Path(os.path.commonpath([p.resolve().parent for p in files]))
    base = Path(root) if root is not None else base
    ids = []
    for p in files:
        try:
            ids.append(p.resolve().relative_to(base.resolve()).as_posix())
        except ValueError:
            raise InputError(f"images under the root {base}", f"{p}, outside it",
                             "pass the root the trials name stimuli from") from None
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError("each image once", f"{dup!r} more than once", "remove the duplicates")
    vectors, hashes = embedder.embed_files_and_hashes(
        files, cache_dir=Path(cache_dir) if cache_dir is not None else None, progress=progress)
    gallery = Gallery(torch.from_numpy(vectors), ids, [p.resolve().as_posix() for p in files],
                      embedder.name, embedder.dim, hashes)
    logger.info("built %s", gallery.summary())
    return gallery
