"""The diffusers back-ends, run for real on tiny pipelines built in code.

Each pipeline (SD 1.5 and SDXL with a random IP-Adapter, Stable unCLIP with a tiny
CLIP vision encoder, Kandinsky 2.2's decoder) has the published architecture's
block types at toy widths (UNet block channels (4, 8) or (32, 64), as diffusers' own
tests), is saved with ``save_pretrained`` and loaded back through ``load_generator``,
the loader users use; 32 px, 1-2 steps, on the CPU, with no network.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from glimpse.models.generators import GENERATOR_FILE, load_generator
from glimpse.models.generators.pipelines import (IPAdapterGenerator, KandinskyGenerator, UnCLIPGenerator,
                                                  prepare_generator_folder, random_ip_adapter)
from glimpse.streaming.errors import InputError

# Building and saving four tiny pipelines takes ~5 s, the tests ~10 s on 2 cores; the
# limit leaves room for a loaded CI machine without letting a hung call stall the run.
# diffusers' Euler schedulers call np.array on a torch tensor, which numpy 2 flags
# (torch's __array__ has no copy keyword): third-party, harmless, named narrowly.
pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")]

SIZE, DIM = 32, 16
EMBEDDER = "open_clip:tiny:random"
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}


def tiny_tokenizer(tmp):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz ":
        vocab[letter.strip() or "!"] = len(vocab)
        vocab[(letter.strip() or "!") + "</w>"] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=77)


def tiny_text_encoder(projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=2, vocab_size=64, projection_dim=32)
    torch.manual_seed(0)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=2, sample_size=SIZE)


def sd15(tmp):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=SIZE // 2,
                                in_channels=4, out_channels=4, norm_num_groups=2, cross_attention_dim=32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2)
    return StableDiffusionPipeline(unet=unet, vae=tiny_vae(), text_encoder=tiny_text_encoder(),
                                   tokenizer=tiny_tokenizer(tmp), scheduler=EulerDiscreteScheduler(**SD_BETAS),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sdxl(tmp):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=SIZE // 2,
                                in_channels=4, out_channels=4, norm_num_groups=2, cross_attention_dim=64,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    tokenizer = tiny_tokenizer(tmp)
    return StableDiffusionXLPipeline(unet=unet, vae=tiny_vae(), text_encoder=tiny_text_encoder(),
                                     text_encoder_2=tiny_text_encoder(projection=True), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer,
                                     scheduler=EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing"))


def unclip(tmp):
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=DIM, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=8))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2,
                                in_channels=4, out_channels=4, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                                class_embed_type="projection", projection_class_embeddings_input_dim=2 * DIM,
                                use_linear_projection=True, upcast_attention=True)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), image_encoder=encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=DIM),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=tiny_tokenizer(tmp),
        text_encoder=tiny_text_encoder(), unet=unet, vae=tiny_vae(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1))


def kandinsky(tmp):
    from diffusers import DDIMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image", block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", layers_per_block=1, encoder_hid_dim=DIM,
        encoder_hid_dim_type="image_proj", cross_attention_dim=32, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None, sample_size=SIZE // 2)
    movq = VQModel(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                   in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                   num_vq_embeddings=12, out_channels=3, up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
                   vq_embed_dim=4)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


def taesd(folder):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(4, 4), decoder_block_out_channels=(4, 4),
                    num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4).save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One prepared generator folder per back-end: {"sd15", "sdxl", "unclip", "kandinsky"}."""
    root = tmp_path_factory.mktemp("generators")
    out = {}
    for name, build in (("sd15", sd15), ("sdxl", sdxl), ("unclip", unclip), ("kandinsky", kandinsky)):
        folder = root / name
        folder.mkdir()
        pipe = build(folder)
        pipe.save_pretrained(folder)
        kind = {"sd15": "ip_adapter", "sdxl": "ip_adapter"}.get(name, name)
        options = {}
        if kind == "ip_adapter":
            save_file(random_ip_adapter(pipe.unet, DIM), str(folder / "ip_adapter.safetensors"))
            options["ip_adapter"] = "ip_adapter.safetensors"
        prepare_generator_folder(folder, kind, embedder=EMBEDDER, dim=DIM, size=SIZE, **options)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def generators(folders):
    return {name: load_generator(folder) for name, folder in folders.items()}


