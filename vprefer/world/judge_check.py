"""How often a judge agrees with the world's truth, pair by pair, on world image sets.

A judge learned from (or a stand-in for one) is only useful to the closed loop
if it is right often but not always: always right, and the loop would be
measured on the labels it was given; never right, and there is nothing to
learn. This measures that rate the way pairs are built from a judge's answers:
for every two images of one set that the truth tells apart on an aspect, does
the judge's score order them the same way (a judge tie counts half)?

Image sets answer one plain prompt each with images that get each of colour,
shape and background right about half the time, and vary in size, artefacts
(fidelity) and the badge (harmlessness), so every aspect has pairs to decide.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import combinations

from PIL import Image

from vprefer.world.prompts import parse_prompt, world_prompts
from vprefer.world.reader import read_image, truth_of_reading
from vprefer.world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, draw

ASPECTS = ("prompt_following", "aesthetics", "fidelity", "harmlessness")


def scene_for(rng: random.Random, prompt: str, p_right: float = 0.5) -> Scene:
    """A scene that gets each attribute the prompt names right with probability ``p_right`` (else another
    value of it, uniformly); size, artefacts and the badge vary on their own."""
    asked = parse_prompt(prompt)
    pick = {}
    for k, values in (("colour", COLOURS), ("shape", SHAPES), ("background", BACKGROUNDS)):
        want = asked[k] or rng.choice(values)
        pick[k] = want if rng.random() < p_right else rng.choice([v for v in values if v != want])
    return Scene(**pick, size=rng.choice(SIZES), artefacts=rng.choice((0.0, 0.0, 0.15, 0.4)),
                 harmful=rng.random() < 0.15)


def image_sets(n_sets: int, images_per_set: int = 4, *, seed: int = 0, size: int = 32,
               held_out: bool = False, p_right: float = 0.5) -> list[tuple[str, list[Image.Image]]]:
    """``n_sets`` (prompt, images) for world prompts (training or held-out ones), drawn deterministically."""
    rng = random.Random(seed)
    out = []
    for i, prompt in enumerate(world_prompts(n_sets, seed, held_out=held_out)):
        scenes = [scene_for(rng, prompt, p_right) for _ in range(images_per_set)]
        out.append((prompt, [draw(sc, size, seed=seed * 100_003 + i * 97 + j) for j, sc in enumerate(scenes)]))
    return out


def agreement(judge: Callable[[str, list[Image.Image]], dict[str, list[float]]],
              sets: Sequence[tuple[str, list[Image.Image]]], min_margin: float = 0.1) -> dict[str, dict[str, float]]:
    """Per aspect (and ``all_right``: pairs where exactly one image has every named attribute right, judged
    on prompt following), the share of truth-decided pairs the judge orders the same way, judge ties
    counting half, and how many pairs that is. A pair is truth-decided when the truth's values (0..1)
    differ by more than ``min_margin``: aesthetics and fidelity are continuous, and a 0.02 difference is
    no preference. ``judge(prompt, images)`` returns scores per aspect, in the order the images were given."""
    hits = {a: 0.0 for a in (*ASPECTS, "all_right")}
    counts = dict.fromkeys(hits, 0)
    ties = dict.fromkeys(hits, 0)
    for prompt, images in sets:
        truths = [truth_of_reading(prompt, read_image(im)) for im in images]
        scores = judge(prompt, images)
        for i, j in combinations(range(len(images)), 2):
            for a in hits:
                key = "prompt_following" if a == "all_right" else a
                t = float(truths[i][a]) - float(truths[j][a])
                if abs(t) <= min_margin:
                    continue
                d = scores[key][i] - scores[key][j]
                counts[a] += 1
                ties[a] += d == 0
                hits[a] += 0.5 if d == 0 else float((d > 0) == (t > 0))
    return {a: {"agreement": hits[a] / counts[a] if counts[a] else float("nan"), "pairs": counts[a],
                "judge_ties": ties[a] / counts[a] if counts[a] else float("nan")} for a in hits}


def stand_in_judge(noise: float = 0.0, position_bias: float = 0.0, seed: int = 0, lo: int = 1, hi: int = 5):
    """The embedded stand-in judge's scoring (what its server answers), as a ``judge`` for :func:`agreement`."""
    from vprefer.judge_server.scoring import judge

    def run(prompt: str, images: list[Image.Image]) -> dict[str, list[float]]:
        ans = judge(prompt, images, list(ASPECTS), lo, hi, position_bias, False, noise=noise, seed=seed)
        return {a: [float(x[a]["score"]) for x in ans["images"]] for a in ASPECTS}

    return run


def _images(pixels) -> list[Image.Image]:
    """A (B, 3, H, W) batch in [0, 1] as the 8-bit images a judge or the truth reader reads."""
    import numpy as np

    arr = (pixels.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


class JudgeReward:
    """The stand-in judge as a reward: each image judged alone (no position effect), 1-5 with the judge's noise,
    an integer score with no gradient. Served over HTTP (``vprefer.rl.reward_server.RewardServer``) it is what
    a GRPO run against a judge behind a reward server sees (issue 31: the non-differentiable reward)."""

    aspects = list(ASPECTS)

    def __init__(self, noise: float = 1.0, seed: int = 0):
        self.noise, self.seed = noise, seed

    def score_pixels(self, prompts, pixels, aspects=None, normalize: bool = True):
        import torch

        from vprefer.judge_server.scoring import judge

        aspects = list(aspects or self.aspects)
        rows = []
        for prompt, image in zip(prompts, _images(pixels)):
            ans = judge(prompt, [image], aspects, 1, 5, 0.0, False, noise=self.noise, seed=self.seed)
            rows.append([float(ans["images"][0][x]["score"]) for x in aspects])
        return torch.tensor(rows)


class TruthReward:
    """The world's truth as a reward: the truth reader's share of the prompt's named attributes right
    (``prompt_following``) and ``all_right`` (0/1), from pixels, no gradient. What no real user has; the closed
    loop trains GRPO on it (``grpo-gen-truth``) as the ceiling of what a reward could give the loop."""

    aspects = ["prompt_following", "all_right"]

    def score_pixels(self, prompts, pixels, aspects=None, normalize: bool = True):
        import torch

        aspects = list(aspects or self.aspects)
        rows = [truth_of_reading(p, read_image(image)) for p, image in zip(prompts, _images(pixels))]
        return torch.tensor([[float(r[x]) for x in aspects] for r in rows])


class LargeShapeReward:
    """1 when the truth reader sees the shape drawn large, else 0: a direct, dense reward whose optimum is known,
    to tell "GRPO's knobs cannot learn" from "the reward has no signal" (``benchmarks/grpo_world_knobs.py``).
    A plain prompt names no size, and the world's generator gets new combinations right far more often when it
    draws them large."""

    aspects = ["large"]

    def score_pixels(self, prompts, pixels, aspects=None, normalize: bool = True):
        import torch

        return torch.tensor([[float(read_image(image)["size"] == "large")] for image in _images(pixels)])
