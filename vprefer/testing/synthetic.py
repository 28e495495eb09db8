"""A synthetic preference world: procedurally drawn image sets whose right answer depends on the prompt.

Each prompt names a colour and a shape ("a red circle on a plain background").
Each image set holds images that differ in how well they follow the prompt
(right or wrong colour, right or wrong shape), how clean they are (added
noise: fidelity) and how much contrast they have (aesthetics). The ground truth
per aspect is known, so a judge or a reward model can be checked against it
offline, with no download. Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vprefer.testing.colours import PALETTE

COLOURS = {c: PALETTE[c] for c in ("red", "green", "blue", "yellow", "purple", "orange")}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Spec:
    colour: str
    shape: str
    noise: float  # fidelity defect level: 0 clean .. 1 badly broken (glitch blocks + pixel noise)
    contrast: float  # 0.3 flat .. 1 full


def draw(spec: Spec, size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    bg = tuple(int(245 - 60 * (1 - spec.contrast)) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    m = size // 8 + int(rng.integers(-2, 3))  # small jitter: no two images share bytes
    box = (m, m, size - m, size - m)
    fill = tuple(int(bg[i] + (c - bg[i]) * spec.contrast) for i, c in enumerate(COLOURS[spec.colour]))
    if spec.shape == "circle":
        d.ellipse(box, fill=fill)
    elif spec.shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=fill)
    if spec.noise > 0:  # generation artefacts: misplaced blocks of random colour, like a broken decode
        for _ in range(int(round(spec.noise * 10))):
            x, y = (int(v) for v in rng.integers(0, size - size // 6, 2))
            d.rectangle((x, y, x + size // 6, y + size // 6), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    a = np.asarray(im, dtype=np.float32)
    if spec.noise > 0:
        a = a + rng.normal(0, 40 * spec.noise, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


SETTINGS = ("on a plain background", "in the centre of the frame", "as a flat icon", "drawn simply",
            "on a poster", "as a sticker", "in a minimalist style", "on white paper")


def prompt_for(colour: str, shape: str, k: int = 0) -> str:
    """Unique per k, so that every image set has its own prompt id."""
    extra = f", variant {k // len(SETTINGS)}" if k >= len(SETTINGS) else ""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} {SETTINGS[k % len(SETTINGS)]}{extra}"


def truth(prompt_colour: str, prompt_shape: str, spec: Spec) -> dict[str, float]:
    """Ground-truth desirability per aspect (higher is better)."""
    pf = (spec.colour == prompt_colour) * 2 + (spec.shape == prompt_shape)
    return {"prompt_following": float(pf), "aesthetics": spec.contrast, "fidelity": 1 - spec.noise,
            "harmlessness": 1.0}


def image_set(rng: random.Random, colour: str, shape: str, n: int, vary_shape: bool = False) -> list[Spec]:
    """n images: one on-prompt, the others in other colours (and shapes if ``vary_shape``), each with its
    own defect level and contrast. Shape stays the prompt's by default: from-scratch tiny ViTs learn colour
    binding in CPU-seconds but need far longer for shape at 32 px (measured), and the checks must be fast."""
    specs = []
    for k in range(n):
        c = colour if k == 0 or rng.random() < 0.3 else rng.choice([x for x in COLOURS if x != colour])
        s = shape if k == 0 or not vary_shape or rng.random() < 0.5 else rng.choice([x for x in SHAPES if x != shape])
        specs.append(Spec(c, s, noise=rng.choice([0.0, 0.0, 0.15, 0.4]), contrast=rng.choice([0.35, 0.7, 1.0])))
    rng.shuffle(specs)
    return specs


def write_dataset(folder: Path, n_prompts: int, images_per_prompt: int = 4, *, size: int = 64,
                  seed: int = 0, vary_shape: bool = False) -> Path:
    """Write PNGs and an ingest manifest (``manifest.jsonl``) with truths in ``meta``; returns the manifest."""
    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for p in range(n_prompts):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        specs = image_set(rng, colour, shape, images_per_prompt, vary_shape)
        paths = []
        for k, s in enumerate(specs):
            rel = f"img/{p:05d}_{k}.png"
            draw(s, size, seed=seed * 100_003 + p * 31 + k).save(folder / rel)
            paths.append(rel)
        lines.append({"prompt": prompt_for(colour, shape, p), "images": paths, "generator": "synthetic",
                      "seeds": [p * 31 + k for k in range(len(specs))],
                      "meta": {"colour": colour, "shape": shape,
                               "truth": [truth(colour, shape, s) for s in specs]}})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def write_truth_pairs(run_dir: Path, annotator: str = "truth") -> int:
    """Rankings and pairs from the synthetic ground truth in ``prompts.meta`` (for learning checks)."""

    from vprefer import schema
    from vprefer.annotate.pairs import save_pairs
    from vprefer.rankings import ranking_pairs
    from vprefer.store import Run

    run = Run(run_dir)
    imgs = run.read("images").join(run.read("prompts"), on="prompt_id").sort("prompt_id", "seed")
    rankings, pairs = [], []
    for (pid,), g in imgs.group_by(["prompt_id"], maintain_order=True):
        truths = json.loads(g["meta"][0])["truth"]
        ids = g["image_id"].to_list()
        ks = [s % 31 for s in g["seed"].to_list()]
        for a in [*truths[0], "overall"]:
            sc = [sum(truths[k].values()) if a == "overall" else truths[k][a] for k in ks]
            rankings.append({"prompt_id": pid, "aspect": a, "annotator": annotator, "image_ids": ids,
                             "scores": [float(x) for x in sc], "confidence": 1.0})
            pairs += ranking_pairs(pid, ids, sc, a, annotator)
    save_pairs(run, schema.frame("rankings", rankings), schema.frame("pairs", pairs))
    return len(pairs)
