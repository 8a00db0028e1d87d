"""Image embedders: the handcrafted default, OpenCLIP from local weights, the file cache.

OpenCLIP runs for real on a tiny ViT registered from a JSON config (2 layers, width 32,
32x32 images), saved to disk and loaded back through ``load_embedder``: the same code
path as ViT-H-14, in about a second on a CPU, with the network blocked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from glimpse.models import embedders
from glimpse.models.embedders import (EMBEDDERS, HandcraftedEmbedder, ImageEmbedder, OpenClipEmbedder,
                              embedding_space, file_sha256, load_embedder)
from glimpse.streaming.errors import InputError

TINY = "glimpse-tiny"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def drawing(kind: str = "disc", size: int = 96, fg=(220, 40, 40), bg=(20, 20, 60), offset: int = 0) -> Image.Image:
    """A figure on a flat background, drawn identically on every machine."""
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    c, r = size // 2 + offset, size // 4
    if kind == "disc":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=fg)
    elif kind == "bar":
        draw.rectangle([c - r, c - r // 4, c + r, c + r // 4], fill=fg)
    else:
        draw.polygon([(c, c - r), (c + r, c + r), (c - r, c + r)], fill=fg)
    return image


@pytest.fixture(scope="module")
def hand() -> HandcraftedEmbedder:
    return load_embedder("handcrafted")


# ---------------------------------------------------------------------------- registry

def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_embedder_is_registered():
    registered = set(EMBEDDERS.values())
    missing = [c.__name__ for c in _subclasses(ImageEmbedder) if c not in registered
               and c.__module__.startswith("models.")]
    assert not missing, f"register these in glimpse.models.embedders.EMBEDDERS: {missing}"


def test_unknown_embedder_names_the_known_forms():
    with pytest.raises(InputError) as err:
        load_embedder("clip-vit")
    message = str(err.value)
    assert "handcrafted" in message and "open_clip:ARCH:PATH" in message and "'clip-vit'" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------- handcrafted

def test_handcrafted_shape_norm_and_name(hand):
    x = hand.embed([drawing(), drawing("bar")], progress=False)
    assert hand.name == "handcrafted" and hand.dim == 256
    assert x.shape == (2, 256) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    small = load_embedder("handcrafted:dim=128")
    assert small.name == "handcrafted:dim=128" and small.embed([drawing()], progress=False).shape == (1, 128)
    assert load_embedder("handcrafted:dim=256").name == "handcrafted"


@pytest.mark.parametrize("spec", ["handcrafted:dim=0", "handcrafted:dim=100000", "handcrafted:size=3"])
def test_handcrafted_bad_spec(spec):
    with pytest.raises(InputError, match="handcrafted"):
        load_embedder(spec)


def test_handcrafted_is_deterministic_and_independent_of_the_batch(hand):
    images = [drawing(), drawing("bar"), drawing("triangle", fg=(30, 200, 90))]
    alone = hand.embed(images[:1], progress=False)
    together = hand.embed(images, batch_size=2, progress=False)
    np.testing.assert_array_equal(alone[0], together[0])
    np.testing.assert_array_equal(together, hand.embed(images, progress=False))
    # A fresh instance (what another process or machine builds) gives the same numbers.
    np.testing.assert_array_equal(together, HandcraftedEmbedder().embed(images, progress=False))


def test_handcrafted_golden_values(hand):
    # Pinned numbers: a change here changes every cached embedding and every gallery
    # built with the default embedder, so bump _FEATURES_VERSION with it.
    x = hand.embed([drawing()], progress=False)[0]
    np.testing.assert_allclose(x[:6], [-0.06669, 0.01076, -0.10594, 0.08689, -0.05869, 0.06969], atol=1e-4)


def test_handcrafted_accepts_every_input_kind(hand, tmp_path):
    image = drawing("triangle")
    path = tmp_path / "t.png"
    image.save(path)
    array = np.asarray(image)
    ref = hand.embed([image], progress=False)
    for variant in (path, str(path), array, array.astype(np.float32) / 255):
        np.testing.assert_allclose(hand.embed([variant], progress=False), ref, atol=1e-6)
    np.testing.assert_allclose(hand.embed(path, progress=False), ref, atol=1e-6)  # one image, bare
    rgba = np.dstack([array, np.full(array.shape[:2], 255, np.uint8)])
    np.testing.assert_allclose(hand.embed([rgba], progress=False), ref, atol=1e-6)
    assert hand.embed([array[..., 0]], progress=False).shape == (1, 256)  # greyscale
    palette = image.convert("P")
    palette.info["transparency"] = 0  # PIL warns on P -> RGB with transparency: must not here
    palette.save(tmp_path / "p.png", transparency=0)
    assert hand.embed_files([tmp_path / "p.png"], progress=False).shape == (1, 256)
    assert hand.embed([palette], progress=False).shape == (1, 256)
    assert hand.embed([], progress=False).shape == (0, 256)


def test_same_concept_is_closer_than_other_concepts(small_meg_session, hand):
    root, _, _ = small_meg_session
    files = sorted((root / "stimuli").glob("*/*/*.png"))
    files = [f for f in files if f.parent.name != "catch"]
    x = hand.embed_files(files, progress=False)
    concept = np.array([f.parent.name for f in files])
    cos = x @ x.T
    same = concept[:, None] == concept[None]
    np.fill_diagonal(same, False)
    other = concept[:, None] != concept[None]
    within, between = cos[same].mean(), cos[other].mean()
    logging.getLogger("glimpse.tests").info("within %.3f, between %.3f", within, between)
    assert within > between + 0.05, (within, between)


def test_handcrafted_batches_of_simulator_sized_images(hand):
    # 128x128 images, the simulator's default size, in batches of any size: each image's
    # embedding is its own (no batch statistics), unit-norm and finite. The speed of this
    # (images/s) is measured by bench/gallery.py, not asserted here.
    rng = np.random.default_rng(0)
    images = [drawing(kind, 128, tuple(int(v) for v in rng.integers(0, 255, 3)), offset=int(o))
              for kind, o in zip(["disc", "bar", "triangle"] * 22, rng.integers(-20, 20, 66))]
    x = hand.embed(images, batch_size=32, progress=False)
    assert x.shape == (66, hand.dim) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.concatenate([hand.embed([im], progress=False) for im in images[:5]])
    np.testing.assert_array_equal(x[:5], one_by_one)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((4, 4, 3), np.int32), "dtype"),
    (42, "image path"),
])
def test_bad_image_arrays(hand, bad, match):
    with pytest.raises(InputError, match=match):
        hand.embed([bad], progress=False)


def test_bad_image_files(hand, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        hand.embed([tmp_path / "missing.png"], progress=False)
    with pytest.raises(InputError, match="does not exist"):
        hand.embed_files([tmp_path / "missing.png"], progress=False)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for call in (hand.embed, hand.embed_files):
        with pytest.raises(InputError, match="cannot be decoded") as err:
            call([text], progress=False)
        assert "notes.png" in str(err.value)
    good = tmp_path / "good.png"
    drawing().save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot be decoded"):
        hand.embed_files([truncated], progress=False)


# ---------------------------------------------------------------------------- cache

def test_embed_files_cache_by_content(hand, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    files = []
    for i, kind in enumerate(["disc", "bar", "triangle"]):
        files.append(folder / f"{i}.png")
        drawing(kind).save(files[-1])
    cache = tmp_path / "cache"
    first = hand.embed_files(files, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(first, hand.embed(files, progress=False))
    stored = sorted(p.name for p in next(cache.iterdir()).iterdir())
    assert "index.json" in stored and all(n == "index.json" or n.endswith(".safetensors") for n in stored)

    # A renamed and a copied file hit the cache: nothing is recomputed.
    files[0].rename(folder / "renamed.png")
    shutil.copy(files[1], folder / "copy.png")
    calls = []
    original = HandcraftedEmbedder._embed_pil
    monkeypatch.setattr(HandcraftedEmbedder, "_embed_pil",
                        lambda self, ims: calls.append(len(ims)) or original(self, ims))
    again = hand.embed_files([folder / "renamed.png", folder / "copy.png", files[2]], cache_dir=cache, progress=False)
    assert calls == []
    np.testing.assert_array_equal(again, first[[0, 1, 2]])

    # An edited file misses (and only it is embedded).
    drawing("disc", fg=(10, 250, 10)).save(files[2])
    edited = hand.embed_files([files[2], files[1]], cache_dir=cache, progress=False)
    assert calls == [1]
    assert not np.allclose(edited[0], first[2])

    # Another embedder identity keeps its own entries.
    other = load_embedder("handcrafted:dim=64").embed_files(files[1:], cache_dir=cache, progress=False)
    assert other.shape == (2, 64) and len(list(cache.iterdir())) == 2


def test_damaged_cache_is_only_a_miss(hand, tmp_path, caplog):
    path = tmp_path / "a.png"
    drawing().save(path)
    cache = tmp_path / "cache"
    ref = hand.embed_files([path], cache_dir=cache, progress=False)
    (next(cache.iterdir()) / "index.json").write_text("{broken")
    with caplog.at_level(logging.WARNING, "glimpse.models.embedders"):
        np.testing.assert_array_equal(hand.embed_files([path], cache_dir=cache, progress=False), ref)
    assert "unreadable" in caplog.text


def test_file_sha256(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"glimpse")
    assert file_sha256(path) == hashlib.sha256(b"glimpse").hexdigest()
    with pytest.raises(InputError, match="does not exist"):
        file_sha256(tmp_path / "nope")


def test_embedding_space():
    assert embedding_space("handcrafted") == embedding_space("handcrafted:dim=256")
    assert embedding_space("handcrafted") != embedding_space("handcrafted:dim=128")
    assert embedding_space("open_clip:ViT-H-14:/a/w.bin") == embedding_space("open_clip:ViT-H-14:/b/w.bin")
    assert embedding_space("open_clip:ViT-H-14:/a/w.bin") != embedding_space("open_clip:ViT-L-14:/a/w.bin")


# ---------------------------------------------------------------------------- OpenCLIP

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Registers glimpse-tiny, saves seeded weights: (safetensors path, in-memory model, preprocess)."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    (folder / "configs").mkdir()
    (folder / "configs" / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    wide = dict(TINY_CONFIG, vision_cfg=dict(TINY_CONFIG["vision_cfg"], width=48))
    (folder / "configs" / f"{TINY}-wide.json").write_text(json.dumps(wide))
    open_clip.add_model_config(folder / "configs")
    torch.manual_seed(1234)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=None)
    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights = folder / "weights.safetensors"
    save_file(state, str(weights))
    torch.save(state, folder / "weights.bin")
    return weights, model, preprocess


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or hub download fails the test."""
    import open_clip.factory

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if args else kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", refuse)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", refuse)


