"""How the embedded stand-in judge scores images: documented pixel statistics, nothing learned.

It exists so that demos and tests run offline through the real client path.
It is *not* a model of human preference.

A prompt of the learnable world (:func:`vprefer.world.is_world_prompt`, e.g.
"a red circle on a white background") is scored by the world's truth reader,
so that prompt following depends on whether colour, shape, background (and
size, when named) match the prompt — what the closed loop of issue 28 needs a
judge to see. Per image, on the 1-5 scale: prompt_following 1 + 4 * the share
of named attributes right; aesthetics, fidelity and harmlessness 1 + 4 * the
truth's value (harmlessness 1 with the world's badge). With ``noise`` and
``position_bias`` the judge is right often but not always, as a real one is.

Every other prompt keeps the old world's rules, per image (RGB, downscaled to 32x32):

* prompt_following — if the prompt names colours (red, green, blue, ...), the
  share of pixels nearest to those colours' prototypes; else the share of
  "colourful" pixels. Score 1 + 4 * share.
* aesthetics — 1 + 4 * (0.5 * mean saturation + 0.5 * min(1, 2 * luminance std)).
* fidelity — 5 minus 4 * high-frequency noise (mean absolute difference between
  neighbouring pixels, scaled): clean images score high, noise scores low.
* harmlessness — 5, or 2 if the prompt contains a word from a small list
  (blood, gore, weapon, ...).

Scores are rounded and clamped to the rubric's scale, an optional
position bias adds a constant to the image shown first, and an optional
``noise`` adds Gaussian noise of that standard deviation (in points of the 1-5
scale) to each continuous score. The noise is drawn from a seed made of the
judge's seed, the prompt, the image's pixels and the aspect: a misjudgement is
the judge's consistent opinion of that image, so a retried or repeated request
gets the same answer and order effects stay the position bias's alone.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
from PIL import Image

from vprefer.testing.colours import PALETTE
from vprefer.world import is_world_prompt, read_image, truth_of_reading

COLOURS = PALETTE
_PROTO = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)
HARMFUL = ("blood", "gore", "weapon", "gun", "corpse", "violence")


_P2 = (_PROTO ** 2).sum(1)


def stats(im: Image.Image) -> dict[str, float | np.ndarray]:
    im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, much cheaper than a full decode
    a = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
    lum = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    sat = (a.max(-1) - a.min(-1)) / 255.0
    noise = (np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()) / 255.0
    nearest = (_P2 - 2 * a.reshape(-1, 3) @ _PROTO.T).argmin(1)  # argmin of squared distance
    return {"lum_std": float(lum.std() / 255.0), "sat": float(sat.mean()), "noise": float(noise),
            "colourful": float((sat > 0.35).mean()), "nearest": nearest}


def colour_words(prompt: str) -> list[str]:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    return [c for c in COLOURS if c in words]


def world_values(prompt: str, im: Image.Image) -> tuple[dict[str, float], str]:
    """A world prompt's scores in [1, 5] from the truth reader, and what it saw (for the rationale)."""
    seen = read_image(im)
    t = truth_of_reading(prompt, seen)
    values = {a: 1 + 4 * float(t[a]) for a in ("prompt_following", "aesthetics", "fidelity", "harmlessness")}
    if any(w in prompt.lower() for w in HARMFUL):
        values["harmlessness"] = min(values["harmlessness"], 2.0)
    shape = " ".join(x for x in (seen["size"], seen["colour"], seen["shape"]) if x) if seen["shape"] else "no shape"
    why = (f"I see {shape} on a {seen['background']} background{', with a warning badge' if seen['harmful'] else ''}"
           f", artefacts {seen['artefacts']:.2f}; {t['prompt_following']:.0%} of what the prompt names is right")
    return values, why


def aspect_values(prompt: str, im: Image.Image) -> tuple[dict[str, float], str]:
    """Continuous scores in [1, 5] per aspect plus a short description used in rationales."""
    if is_world_prompt(prompt):
        return world_values(prompt, im)
    s = stats(im)
    named = colour_words(prompt)
    if named:
        idx = [i for i, n in enumerate(_NAMES) if n in named]
        share = float(np.isin(s["nearest"], idx).mean())
        pf_why = f"{share:.0%} of the image is {'/'.join(named)}"
    else:
        share = s["colourful"]
        pf_why = f"{share:.0%} of the image is colourful (no colour named in the prompt)"
    values = {
        "prompt_following": 1 + 4 * share,
        "aesthetics": 1 + 4 * (0.5 * s["sat"] + 0.5 * min(1.0, 2 * s["lum_std"])),
        "fidelity": 5 - 4 * min(1.0, s["noise"] * 4),
        "harmlessness": 2.0 if any(w in prompt.lower() for w in HARMFUL) else 5.0,
    }
    why = f"{pf_why}; saturation {s['sat']:.2f}, contrast {s['lum_std']:.2f}, noise {s['noise']:.3f}"
    return values, why


def _noise(key: list[int], aspect: str, sd: float) -> float:
    return float(np.random.default_rng([*key, zlib.crc32(aspect.encode())]).normal(0.0, sd))


def judge(prompt: str, images: list[Image.Image], aspects: list[str], lo: int, hi: int,
          position_bias: float = 0.0, with_ranking: bool = True, noise: float = 0.0, seed: int = 0) -> dict:
    """A v1 answer (docs/DESIGN.md, Judge protocol) for the images in the order shown."""
    items, cont = [], {}
    world = is_world_prompt(prompt)
    for pos, im in enumerate(images, 1):
        values, why = aspect_values(prompt, im)
        # after aspect_values: the image is decoded by then (JPEG draft mode included)
        key = [seed, zlib.crc32(prompt.encode()), zlib.crc32(im.tobytes())] if noise > 0 else []
        entry: dict = {"image": pos}
        for a in aspects:
            v = values.get(a, 3.0) + (position_bias if pos == 1 else 0.0)
            if noise > 0:
                v += _noise(key, a, noise)
            cont[(pos, a)] = v
            score = int(min(hi, max(lo, round(lo + (v - 1) * (hi - lo) / 4))))
            entry[a] = {"score": score,
                        # about as long as the 2-3 sentences the rubric asks a real judge for (~45 tokens)
                        "rationale": f"Stand-in judge, {'world truth reader' if world else 'pixel statistics'} only. "
                                     f"For {a.replace('_', '-')}: {why}. "
                                     f"Image {pos} gets {score} of {hi} on this aspect."}
        items.append(entry)
    answer: dict = {"images": items}
    if with_ranking:
        n = len(images)
        rank = {a: sorted(range(1, n + 1), key=lambda p: (-cont[(p, a)], p)) for a in aspects}
        rank["overall"] = sorted(range(1, n + 1), key=lambda p: (-sum(cont[(p, a)] for a in aspects), p))
        answer["ranking"] = rank
    return answer
