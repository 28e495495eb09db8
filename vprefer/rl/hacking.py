"""Reward hacking, watched: the training reward rising on the eval prompts while a held-out reward falls.

A policy optimised against one reward finds that reward's blind spots: its own reward keeps rising while
the images get worse. A second reward it never trained on (another annotator, another VP-Score, a judge
behind ``vprefer serve-reward``), scored on the same held-out prompts and seeds, does not share those blind
spots, so the two parting ways is the signal. The rule is early stopping on the held-out reward: the
held-out reward has been below its best for ``patience`` evaluations in a row while the training reward is
above its value at that best, each by more than ``min_delta`` (a level held-out reward wobbling at its
best is noise, not a fall). One noisy evaluation does not trip it (``patience`` >= 2 is the default);
a run whose rewards both fall is failing, not hacking, and is left to the user.

Every diffusion loop (ReFL, DPO, GRPO) evaluates ``eval/train_reward`` and ``eval/holdout_reward`` on its
eval prompts; :class:`HackingMonitor` turns them into ``hacking/*`` metrics and one warning, and the
recipe's ``stop_on_hacking`` ends the run there (the weights at that evaluation are saved, and
``vprefer_rl.json`` says why the run stopped).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vprefer.recipes import RecipeError

log = logging.getLogger(__name__)

Point = tuple[int, float, float]  # (step, training reward, held-out reward) at one evaluation


def divergence(points: Sequence[Point], patience: int, min_delta: float = 0.0) -> str | None:
    """The warning when the last ``patience`` evaluations have the held-out reward more than ``min_delta`` below
    its best and the training reward more than ``min_delta`` above its value at that best; else None.
    ``points`` are in step order, the first the evaluation before training. Of tied bests the latest counts
    (the training reward must have risen since the held-out one last stood there)."""
    if patience < 1 or len(points) < patience + 1:
        return None
    best = max(range(len(points)), key=lambda i: (points[i][2], i))
    step_b, train_b, held_b = points[best]
    step, train, held = points[-1]
    if not all(p[2] < held_b - min_delta for p in points[-patience:]) or train <= train_b + min_delta:
        return None  # (the last ``patience`` all below the best: the best is not among them)
    return (f"reward hacking: since step {step_b} the training reward rose {train - train_b:+.4f} "
            f"({train_b:.4f} -> {train:.4f}) while the held-out reward fell {held - held_b:+.4f} "
            f"({held_b:.4f} -> {held:.4f}), {patience} evaluations in a row")


@dataclass
class HackingMonitor:
    patience: int = 2
    min_delta: float = 0.0
    points: list[Point] = field(default_factory=list)
    signal: str | None = None

    def observe(self, step: int, metrics: dict) -> dict:
        """One evaluation's metrics -> the ``hacking/*`` metrics to log with them (empty without both rewards).
        With several processes pass the metrics averaged over them, so every rank takes the same decision."""
        train, held = metrics.get("eval/train_reward"), metrics.get("eval/holdout_reward")
        if train is None or held is None:
            return {}
        if not (math.isfinite(train) and math.isfinite(held)):
            log.warning("step %d: the training or held-out reward is not a number (%s, %s); not watched", step,
                        train, held)
            return {}
        self.points.append((step, float(train), float(held)))
        msg = divergence(self.points, self.patience, self.min_delta)
        if msg and self.signal is None:
            self.signal = msg
            log.warning("step %d: %s", step, msg)
        first = self.points[0]
        return {"hacking/train_gain": train - first[1], "hacking/holdout_gain": held - first[2],
                "hacking/diverged": float(msg is not None)}

    def replay(self, log_file: Path, upto: int) -> None:
        """Rebuild the history from ``metrics.jsonl`` on ``--resume``: this run's evaluations (after the last
        ``before`` row; an earlier run in the folder is not this one) at steps <= ``upto``, the last row of
        each step (an evaluation redone after an earlier resume is logged twice), so a resumed run judges
        divergence against the whole run, not from where it restarted."""
        rows = [json.loads(x) for x in log_file.read_text().splitlines() if x.strip()] if log_file.exists() else []
        starts = [i for i, r in enumerate(rows) if r.get("phase") == "before"]
        by_step = {int(r["step"]): (int(r["step"]), float(r["eval/train_reward"]), float(r["eval/holdout_reward"]))
                   for r in (rows[starts[-1]:] if starts else rows)
                   if r.get("step", 0) <= upto and "eval/train_reward" in r and "eval/holdout_reward" in r}
        self.points = [p for _, p in sorted(by_step.items()) if math.isfinite(p[1]) and math.isfinite(p[2])]
        self.signal = divergence(self.points, self.patience, self.min_delta) if self.points else None


def weighted_mean(scores, aspects: Sequence[str], weights: dict[str, float], *, all_if_none: bool = False) -> float:
    """A reward as one number from its (B, aspects) ``scores``: averaged over images, the aspects in the recipe's
    ``reward_aspects`` weighted by them (normalised by the weights' absolute sum, as ``weighted_reward``). None
    of them among ``aspects``: a RecipeError, or with ``all_if_none`` (a held-out reward, which may score other
    aspects) all its aspects equally."""
    ks = [k for k, a in enumerate(aspects) if a in weights]
    if not ks and not all_if_none:
        raise RecipeError(f"reward_aspects {list(weights)} match none of the reward's aspects {list(aspects)}")
    ks = ks or list(range(len(aspects)))
    w = [float(weights.get(aspects[k], 1.0)) for k in ks]
    return sum(wi * float(scores[:, k].mean()) for wi, k in zip(w, ks)) / (sum(map(abs, w)) or 1.0)
