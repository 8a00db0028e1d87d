"""Procedural stimuli: concepts (shape family x variant) and exemplars drawn with PIL.

A concept is a shape family with one distinctive variant (``star_pair``,
``ring_hollow``...). Exemplars of a concept differ in low-level properties only:
colour, size, position, rotation, texture and background. Every property that
drives the simulated brain response is kept in :class:`Stimulus` (and written to
``stimuli/stimuli.tsv``), so the image -> response mapping can be audited.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FAMILIES = (
    "circle", "square", "triangle", "star", "cross", "ring",
    "ellipse", "hexagon", "arrow", "crescent", "diamond", "heart",
)
VARIANTS = ("single", "pair", "triple", "hollow", "elongated")
TEXTURES = ("plain", "stripes", "dots")
CATCH_CONCEPT = "catch"
CATCH_PATH = "stimuli/catch/catch.png"
_SUPERSAMPLE = 2  # draw at 2x and box-average: cheap anti-aliasing


@dataclass(frozen=True)
class Stimulus:
    """One image and the properties the response model reads.

    ``items`` holds ``(x, y, r)`` per drawn shape in normalised image coordinates
    (x right, y up, both in [-1, 1]; r as a fraction of the half-width).
    """

    image_nr: int  # 1-based, unique in the session; also the stimuli.tsv row
    split: str  # "train" | "test" | "catch"
    concept: str
    family: str
    variant: str
    exemplar_nr: int  # 1-based within the concept
    path: str  # relative to the BIDS root
    items: tuple[tuple[float, float, float], ...]
    rotation: float  # degrees
    hue: float  # [0, 1)
    saturation: float
    lum_fg: float  # relative luminance, [0, 1]
    lum_bg: float
    texture: str
    fg_rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]
    texture_period: float  # fraction of the image width
    texture_angle: float  # degrees

    @property
    def contrast(self) -> float:
        """Michelson-like luminance contrast of the shape against the background."""
        return abs(self.lum_fg - self.lum_bg) / (self.lum_fg + self.lum_bg + 0.05)

    @property
    def position(self) -> tuple[float, float]:
        xs, ys = zip(*[(x, y) for x, y, _ in self.items])
        return float(np.mean(xs)), float(np.mean(ys))

    @property
    def size(self) -> float:
        """Radius of the whole group, as a fraction of the half-width."""
        cx, cy = self.position
        return max(math.hypot(x - cx, y - cy) + r for x, y, r in self.items)

    def row(self) -> dict[str, object]:
        """The stimuli.tsv row."""
        x, y = self.position
        return {
            "image_nr": self.image_nr, "image_path": self.path, "split": self.split,
            "concept": self.concept, "family": self.family, "variant": self.variant,
            "exemplar_nr": self.exemplar_nr, "n_items": len(self.items),
            "pos_x": round(x, 4), "pos_y": round(y, 4), "size": round(self.size, 4),
            "rotation": round(self.rotation, 2), "hue": round(self.hue, 4),
            "saturation": round(self.saturation, 4), "lum_fg": round(self.lum_fg, 4),
            "lum_bg": round(self.lum_bg, 4), "contrast": round(self.contrast, 4),
            "texture": self.texture,
        }


def concept_name(family: str, variant: str) -> str:
    return f"{family}_{variant}"


def choose_concepts(n_train: int, n_test: int, rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split family x variant pairs into training and (unseen) test concepts.

    Test concepts are new combinations of a family and a variant that training
    also shows, where the sizes allow, so a decoder can generalise to them from
    features (the THINGS zero-shot setting), not merely guess.
    """
    pairs = [(f, v) for f in FAMILIES for v in VARIANTS]
    order = rng.permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    test, rest = pairs[:n_test], pairs[n_test:]
    train: list[tuple[str, str]] = []
    # First make sure every family and variant of a test concept is seen in training.
    for family, variant in test:
        for key, pos in ((family, 0), (variant, 1)):
            if len(train) < n_train and not any(p[pos] == key for p in train):
                match = next((p for p in rest if p[pos] == key), None)
                if match is not None:
                    rest.remove(match)
                    train.append(match)
    train += rest[: n_train - len(train)]
    return train, test


