"""Galleries: build from a folder, safetensors + JSON round trip, exact chunked top-k, bad input."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glimpse.models import gallery as gallery_module
from glimpse.models.embedders import file_sha256, load_embedder
from glimpse.models.gallery import Gallery, build_gallery, find_images, gallery_files
from glimpse.streaming.errors import InputError


@pytest.fixture(scope="module")
def hand():
    return load_embedder("handcrafted")


@pytest.fixture(scope="module")
def stimuli(small_meg_session) -> Path:
    root, _, _ = small_meg_session
    return root / "stimuli"


def random_gallery(n=50, d=16, seed=0, scale=True) -> Gallery:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g)
    if scale:  # unnormalised rows, as OpenCLIP's: cosine must not follow the norm
        e = e * torch.rand(n, 1, generator=g).mul(20).add(0.1)
    ids = [f"img{i}.png" for i in range(n)]
    return Gallery(e, ids, [f"/data/{i}" for i in ids], "handcrafted:dim=16", d, ["0" * 64] * n)


def brute_force(gallery: Gallery, q: np.ndarray, k: int):
    e = gallery.embeddings.double().numpy()
    q = np.atleast_2d(q).astype(np.float64)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (e / np.linalg.norm(e, axis=1, keepdims=True)).T
    idx = np.argsort(-cos, axis=1)[:, :k]
    return np.take_along_axis(cos, idx, 1), idx


# ---------------------------------------------------------------------------- build

def test_build_from_folder(stimuli, hand):
    g = build_gallery(stimuli, hand, progress=False)
    files = find_images(stimuli)
    assert len(g) == len(files) > 0 and g.dim == 256 and g.embedder == "handcrafted"
    assert g.ids == sorted(g.ids) and g.ids[-1].count("/") == 2  # split/concept/file.png
    assert all(not i.startswith("/") for i in g.ids)
    assert g.paths[0] == files[0].resolve().as_posix() and g.hashes[0] == file_sha256(files[0])
    assert g.embeddings.dtype == torch.float32 and g.embeddings.shape == (len(files), 256)
    # Ids relative to the dataset root match how trials name stimuli.
    with_root = build_gallery(stimuli / "train", hand, root=stimuli.parent, progress=False)
    assert all(i.startswith("stimuli/train/") for i in with_root.ids)
    assert with_root.index_of(with_root.ids[3]) == 3
    # Every image retrieves itself first.
    scores, idx = g.topk(g.embeddings, k=1)
    assert torch.equal(idx[:, 0], torch.arange(len(g)))
    torch.testing.assert_close(scores[:, 0], torch.ones(len(g)), atol=1e-5, rtol=0)


def test_build_from_a_list_and_hidden_files(tmp_path, hand):
    (tmp_path / "a").mkdir()
    for name in ("a/x.png", "b.JPG", ".hidden.png"):
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / name, format="PNG")
    (tmp_path / "._b.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a/x.png", "b.JPG"]
    g = build_gallery([tmp_path / "b.JPG", tmp_path / "a" / "x.png"], hand, progress=False)
    assert g.ids == ["b.JPG", "a/x.png"]
    with pytest.raises(InputError, match="outside"):
        build_gallery([tmp_path / "b.JPG"], hand, root=tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="more than once"):
        build_gallery([tmp_path / "b.JPG", tmp_path / "b.JPG"], hand, progress=False)


def test_build_uses_the_cache(tmp_path, stimuli, hand):
    cache = tmp_path / "cache"
    a = build_gallery(stimuli / "test", hand, cache_dir=cache, progress=False)
    b = build_gallery(stimuli / "test", hand, cache_dir=cache, progress=False)
    assert torch.equal(a.embeddings, b.embeddings) and any(cache.iterdir())


def test_empty_or_missing_folder(tmp_path, hand):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="image files") as err:
        build_gallery(tmp_path / "empty", hand, progress=False)
    assert "got none" in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        build_gallery(tmp_path / "nowhere", hand, progress=False)
    with pytest.raises(InputError, match="empty list"):
        build_gallery([], hand, progress=False)


# ---------------------------------------------------------------------------- files

def test_save_load_round_trip(tmp_path):
    g = random_gallery()
    written = g.save(tmp_path / "out" / "gallery")
    assert written == tmp_path / "out" / "gallery.safetensors"
    sidecar = json.loads((tmp_path / "out" / "gallery.json").read_text())
    assert sidecar["created_with"]["glimpse"] and sidecar["n"] == 50 and sidecar["dim"] == 16
    for name in ("gallery", "gallery.safetensors", "gallery.json"):
        back = Gallery.load(tmp_path / "out" / name)
        assert torch.equal(back.embeddings, g.embeddings)
        assert (back.ids, back.paths, back.hashes, back.embedder, back.dim) == (
            g.ids, g.paths, g.hashes, g.embedder, g.dim)
    half = Gallery.load(written, dtype=torch.float16)
    assert half.embeddings.dtype == torch.float16
    assert "50 images" in half.summary() and "float16" in half.summary()
    assert gallery_files("x/g.safetensors") == (Path("x/g.safetensors"), Path("x/g.json"))


def test_missing_and_mismatched_files(tmp_path):
    with pytest.raises(InputError, match="does not exist") as err:
        Gallery.load(tmp_path / "nothing")
    assert "glimpse gallery build" in str(err.value)
    path = random_gallery().save(tmp_path / "g")
    sidecar_path = tmp_path / "g.json"
    sidecar = json.loads(sidecar_path.read_text())

    sidecar_path.rename(tmp_path / "moved.json")
    with pytest.raises(InputError, match="sidecar g.json"):
        Gallery.load(path)
    (tmp_path / "moved.json").rename(sidecar_path)

    for field, value, shown in (("ids", sidecar["ids"][:-1], "N=49"), ("dim", 32, "D=32")):
        sidecar_path.write_text(json.dumps(dict(sidecar, **{field: value})))
        with pytest.raises(InputError, match="different builds") as err:
            Gallery.load(path)
        assert shown in str(err.value) and "N=50, D=16" in str(err.value)
    sidecar_path.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        Gallery.load(path)


class _Trap:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_a_pickle_is_never_unpickled(tmp_path, writer):
    marker = tmp_path / "unpickled"
    path = tmp_path / "gallery.safetensors"
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"embeddings": _Trap(marker)}))
    else:
        torch.save({"embeddings": torch.zeros(3, 4)}, path)
    random_gallery(3, 4).save(tmp_path / "other")
    (tmp_path / "other.json").rename(tmp_path / "gallery.json")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        Gallery.load(path)
    assert not marker.exists()


def test_wrong_tensor_name(tmp_path):
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2, 2)}, str(tmp_path / "g.safetensors"))
    with pytest.raises(InputError, match="named 'embeddings'"):
        Gallery.load(tmp_path / "g.safetensors")


# ---------------------------------------------------------------------------- search

def test_topk_is_exact_cosine():
    g = random_gallery(200, 16)
    q = np.random.default_rng(1).standard_normal((7, 16)) * 5
    scores, idx = g.topk(q, k=5)
    ref_s, ref_i = brute_force(g, q, 5)
    assert scores.shape == idx.shape == (7, 5) and scores.dtype == torch.float32 and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, atol=1e-5)
    # torch or numpy, any float dtype, one query as a vector.
    s1, i1 = g.topk(torch.from_numpy(q[0]).float(), k=5)
    assert s1.shape == (1, 5) and torch.equal(i1[0], idx[0])


def test_topk_chunks_merge_exactly(monkeypatch):
    g = random_gallery(1000, 8, seed=3)
    q = torch.randn(9, 8, generator=torch.Generator().manual_seed(4))
    whole = g.topk(q, k=10)
    monkeypatch.setattr(gallery_module, "ENTRY_CHUNK", 7)  # k spans chunks; last chunk is short
    monkeypatch.setattr(gallery_module, "QUERY_CHUNK", 4)
    chunked = g.topk(q, k=10)
    assert torch.equal(whole[1], chunked[1])
    torch.testing.assert_close(whole[0], chunked[0])
    assert torch.equal(g.topk(q, k=1000)[1].sort(dim=1).values, torch.arange(1000).expand(9, -1))


def test_topk_half_precision():
    g = random_gallery(300, 32, seed=5)
    q = torch.randn(4, 32, generator=torch.Generator().manual_seed(6))
    ref_s, ref_i = g.topk(q, k=3)
    for dtype in (torch.float16, torch.bfloat16):
        s, i = g.to(dtype=dtype).topk(q.to(dtype), k=3)
        assert s.dtype == torch.float32
        torch.testing.assert_close(s, ref_s, atol=2e-2, rtol=0)
        assert torch.equal(i[:, 0], ref_i[:, 0])


def test_zero_row_scores_zero():
    g = random_gallery(5, 4)
    g = Gallery(torch.cat([g.embeddings[:4], torch.zeros(1, 4)]), g.ids, g.paths, g.embedder, 4, g.hashes)
    scores, idx = g.topk(torch.ones(4), k=5)
    assert torch.isfinite(scores).all() and scores[0, idx[0].tolist().index(4)] == 0


@pytest.mark.parametrize("k", [0, 51, 2.5, True])
def test_bad_k(k):
    with pytest.raises(InputError, match=r"k in \[1, 50\]"):
        random_gallery().topk(np.ones(16), k=k)


def test_bad_queries():
    g = random_gallery()
    with pytest.raises(InputError, match=r"queries of shape \(B, 16\)") as err:
        g.topk(np.ones((2, 8)))
    assert "(2, 8)" in str(err.value)
    with pytest.raises(InputError, match="finite"):
        g.topk(np.full(16, np.nan))


def test_check_embedder(caplog):
    g = random_gallery()
    g.check_embedder("handcrafted:dim=16", 16)
    with pytest.raises(InputError, match="--embedder open_clip:ViT-H-14:/w.bin") as err:
        g.check_embedder("open_clip:ViT-H-14:/w.bin", 1024)
    assert "handcrafted:dim=16 (16-d)" in str(err.value) and "(1024-d)" in str(err.value)
    with pytest.raises(InputError, match="rebuild"):
        g.check_embedder("handcrafted", 256)
    clip = Gallery(g.embeddings, g.ids, g.paths, "open_clip:ViT-H-14:/data/a/w.bin", 16, g.hashes)
    with caplog.at_level(logging.WARNING, "glimpse.models.gallery"):
        clip.check_embedder("open_clip:ViT-H-14:/home/b/w.bin", 16)  # same weights, other machine
    assert "assuming the same weights" in caplog.text
    with pytest.raises(InputError):
        clip.check_embedder("open_clip:ViT-H-14:random", 16)


def test_inconsistent_gallery_is_refused():
    g = random_gallery(4, 4)
    with pytest.raises(InputError, match="one entry in ids"):
        Gallery(g.embeddings, g.ids[:3], g.paths, g.embedder, 4, g.hashes)
    with pytest.raises(InputError, match="dimension"):
        Gallery(g.embeddings, g.ids, g.paths, g.embedder, 8, g.hashes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_topk_on_gpu():
    g = random_gallery(5000, 64)
    q = torch.randn(3, 64)
    ref = g.topk(q, k=5)
    for dtype in (torch.float32, torch.float16):
        s, i = g.to("cuda", dtype).topk(q, k=5)
        assert s.device.type == "cuda"
        assert torch.equal(i[:, 0].cpu(), ref[1][:, 0])
