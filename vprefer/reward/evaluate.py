"""Evaluating a reward model against gold rankings (human or AI): both tie rules, Kendall tau-b, bootstrap CIs.

Tie rules (they differ across papers, so both are always printed):

* ``skip_ties`` (ImageReward): pairs the gold annotators tied are skipped; a
  predicted tie counts as wrong.
* ``ties_half`` (PickScore-style): every pair counts; a gold tie earns 1 if the
  model also ties and 0.5 otherwise; on a decided pair a predicted tie earns 0.5.

Confidence intervals resample *prompts*, not pairs (pairs from one prompt are
correlated): 95% percentile bootstrap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import kendalltau

from vprefer import schema
from vprefer.store import Run

EPS = 1e-6


def score_images(model, run: Run, image_ids: list[str] | None = None, batch_size: int = 32) -> pl.DataFrame:
    """A ``scores`` table (model, prompt_id, image_id, aspect, score) for the run's images.

    Scores depend on the prompt, so an image shown under two prompts is scored twice."""
    imgs = run.read("images").join(run.read("prompts").select("prompt_id", "prompt"), on="prompt_id")
    if image_ids is not None:
        imgs = imgs.filter(pl.col("image_id").is_in(image_ids))
    rows = imgs.select("prompt_id", "image_id", "prompt", "uri").to_dicts()
    paths = [run.resolve_uri(r["uri"]) for r in rows]
    s = model.score([r["prompt"] for r in rows], paths, batch_size=batch_size)
    name = getattr(model, "name", None) or model.base
    return pl.DataFrame([{"model": name, "prompt_id": r["prompt_id"], "image_id": r["image_id"], "aspect": a,
                          "score": s[a][k]} for a in s for k, r in enumerate(rows)], schema=schema.SCHEMAS["scores"])


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
                    "acc_ties_half": float(g["half"].mean()), "ci_half_lo": lo_h, "ci_half_hi": hi_h})
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


def evaluate_run(model, run_dir: str | Path, *, annotator: str | None = None, aspects: list[str] | None = None,
                 n_boot: int = 1000, seed: int = 0) -> dict:
    run = Run(run_dir)
    pairs = run.read("pairs")
    have = sorted(pairs["annotator"].unique().to_list())
    annotator = annotator or (schema.HUMAN if schema.HUMAN in have else (have[0] if len(have) == 1 else None))
    if annotator is None:
        raise ValueError(f"{run_dir} has pairs from several annotators {have}; choose one with --annotator")
    if annotator not in have:
        raise ValueError(f"no pairs from annotator {annotator!r} in {run_dir}; available: {have}")
    aspects = [a for a in (aspects or model.aspects) if a in model.aspects]
    pairs = pairs.filter(pl.col("annotator") == annotator, pl.col("aspect").is_in(aspects))
    if pairs.height == 0:
        raise ValueError(f"no {annotator} pairs for the model's aspects {model.aspects} in {run_dir}")
    scores = score_images(model, run, sorted(set(pairs["win_image_id"]) | set(pairs["lose_image_id"])))
    table = pair_metrics(pairs, scores, n_boot=n_boot, seed=seed)
    rk = run.read("rankings").filter(pl.col("annotator") == annotator) if run.has("rankings") else None
    taus = kendall_per_prompt(rk, scores) if rk is not None else {}
    table = table.with_columns(pl.col("aspect").replace_strict(taus, default=None, return_dtype=pl.Float64)
                               .alias("kendall_tau_b"))
    return {"annotator": annotator, "run": str(run_dir), "n_boot": n_boot,
            "tie_rules": {"skip_ties": "gold ties skipped, predicted tie wrong (ImageReward)",
                          "ties_half": "gold tie: 1 if predicted tie else 0.5; predicted tie on a decided pair: 0.5"},
            "aspects": table.to_dicts()}