def _linear(channel: float) -> float:
    return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4


def _luminance(rgb: tuple[int, int, int]) -> float:
    r, g, b = (_linear(c / 255) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def sample_stimulus(image_nr: int, split: str, family: str, variant: str, exemplar_nr: int, rng: np.random.Generator) -> Stimulus:
    """Draw the exemplar-level properties (colour, size, position, rotation, texture, background)."""
    n_items = {"pair": 2, "triple": 3}.get(variant, 1)
    group_r = rng.uniform(0.3, 0.55)
    cx, cy = rng.uniform(-0.85 + group_r, 0.85 - group_r, size=2)
    axis = rng.uniform(0, 2 * math.pi)
    if n_items == 1:
        items = ((cx, cy, group_r),)
    else:
        # Items on a circle around the group centre, small enough not to overlap much.
        item_r = group_r * (0.5 if n_items == 2 else 0.45)
        ring_r = group_r - item_r
        items = tuple(
            (cx + ring_r * math.cos(axis + 2 * math.pi * k / n_items), cy + ring_r * math.sin(axis + 2 * math.pi * k / n_items), item_r)
            for k in range(n_items)
        )
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0)
    fg = _hsv(hue, sat, val)
    bg_val = rng.uniform(0.1, 0.95)
    bg_hue, bg_sat = rng.uniform(0, 1), rng.uniform(0, 0.2)
    # Keep every shape visible: push the background away from the shape's luminance.
    for _ in range(8):
        bg = _hsv(bg_hue, bg_sat, bg_val)
        lum_fg, lum_bg = _luminance(fg), _luminance(bg)
        if abs(lum_fg - lum_bg) / (lum_fg + lum_bg + 0.05) >= 0.25:
            break
        bg_val = 0.08 if lum_fg > 0.25 else 0.95
        bg_sat = 0.0
    texture = TEXTURES[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    return Stimulus(
        image_nr=image_nr, split=split, concept=concept_name(family, variant), family=family,
        variant=variant, exemplar_nr=exemplar_nr, path="",  # set by the caller
        items=tuple((float(x), float(y), float(r)) for x, y, r in items),
        rotation=float(rng.uniform(0, 360)), hue=float(hue), saturation=float(sat),
        lum_fg=float(lum_fg), lum_bg=float(lum_bg), texture=texture, fg_rgb=fg, bg_rgb=bg,
        texture_period=float(rng.uniform(0.04, 0.1)), texture_angle=float(rng.uniform(0, 180)),
    )


def catch_stimulus(image_nr: int) -> Stimulus:
    """The one catch image: a red target on white, unlike every shape family."""
    fg, bg = (220, 30, 30), (255, 255, 255)
    return Stimulus(
        image_nr=image_nr, split="catch", concept=CATCH_CONCEPT, family=CATCH_CONCEPT,
        variant="single", exemplar_nr=1, path=CATCH_PATH, items=((0.0, 0.0, 0.5),),
        rotation=0.0, hue=0.0, saturation=0.86, lum_fg=_luminance(fg), lum_bg=_luminance(bg),
        texture="plain", fg_rgb=fg, bg_rgb=bg, texture_period=0.1, texture_angle=0.0,
    )


def _regular(n: int, phase: float, radius: float = 1.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.c_[np.cos(angles), np.sin(angles)]


def _outline(family: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unit-radius outline of a family, and the holes cut out of it."""
    circle = _regular(64, 0.0)
    if family in ("circle", "ring", "crescent"):
        holes = {"ring": [0.55 * circle], "crescent": [0.85 * circle + [0.45, 0.2]]}.get(family, [])
        return circle, holes
    if family == "ellipse":
        return circle * [1.0, 0.6], []
    if family == "square":
        return _regular(4, np.pi / 4), []
    if family == "diamond":
        return _regular(4, 0.0) * [0.65, 1.0], []
    if family == "triangle":
        return _regular(3, np.pi / 2), []
    if family == "hexagon":
        return _regular(6, 0.0), []
    if family == "star":
        outer, inner = _regular(5, np.pi / 2), _regular(5, np.pi / 2 + np.pi / 5, 0.42)
        return np.stack([outer, inner], 1).reshape(-1, 2), []
    if family == "cross":
        a, b = 0.32, 1.0
        return np.array([[-a, b], [a, b], [a, a], [b, a], [b, -a], [a, -a], [a, -b], [-a, -b], [-a, -a], [-b, -a], [-b, a], [-a, a]]), []
    if family == "arrow":
        return np.array([[-1, 0.25], [0.2, 0.25], [0.2, 0.7], [1, 0], [0.2, -0.7], [0.2, -0.25], [-1, -0.25]]), []
    if family == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        pts = np.c_[x, y + 2.5]
        return pts / np.abs(pts).max(), []
    raise ValueError(f"unknown family {family!r}")


def figure_mask(stim: Stimulus, size: int) -> Image.Image:
    """The figure's coverage (mode "L", 255 = shape) at ``size * _SUPERSAMPLE`` pixels."""
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    if stim.family == CATCH_CONCEPT:
        draw = ImageDraw.Draw(mask)
        for k, radius in enumerate((0.5, 0.36, 0.22, 0.09)):
            r = radius * big / 2
            draw.ellipse([big / 2 - r, big / 2 - r, big / 2 + r, big / 2 + r], fill=255 if k % 2 == 0 else 0)
    else:
        outer, holes = _outline(stim.family)
        if stim.variant == "hollow":
            holes = [0.8 * outer] if holes else [0.55 * outer]
        scale = np.array([1.5, 0.6]) if stim.variant == "elongated" else np.array([1.0, 1.0])
        theta = math.radians(stim.rotation)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        # Elongated shapes grow along one axis; shrink them to stay inside the group radius.
        norm = 1.0 / float(np.abs(outer * scale).max() if stim.variant == "elongated" else 1.0)
        for x, y, r in stim.items:
            item = Image.new("L", (big, big), 0)
            draw = ImageDraw.Draw(item)
            for poly, fill in [(outer, 255)] + [(h, 0) for h in holes]:
                pts = (poly * scale * norm) @ rot.T * r + [x, y]
                pix = np.c_[(pts[:, 0] + 1) / 2 * big, (1 - pts[:, 1]) / 2 * big]
                draw.polygon([tuple(p) for p in pix.tolist()], fill=fill)
            mask.paste(255, (0, 0), item)
    return mask


def draw_stimulus(stim: Stimulus, size: int) -> Image.Image:
    """Render one stimulus as an RGB image of ``size`` x ``size`` pixels."""
    big = size * _SUPERSAMPLE
    mask = figure_mask(stim, size)
    fg = np.empty((big, big, 3), np.uint8)
    fg[:] = stim.fg_rgb
    if stim.texture != "plain":
        period = stim.texture_period * big
        yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
        if stim.texture == "stripes":
            phi = math.radians(stim.texture_angle)
            on = np.mod(xx * math.cos(phi) + yy * math.sin(phi), period) < period / 2
        else:
            on = (np.mod(xx, period) - period / 2) ** 2 + (np.mod(yy, period) - period / 2) ** 2 < (period / 3.5) ** 2
        # Texture elements in a darker (or, for dark shapes, lighter) shade of the same hue.
        shade = np.array(stim.fg_rgb, np.float32)
        shade = shade * 0.45 if stim.lum_fg > 0.2 else shade + (255 - shade) * 0.55
        fg[on] = shade.astype(np.uint8)
    bg = Image.new("RGB", (big, big), stim.bg_rgb)
    image = Image.composite(Image.fromarray(fg, "RGB"), bg, mask)
    return image.reduce(_SUPERSAMPLE)


def write_stimuli(stimuli: list[Stimulus], root: Path, size: int) -> list[Path]:
    """Draw every stimulus to ``root / stim.path`` as PNG; return the written paths."""
    written = []
    for stim in stimuli:
        path = root / stim.path
        path.parent.mkdir(parents=True, exist_ok=True)
        # No metadata chunks: PIL writes none by default, so files are reproducible.
        draw_stimulus(stim, size).save(path, format="PNG", optimize=False)
        written.append(path)
    return written
