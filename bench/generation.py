"""Generation speed of the diffusers back-ends; prints JSON.

Each back-end is built in code at its published full size with RANDOM weights (the
same compute as trained ones; nothing is downloaded): Stable Diffusion 1.5 and
SDXL-Turbo with an IP-Adapter (ViT-H, 1024-d), Stable Diffusion 2.1 unCLIP (1024-d)
and Kandinsky 2.2's decoder (1280-d). It is wrapped by the generator class users
get from ``load_generator`` (``PipelineGenerator.from_pipeline``) and timed through
``generate`` for one image: latency per frame (median of ``--repeats`` after a
warm-up) and frames/s, for each number of steps, eager vs ``torch.compile``, and the
full VAE vs the tiny one (TAESD, ``AutoencoderTiny``). The device, dtype, thread
count and library versions are recorded with the figures.

By default it runs on the CPU at 64 px (the full networks on small latents); on a
GPU: ``python bench/generation.py --size 512 --device cuda --compile``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from glimpse.models.generators.pipelines import (IPAdapterGenerator, KandinskyGenerator, UnCLIPGenerator,
                                                  random_ip_adapter)

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
#: The published UNet configurations (the repositories' unet/config.json), fields that differ from diffusers' defaults.
UNETS: dict[str, dict[str, Any]] = {
    "sd15": {"cross_attention_dim": 768},
    "sdxl_turbo": {"block_out_channels": (320, 640, 1280), "attention_head_dim": (5, 10, 20),
                   "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   "transformer_layers_per_block": (1, 2, 10), "cross_attention_dim": 2048,
                   "use_linear_projection": True, "addition_embed_type": "text_time",
                   "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816},
    "unclip": {"attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "use_linear_projection": True,
               "class_embed_type": "projection", "projection_class_embeddings_input_dim": 2048},
    "kandinsky": {"block_out_channels": (384, 768, 1152, 1536), "layers_per_block": 3, "attention_head_dim": 64,
                  "cross_attention_dim": 768, "out_channels": 8, "addition_embed_type": "image",
                  "encoder_hid_dim": 1280, "encoder_hid_dim_type": "image_proj",
                  "down_block_types": ("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
                  "up_block_types": ("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
                  "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "resnet_time_scale_shift": "scale_shift"},
}
#: Embedding dimension each back-end takes (the embedder glimpse would use).
DIMS = {"sd15": 1024, "sdxl_turbo": 1024, "unclip": 1024, "kandinsky": 1280}
#: Text-encoder outputs (prompt encoded once at load): (tokens, width) and the pooled width.
PROMPTS = {"sd15": (768, None), "sdxl_turbo": (2048, 1280), "unclip": (1024, None)}


def _prompt_embeds(backend: str) -> dict[str, torch.Tensor]:
    if backend not in PROMPTS:
        return {}
    width, pooled = PROMPTS[backend]
    embeds = {"prompt_embeds": torch.randn(1, 77, width), "negative_prompt_embeds": torch.zeros(1, 77, width)}
    if pooled:
        embeds.update(pooled_prompt_embeds=torch.randn(1, pooled), negative_pooled_prompt_embeds=torch.zeros(1, pooled))
    return embeds


def build(backend: str, device: str, dtype: torch.dtype):
    """The pipeline of ``backend`` at full size with random weights, on ``device``."""
    import diffusers as d

    with torch.device(device):
        unet = d.UNet2DConditionModel(**UNETS[backend])
        if backend == "kandinsky":
            movq = d.VQModel(block_out_channels=(128, 256, 256, 512), layers_per_block=2, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
                             up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
                             norm_type="spatial", num_vq_embeddings=16384, vq_embed_dim=4)
            scheduler = d.DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, steps_offset=1, timestep_spacing="trailing")
            return d.KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).to(device, dtype)
        vae = d.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = d.EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing")
    if backend == "sd15":
        pipe = d.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                         safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif backend == "sdxl_turbo":
        pipe = d.StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                           tokenizer_2=None, unet=unet, scheduler=scheduler)
    else:
        return _unclip(d, unet, vae, device, dtype)
    # A state dict passed in memory is nested by prefix, as diffusers splits a file's keys.
    adapter: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in random_ip_adapter(unet, DIMS[backend]).items():
        prefix, _, rest = key.partition(".")
        adapter[prefix][rest] = value
    pipe.load_ip_adapter(adapter, subfolder="", weight_name="", image_encoder_folder=None)
    return pipe.to(device, dtype)


def _unclip(d, unet, vae, device: str, dtype: torch.dtype):
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    # The pipeline reads its image encoder's dtype only (glimpse passes image_embeds):
    # a tiny stand-in costs nothing that a frame pays for.
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=DIMS["unclip"], num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=37, image_size=32, patch_size=8))
    scheduler = d.DDIMScheduler(**SD_BETAS, prediction_type="v_prediction", set_alpha_to_one=False,
                                timestep_spacing="trailing", clip_sample=False)
    pipe = d.StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(), image_encoder=encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=DIMS["unclip"]),
        image_noising_scheduler=d.DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=None,
        text_encoder=None, unet=unet, vae=vae, scheduler=scheduler)
    return pipe.to(device, dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_generator(generator, steps: int, repeats: int, device: str) -> dict[str, float]:
    """Median latency of one frame (one image) after a warm-up, and frames/s."""
    x = np.random.default_rng(0).standard_normal((1, generator.dim)).astype(np.float32)
    generator.generate(x, steps=steps, seed=0)
    times = []
    for i in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        generator.generate(x, steps=steps, seed=i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"latency_ms": round(1e3 * median, 2), "latency_ms_min": round(1e3 * min(times), 2),
            "fps": round(1.0 / median, 3)}


def bench_backend(backend: str, args: argparse.Namespace, dtype: torch.dtype) -> list[dict[str, Any]]:
    from diffusers import AutoencoderTiny

    classes = {"sd15": IPAdapterGenerator, "sdxl_turbo": IPAdapterGenerator, "unclip": UnCLIPGenerator,
               "kandinsky": KandinskyGenerator}
    rows = []
    t0 = time.perf_counter()
    pipe = build(backend, args.device, dtype)
    built_s = time.perf_counter() - t0
    vae, unet = (pipe.vae if backend != "kandinsky" else None), pipe.unet
    params = sum(p.numel() for p in unet.parameters())
    decoders = ["vae"] + (["taesd"] if backend != "kandinsky" and not args.no_taesd else [])
    for compiled in [False] + ([True] if args.compile else []):
        for decoder in decoders:
            pipe.register_modules(unet=unet, **({"vae": vae} if vae is not None else {}))
            with torch.device(args.device):
                taesd = AutoencoderTiny() if decoder == "taesd" else None
            generator = classes[backend].from_pipeline(
                pipe, embedder=f"random:{DIMS[backend]}", dim=DIMS[backend], size=args.size, device=args.device,
                prompt_embeds=_prompt_embeds(backend), taesd=taesd, compile=compiled)
            for steps in args.steps:
                row = {"backend": backend, "pipeline": type(pipe).__name__, "unet_params_m": round(params / 1e6, 1),
                       "decoder": decoder, "compiled": compiled, "steps": steps, "size": args.size,
                       "build_s": round(built_s, 1)}
                row.update(time_generator(generator, steps, args.repeats, args.device))
                rows.append(row)
                if args.progress:
                    print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(UNETS), choices=list(UNETS))
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (512 on a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                        help="auto: float16 on CUDA, float32 on the CPU")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd UNets")
    parser.add_argument("--no-taesd", action="store_true", help="time the full VAE only")
    parser.add_argument("--progress", action="store_true", help="print each row as it is measured")
    args = parser.parse_args()
    dtype = (torch.float16 if args.device.startswith("cuda") else torch.float32) if args.dtype == "auto" \
        else getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows = []
    for backend in args.backends:
        rows += bench_backend(backend, args, dtype)
    import diffusers

    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(json.dumps({"benchmark": "generation", "device": device, "dtype": str(dtype).removeprefix("torch."),
                      "size": args.size, "torch": torch.__version__, "diffusers": diffusers.__version__,
                      "batch": 1, "weights": "random (published architectures)",
                      # Other processes' load slows CPU figures: recorded beside them.
                      "load_average": [round(x, 2) for x in os.getloadavg()], "results": rows}, indent=1))


if __name__ == "__main__":
    main()
