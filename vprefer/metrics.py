"""Agreement metrics shared by reward evaluation and audits: pairwise accuracy under both tie rules,
Kendall tau-b per prompt, bootstrap CIs. Pure functions of ``pairs`` / ``rankings`` and ``scores`` tables.

Tie rules (they differ across papers, so both are always printed):

* ``skip_ties`` (ImageReward): pairs the gold annotators tied are skipped; a
  predicted tie counts as wrong.
* ``ties_half`` (PickScore-style): every pair counts; a gold tie earns 1 if the
  model also ties and 0.5 otherwise; on a decided pair a predicted tie earns 0.5.

Confidence intervals resample *prompts*, not pairs (pairs from one prompt are
correlated): 95% percentile bootstrap.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import kendalltau

EPS = 1e-6


def _bootstrap(per_prompt: pl.DataFrame, n_boot: int, seed: int) -> tuple[float, float]:
    if per_prompt.height == 0:
        return float("nan"), float("nan")
    per_prompt = per_prompt.sort("prompt_id")  # group_by order is random: without this the seed would not fix the CI
    rng = np.random.default_rng(seed)
    c, n = per_prompt["credit"].to_numpy(), per_prompt["count"].to_numpy()
    idx = rng.integers(0, len(c), size=(n_boot, len(c)))
    acc = c[idx].sum(1) / np.maximum(n[idx].sum(1), 1e-12)
    return float(np.percentile(acc, 2.5)), float(np.percentile(acc, 97.5))


def pair_metrics(pairs: pl.DataFrame, scores: pl.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Per aspect: accuracy under both tie rules with CIs. ``pairs`` is a pairs table; ``scores`` a scores table."""
    s = scores.select("prompt_id", "image_id", "aspect", "score").unique(["prompt_id", "image_id", "aspect"])
    d = (pairs.join(s.rename({"image_id": "win_image_id", "score": "sw"}), on=["prompt_id", "win_image_id", "aspect"])
         .join(s.rename({"image_id": "lose_image_id", "score": "sl"}), on=["prompt_id", "lose_image_id", "aspect"])
         .with_columns((pl.col("sw") - pl.col("sl")).alias("d")))
    pred_tie = pl.col("d").abs() < EPS
    d = d.with_columns(
        skip=pl.when(pred_tie).then(0.0).when(pl.col("d") > 0).then(1.0).otherwise(0.0),
        half=pl.when(pl.col("tie")).then(pl.when(pred_tie).then(1.0).otherwise(0.5))
        .when(pred_tie).then(0.5).when(pl.col("d") > 0).then(1.0).otherwise(0.0))
    out = []
    for (aspect,), g in d.group_by(["aspect"], maintain_order=True):
        dec = g.filter(~pl.col("tie"))
        pp_skip = dec.group_by("prompt_id").agg(pl.col("skip").sum().alias("credit"), pl.len().alias("count"))
        pp_half = g.group_by("prompt_id").agg(pl.col("half").sum().alias("credit"), pl.len().alias("count"))
        lo_s, hi_s = _bootstrap(pp_skip, n_boot, seed)
        lo_h, hi_h = _bootstrap(pp_half, n_boot, seed)
        out.append({"aspect": aspect, "pairs": g.height, "gold_ties": int(g["tie"].sum()),
                    "prompts": g["prompt_id"].n_unique(),
                    "acc_skip_ties": float(dec["skip"].mean()) if dec.height else float("nan"),
                    "ci_skip_lo": lo_s, "ci_skip_hi": hi_s,
                    "acc_ties_half": float(g["half"].mean()), "ci_half_lo": lo_h, "ci_half_hi": hi_h,
                    # a model with coarse (e.g. integer) scores ties often, and skip_ties counts each such tie wrong
                    "pred_tie_share": float((dec["d"].abs() < EPS).mean()) if dec.height else float("nan")})
    return pl.DataFrame(out).sort("aspect") if out else pl.DataFrame()


def kendall_per_prompt(rankings: pl.DataFrame, scores: pl.DataFrame) -> dict[str, float]:
    """Mean Kendall tau-b between gold and model scores over image sets (sets where it is undefined are skipped)."""
    lookup = {(r[0], r[1], r[2]): r[3] for r in scores.select("prompt_id", "image_id", "aspect", "score").iter_rows()}
    taus: dict[str, list[float]] = {}
    for r in rankings.iter_rows(named=True):
        m = [lookup.get((r["prompt_id"], i, r["aspect"])) for i in r["image_ids"]]
        if None in m or len(m) < 2:
            continue
        t = kendalltau(r["scores"], m).statistic  # tau-b: handles ties on both sides
        if not np.isnan(t):
            taus.setdefault(r["aspect"], []).append(float(t))
    return {a: float(np.mean(v)) for a, v in taus.items()}
