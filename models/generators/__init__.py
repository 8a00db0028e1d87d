"""Generators: images from decoded image embeddings (:mod:`.base` has the interface;
:mod:`.embedded` the default for the simulator's image world; :mod:`.pipelines` the
diffusers back-ends for real weights)."""

from .base import GENERATOR_FILE, Generator, check_generate_options, load_generator

__all__ = ["GENERATOR_FILE", "Generator", "check_generate_options", "load_generator"]