def embeddings(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "unclip", "kandinsky"])
def test_generates_images_of_the_configured_size_deterministically(generators, name):
    generator = generators[name]
    assert generator.kind == {"sd15": "ip_adapter", "sdxl": "ip_adapter"}.get(name, name)
    assert (generator.embedder, generator.dim, generator.size) == (EMBEDDER, DIM, SIZE)
    first = generator.generate(embeddings(), steps=1, seed=3)
    assert first.shape == (2, SIZE, SIZE, 3) and first.dtype == np.uint8
    assert np.array_equal(first, generator.generate(embeddings(), steps=1, seed=3))
    other = generator.generate(embeddings(seed=1), steps=1, seed=3)
    assert np.abs(first.astype(int) - other).max() > 0, "a different embedding must change the image"


@pytest.mark.parametrize("name", ["sd15", "sdxl", "unclip", "kandinsky"])
def test_image_to_image_starts_from_the_init_images(generators, name):
    generator = generators[name]
    rng = np.random.default_rng(0)
    init = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(2)]
    kept = generator.generate(embeddings(), init_images=init, strength=0.0, seed=0)
    assert kept.shape == (2, SIZE, SIZE, 3)
    assert np.array_equal(kept[0], generator._init_image(init[0]))
    changed = generator.generate(embeddings(), init_images=init, steps=2, strength=0.5, seed=0)
    assert changed.shape == (2, SIZE, SIZE, 3)
    assert np.array_equal(changed, generator.generate(embeddings(), init_images=init, steps=2, strength=0.5, seed=0))
    other_init = generator.generate(embeddings(), init_images=init[::-1], steps=2, strength=0.5, seed=0)
    assert not np.array_equal(changed, other_init), "the init images must shape the result"


def test_classifier_free_guidance_runs(generators):
    for name in ("sd15", "unclip", "kandinsky"):
        images = generators[name].generate(embeddings(1), steps=1, guidance=3.0, seed=0)
        assert images.shape == (1, SIZE, SIZE, 3)


def test_taesd_and_a_few_step_scheduler_from_the_folder(folders, tmp_path):
    folder = copy(folders["sd15"], tmp_path)
    taesd(folder / "taesd")
    config = json.loads((folder / GENERATOR_FILE).read_text())
    (folder / GENERATOR_FILE).write_text(json.dumps({**config, "scheduler": "lcm"}))
    generator = load_generator(folder)
    assert type(generator.pipe.vae).__name__ == "AutoencoderTiny"
    assert type(generator.pipe.scheduler).__name__ == "LCMScheduler"
    init = [np.full((SIZE, SIZE, 3), 128, np.uint8)]
    assert generator.generate(embeddings(1), steps=2, seed=0).shape == (1, SIZE, SIZE, 3)
    assert generator.generate(embeddings(1), init_images=init, steps=1, seed=0).shape == (1, SIZE, SIZE, 3)


