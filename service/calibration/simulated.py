"""Calibration images for a simulated person: new exemplars of a simulated world's concepts.

A person simulated by ``glimpse simulate --live --world ROOT`` answers every image
whose path ends in ``stimuli/<split>/<concept>/<concept>_NN.png`` of that world
(:func:`glimpse.streaming.simulate.person.fresh_stimuli`): exemplars the base model
never saw, of the concepts it was trained on, are the calibration images a lab would
show a new person. :func:`write_fresh_images` draws them into
``ROOT/calibration/stimuli/fresh/<concept>/`` (inside the data root the service serves).
"""

from __future__ import annotations

import os
from pathlib import Path

from glimpse.streaming.simulate.person import fresh_stimuli, world_config
from glimpse.streaming.simulate.stimuli import draw_stimulus

__all__ = ["FRESH_FOLDER", "write_fresh_images"]

FRESH_FOLDER = "calibration/stimuli/fresh"


def write_fresh_images(world: str | os.PathLike, *, per_concept: int = 2) -> Path:
    """Draw ``per_concept`` new exemplars of each training concept of ``world``; their folder.

    Existing files are kept (the drawing is seeded: the same world gives the same images).
    """
    world = Path(world)
    config = world_config(world)
    base = world / "calibration"
    for stim in fresh_stimuli(config, per_concept):
        path = base / stim.path  # stimuli/fresh/<concept>/<concept>_NN.png
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_stimulus(stim, config.image_size).save(path)
    return world / FRESH_FOLDER
