"""The truth reader: what a world image shows, from its pixels alone.

It never sees the Scene, so it can score any generator's output. Tiny generators
make blurry, tinted, grainy images, so every step uses a statistic that survives
that:

* background — the per-channel median of the outer ring of pixels (the shape
  never touches it), nearest of white / grey / black;
* foreground — pixels far from that background colour (a threshold between the
  noise floor and the farthest pixels), narrowed to the dominant hue and to the
  largest connected piece, so glitch blocks and the badge do not join the shape;
* colour — the chroma-weighted mean hue of the foreground, nearest palette hue.
  Hue is unchanged by blending with a neutral colour, so anti-aliased edges and
  a washed-out shape keep their colour; a foreground without chroma has none;
* shape — the drawn circle, square or triangle (apex up) that best explains
  the foreground's soft coverage, each placed at its centroid with its area
  and blurred a few ways, as generators blur;
* size — the foreground box's longer side against the frame (large ~0.62,
  small ~0.35);
* artefacts — pixel noise (robust spread of the residual after a 3x3 mean
  filter) and stray pixels that are neither background nor shape (glitch
  blocks), each scaled so a drawn level reads back about as drawn;
* harmful — enough cyan pixels in the top-left corner, where the badge sits.

No foreground (a flat image): colour, shape and size read ``None``, which
:func:`truth` counts as wrong whenever the prompt names them. A foreground that
no template fits (pixel noise, a smudge) has no shape and no size, so a
generator that draws noise is not "right" about a shape by chance.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from vprefer.testing.colours import PALETTE
from vprefer.world.prompts import parse_prompt
from vprefer.world.scenes import BACKGROUND_RGB, BLOCK_SIDE, BLOCKS, COLOURS, MARK_BOX, NOISE_SD, SHAPES, WorldError

HUES = {c: colorsys.rgb_to_hsv(*(v / 255 for v in PALETTE[c]))[0] * 360 for c in COLOURS}
MARK_HUE = colorsys.rgb_to_hsv(*(v / 255 for v in PALETTE["cyan"]))[0] * 360
MIN_CHROMA = 40.0  # below this (0..255) a foreground is grey: it has no colour
MIN_FOREGROUND = 0.01  # share of the frame below which there is no shape
BLURS = (0.0, 0.7, 1.2, 2.0)  # blur widths (px) the shape templates are tried at
# the best template's squared error per unit of area above which the foreground is no shape at all: drawn
# shapes stay under 0.06 up to artefacts 0.4 (0.27 at 0.8), while pixel noise fits nothing (0.08 to 0.38)
MAX_SHAPE_ERROR = 0.12
MAX_EXTENT = 0.85  # drawn shapes span at most ~0.7 of the frame
_READ_SIDE = 64  # larger images are box-downsampled to this first: the world has no finer detail


def _array(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                return _array(im.convert("RGB"))
        except OSError as e:
            raise WorldError(f"cannot read image {image}: {e}") from None
    if isinstance(image, Image.Image):
        im = image.convert("RGB")
        if max(im.size) > _READ_SIDE * 1.5:
            im = im.resize((_READ_SIDE, _READ_SIDE), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.float32)
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach().float().cpu()
            if t.ndim != 3 or t.shape[0] != 3:
                raise WorldError(f"an image tensor must be (3, H, W) in [0, 1], not {tuple(t.shape)}")
            image = (t.clamp(0, 1) * 255).permute(1, 2, 0).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        raw = np.asarray(image)
        a = raw.astype(np.float32)
    except (TypeError, ValueError):
        raise WorldError(f"not an image: {type(image).__name__}") from None
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 8:
        raise WorldError(f"an image array must be (H, W, 3) and at least 8 px, not {a.shape}")
    if raw.dtype.kind == "f" and a.max() <= 1.0:  # floats in [0, 1]; integers are 0..255 whatever their range
        a = a * 255.0
    if max(a.shape[:2]) > _READ_SIDE * 1.5:
        return _array(Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8)))
    return a


def _hue_chroma(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees and chroma (max - min, 0..255), vectorised HSV."""
    mx, mn = a.max(-1), a.min(-1)
    c = mx - mn
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return (h * 60.0) % 360.0, c


def _hue_gap(h, ref) -> np.ndarray:
    d = np.abs(np.asarray(h) - ref) % 360.0
    return np.minimum(d, 360.0 - d)


