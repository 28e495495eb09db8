"""Reward hacking, watched: the training reward rising on the eval prompts while a held-out reward falls.

A policy optimised against one reward finds that reward's blind spots: its own reward keeps rising while
the images get worse. A second reward it never trained on (another annotator, another VP-Score, a judge
behind ``vprefer serve-reward``), scored on the same held-out prompts and seeds, does not share those blind
spots, so the two parting ways is the signal. The rule is early stopping on the held-out reward: the
held-out reward has been below its best for ``patience`` evaluations in a row while the training reward is
above its value at that best. One noisy evaluation does not trip it (``patience`` >= 2 is the default);
a run whose rewards both fall is failing, not hacking, and is left to the user.

Every diffusion loop (ReFL, DPO, GRPO) evaluates ``eval/train_reward`` and ``eval/holdout_reward`` on its
eval prompts; :class:`HackingMonitor` turns them into ``hacking/*`` metrics and one warning, and the
recipe's ``stop_on_hacking`` ends the run there (the weights at that evaluation are saved, and
``vprefer_rl.json`` says why the run stopped).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

Point = tuple[int, float, float]  # (step, training reward, held-out reward) at one evaluation


def divergence(points: Sequence[Point], patience: int) -> str | None:
    """The warning when the last ``patience`` evaluations have the held-out reward below its best and the
    training reward above its value at that best; else None. ``points`` are in step order, the first the
    evaluation before training."""
    if patience < 1 or len(points) < patience + 1:
        return None
    best = max(range(len(points)), key=lambda i: (points[i][2], -i))  # the earliest best on ties
    step_b, train_b, held_b = points[best]
    step, train, held = points[-1]
    if not all(p[2] < held_b for p in points[-patience:]) or train <= train_b:  # (so best is not among them)
        return None
    return (f"reward hacking: since step {step_b} the training reward rose {train - train_b:+.4f} "
            f"({train_b:.4f} -> {train:.4f}) while the held-out reward fell {held - held_b:+.4f} "
            f"({held_b:.4f} -> {held:.4f}), {patience} evaluations in a row")


@dataclass
class HackingMonitor:
    patience: int = 2
    points: list[Point] = field(default_factory=list)
    signal: str | None = None

    def observe(self, step: int, metrics: dict) -> dict:
        """One evaluation's metrics -> the ``hacking/*`` metrics to log with them (empty without both rewards)."""
        train, held = metrics.get("eval/train_reward"), metrics.get("eval/holdout_reward")
        if train is None or held is None:
            return {}
        self.points.append((step, float(train), float(held)))
        msg = divergence(self.points, self.patience)
        if msg and self.signal is None:
            self.signal = msg
            log.warning("step %d: %s", step, msg)
        first = self.points[0]
        return {"hacking/train_gain": train - first[1], "hacking/holdout_gain": held - first[2],
                "hacking/diverged": float(msg is not None)}

    def replay(self, log: Path, upto: int) -> None:
        """Rebuild the history from ``metrics.jsonl`` on ``--resume`` (this run's evaluations at steps <= ``upto``;
        an earlier run in the folder, before the last ``before`` row, is not this one), so a resumed run judges
        divergence against the whole run, not from where it restarted."""
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
        starts = [i for i, r in enumerate(rows) if r.get("phase") == "before"]
        for r in rows[starts[-1]:] if starts else rows:
            if r.get("step", 0) <= upto and "eval/train_reward" in r and "eval/holdout_reward" in r:
                self.points.append((int(r["step"]), float(r["eval/train_reward"]), float(r["eval/holdout_reward"])))
        if self.points:
            self.signal = divergence(self.points, self.patience)