def test_missing_folder_and_missing_component_are_named(folders, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_generator(tmp_path / "nowhere")
    folder = copy(folders["sd15"], tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(InputError, match="'unet'"):
        load_generator(folder)
    folder = copy(folders["kandinsky"], tmp_path)
    for weights in (folder / "movq").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(InputError, match="'movq'"):
        load_generator(folder)
    (tmp_path / "bare").mkdir()
    with pytest.raises(InputError, match="model_index.json"):
        prepare_generator_folder(tmp_path / "bare", "unclip", embedder=EMBEDDER, dim=DIM)


def test_missing_or_foreign_ip_adapter_is_refused(folders, tmp_path):
    folder = copy(folders["sd15"], tmp_path)
    with pytest.raises(InputError, match="IP-Adapter weights file"):
        prepare_generator_folder(folder, "ip_adapter", embedder=EMBEDDER, dim=DIM)
    (folder / "ip_adapter.safetensors").unlink()
    with pytest.raises(InputError, match="no such file"):
        load_generator(folder)
    save_file({"image_proj.proj_in.weight": torch.zeros(8, DIM)}, str(folder / "plus.safetensors"))
    with pytest.raises(InputError, match="Plus"):
        prepare_generator_folder(folder, "ip_adapter", embedder=EMBEDDER, dim=DIM, ip_adapter="plus.safetensors")


def test_pipeline_of_another_kind_is_refused(folders, tmp_path):
    with pytest.raises(InputError, match="StableUnCLIPImg2ImgPipeline folder"):
        prepare_generator_folder(folders["kandinsky"], "unclip", embedder=EMBEDDER, dim=DIM)
    folder = copy(folders["kandinsky"], tmp_path)
    config = json.loads((folder / GENERATOR_FILE).read_text())
    (folder / GENERATOR_FILE).write_text(json.dumps({**config, "kind": "unclip"}))
    with pytest.raises(InputError, match="KandinskyV22Pipeline in model_index.json"):
        load_generator(folder)


def test_embedding_dimension_and_embedder_mismatch(folders, generators, tmp_path):
    for name in ("sd15", "unclip", "kandinsky"):
        with pytest.raises(InputError, match=f"embeddings of {DIM} dims"):
            prepare_generator_folder(folders[name], generators[name].kind, embedder=EMBEDDER, dim=DIM + 1,
                                     ip_adapter="ip_adapter.safetensors")
    folder = copy(folders["unclip"], tmp_path)
    config = json.loads((folder / GENERATOR_FILE).read_text())
    (folder / GENERATOR_FILE).write_text(json.dumps({**config, "dim": 1024}))
    with pytest.raises(InputError, match="1024 dims"):
        load_generator(folder)
    generator = generators["kandinsky"]
    with pytest.raises(InputError, match=rf"\(N, {DIM}\)"):
        generator.generate(np.zeros((1, DIM + 2), np.float32))
    with pytest.raises(InputError, match="handcrafted"):
        generator.check_embedder("handcrafted", DIM)
    generator.check_embedder(EMBEDDER, DIM)


@pytest.mark.parametrize("options, match", [
    ({"steps": 0}, "steps"), ({"steps": 2.0}, "steps"), ({"strength": 1.5}, "strength"),
    ({"strength": -0.1}, "strength"), ({"guidance": -1.0}, "guidance"), ({"guidance": float("nan")}, "guidance"),
])
def test_options_out_of_range_are_refused(generators, options, match):
    with pytest.raises(InputError, match=match):
        generators["sd15"].generate(embeddings(1), **options)


def test_bad_init_images_are_refused(generators):
    generator = generators["unclip"]
    with pytest.raises(InputError, match="one init image per embedding"):
        generator.generate(embeddings(2), init_images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(InputError, match="uint8"):
        generator.generate(embeddings(1), init_images=[np.zeros((8, 8, 3), np.float32)])


def test_full_size_without_a_gpu_warns_with_the_expected_speed_and_runs(folders, tmp_path, caplog):
    folder = copy(folders["sd15"], tmp_path)
    config = json.loads((folder / GENERATOR_FILE).read_text())
    (folder / GENERATOR_FILE).write_text(json.dumps({**config, "size": 256}))
    with caplog.at_level(logging.WARNING, logger="glimpse.models.generators.pipelines"):
        generator = load_generator(folder, device="cpu")
    assert any("256 px on cpu: expect about" in r.getMessage() for r in caplog.records)
    assert generator.generate(embeddings(1), steps=1, seed=0).shape == (1, 256, 256, 3)


def test_registered_kinds_are_the_back_end_classes(generators):
    assert isinstance(generators["sd15"], IPAdapterGenerator)
    assert isinstance(generators["sdxl"], IPAdapterGenerator)
    assert isinstance(generators["unclip"], UnCLIPGenerator)
    assert isinstance(generators["kandinsky"], KandinskyGenerator)
    assert type(generators["sdxl"].pipe).__name__ == "StableDiffusionXLPipeline"


@pytest.fixture(scope="module")
def clip16(tmp_path_factory):
    """A random OpenCLIP image tower with 16-d embeddings (the pipelines' conditioning space)."""
    import open_clip

    from glimpse.models.embedders import load_embedder

    configs = tmp_path_factory.mktemp("open_clip_configs")
    (configs / "glimpse-refine-tiny.json").write_text(json.dumps({
        "embed_dim": DIM, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(configs)
    return load_embedder("open_clip:glimpse-refine-tiny:random")


@pytest.mark.parametrize("name", ["sd15", "sdxl", "unclip", "kandinsky"])
def test_refinement_follows_exact_gradients_through_the_autoencoder(generators, clip16, name):
    """Latent refinement with a differentiable embedder: the decoded images' embeddings move
    towards the targets, and the cosines it reports are those of the images it returns."""
    from glimpse.models.generators.refine import refine

    generator, targets = generators[name], embeddings(3, seed=5)
    result = refine(generator, clip16, targets, steps=4, lr=0.2, seed=0)
    assert result.gradient == "autograd" and result.images.shape == (3, SIZE, SIZE, 3)
    assert np.all(result.cosine_after >= result.cosine_before) and result.cosine_after.mean() > result.cosine_before.mean()
    # Recomputed from the returned pixels, through the embedder's differentiable face.
    pixels = torch.from_numpy(result.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        got = torch.nn.functional.normalize(clip16.embed_tensor(pixels), dim=1)
    want = torch.nn.functional.normalize(torch.from_numpy(targets), dim=1)
    assert np.allclose((got * want).sum(1).numpy(), result.cosine_after, atol=0.02)