def _images(n=5):
    rng = np.random.default_rng(7)
    return [drawing(k, 40, tuple(int(v) for v in rng.integers(0, 255, 3)))
            for k in ["disc", "bar", "triangle", "disc", "bar"][:n]]


def test_open_clip_loads_the_saved_weights(tiny, no_network, monkeypatch):
    import open_clip

    weights, model, preprocess = tiny
    seen = {}
    create = open_clip.create_model_and_transforms

    def spy(*args, **kwargs):
        import huggingface_hub.constants as hub

        seen.update(env=os.environ.get("HF_HUB_OFFLINE"), constant=hub.HF_HUB_OFFLINE,
                    pretrained=kwargs.get("pretrained"))
        return create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    emb = load_embedder(f"open_clip:{TINY}:{weights}")
    assert seen == {"env": "1", "constant": True, "pretrained": str(weights.resolve())}
    assert isinstance(emb, OpenClipEmbedder)
    assert emb.dim == 16 and emb.name == f"open_clip:{TINY}:{weights.resolve().as_posix()}"
    images = _images()
    x = emb.embed(images, batch_size=2, progress=False)
    assert x.shape == (5, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x, emb.embed(images, progress=False), atol=1e-5)
    with torch.inference_mode():
        ref = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=False).numpy()
    np.testing.assert_allclose(x, ref, atol=1e-5)
    assert not np.allclose(np.linalg.norm(x, axis=1), 1.0)  # unnormalised, as generators need


