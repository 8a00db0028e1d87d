"""Image embedders: one interface, a handcrafted default and OpenCLIP from local weights.

An embedder maps images to float32 vectors ``(N, dim)``; brain encoders are trained to
predict them and galleries are searched with them. Every embedder is named by a spec
string (:func:`load_embedder`), and that canonical name travels with galleries and
checkpoints so that a mismatch is caught (:meth:`glimpse.models.gallery.Gallery.check_embedder`).

- ``handcrafted`` (``handcrafted:dim=128``, :mod:`.handcrafted`): no weights, CPU,
  deterministic. Blocks of classic features, each centred, L2-normalised and weighted by
  a fixed constant (never by dataset statistics, so one image's embedding does not depend
  on the others), then a seeded orthogonal projection and L2 normalisation.
- ``open_clip:ARCH:PATH`` (:mod:`.openclip`): any OpenCLIP architecture with weights from
  a local file or folder; ``open_clip:ARCH:random`` for a randomly initialised model
  (tests only).

:meth:`ImageEmbedder.embed_files` caches embeddings by file content (sha256) and embedder
identity (:mod:`.cache`), in safetensors shards with a JSON index: a renamed or copied
file hits the cache, an edited one misses. The interface and image decoding are in
:mod:`.base`, the spec strings in :mod:`.registry`.
"""

from .base import IMAGE_SUFFIXES, ImageEmbedder, ImageInput, file_sha256
from .cache import EmbeddingCache
from .handcrafted import HandcraftedEmbedder, handcrafted_blocks
from .openclip import OPEN_CLIP_WEIGHT_NAMES, OpenClipEmbedder
from .registry import DEFAULT_EMBEDDER, EMBEDDERS, embedding_space, load_embedder

__all__ = ["DEFAULT_EMBEDDER", "EMBEDDERS", "IMAGE_SUFFIXES", "OPEN_CLIP_WEIGHT_NAMES",
           "EmbeddingCache", "HandcraftedEmbedder", "ImageEmbedder", "ImageInput",
           "OpenClipEmbedder", "embedding_space", "file_sha256", "handcrafted_blocks",
           "load_embedder"]
