"""VP-Score: train, score, evaluate.

    from vprefer.reward import VPScore
    rm = VPScore.from_pretrained("runs/vp-score")
    rm.score("a red cube", ["a.png", "b.png"])     # {"prompt_following": [...], ...}

Names load on first use: reading a recipe (``vprefer.reward.recipe``) must not import torch, so that a typo
in it is reported in a moment, not after the seconds torch takes to load.
"""

from __future__ import annotations

import importlib

_API = {"VPScore": "vprefer.reward.model", "RewardRecipe": "vprefer.reward.recipe",
        "bradley_terry_loss": "vprefer.reward.loss"}

__all__ = ["VPScore", "RewardRecipe", "bradley_terry_loss"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vprefer.reward' has no attribute {name!r}")
