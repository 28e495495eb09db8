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
