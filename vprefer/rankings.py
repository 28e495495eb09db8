"""One rule, used everywhere, for turning a scored image set into preference pairs.

A k-image set gives all C(k, 2) pairs (ImageReward's convention). A pair whose
score difference is at most ``min_margin`` is a tie: it is kept and flagged,
never silently dropped, so that each consumer (training, evaluation) applies
its own tie rule explicitly. A tie is written with the smaller image id as
``win_image_id``, as the judge's pairs are (:func:`vprefer.annotate.pairs.pair_stats`,
which computes the same rule in polars over millions of judgements;
``tests/test_pairs.py`` holds the two equal).
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence


def ranking_pairs(
    prompt_id: str,
    image_ids: Sequence[str],
    scores: Sequence[float],
    aspect: str,
    annotator: str,
    *,
    min_margin: float = 0.0,
    weight: float = 1.0,
) -> list[dict]:
    if len(image_ids) != len(scores):
        raise ValueError(f"prompt {prompt_id}: {len(image_ids)} images but {len(scores)} scores")
    out = []
    for i, j in combinations(range(len(image_ids)), 2):
        d = float(scores[i]) - float(scores[j])
        tie = abs(d) <= min_margin + 1e-12
        if tie:  # no winner: oriented by image id, so every producer of pairs writes a tie the same way
            w, l = (i, j) if str(image_ids[i]) <= str(image_ids[j]) else (j, i)
        else:
            w, l = (i, j) if d > 0 else (j, i)
        out.append({
            "prompt_id": prompt_id, "win_image_id": image_ids[w], "lose_image_id": image_ids[l],
            "aspect": aspect, "annotator": annotator, "margin": abs(d), "weight": weight, "tie": tie,
        })
    return out


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """1 = best. Scores that are negated integer ranks (as imported) come back exactly;
    otherwise competition ranking (1 + number of strictly better images), ties equal."""
    if scores and all(float(s).is_integer() and s < 0 for s in scores):
        return [int(-s) for s in scores]
    return [1 + sum(1 for t in scores if t > s) for s in scores]


def training_sources(pairs, annotators: Sequence[str] | None, *, where: str, option: str) -> list[str]:
    """The annotators whose pairs a training job reads: the chosen ones, or the only one there is.

    Why not all of them by default: a run may hold a combined judge label beside its parts (the same
    judgement counted twice) or imported human rows beside the judge's; mixing them silently changes what
    the model learns. Several present and none chosen is an error that names them and the option to use.
    ``pairs`` is a polars frame with an ``annotator`` column."""
    from vprefer.errors import InputError

    counts = dict(pairs.group_by("annotator").len().sort("annotator").iter_rows())
    if annotators:
        return list(annotators)
    if len(counts) <= 1:
        return list(counts)
    listed = ", ".join(f"{a} ({n:,} pairs)" for a, n in counts.items())
    raise InputError(f"{where}: pairs from {len(counts)} annotators: {listed}; training on all of them would mix "
                     f"sources (a combined label and its parts, or humans and a judge): choose with {option}")
