"""``glimpse generator train``, ``glimpse generator finetune`` and ``glimpse reconstruct``:
the embedded generator and the offline reconstruction report (commands of
:mod:`glimpse.service.cli`, kept here so each module holds one concern)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["generator_app", "reconstruct"]

generator_app = typer.Typer(help="Generators: images drawn from decoded image embeddings.",
                            no_args_is_help=True)


def _command_line() -> str:
    return "glimpse " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@generator_app.command("train")
def generator_train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Generator folder to write (generator.json + model.safetensors + progress.json).")],
    embedder: Annotated[str, typer.Option(help="The embedder whose space the generator is conditioned on (the checkpoints' embedder).")] = "handcrafted",
    steps: Annotated[int, typer.Option(help="Optimisation steps (each draws fresh images into the pool).")] = 3000,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 2e-3,
    size: Annotated[int, typer.Option(help="Output pixels (square).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the drawn images and the initial weights.")] = 0,
    eval_images: Annotated[int, typer.Option(help="Held-out drawn images (another seed) the metrics are measured on.")] = 500,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop early (and save) past this many minutes.")] = None,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (1 is fastest on a shared 2-core machine).")] = 1,
) -> None:
    """Train the embedded generator on freshly drawn images of the simulator's world.

    Draws images with the simulator's stimulus code (never a session's test
    images), embeds them, and trains a diffusers-decoder generator to draw them
    back from their embeddings. Prints the held-out metrics (2-way identification,
    PixCorr, SSIM). The package ships one for the default embedder, so the demo
    never waits for this.

    Example:

      glimpse generator train --embedder handcrafted --out generators/handcrafted
    """
    from tqdm import tqdm

    from glimpse.models.generators.train_embedded import EmbeddedTrainConfig, train_embedded

    config = EmbeddedTrainConfig(embedder=embedder, steps=steps, batch_size=batch_size, lr=lr, size=size,
                                 seed=seed, eval_images=eval_images, max_minutes=max_minutes, threads=threads)
    with tqdm(total=steps, desc="generator", unit="step") as bar:
        def progress(step: int, total: int, losses: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})

        generator = train_embedded(config, out, progress=progress, command=_command_line())
    typer.echo(json.dumps({"generator": str(out), "metrics": generator.config.get("metrics")}, indent=2))


@generator_app.command("finetune")
def generator_finetune(
    generator: Annotated[Path, typer.Argument(help="Embedded generator folder (from `glimpse generator train`).")],
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder from `glimpse train` (its embedder must be the generator's).")],
    data: Annotated[Path, typer.Argument(help="The dataset the checkpoint was trained on: its training trials are decoded.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the fine-tuned generator.")],
    epochs: Annotated[int, typer.Option(help="Passes over the (decoded embedding, image) pairs.")] = 30,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-4,
    offset: Annotated[Optional[float], typer.Option(help="The decoded window's end, s after onset.  [default: the checkpoint's best validation offset]")] = None,
    head: Annotated[str, typer.Option(help="Decoded output to condition on: retrieval (what the live worker uses), clip or mse.")] = "retrieval",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Tune the generator's conditioning projection on decoded training-trial embeddings.

    The MinD-Vis / DreamDiffusion step: the generator learns what decoded
    embeddings look like, not only clean ones. Compare both with `glimpse
    reconstruct --finetuned`.
    """
    from glimpse.models.generators.finetune import FinetuneConfig, finetune_conditioning

    config = FinetuneConfig(epochs=epochs, lr=lr, offset=offset, head=head, seed=seed)
    tuned = finetune_conditioning(generator, checkpoint, data, out, config, command=_command_line())
    typer.echo(json.dumps({"generator": str(out), "finetune": tuned.config.get("finetune")}, indent=2))


def reconstruct(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder from `glimpse train`.")],
    data: Annotated[Path, typer.Argument(help="Dataset with test trials.")],
    generator: Annotated[Path, typer.Option("--generator", "-g", help="Generator folder (embedded, or a prepared diffusers back-end).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder: metrics.json, summary.md, grid_*.png.")],
    finetuned: Annotated[Optional[Path], typer.Option(help="A generator from `glimpse generator finetune`, reported beside the plain one.")] = None,
    embedder: Annotated[Optional[list[str]], typer.Option(help="Also score 2-way identification in this embedder's space (repeat), e.g. open_clip:ViT-H-14:PATH.")] = None,
    offset: Annotated[Optional[float], typer.Option(help="The decoded window's end, s after onset.  [default: the checkpoint's best validation offset]")] = None,
    head: Annotated[str, typer.Option(help="Decoded output to generate from: retrieval, clip or mse.")] = "retrieval",
    strength: Annotated[float, typer.Option(help="Two-stage: how far generation departs from the retrieved top-1 (0 keeps it, 1 ignores it).")] = 0.6,
    max_trials: Annotated[int, typer.Option(help="Single test trials scored (a seeded sample).")] = 1000,
    refine_steps: Annotated[int, typer.Option(help="Gradient steps on each generated image's latent towards its decoded embedding (0: no refinement).")] = 20,
    refine_trials: Annotated[int, typer.Option(help="Single trials refined (about 0.2-0.7 s each on 2 CPU cores with the embedded generator); every per-image average is.")] = 100,
) -> None:
    """Reconstruct the test images from decoded embeddings and report how close they come.

    Grids of true vs retrieved vs generated images, with PixCorr, SSIM and 2-way
    identification beside their chance levels, for single trials and for repeats
    averaged, plain and two-stage (image-to-image from the retrieved top-1), and
    refined: gradient steps on the latent bring each generated image's embedding
    closer to the decoded one (exact gradients with a differentiable embedder such
    as OpenCLIP, simultaneous-perturbation estimates with the handcrafted one).

    Example:

      glimpse reconstruct glimpse-demo/model glimpse-demo --generator GEN --out recon
    """
    from glimpse.models.generators.reconstruct import format_summary, reconstruct as run_reconstruct

    report = run_reconstruct(checkpoint, data, generator, out, finetuned=finetuned, extra_embedders=embedder,
                             offset=offset, head=head, strength=strength, max_trials=max_trials,
                             refine_steps=refine_steps, refine_trials=refine_trials)
    typer.echo(format_summary(report))