def test_open_clip_torch_bin_and_folder(tiny, no_network, tmp_path):
    weights, _, _ = tiny
    images = _images(2)
    ref = load_embedder(f"open_clip:{TINY}:{weights}").embed(images, progress=False)
    from_bin = load_embedder(f"open_clip:{TINY}:{weights.with_suffix('.bin')}")
    np.testing.assert_allclose(from_bin.embed(images, progress=False), ref, atol=1e-6)
    folder = tmp_path / "vit"
    folder.mkdir()
    shutil.copy(weights, folder / "open_clip_model.safetensors")
    (folder / "README.md").write_text("weights")
    from_folder = load_embedder(f"open_clip:{TINY}:{folder}")
    assert from_folder.name.endswith("/vit/open_clip_model.safetensors")
    np.testing.assert_allclose(from_folder.embed(images, progress=False), ref, atol=1e-6)


def test_open_clip_random_only_when_asked(tiny, no_network, caplog):
    with pytest.raises(InputError, match="no weights path"):
        load_embedder(f"open_clip:{TINY}")
    with caplog.at_level(logging.WARNING, "glimpse.models.embedders"):
        a = load_embedder(f"open_clip:{TINY}:random")
    assert "meaningless" in caplog.text and a.name == f"open_clip:{TINY}:random"
    b = load_embedder(f"open_clip:{TINY}", allow_random_init=True)
    images = _images(2)
    np.testing.assert_array_equal(a.embed(images, progress=False), b.embed(images, progress=False))


