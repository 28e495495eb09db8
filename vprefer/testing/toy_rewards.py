"""Toy differentiable rewards with a known optimum, for tests, benchmarks and the demo's sanity checks."""

from __future__ import annotations

from typing import Sequence

import torch


class RednessReward(torch.nn.Module):
    """Mean of R - (G + B) / 2 over the image, in [-1, 1]: more red is better, whatever the prompt."""

    aspects = ["redness"]

    def score_pixels(self, prompts: Sequence[str], pixels: torch.Tensor, aspects=None, normalize: bool = True):
        p = pixels.float()
        return (p[:, 0] - (p[:, 1] + p[:, 2]) / 2).mean(dim=(1, 2)).unsqueeze(1)


class LetterReward(torch.nn.Module):
    """A reward with a known optimum for prompt optimisation, computed from the *text* each aspect is scored
    with (the pixels are ignored on purpose): ``aesthetics`` = share of ``letter`` in it, ``prompt_following`` =
    share of ``pf_letter``. Which text each aspect sees is exactly what the tests check."""

    aspects = ["prompt_following", "aesthetics"]

    def __init__(self, letter: str = "e", pf_letter: str = "z"):
        super().__init__()
        self.letter, self.pf_letter = letter, pf_letter

    @property
    def device(self):
        return torch.device("cpu")

    def score_pixels(self, prompts: Sequence[str], pixels: torch.Tensor, aspects=None, normalize: bool = True):
        share = {"aesthetics": self.letter, "prompt_following": self.pf_letter}
        cols = [[p.count(share[a]) / max(1, len(p)) for p in prompts] for a in (aspects or self.aspects)]
        return torch.tensor(cols, dtype=torch.float32).T


class PromptColourReward(torch.nn.Module):
    """A reward that depends on the prompt: how much the image is of the colour the prompt names (red, green
    or blue: that channel minus the mean of the other two, in [-1, 1]); 0 for a prompt naming none. A loop
    that loses the prompt somewhere (a swapped guidance, prompts misaligned with images) cannot raise it for
    two prompts asking opposite things."""

    aspects = ["prompt_colour"]
    CHANNELS = {"red": 0, "green": 1, "blue": 2}

    def score_pixels(self, prompts: Sequence[str], pixels: torch.Tensor, aspects=None, normalize: bool = True):
        p = pixels.float().mean(dim=(2, 3))  # (B, 3)
        out = []
        for text, rgb in zip(prompts, p):
            c = next((i for w, i in self.CHANNELS.items() if w in text.split()), None)
            out.append(rgb[c] - (rgb.sum() - rgb[c]) / 2 if c is not None else rgb.sum() * 0)
        return torch.stack(out).unsqueeze(1)


def redness(prompts, pixels):
    """RednessReward as a plain function ``fn(prompts, pixels) -> (B,)``: a reward list's ``module:function``."""
    return RednessReward().score_pixels(prompts, pixels)[:, 0]


def not_redness(prompts, pixels):
    """The negated redness: a held-out reward that disagrees with ``redness`` (reward-hacking tests)."""
    return -redness(prompts, pixels)
