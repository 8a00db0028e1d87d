"""The embedded generator: a tiny training, save and load, generation, two-stage, bad input;
fine-tuning on decoded embeddings and the reconstruction report on a small simulated session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glimpse.models.generators import load_generator
from glimpse.models.generators.embedded import WEIGHTS_FILE, EmbeddedGenerator, default_folder
from glimpse.models.generators.train_embedded import EmbeddedTrainConfig, train_embedded
from glimpse.streaming.errors import InputError

# A tiny training (a few steps on a few dozen drawn images), a ridge checkpoint on the
# shared small session and a reconstruction report: ~20 s on a loaded 2-core runner.
pytestmark = pytest.mark.timeout(180)

TINY = {"hidden": 16, "latent_channels": 4, "latent_size": 4, "block_out_channels": [8, 8],
        "layers_per_block": 1, "norm_num_groups": 4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    """A generator trained for a few steps: (folder, generator)."""
    out = tmp_path_factory.mktemp("generator") / "tiny"
    config = EmbeddedTrainConfig(steps=4, batch_size=8, pool=16, fresh_per_step=4, size=32, draw_size=64,
                                 eval_images=6, architecture=TINY, threads=1)
    return out, train_embedded(config, out, command="glimpse generator train --steps 4")


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_training_writes_a_folder_that_loads_back(tiny):
    folder, trained = tiny
    config = json.loads((folder / "generator.json").read_text())
    assert config["kind"] == "embedded" and config["embedder"] == "handcrafted" and config["dim"] == 256
    assert len(config["data_fingerprint"]) == 64 and config["training"]["command"].startswith("glimpse")
    metrics = config["metrics"]["held_out_true_embeddings"]
    assert {"two_way", "pixcorr", "ssim", "pixcorr_chance", "ssim_chance"} <= set(metrics)
    assert json.loads((folder / "progress.json").read_text())["state"] == "done"
    loaded = load_generator(folder)
    assert isinstance(loaded, EmbeddedGenerator) and loaded.size == 32
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    assert np.array_equal(loaded.generate(x), trained.generate(x))


def test_generation_shapes_determinism_and_conditioning(tiny, embeddings):
    generator = tiny[1]
    images = generator.generate(embeddings, seed=0)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, generator.generate(embeddings, seed=0, steps=2))
    assert not np.array_equal(images[0], images[1])  # a different embedding, a different image
    assert generator.generate(embeddings[:0]).shape == (0, 32, 32, 3)
    generator.warmup()


def test_two_stage_takes_the_structure_from_the_init_images(tiny, embeddings):
    import copy

    import torch

    generator = copy.deepcopy(tiny[1])
    # Known colours (figure and texture shade red, background blue), so the mask shows.
    with torch.no_grad():
        generator.model.to_colours.weight.zero_()
        generator.model.to_colours.bias.copy_(torch.tensor([9.0, -9, -9, -9, -9, 9, 9, -9, -9]))
    init = np.zeros((3, 48, 48, 3), np.uint8)
    init[:, 12:36, 12:36] = 255  # a white square on black: pixels 8-24 at 32 px
    kept = generator.generate(embeddings, init_images=list(init), strength=0.0)
    free = generator.generate(embeddings, init_images=list(init), strength=1.0)
    assert np.array_equal(free, generator.generate(embeddings))
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    assert np.all(np.abs(kept[:, 10:22, 10:22] - red).max(axis=-1) <= 1)
    assert np.all(np.abs(kept[:, :6, :6] - blue).max(axis=-1) <= 1)
    assert np.all(np.abs(kept[:, 26:, 26:] - blue).max(axis=-1) <= 1)
    half = generator.generate(embeddings, init_images=list(init), strength=0.5)
    assert not np.array_equal(half, kept) and not np.array_equal(half, free)


@pytest.mark.parametrize("options", [{"steps": 0}, {"steps": 51}, {"steps": 1.5}, {"strength": 1.5},
                                     {"strength": -0.1}, {"guidance": -1.0}, {"guidance": float("nan")}])
def test_out_of_range_options_are_refused(tiny, embeddings, options):
    with pytest.raises(InputError):
        tiny[1].generate(embeddings, **options)


def test_bad_embeddings_and_init_images_are_refused(tiny, embeddings):
    generator = tiny[1]
    with pytest.raises(InputError, match=r"\(N, 256\)"):
        generator.generate(np.zeros((2, 128), np.float32))
    with pytest.raises(InputError, match="handcrafted.*open_clip"):
        generator.check_embedder("open_clip:ViT-H-14", 1024)
    generator.check_embedder("handcrafted", 256)
    with pytest.raises(InputError, match="one init image per embedding"):
        generator.generate(embeddings, init_images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(InputError, match="uint8"):
        generator.generate(embeddings[:1], init_images=[np.zeros((8, 8, 3), np.float32)])


def test_missing_or_incomplete_folders_name_the_missing_component(tiny, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_generator(tmp_path / "nowhere")
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "generator.json").write_text((tiny[0] / "generator.json").read_text())
    with pytest.raises(InputError, match=WEIGHTS_FILE):
        load_generator(folder)
    config = json.loads((tiny[0] / "generator.json").read_text())
    config["architecture"]["hidden"] = 24  # weights of another architecture
    (folder / "generator.json").write_text(json.dumps(config))
    (folder / WEIGHTS_FILE).write_bytes((tiny[0] / WEIGHTS_FILE).read_bytes())
    with pytest.raises(InputError, match="wrong shapes"):
        load_generator(folder)
    del config["dim"]
    (folder / "generator.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="dim"):
        load_generator(folder)


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 32, "pool": 16}, {"lr": 0.0}, {"size": 8}])
def test_bad_training_options_are_refused(bad, tmp_path):
    with pytest.raises(InputError):
        train_embedded(EmbeddedTrainConfig(**bad), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_the_shipped_generator_draws_images_the_embedder_identifies(one_thread):
    folder = default_folder("handcrafted")
    if folder is None:
        pytest.fail("the package ships no generator for the handcrafted embedder "
                    "(models/generators/weights/handcrafted)")
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 5 * 2**20
    from glimpse.models.embedders import load_embedder
    from glimpse.models.generators.train_embedded import draw_stimuli

    from glimpse.models.generators.metrics import reconstruction_metrics

    generator = load_generator(folder)
    embedder = load_embedder("handcrafted")
    drawn = draw_stimuli(60, np.random.default_rng(123), embedder, size=generator.size)
    metrics = reconstruction_metrics(generator.generate(drawn.embeddings), drawn.images, embedder)
    # Measured on 500 held-out images: 2-way 0.999, PixCorr 0.68 (generator.json); the
    # bounds leave room for the sampling noise of 60 images.
    assert metrics["two_way"] > 0.9 and metrics["pixcorr"] > 0.4


@pytest.fixture(scope="module")
def ridge(small_meg_session, tmp_path_factory):
    """A ridge checkpoint of the shared small simulated session: (dataset, checkpoint folder)."""
    from glimpse.models.data import load_session
    from glimpse.models.train import TrainConfig, train

    root = small_meg_session[0]
    out = tmp_path_factory.mktemp("ridge") / "ckpt"
    train(load_session(root, progress=False), TrainConfig(model="ridge", ridge_draws=1, presence_draws=1,
                                                            cache_dir=str(tmp_path_factory.mktemp("cache"))),
          out, progress=False)
    return root, out


def test_finetune_and_reconstruct_on_decoded_embeddings(tiny, ridge, tmp_path):
    from glimpse.models.generators.finetune import FinetuneConfig, finetune_conditioning
    from glimpse.models.generators.reconstruct import reconstruct

    root, ckpt = ridge
    tuned = finetune_conditioning(tiny[0], ckpt, root, tmp_path / "tuned", FinetuneConfig(epochs=2, threads=1))
    base = tiny[1].model.state_dict()
    changed = {k for k, v in tuned.model.state_dict().items() if not np.array_equal(v.numpy(), base[k].numpy())}
    assert changed and all(k.startswith("condition.") for k in changed)  # only the conditioning moved
    assert tuned.config["finetune"]["n_pairs"] > 0
    report = reconstruct(ckpt, root, tiny[0], tmp_path / "report", finetuned=tmp_path / "tuned", max_trials=20,
                         size=32, extra_embedders=["handcrafted:dim=128"], refine_steps=2, refine_trials=4)
    blocks = report["blocks"]
    assert set(blocks) == {"clean_embeddings", "single_trial", "averaged", "single_trial_refined",
                           "averaged_refined"}
    refined = blocks["single_trial_refined"]["refined"]
    assert refined["n"] == blocks["single_trial_refined"]["generated"]["n"] == 4
    assert refined["refinement"]["gradient"] == "spsa"
    assert refined["refinement"]["cosine_after"] >= refined["refinement"]["cosine_before"]
    assert "Refinement (spsa, 2 steps, 4 images)" in (tmp_path / "report" / "summary.md").read_text()
    assert {"retrieved", "generated", "two_stage", "generated (fine-tuned)", "two_stage (fine-tuned)"} \
        <= set(blocks["single_trial"])
    for name in ("metrics.json", "summary.md", "grid_single_trial.png", "grid_averaged.png",
                 "grid_single_trial_refined.png", "grid_averaged_refined.png"):
        assert (tmp_path / "report" / name).is_file()
    assert blocks["single_trial"]["retrieved"]["n"] == 20
    assert 0.0 <= blocks["averaged"]["generated"]["two_way_handcrafted:dim=128"] <= 1.0


def test_a_checkpoint_of_another_embedder_is_refused(tiny, ridge, tmp_path):
    import shutil

    from glimpse.models.generators.finetune import finetune_conditioning

    root, ckpt = ridge
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    config = json.loads((other / "config.json").read_text())
    config["embedder"].update(name="open_clip:ViT-B-32", dim=512)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="handcrafted.*open_clip"):
        finetune_conditioning(tiny[0], other, root, tmp_path / "never")


def test_refinement_brings_the_shipped_generator_closer_to_its_targets(one_thread):
    """SPSA steps with the (non-differentiable) handcrafted embedder: every image's cosine to
    its target is at least where it started, higher on average, and is what the returned
    pixels measure."""
    from glimpse.models.embedders import load_embedder
    from glimpse.models.generators.refine import refine
    from glimpse.models.generators.train_embedded import draw_stimuli

    generator, embedder = load_generator(default_folder("handcrafted")), load_embedder("handcrafted")
    targets = draw_stimuli(6, np.random.default_rng(9), embedder, size=generator.size).embeddings
    result = refine(generator, embedder, targets, steps=6, seed=0)
    assert result.gradient == "spsa" and result.images.shape == (6, 64, 64, 3)
    assert np.all(result.cosine_after >= result.cosine_before)
    assert result.cosine_after.mean() > result.cosine_before.mean() + 0.01
    got = embedder.embed(list(result.images), progress=False)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    want = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    assert np.allclose((got * want).sum(1), result.cosine_after, atol=1e-4)


def test_refinement_bad_input(tiny):
    from glimpse.models.embedders import load_embedder
    from glimpse.models.generators.base import Generator
    from glimpse.models.generators.refine import refine

    embedder = load_embedder("handcrafted")
    with pytest.raises(InputError, match=r"targets of shape \(N, 256\)"):
        refine(tiny[1], embedder, np.zeros((2, 17), np.float32))
    with pytest.raises(InputError, match="refine-steps 0"):
        refine(tiny[1], embedder, np.ones((2, 256), np.float32), steps=-1)
    with pytest.raises(InputError, match="whose latent can be refined"):
        refine(Generator(embedder="handcrafted", dim=256, size=32), embedder, np.ones((1, 256), np.float32))