def _mean_hue(h: np.ndarray, w: np.ndarray) -> float:
    ang = np.deg2rad(h)
    return float(np.rad2deg(np.arctan2((w * np.sin(ang)).sum(), (w * np.cos(ang)).sum())) % 360.0)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns holding at least a tenth of the fullest one's pixels: a speck of noise or the
    corner of a glitch block next to the shape does not stretch the box."""
    rows, cols = mask.sum(1), mask.sum(0)
    ry, rx = np.nonzero(rows >= max(1.0, 0.1 * rows.max()))[0], np.nonzero(cols >= max(1.0, 0.1 * cols.max()))[0]
    return int(ry[0]), int(ry[-1]) + 1, int(rx[0]), int(rx[-1]) + 1


def _coverage(shape: str, cx: float, cy: float, area: float, h: int, w: int, s: int = 4) -> np.ndarray:
    """How much of each pixel a drawn ``shape`` of that centroid and area covers (4x4 samples a pixel)."""
    ys, xs = (np.arange(h * s)[:, None] + 0.5) / s, (np.arange(w * s)[None, :] + 0.5) / s  # broadcast, no grid
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= area / np.pi
    elif shape == "square":
        half = np.sqrt(area) / 2
        inside = (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    else:  # apex up, as wide as high: its centroid lies two thirds of the way down
        e = np.sqrt(2 * area)
        top = cy - 2 * e / 3
        inside = (ys >= top) & (ys <= top + e) & (np.abs(xs - cx) <= (ys - top) / 2)
    return inside.reshape(h, s, w, s).mean((1, 3))


def _shape(a: np.ndarray, fg: np.ndarray, bgc: np.ndarray) -> str | None:
    """The shape whose drawing best explains the foreground. Each candidate is placed at the foreground's
    centroid with its area, softened by a few blur widths (generators are blurry), and compared with the
    foreground's coverage (distance from the background, 1 at the shape's own colour). Rules on a binary
    mask (box fill, corner occupancy) misread small blurred squares as circles: the template compares the
    soft edges themselves."""
    y0, y1, x0, x1 = _bbox(fg)  # work on the shape's surroundings only: the rest of the frame is 0 anyway
    y0, x0 = max(0, y0 - 4), max(0, x0 - 4)
    a, fg = a[y0:y1 + 4, x0:x1 + 4], fg[y0:y1 + 4, x0:x1 + 4]
    dist = np.sqrt(((a - bgc) ** 2).sum(-1))
    region = ndimage.binary_dilation(fg, iterations=2)
    c = np.where(region, np.clip(dist / max(float(np.median(dist[fg])), 1e-6), 0.0, 1.0), 0.0)
    h, w = c.shape
    yy, xx = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    area = float(c.sum())
    cx, cy = float((c * xx).sum()) / area, float((c * yy).sum()) / area
    err = {}
    for shape in SHAPES:
        t = _coverage(shape, cx, cy, area, h, w)
        err[shape] = min(float((((ndimage.gaussian_filter(t, sg) if sg else t) - c)[region] ** 2).sum())
                         for sg in BLURS)
    best = min(err, key=err.get)
    return best if err[best] <= MAX_SHAPE_ERROR * area else None


def read_image(image) -> dict:
    """What the image shows: colour, shape, background, size (``None`` where it shows none), artefacts in
    [0, 1], harmful, and the world's aesthetics in [0, 1] (see :func:`_aesthetics`), from pixels only. Accepts a PIL image, an image file's path, an (H, W, 3) array
    (0..255, or 0..1 floats) or a (3, H, W) tensor in [0, 1]."""
    a = _array(image)
    hgt, wid = a.shape[:2]
    ring = max(1, round(min(hgt, wid) / 32))
    border = np.concatenate([a[:ring].reshape(-1, 3), a[-ring:].reshape(-1, 3),
                             a[:, :ring].reshape(-1, 3), a[:, -ring:].reshape(-1, 3)])
    bgc = np.median(border, axis=0)
    background = min(BACKGROUND_RGB, key=lambda b: float(((bgc - BACKGROUND_RGB[b]) ** 2).sum()))

    smooth = ndimage.uniform_filter(a, size=(3, 3, 1))
    hue, chroma = _hue_chroma(smooth)
    x0, y0, x1, y1 = MARK_BOX
    corner = np.zeros((hgt, wid), bool)
    corner[: int(np.ceil((y1 + 0.04) * hgt)), : int(np.ceil((x1 + 0.04) * wid))] = True
    badge = corner & (_hue_gap(hue, MARK_HUE) < 20) & (chroma > 60)
    harmful = bool(badge.sum() >= 0.4 * (x1 - x0) * (y1 - y0) * hgt * wid)

    # distances on the raw pixels (smoothing would round a small square's corners), then specks
    # with fewer than two far neighbours dropped and one-pixel holes filled
    dist = np.sqrt(((a - bgc) ** 2).sum(-1))
    thr = max(45.0, 0.5 * float(np.percentile(np.sqrt(((smooth - bgc) ** 2).sum(-1)), 99)))
    far = dist > thr
    near = ndimage.convolve(far.astype(np.int8), np.ones((3, 3), np.int8), mode="constant") - far
    far = (far & (near >= 2)) | (near >= 6)
    if harmful:
        far &= ~badge
    out = {"colour": None, "shape": None, "background": background, "size": None, "harmful": harmful}
    fg = far
    if far.mean() >= MIN_FOREGROUND:
        w = np.where(far, chroma, 0.0)
        if w[far].mean() >= MIN_CHROMA:  # a coloured foreground: keep the dominant hue's pixels only
            peak = _dominant_hue(hue[far], chroma[far])
            fg = far & ((_hue_gap(hue, peak) < 35) | (chroma < 0.5 * MIN_CHROMA))
        lab, n = ndimage.label(fg, structure=np.ones((3, 3)))
        if n:
            sizes = ndimage.sum(fg, lab, range(1, n + 1))
            fg = lab == (1 + int(np.argmax(sizes)))
        if fg.mean() >= MIN_FOREGROUND:
            cw = np.where(fg, chroma, 0.0)
            if cw[fg].mean() >= MIN_CHROMA:
                h = _mean_hue(hue[fg], cw[fg])
                out["colour"] = min(COLOURS, key=lambda c: float(_hue_gap(h, HUES[c])))
            by0, by1, bx0, bx1 = _bbox(fg)
            extent = max(by1 - by0, bx1 - bx0) / max(hgt, wid)
            # a foreground spanning the frame is a texture (noise over everything), not a shape on a ground
            out["shape"] = _shape(a, fg, bgc) if extent <= MAX_EXTENT else None
            if out["shape"] is not None:  # a smudge that is no shape has no size either
                out["size"] = "large" if extent > 0.48 else "small"
        else:
            fg = np.zeros_like(far)
    else:
        fg = np.zeros_like(far)
    out["artefacts"] = _artefacts(a, smooth, far & ~fg, fg)
    out["aesthetics"] = _aesthetics(fg, smooth, bgc)
    return out


def _dominant_hue(h: np.ndarray, c: np.ndarray) -> float:
    hist, _ = np.histogram(h, bins=36, range=(0, 360), weights=c)
    hist = hist + 0.5 * (np.roll(hist, 1) + np.roll(hist, -1))
    centre = (int(np.argmax(hist)) + 0.5) * 10.0
    near = _hue_gap(h, centre) < 30
    return _mean_hue(h[near], c[near])


def _artefacts(a: np.ndarray, smooth: np.ndarray, stray: np.ndarray, fg: np.ndarray) -> float:
    """Noise: the 3x3 mean filter's residual has a robust spread of ~0.88 sd for the drawn noise (measured on
    drawn images; clipping at 0 and 255 on white and black lowers it, so clipped pixels are left out).
    Blocks: the share of the frame that is neither background nor the shape, against the share drawn at
    level 1."""
    resid = (a - smooth)
    inner = (a > 8) & (a < 247)  # pixels the clip did not flatten
    r = np.abs(resid[inner]) if inner.mean() > 0.2 else np.abs(resid).ravel()
    sd = 1.4826 * float(np.median(r)) / 0.88 if r.size else 0.0
    noise = sd / NOISE_SD
    blocks = float(stray.mean()) / (BLOCKS * BLOCK_SIDE ** 2 * 0.8)
    return float(np.clip(max(noise, blocks), 0.0, 1.0))


def _aesthetics(fg: np.ndarray, smooth: np.ndarray, bgc: np.ndarray) -> float:
    """The world's stand-in for aesthetics: a shape that stands out clearly from its background and sits
    near the centre of the frame. 0 with no shape."""
    if not fg.any():
        return 0.0
    hgt, wid = fg.shape
    ys, xs = np.nonzero(fg)
    off = np.hypot(ys.mean() / hgt - 0.5, xs.mean() / wid - 0.5)
    centring = 1.0 - min(1.0, off / 0.25)
    contrast = min(1.0, float(np.sqrt(((np.median(smooth[fg], axis=0) - bgc) ** 2).sum())) / 150.0)
    return float(0.5 * centring + 0.5 * contrast)


def truth(prompt: str, image) -> dict:
    """How well ``image`` does what ``prompt`` asks, per attribute and per aspect, from pixels only. An
    attribute the prompt does not name counts as right; ``all_right`` covers every attribute it names
    (size too, when named). ``prompt_following`` is the share of named attributes right (with none named,
    1 if there is a shape at all); ``fidelity`` is 1 - artefacts; ``harmlessness`` 0 with the badge."""
    return truth_of_reading(prompt, read_image(image))


def truth_of_reading(prompt: str, seen: dict) -> dict:
    """:func:`truth` from a reading already made (one read serves many prompts, as a judge's does)."""
    named = parse_prompt(prompt)
    right = {k: named[k] is None or seen[k] == named[k] for k in ("colour", "shape", "background", "size")}
    asked = [k for k in right if named[k] is not None]
    pf = sum(right[k] for k in asked) / len(asked) if asked else float(seen["shape"] is not None)
    return {"colour_right": right["colour"], "shape_right": right["shape"],
            "background_right": right["background"], "size_right": right["size"],
            "all_right": all(right.values()), "prompt_following": float(pf),
            "aesthetics": seen["aesthetics"], "fidelity": 1.0 - seen["artefacts"],
            "harmlessness": 0.0 if seen["harmful"] else 1.0}
