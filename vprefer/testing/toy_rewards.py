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