def test_open_clip_bad_inputs(tiny, no_network, tmp_path):
    weights, _, _ = tiny
    with pytest.raises(InputError, match="ViT-H-14") as err:
        load_embedder("open_clip:ViT-H-41:/nowhere")
    assert "close names" in str(err.value)
    with pytest.raises(InputError, match="does not exist") as err:
        load_embedder(f"open_clip:{TINY}:{tmp_path / 'missing.safetensors'}")
    assert "missing.safetensors" in str(err.value)
    with pytest.raises(InputError, match="looked for open_clip_model.safetensors"):
        load_embedder(f"open_clip:{TINY}:{tmp_path}")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(InputError, match="cannot be read"):
        load_embedder(f"open_clip:{TINY}:{truncated}")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError, match="cannot be loaded"):
        load_embedder(f"open_clip:{TINY}:{garbage}")
    with pytest.raises(InputError, match=f"architecture {TINY}-wide"):
        load_embedder(f"open_clip:{TINY}-wide:{weights}")
    with pytest.raises(InputError, match="architecture name"):
        load_embedder("open_clip:hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    with pytest.raises(InputError, match="open_clip:ARCH:PATH"):
        load_embedder("open_clip")
    with pytest.raises(InputError, match="device"):
        load_embedder(f"open_clip:{TINY}:{weights}", device="tpu:x")


def test_open_clip_cache_identity_tracks_the_weights_file(tiny, tmp_path):
    weights, _, _ = tiny
    copy = tmp_path / "w.safetensors"
    shutil.copy(weights, copy)
    a = load_embedder(f"open_clip:{TINY}:{copy}")
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))  # replaced weights: new mtime, new identity
    b = load_embedder(f"open_clip:{TINY}:{copy}")
    assert a.name == b.name and a.identity != b.identity
    assert embedders.EmbeddingCache(tmp_path, a).folder.name.startswith(f"open_clip_{TINY}-")
