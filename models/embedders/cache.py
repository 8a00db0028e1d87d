"""The embedding cache: vectors keyed by file content (sha256), one folder per embedder identity."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only annotations: base.py imports this module
    from .base import ImageEmbedder

logger = logging.getLogger("glimpse.models.embedders")

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """Embeddings keyed by file sha256, one folder per embedder identity.

    ``index.json`` maps each sha256 to the safetensors shard that holds it (tensor name =
    the sha256). Shards are written whole and the index is replaced atomically; a damaged
    cache only costs misses, never a failed run.
    """

    def __init__(self, root: Path, embedder: ImageEmbedder):
        self.identity = embedder.identity
        self.dim = embedder.dim
        # Readable prefix (kind and architecture) + a hash of the full identity.
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(embedder.name.split(":")[:2]))[:48]
        self.folder = Path(root) / f"{slug}-{hashlib.sha256(self.identity.encode()).hexdigest()[:16]}"

    def _read_index(self) -> dict[str, str]:
        path = self.folder / "index.json"
        if not path.is_file():
            return {}
        try:
            index = json.loads(path.read_text())
            if index.get("identity") != self.identity or index.get("dim") != self.dim:
                logger.warning("embedding cache %s belongs to another embedder; ignoring it", self.folder)
                return {}
            return dict(index["entries"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("embedding cache index %s is unreadable (%s); ignoring it", path, exc)
            return {}

    def get(self, hashes: set[str]) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        entries = self._read_index()
        by_shard: dict[str, list[str]] = {}
        for h in hashes:
            if h in entries:
                by_shard.setdefault(entries[h], []).append(h)
        found = {}
        for shard, keys in by_shard.items():
            try:
                with safe_open(str(self.folder / shard), framework="numpy") as f:
                    for h in keys:
                        vec = f.get_tensor(h)
                        if vec.shape == (self.dim,):
                            found[h] = vec.astype(np.float32, copy=False)
            except Exception as exc:  # noqa: BLE001 - any damage to the cache is a miss
                logger.warning("embedding cache shard %s is unreadable (%s); recomputing", shard, exc)
        return found

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        shard = f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
        tmp = self.folder / (shard + ".tmp")
        save_file({h: np.ascontiguousarray(v, np.float32) for h, v in vectors.items()}, str(tmp))
        os.replace(tmp, self.folder / shard)
        entries = self._read_index()  # re-read just before writing: another process may have added
        entries.update({h: shard for h in vectors})
        index = {"format": "glimpse-embedding-cache", "version": 1, "identity": self.identity,
                 "dim": self.dim, "entries": entries}
        tmp = self.folder / f"index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.folder / "index.json")
