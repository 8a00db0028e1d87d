"""Diffusers back-ends for real weights that users download themselves.

Three kinds, each conditioned on an image embedding that glimpse's embedder gives
(the pipelines' own image encoders are never run on the decoded embedding):

``ip_adapter``
    Stable Diffusion 1.5 (``StableDiffusionPipeline``) or SDXL-Turbo
    (``StableDiffusionXLPipeline``) with an IP-Adapter that takes the pooled
    image embedding (``ip_adapter_image_embeds``; the ViT-H adapters take
    OpenCLIP ViT-H-14's 1024-d embedding).
``unclip``
    Stable Diffusion 2.1 unCLIP (``StableUnCLIPImg2ImgPipeline``: ``image_embeds``,
    ``noise_level``).
``kandinsky``
    Kandinsky 2.2's decoder (``KandinskyV22Pipeline``: ``image_embeds``, 1280-d).

A generator folder is the pipeline's ``save_pretrained`` folder (``model_index.json``
and one sub-folder per component) with ``generator.json`` beside them, written by
:func:`prepare_generator_folder`. Optional fast paths: a ``taesd`` sub-folder
(``AutoencoderTiny``) replaces the VAE; ``"scheduler"`` swaps in a few-step
scheduler (LCM, TCD, trailing Euler/DDIM) and ``"lora"`` fuses a distillation
LoRA (LCM-LoRA, Hyper-SD; needs ``peft``); fp16 on CUDA; ``"compile"``:
``torch.compile`` on the UNet. The prompt (empty by default) is encoded once at load.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from glimpse.streaming.errors import InputError

from .base import GENERATOR_FILE, Generator, register_generator

__all__ = ["IPAdapterGenerator", "KandinskyGenerator", "PipelineGenerator", "UnCLIPGenerator",
           "check_components", "prepare_generator_folder", "random_ip_adapter"]

logger = logging.getLogger("glimpse.models.generators.pipelines")

#: The pipeline classes each kind accepts (``model_index.json``'s ``_class_name``).
PIPELINES = {
    "ip_adapter": ("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
    "unclip": ("StableUnCLIPImg2ImgPipeline",),
    "kandinsky": ("KandinskyV22Pipeline",),
}
#: Few-step schedulers by name: (diffusers class, overrides of the folder's scheduler config).
SCHEDULERS = {
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
}
#: Components a back-end never runs (the embedding comes from glimpse's embedder).
UNUSED = {"ip_adapter": {"safety_checker", "feature_extractor", "image_encoder"},
          "unclip": set(), "kandinsky": set()}
#: Rough seconds per denoising step for one 512 px image on 2 CPU cores (the UNet's FLOPs
#: over the cores' measured throughput; not yet timed at 512 px), for the warning when
#: full-size generation runs without a GPU.
CPU_SECONDS_PER_STEP_512 = {"ip_adapter": 20.0, "unclip": 20.0, "kandinsky": 35.0}
FULL_SIZE = 256


def check_components(folder: Path, kind: str) -> dict[str, Any]:
    """``model_index.json`` of ``folder``, once every component it lists is there.

    Raises InputError naming the first missing component (``unet``, ``vae``, ...).
    """
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise InputError("a diffusers pipeline folder (model_index.json and one folder per component)",
                         f"{folder}, which has no model_index.json",
                         "download the whole pipeline repository into this folder "
                         "(docs: guide/generation)")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None or name in UNUSED[kind]:
            continue
        sub, cls = folder / name, str(spec[1])
        if cls.endswith(("Tokenizer", "TokenizerFast")):
            ok = sub.is_dir() and any(sub.iterdir())
        elif cls.endswith("Scheduler"):
            ok = (sub / "scheduler_config.json").is_file()
        elif cls.endswith(("ImageProcessor", "FeatureExtractor")):
            ok = (sub / "preprocessor_config.json").is_file()
        else:
            ok = (sub / "config.json").is_file() and (any(sub.glob("*.safetensors")) or any(sub.glob("*.bin")))
        if not ok:
            raise InputError(f"the pipeline component {name!r} ({cls}) in {sub}",
                             "nothing, or no config or weights file there",
                             f"download the {name}/ folder of the pipeline repository into {folder}")
    return index


def prepare_generator_folder(folder: str | Path, kind: str, *, embedder: str, dim: int,
                             size: int = 512, ip_adapter: str | None = None,
                             ip_adapter_scale: float = 1.0, scheduler: str | None = None,
                             lora: str | None = None, prompt: str = "", noise_level: int = 0,
                             variant: str | None = None, compile: bool = False) -> Path:
    """Write ``generator.json`` into a downloaded pipeline folder, after checking it.

    ``embedder`` is the glimpse embedder spec whose embeddings the back-end takes (e.g.
    ``open_clip:ViT-H-14:/weights/open_clip_pytorch_model.bin``), ``dim`` its dimension;
    ``ip_adapter`` the adapter's weights file, relative to ``folder`` or absolute.
    Returns the file written.
    """
    folder = Path(folder).expanduser()
    if kind not in PIPELINES:
        raise InputError(f"a pipeline kind among {sorted(PIPELINES)}", repr(kind), "pick one of those")
    index = check_components(folder, kind)
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES[kind]:
        raise InputError(f"a {' or '.join(PIPELINES[kind])} folder for kind {kind!r}",
                         f"{pipeline} in {folder / 'model_index.json'}",
                         "download the pipeline the documentation names for this kind")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise InputError(f"a scheduler among {sorted(SCHEDULERS)} or none", repr(scheduler), "pick one of those")
    config = {"kind": kind, "pipeline": pipeline, "embedder": embedder, "dim": int(dim), "size": int(size),
              "prompt": prompt, "scheduler": scheduler, "lora": lora, "variant": variant, "compile": compile}
    if kind == "ip_adapter":
        if ip_adapter is None:
            raise InputError("ip_adapter: the IP-Adapter weights file", "none",
                             "pass e.g. ip_adapter='ip_adapter/ip-adapter_sd15.safetensors'")
        config.update(ip_adapter=ip_adapter, ip_adapter_scale=float(ip_adapter_scale))
    if kind == "unclip":
        config["noise_level"] = int(noise_level)
    _check_dim(folder, config)
    out = folder / GENERATOR_FILE
    out.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def random_ip_adapter(unet, dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights for ``unet`` taking ``dim``-d embeddings (tests, benchmarks).

    The published files' key layout (``image_proj.proj``/``.norm``; ``ip_adapter.K.to_k_ip``
    and ``to_v_ip`` for the K-th cross-attention, K = 1, 3, 5, ...), so
    ``load_ip_adapter`` and the dimension check treat it as a downloaded adapter.
    """
    cross = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed)
    weights = {"image_proj.proj.weight": torch.randn(4 * cross, dim, generator=generator) * dim ** -0.5,
               "image_proj.proj.bias": torch.zeros(4 * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    cross_attentions = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
    for i, name in enumerate(cross_attentions):
        shape = unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape
        for key in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * i + 1}.{key}.weight"] = torch.randn(*shape, generator=generator) * shape[1] ** -0.5
    return weights


def _resolve(folder: Path, name: str, what: str) -> Path:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise InputError(f"{what} at {path}", "no such file", f"put it there, or fix the path in {GENERATOR_FILE}")
    return path


def _weights_dim(folder: Path, config: dict[str, Any]) -> int:
    """The embedding dimension the weights in ``folder`` take."""
    kind = config["kind"]
    if kind == "ip_adapter":
        from safetensors import safe_open

        path = _resolve(folder, config["ip_adapter"], "the IP-Adapter weights file")
        if path.suffix != ".safetensors":
            raise InputError("an IP-Adapter .safetensors file", path.name,
                             "download the .safetensors file of the adapter (loading never unpickles)")
        with safe_open(str(path), "pt") as weights:
            if "image_proj.proj.weight" not in weights.keys():
                raise InputError("an IP-Adapter that takes the pooled image embedding (image_proj.proj)",
                                 f"{path.name}, a Plus/FaceID-style adapter (image tokens)",
                                 "use ip-adapter_sd15 / ip-adapter_sdxl_vit-h, not a Plus adapter")
            return int(weights.get_slice("image_proj.proj.weight").get_shape()[1])
    unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    if kind == "unclip":
        return int(unet["projection_class_embeddings_input_dim"]) // 2
    return int(unet["encoder_hid_dim"])


def _check_dim(folder: Path, config: dict[str, Any]) -> None:
    wanted = _weights_dim(folder, config)
    if wanted != int(config["dim"]):
        raise InputError(f"embeddings of {wanted} dims for these {config['kind']} weights",
                         f"{config['dim']} dims ({config['embedder']})",
                         "use the embedder these weights were trained on (docs: guide/generation)")


def _dtype(device: str, name: str | None) -> torch.dtype:
    if name in (None, "auto"):
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if name not in ("float16", "bfloat16", "float32"):
        raise InputError('"dtype": auto, float16, bfloat16 or float32', repr(name), f"fix it in {GENERATOR_FILE}")
    return getattr(torch, name)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class PipelineGenerator(Generator):
    """A diffusers pipeline conditioned on image embeddings (the kinds subclass it).

    Build with :meth:`load` (a prepared folder) or :meth:`from_pipeline` (a pipeline
    built in code, as the benchmark does). ``prompt_embeds`` holds the prompt's encodings
    (the pipeline's ``prompt_embeds``-style keyword arguments), computed once.
    """

    pipeline_names: tuple[str, ...] = ()

    def __init__(self, pipe, *, embedder: str, dim: int, size: int, device: str = "cpu",
                 prompt_embeds: dict[str, torch.Tensor] | None = None, options: dict[str, Any] | None = None):
        super().__init__(embedder=embedder, dim=dim, size=size, device=device)
        self.pipe, self.options = pipe, dict(options or {})
        self.dtype = pipe.unet.dtype
        self.prompt_embeds = {k: v.to(device, self.dtype) for k, v in (prompt_embeds or {}).items()}
        self._img2img = None
        if not str(device).startswith("cuda") and self.size >= FULL_SIZE:
            logger.warning("%s generation at %d px on %s: expect about %.0f s per step per image on 2 CPU "
                           "cores; use a CUDA device for live rates", self.kind, self.size, device,
                           CPU_SECONDS_PER_STEP_512[self.kind] * (self.size / 512) ** 2)

    @classmethod
    def from_pipeline(cls, pipe, *, embedder: str, dim: int, size: int, device: str = "cpu",
                      prompt_embeds: dict[str, torch.Tensor] | None = None, taesd=None,
                      compile: bool = False) -> PipelineGenerator:
        """Wrap a pipeline already built (on ``device``); ``taesd``: an ``AutoencoderTiny`` to decode with."""
        if taesd is not None:
            pipe.register_modules(vae=taesd.to(device, pipe.unet.dtype))
        if compile:
            pipe.unet = torch.compile(pipe.unet)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, embedder=embedder, dim=dim, size=size, device=device,
                   prompt_embeds=prompt_embeds, options={"compile": compile, "taesd": taesd is not None})

    @classmethod
    def load(cls, folder: Path, *, device: str = "cpu", config: dict[str, Any]) -> PipelineGenerator:
        import diffusers

        folder = Path(folder)
        missing = [key for key in ("embedder", "dim", "size", "pipeline") if key not in config]
        if missing:
            raise InputError(f"{GENERATOR_FILE} with {missing}", f"{folder / GENERATOR_FILE} without them",
                             "write it with prepare_generator_folder")
        index = check_components(folder, cls.kind)
        if config["pipeline"] not in cls.pipeline_names or index.get("_class_name") != config["pipeline"]:
            raise InputError(f"a {' or '.join(cls.pipeline_names)} folder (as {GENERATOR_FILE} says)",
                             f"{index.get('_class_name')} in model_index.json, {config['pipeline']!r} in "
                             f"{GENERATOR_FILE}", "write generator.json again with prepare_generator_folder")
        _check_dim(folder, config)
        dtype = _dtype(device, config.get("dtype"))
        skip = {name: None for name in UNUSED[cls.kind] if name in index}
        if "safety_checker" in skip:
            skip["requires_safety_checker"] = False
        pipe = getattr(diffusers, config["pipeline"]).from_pretrained(
            folder, dtype=dtype, local_files_only=True, variant=config.get("variant"), **skip)
        cls._adapt(pipe, folder, config)
        _fast_paths(pipe, folder, config)
        pipe = pipe.to(device)
        taesd_dir = folder / "taesd"
        taesd = None
        if cls.kind != "kandinsky" and (taesd_dir / "config.json").is_file() and config.get("taesd", True):
            taesd = diffusers.AutoencoderTiny.from_pretrained(taesd_dir, dtype=dtype, local_files_only=True)
        with torch.no_grad():
            prompt_embeds = cls._encode_prompt(pipe, str(config.get("prompt", "")), device)
        logger.info("loaded %s generator %s (%s, %s) on %s", cls.kind, folder, config["pipeline"], dtype, device)
        return cls.from_pipeline(pipe, embedder=config["embedder"], dim=config["dim"], size=config["size"],
                                 device=device, prompt_embeds=prompt_embeds, taesd=taesd,
                                 compile=bool(config.get("compile", False)))

    @classmethod
    def _adapt(cls, pipe, folder: Path, config: dict[str, Any]) -> None:
        """Back-end specific weights loaded on top of the pipeline (the IP-Adapter)."""

    @staticmethod
    def _encode_prompt(pipe, prompt: str, device: str) -> dict[str, torch.Tensor]:
        """The keyword arguments that carry the prompt, encoded once."""
        positive, negative = pipe.encode_prompt(prompt, device, 1, True, "")
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}

    def _prompt_kwargs(self, n: int) -> dict[str, torch.Tensor]:
        return {k: v.expand(n, *v.shape[1:]) for k, v in self.prompt_embeds.items()}

    def _generate(self, embeddings: np.ndarray, *, init_images, steps: int, strength: float,
                  guidance: float, seed: int | None) -> np.ndarray:
        x = torch.from_numpy(embeddings).to(self.device, self.dtype)
        generator = None if seed is None else torch.Generator("cpu").manual_seed(int(seed))
        with torch.inference_mode():
            if init_images is None:
                return _to_uint8(self._text_to_image(x, steps, guidance, generator))
            if strength == 0:
                return np.stack([self._init_image(image) for image in init_images])
            # img2img runs int(n * strength) of n steps: n chosen so that `steps` of them run.
            n = max(steps, math.ceil(steps / strength - 1e-9))
            images = [Image.fromarray(self._init_image(image)) for image in init_images]
            return _to_uint8(self._image_to_image(x, images, n, strength, guidance, generator))

    def _init_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError("init images as uint8 arrays (H, W, 3)", f"{image.dtype} {image.shape}",
                             "pass RGB images as uint8 numpy arrays")
        return np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))

    def latents(self, embeddings: np.ndarray, *, steps: int = 1, seed: int | None = None) -> torch.Tensor:
        """The autoencoder's latent of the generated images (what its decoder draws them from)."""
        autoencoder = self._autoencoder()
        pixels = torch.from_numpy(self.generate(embeddings, steps=steps, seed=seed)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            encoded = autoencoder.encode(pixels.to(self.device, autoencoder.dtype) / 127.5 - 1.0)
        latent = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
        return latent.float().clone()

    def render(self, latents: torch.Tensor) -> torch.Tensor:
        autoencoder = self._autoencoder()
        # A VQ decoder would quantise (no gradient): Kandinsky's MoVQ decodes unquantised here.
        extra = {"force_not_quantize": True} if "movq" in self.pipe.components else {}
        pixels = autoencoder.decode(latents.to(autoencoder.dtype), **extra).sample
        return ((pixels.float() + 1.0) / 2.0).clamp(0, 1)

    def _autoencoder(self):
        return self.pipe.vae if "vae" in self.pipe.components else self.pipe.movq

    def _text_to_image(self, x, steps, guidance, generator) -> np.ndarray:
        raise NotImplementedError

    def _image_to_image(self, x, images, n, strength, guidance, generator) -> np.ndarray:
        raise NotImplementedError

    def _image_pipe(self, cls_name: str):
        """The image-to-image pipeline sharing this pipeline's components (made once)."""
        if self._img2img is None:
            import diffusers

            # Passed by name: a TAESD is not the type the image-to-image pipeline's hint names.
            vae = {"vae": self.pipe.vae} if "vae" in self.pipe.components else {}
            self._img2img = getattr(diffusers, cls_name).from_pipe(self.pipe, **vae)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


def _fast_paths(pipe, folder: Path, config: dict[str, Any]) -> None:
    """A distillation LoRA fused into the UNet and a few-step scheduler, when the folder has them."""
    if config.get("lora"):
        path = _resolve(folder, config["lora"], "the LoRA weights file")
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, local_files_only=True)
        except ValueError as err:
            raise InputError("a LoRA that loads (diffusers needs the peft package for LoRAs)",
                             f"{path.name}: {err}", "pip install peft, or remove \"lora\"") from None
        pipe.fuse_lora()
    if config.get("scheduler"):
        if config["scheduler"] not in SCHEDULERS:
            raise InputError(f"a scheduler among {sorted(SCHEDULERS)}", repr(config["scheduler"]),
                             f"fix \"scheduler\" in {GENERATOR_FILE}")
        import diffusers

        name, overrides = SCHEDULERS[config["scheduler"]]
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **overrides)


