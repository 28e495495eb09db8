"""What goes into a Label Studio task and what comes back: image sets, pairs (Left / Right / Tie), gold items.

Pure functions over frames and dicts; ``labelstudio.py`` does the talking to the server.
"""

from __future__ import annotations

import hashlib
import random
from itertools import combinations

import numpy as np
import polars as pl

from vprefer import schema
from vprefer.errors import InputError
from vprefer.store import Run

INTERFACES = ("sets", "pairwise")
CHOICE_RANKS = {"Left": (1, 2), "Right": (2, 1), "Tie": (1, 1)}
"""Pairwise answers are stored in ``human`` as ranks of the two images (1 = better; a tie ranks both 1)."""


def candidate_pairs(run: Run) -> pl.DataFrame:
    """Every within-set pair of images: prompt_id, a, b (a < b)."""
    sets = run.image_paths().sort("prompt_id", "image_id").group_by("prompt_id", maintain_order=True).agg("image_id")
    rows = [(pid, a, b) for pid, ids in sets.iter_rows() for a, b in combinations(sorted(set(ids)), 2)]
    return pl.DataFrame(rows, schema={"prompt_id": pl.String, "a": pl.String, "b": pl.String}, orient="row")


def pair_disagreement(run: Run, pairs: pl.DataFrame) -> pl.DataFrame:
    """Adds ``dis``: per pair, summed over aspects, how much the judge's permutations disagree on the order
    (1 - |mean sign|) plus 1 where VP-Score orders the pair against the judge's mean."""
    if not run.has("annotations"):
        raise InputError("--strategy disagreement needs annotations (run `vprefer annotate` first)")
    ann = (run.read("annotations").filter(pl.col("status") == "ok")
           .group_by("prompt_id", "image_id", "aspect", "annotator", "permutation").agg(pl.col("score").mean()))
    key = ["prompt_id", "aspect", "annotator", "permutation"]
    both = (pairs.join(ann.rename({"image_id": "a", "score": "sa"}), on=["prompt_id", "a"])
            .join(ann.rename({"image_id": "b", "score": "sb"}), on=["prompt_id", "b", *key[1:]]))
    perm = (both.group_by("prompt_id", "a", "b", "aspect")
            .agg((1 - (pl.col("sa") - pl.col("sb")).sign().mean().abs()).alias("perm"),
                 (pl.col("sa") - pl.col("sb")).mean().alias("judge")))
    if run.has("scores"):
        vp = run.read("scores").group_by("image_id", "aspect").agg(pl.col("score").mean())
        perm = (perm.join(vp.rename({"image_id": "a", "score": "va"}), on=["a", "aspect"], how="left")
                .join(vp.rename({"image_id": "b", "score": "vb"}), on=["b", "aspect"], how="left")
                .with_columns(((pl.col("judge") * (pl.col("va") - pl.col("vb"))) < 0).fill_null(False)
                              .cast(pl.Float64).alias("vp")))
    else:
        perm = perm.with_columns(pl.lit(0.0).alias("vp"))
    dis = perm.group_by("prompt_id", "a", "b").agg((pl.col("perm") + pl.col("vp")).sum().alias("dis"))
    return pairs.join(dis, on=["prompt_id", "a", "b"], how="left").with_columns(pl.col("dis").fill_null(0.0))


def select_pairs(run: Run, n: int, strategy: str, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt_id, a, b) of the pairs worth a person's time: those the judge's permutations or VP-Score vs the
    judge disagree on most (ties broken by id), or a seeded random draw."""
    pairs = candidate_pairs(run)
    if strategy == "random":
        rows = pairs.rows()
        return random.Random(seed).sample(rows, min(n, len(rows)))
    if strategy == "disagreement":
        ranked = pair_disagreement(run, pairs).sort(["dis", "prompt_id", "a", "b"], descending=[True, False, False, False])
        return ranked.select("prompt_id", "a", "b").head(n).rows()
    raise InputError(f"unknown strategy {strategy!r} for pairwise tasks: random or disagreement")


def shown_order(a: str, b: str, seed: int = 0) -> list[str]:
    """Left/right by a hash, so each side is the better one about half of the time and a rerun shows the same."""
    flip = int(hashlib.sha256(f"{seed}|{a}|{b}".encode()).hexdigest()[:8], 16) % 2
    return [b, a] if flip else [a, b]


def parse_pairwise(result: list[dict], image_ids: list[str]) -> list[tuple[str, str, int]]:
    """(image_id, aspect, rank) rows from a Left / Right / Tie annotation of ``image_ids`` = [left, right]."""
    rows = []
    for r in result:
        if r.get("type") != "choices":
            continue
        choice = ((r.get("value") or {}).get("choices") or [None])[0]
        if choice in CHOICE_RANKS:
            for iid, rank in zip(image_ids, CHOICE_RANKS[choice]):
                rows.append((iid, r["from_name"], rank))
    return rows


def pairwise_pairs(human: pl.DataFrame) -> list[dict]:
    """Pairs rows (annotator human) from pairwise-task ranks: per prompt, aspect and pair the majority of votes
    wins; equal votes (or all Tie) is a tie. margin = share of votes won minus share lost."""
    out = []
    votes: dict[tuple, list[float]] = {}
    for (tid, who, pid, aspect), g in human.group_by(["task_id", "annotator", "prompt_id", "aspect"], maintain_order=True):
        if g.height != 2:
            continue
        (ia, ra), (ib, rb) = sorted(g.select("image_id", "rank").rows())
        votes.setdefault((pid, aspect, ia, ib), []).append(float(np.sign(rb - ra)))  # +1: ia better
    for (pid, aspect, ia, ib), v in sorted(votes.items()):
        m = float(np.mean(v))
        w, lo = (ia, ib) if m >= 0 else (ib, ia)
        out.append({"prompt_id": pid, "win_image_id": w, "lose_image_id": lo, "aspect": aspect,
                    "annotator": schema.HUMAN, "margin": abs(m), "weight": 1.0, "tie": m == 0})
    return out
