"""From people's answers to the run's ``human`` rankings and pairs (what reward training and evaluation read).

Set tasks: mean star rating per image and aspect, and minus the mean rank for
``overall``. Pairwise tasks: the majority of Left / Right / Tie votes per pair
(``tasks.pairwise_pairs``); where a pair was asked both ways, the pairwise answer
is the more direct one and replaces the pair derived from the set. Gold tasks
never get here (they are in ``gold_answers``), and excluded raters
(``excluded_raters`` in the audit state, set by ``audit report --exclude-raters``)
are left out, so training on ``--annotator human`` uses exactly the audited data.
"""

from __future__ import annotations

from typing import Iterable

import polars as pl

from vprefer import schema
from vprefer.audit.tasks import pairwise_pairs
from vprefer.rankings import ranking_pairs
from vprefer.store import Run


def human_pairs(human: pl.DataFrame, pairwise_tasks: Iterable[int] = (),
                exclude: Iterable[str] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rankings (set tasks) and pairs (set and pairwise tasks), annotator ``human``."""
    human = human.filter(~pl.col("annotator").is_in(list(exclude)))
    is_pw = pl.col("task_id").is_in(list(pairwise_tasks))
    sets, pw = human.filter(~is_pw), human.filter(is_pw)
    scored = sets.filter(pl.col("score").is_not_null()).group_by("prompt_id", "image_id", "aspect").agg(pl.col("score").mean())
    ranked = (sets.filter(pl.col("rank").is_not_null()).group_by("prompt_id", "image_id", "aspect")
              .agg((-pl.col("rank").cast(pl.Float64).mean()).alias("score")))
    both = pl.concat([scored, ranked]).sort("prompt_id", "aspect", "image_id")
    rk, pairs = [], []
    for (pid, aspect), g in both.group_by(["prompt_id", "aspect"], maintain_order=True):
        ids, sc = g["image_id"].to_list(), g["score"].to_list()
        rk.append({"prompt_id": pid, "aspect": aspect, "annotator": schema.HUMAN, "image_ids": ids, "scores": sc,
                   "confidence": 1.0})
        pairs += ranking_pairs(pid, ids, sc, aspect, schema.HUMAN)
    direct = pairwise_pairs(pw)
    asked = {(p["prompt_id"], p["aspect"], frozenset((p["win_image_id"], p["lose_image_id"]))) for p in direct}
    pairs = [p for p in pairs if (p["prompt_id"], p["aspect"], frozenset((p["win_image_id"], p["lose_image_id"])))
             not in asked] + direct
    return schema.frame("rankings", rk), schema.frame("pairs", pairs)


def rebuild(run: Run, state: dict) -> int:
    """Rewrite the run's human rankings and pairs from ``human``; returns the number of pairs."""
    pw = [int(t) for t, v in state.get("tasks", {}).items() if v.get("kind") == "pairwise"]
    rk, pairs = human_pairs(run.read_or_empty("human"), pw, state.get("excluded_raters", []))
    for name, frame in (("rankings", rk), ("pairs", pairs)):
        run.replace_rows(name, frame, "annotator", replacing=[schema.HUMAN])
    return pairs.height