@register_generator("ip_adapter")
class IPAdapterGenerator(PipelineGenerator):
    """Stable Diffusion 1.5 or SDXL(-Turbo) with an IP-Adapter on the pooled image embedding."""

    pipeline_names = PIPELINES["ip_adapter"]

    @classmethod
    def _adapt(cls, pipe, folder: Path, config: dict[str, Any]) -> None:
        path = _resolve(folder, config["ip_adapter"], "the IP-Adapter weights file")
        pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name,
                             image_encoder_folder=None, local_files_only=True)
        pipe.set_ip_adapter_scale(float(config.get("ip_adapter_scale", 1.0)))

    @staticmethod
    def _encode_prompt(pipe, prompt: str, device: str) -> dict[str, torch.Tensor]:
        if type(pipe).__name__ == "StableDiffusionPipeline":
            return PipelineGenerator._encode_prompt(pipe, prompt, device)
        embeds = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                    do_classifier_free_guidance=True, negative_prompt="")
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                 "negative_pooled_prompt_embeds")
        return dict(zip(names, embeds, strict=True))

    def _adapter_embeds(self, x, guidance: float) -> list[torch.Tensor]:
        x = x[:, None, :]
        # Classifier-free guidance takes [unconditional; conditional]; diffusers' own
        # unconditional image embedding for this adapter type is zeros.
        return [torch.cat([torch.zeros_like(x), x]) if guidance > 1 else x]

    def _text_to_image(self, x, steps, guidance, generator) -> np.ndarray:
        return self.pipe(ip_adapter_image_embeds=self._adapter_embeds(x, guidance), **self._prompt_kwargs(len(x)),
                         height=self.size, width=self.size, num_inference_steps=steps, guidance_scale=guidance,
                         generator=generator, output_type="np").images

    def _image_to_image(self, x, images, n, strength, guidance, generator) -> np.ndarray:
        name = "StableDiffusionImg2ImgPipeline" if type(self.pipe).__name__ == "StableDiffusionPipeline" \
            else "StableDiffusionXLImg2ImgPipeline"
        return self._image_pipe(name)(
            image=images, strength=strength, ip_adapter_image_embeds=self._adapter_embeds(x, guidance),
            **self._prompt_kwargs(len(x)), num_inference_steps=n, guidance_scale=guidance,
            generator=generator, output_type="np").images


