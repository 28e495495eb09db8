"""The learnable world's truth reader (issue 28): how often it reads drawn images right.

Every (colour, shape, background, size) combination, with and without the harmful badge, ``--seeds`` jitter
seeds each, at 32 px (the generator's resolution) and 64 px, at artefact levels 0 .. 0.8; then the clean
32 px images softened the way tiny generators soften them (Gaussian blur 0.8 px, 20% washed towards grey,
a warm colour cast). Prints the share read right per attribute, the harmful badge, all four at once, and
the mean absolute error of the artefact level read back.

    python benchmarks/world_truth.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from PIL import Image, ImageFilter

from vprefer.world import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, draw, read_image

ATTRS = ("colour", "shape", "background", "size", "harmful")


def soften(im: Image.Image) -> Image.Image:
    a = np.asarray(im.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32) * 0.8 + 0.2 * 128
    return Image.fromarray(np.clip(a + np.array([15.0, 5.0, -10.0]), 0, 255).astype(np.uint8))


def measure(px: int, art: float, seeds: int, degrade=None) -> tuple[dict[str, float], float, int]:
    right = dict.fromkeys((*ATTRS, "all four"), 0)
    err, n = 0.0, 0
    combos = itertools.product(COLOURS, SHAPES, BACKGROUNDS, SIZES, (False, True), range(seeds))
    for i, (c, s, b, z, h, k) in enumerate(combos):
        sc = Scene(c, s, b, z, artefacts=art, harmful=h)
        im = draw(sc, px, seed=100_000 * k + i)
        r = read_image(degrade(im) if degrade else im)
        ok = {a: r[a] == getattr(sc, a) for a in ATTRS}
        for a in ATTRS:
            right[a] += ok[a]
        right["all four"] += all(ok[a] for a in ATTRS[:4])
        err += abs(r["artefacts"] - art)
        n += 1
    return {a: v / n for a, v in right.items()}, err / n, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(f"{'px':>3} {'artefacts':>9} {'images':>6} " + " ".join(f"{a:>10}" for a in (*ATTRS, "all four"))
          + "  |artefacts read - drawn|")
    rows = [(px, art, None) for px in (32, 64) for art in (0.0, 0.2, 0.4, 0.6, 0.8)] + [(32, 0.0, soften)]
    for px, art, deg in rows:
        acc, err, n = measure(px, art, args.seeds, deg)
        label = f"{art:>9.1f}" if deg is None else f"{'softened':>9}"
        print(f"{px:>3} {label} {n:>6} " + " ".join(f"{acc[a]:>10.3f}" for a in (*ATTRS, "all four"))
              + f"  {err:.3f}")


if __name__ == "__main__":
    main()
