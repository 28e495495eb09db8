"""Scenes of the learnable world and how they are drawn.

A scene is one coloured shape on a plain background, with a size, an artefact
level (fidelity) and an optional "harmful" mark. Every attribute is something a
text-conditioned generator can get wrong and a pixel reader can check, which is
what lets the closed loop be measured on a truth instead of on the reward it
optimises (issue 28).

Drawing choices, and why:

* shapes are drawn 4x larger and box-downsampled: anti-aliased edges look like
  a (good) generator's output and keep the triangle's apex at 32 px;
* the shape never touches the outer ring of pixels, so the border is pure
  background for the reader, whatever the jitter;
* the "harmful" mark is a cyan badge in the top-left corner, drawn last.
  Cyan is not one of the six shape colours and sits between green and blue
  in hue, so the reader can tell the badge from the shape. The old world had
  no harmful images (only harmful prompt words); this gives the harmlessness
  aspect something in the pixels to learn;
* artefacts are pixel noise plus misplaced blocks of random colour, like a
  broken decode, both growing with the level (the old world's kind of defect).
  The blocks keep clear of the shape: they spoil the picture, not which shape
  it shows, so fidelity and prompt following stay separate aspects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

from vprefer.errors import InputError
from vprefer.testing.colours import PALETTE

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("white", "black", "grey")
SIZES = ("small", "large")

BACKGROUND_RGB = {b: PALETTE[b] for b in BACKGROUNDS}
MARK_RGB = PALETTE["cyan"]
MARK_BOX = (0.04, 0.04, 0.2, 0.2)  # the badge, as fractions of the frame (x0, y0, x1, y1)
EXTENT = {"large": (0.58, 0.66), "small": (0.32, 0.38)}  # side of the shape's box, fraction of the frame
JITTER = {"large": 0.06, "small": 0.12}  # how far the centre may move from the frame's centre
NOISE_SD = 50.0  # per-channel pixel noise at artefacts = 1
BLOCKS = 5  # glitch blocks at artefacts = 1
BLOCK_SIDE = 0.1
_SUPER = 4


class WorldError(InputError):
    """A scene or prompt that is not part of the world (unknown colour, shape, ...)."""


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: str = "large"  # "small" | "large"
    artefacts: float = 0.0  # 0 clean .. 1 badly broken (noise + glitch blocks): fidelity
    harmful: bool = False  # the cyan badge: the stand-in for harmful content

    def __post_init__(self):
        for name, allowed in (("colour", COLOURS), ("shape", SHAPES), ("background", BACKGROUNDS), ("size", SIZES)):
            if getattr(self, name) not in allowed:
                raise WorldError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if not 0.0 <= float(self.artefacts) <= 1.0:
            raise WorldError(f"artefacts must be in [0, 1], not {self.artefacts!r}")


_CHOICES = {"colour": COLOURS, "shape": SHAPES, "background": BACKGROUNDS, "size": SIZES}


def random_scene(rng: random.Random, **fixed) -> Scene:
    """Uniform over the attributes not fixed; clean and harmless unless ``artefacts``/``harmful`` are fixed
    (defects are the caller's to choose: they are what an image set varies on purpose)."""
    unknown = set(fixed) - {f.name for f in fields(Scene)}
    if unknown:
        raise WorldError(f"unknown scene attribute(s): {', '.join(sorted(unknown))}")
    attrs = {k: fixed[k] if k in fixed else rng.choice(v) for k, v in _CHOICES.items()}
    return Scene(**attrs, artefacts=float(fixed.get("artefacts", 0.0)), harmful=bool(fixed.get("harmful", False)))


def _shape_box(scene: Scene, rng: np.random.Generator, side: int) -> tuple[float, float, float, float]:
    lo, hi = EXTENT[scene.size]
    e = rng.uniform(lo, hi)
    j = JITTER[scene.size]
    cx, cy = 0.5 + rng.uniform(-j, j), 0.5 + rng.uniform(-j, j)
    return tuple(v * side for v in (cx - e / 2, cy - e / 2, cx + e / 2, cy + e / 2))


def _block_spots(rng: np.random.Generator, n: int, b: int, box, big: int) -> list[tuple[int, int]]:
    """Where glitch blocks go: anywhere but on or next to the shape (a gap of two output pixels) or the
    badge's corner. A block touching the shape would make a different shape, and a cyan one in the corner
    a badge — prompt-following and harmlessness errors, not fidelity ones."""
    gap = 2 * _SUPER
    keep_out = [(box[0] - gap, box[1] - gap, box[2] + gap, box[3] + gap),
                tuple(v * big + d for v, d in zip(MARK_BOX, (-gap, -gap, gap, gap)))]
    spots = []
    for _ in range(20 * n):
        if len(spots) == n:
            break
        x, y = (int(v) for v in rng.integers(0, big - b, 2))
        if all(x + b <= x0 or x >= x1 or y + b <= y0 or y >= y1 for x0, y0, x1, y1 in keep_out):
            spots.append((x, y))
    return spots


def draw(scene: Scene, size: int = 32, seed: int = 0) -> Image.Image:
    """An RGB image of ``scene``; ``seed`` moves and scales the shape a little and draws the artefacts,
    so no two seeds share bytes and a reader cannot rely on a fixed position."""
    if size < 16:
        raise WorldError(f"image size must be at least 16 px, not {size}")
    rng = np.random.default_rng(seed)
    big = size * _SUPER
    im = Image.new("RGB", (big, big), BACKGROUND_RGB[scene.background])
    d = ImageDraw.Draw(im)
    box = _shape_box(scene, rng, big)  # drawn first: the jitter does not depend on the artefact level
    b = max(2, round(BLOCK_SIDE * size)) * _SUPER
    for x, y in _block_spots(rng, int(round(scene.artefacts * BLOCKS)), b, box, big):
        d.rectangle((x, y, x + b - 1, y + b - 1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    x0, y0, x1, y1 = box
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        d.ellipse(box, fill=fill)
    elif scene.shape == "square":
        d.rectangle(box, fill=fill)
    else:  # apex up, base at the bottom: half the box, and not symmetric top to bottom
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    if scene.harmful:
        d.rectangle(tuple(v * big for v in MARK_BOX), fill=MARK_RGB)
    im = im.resize((size, size), Image.Resampling.BOX)
    if scene.artefacts <= 0:
        return im
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, NOISE_SD * scene.artefacts, (size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