@register_generator("unclip")
class UnCLIPGenerator(PipelineGenerator):
    """Stable Diffusion 2.1 unCLIP: the UNet takes the (noise-augmented) image embedding."""

    pipeline_names = PIPELINES["unclip"]

    @classmethod
    def load(cls, folder: Path, *, device: str = "cpu", config: dict[str, Any]) -> UnCLIPGenerator:
        generator = super().load(folder, device=device, config=config)
        generator.options["noise_level"] = int(config.get("noise_level", 0))
        return generator

    def _text_to_image(self, x, steps, guidance, generator) -> np.ndarray:
        return self.pipe(image_embeds=x, noise_level=self.options.get("noise_level", 0),
                         **self._prompt_kwargs(len(x)), height=self.size, width=self.size,
                         num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                         output_type="np").images

    def _image_to_image(self, x, images, n, strength, guidance, generator) -> np.ndarray:
        # The unCLIP pipeline has no image-to-image variant (its `image` is what CLIP
        # embeds): the same denoising loop, started from the noised init latents (SDEdit).
        pipe, cfg = self.pipe, guidance > 1
        prompt = self._prompt_kwargs(len(x))
        context = torch.cat([prompt["negative_prompt_embeds"], prompt["prompt_embeds"]]) if cfg \
            else prompt["prompt_embeds"]
        noise_level = torch.tensor([self.options.get("noise_level", 0)], device=self.device)
        labels = pipe._encode_image(image=None, device=self.device, batch_size=len(x), num_images_per_prompt=1,
                                    do_classifier_free_guidance=cfg, noise_level=noise_level,
                                    generator=generator, image_embeds=x)
        pixels = pipe.image_processor.preprocess(images).to(self.device, pipe.vae.dtype)
        encoded = pipe.vae.encode(pixels)
        latents = (encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.sample(generator))
        latents = latents.to(self.dtype) * pipe.vae.config.scaling_factor
        pipe.scheduler.set_timesteps(n, device=self.device)
        timesteps = pipe.scheduler.timesteps[n - min(int(n * strength), n):]
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(self.device)
        latents = pipe.scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(x)))
        for t in timesteps:
            model_in = pipe.scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
            eps = pipe.unet(model_in, t, encoder_hidden_states=context, class_labels=labels).sample
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            latents = pipe.scheduler.step(eps, t, latents, generator=generator).prev_sample
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        return pipe.image_processor.postprocess(decoded, output_type="np")


@register_generator("kandinsky")
class KandinskyGenerator(PipelineGenerator):
    """Kandinsky 2.2's decoder: the UNet takes the 1280-d image embedding, no prompt."""

    pipeline_names = PIPELINES["kandinsky"]

    @staticmethod
    def _encode_prompt(pipe, prompt: str, device: str) -> dict[str, torch.Tensor]:
        return {}

    def _embeds(self, x) -> dict[str, torch.Tensor]:
        # The prior's embedding of an empty prompt is the usual negative; zeros need no prior.
        return {"image_embeds": x, "negative_image_embeds": torch.zeros_like(x)}

    def _text_to_image(self, x, steps, guidance, generator) -> np.ndarray:
        return self.pipe(**self._embeds(x), height=self.size, width=self.size, num_inference_steps=steps,
                         guidance_scale=guidance, generator=generator, output_type="np").images

    def _image_to_image(self, x, images, n, strength, guidance, generator) -> np.ndarray:
        return self._image_pipe("KandinskyV22Img2ImgPipeline")(
            image=images, strength=strength, **self._embeds(x), height=self.size, width=self.size,
            num_inference_steps=n, guidance_scale=guidance, generator=generator, output_type="np").images
