"""Evaluating a reward model against gold rankings (human or AI): scores for a run's images, then the
shared agreement metrics (``vprefer.metrics``: both tie rules, Kendall tau-b, bootstrap CIs over prompts)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from vprefer import schema
from vprefer.errors import InputError
from vprefer.metrics import kendall_per_prompt, pair_metrics
from vprefer.store import Run

def score_images(model, run: Run, image_ids: list[str] | None = None, batch_size: int = 32) -> pl.DataFrame:
    """A ``scores`` table (model, prompt_id, image_id, aspect, score) for the run's images.

    Scores depend on the prompt, so an image shown under two prompts is scored twice."""
    imgs = run.image_paths()
    if image_ids is not None:
        imgs = imgs.filter(pl.col("image_id").is_in(image_ids))
    rows = imgs.select("prompt_id", "image_id", "prompt", "path").to_dicts()
    paths = [r["path"] for r in rows]
    s = model.score([r["prompt"] for r in rows], paths, batch_size=batch_size)
    name = getattr(model, "name", None) or model.base
    return pl.DataFrame([{"model": name, "prompt_id": r["prompt_id"], "image_id": r["image_id"], "aspect": a,
                          "score": s[a][k]} for a in s for k, r in enumerate(rows)], schema=schema.SCHEMAS["scores"])


def evaluate_run(model, run_dir: str | Path, *, annotator: str | None = None, aspects: list[str] | None = None,
                 n_boot: int = 1000, seed: int = 0, prompt_ids: list[str] | None = None) -> dict:
    """``prompt_ids``: evaluate on these prompts only (e.g. those a model held out from training)."""
    run = Run(run_dir)
    pairs = run.read("pairs")
    if prompt_ids is not None:
        pairs = pairs.filter(pl.col("prompt_id").is_in(list(prompt_ids)))
    have = sorted(pairs["annotator"].unique().to_list())
    annotator = annotator or (schema.HUMAN if schema.HUMAN in have else (have[0] if len(have) == 1 else None))
    if annotator is None:
        raise InputError(f"{run_dir} has pairs from several annotators {have}; choose one with --annotator")
    if annotator not in have:
        raise InputError(f"no pairs from annotator {annotator!r} in {run_dir}; available: {have}")
    aspects = [a for a in (aspects or model.aspects) if a in model.aspects]
    pairs = pairs.filter(pl.col("annotator") == annotator, pl.col("aspect").is_in(aspects))
    if pairs.height == 0:
        raise InputError(f"no {annotator} pairs for the model's aspects {model.aspects} in {run_dir}")
    scores = score_images(model, run, sorted(set(pairs["win_image_id"]) | set(pairs["lose_image_id"])))
    table = pair_metrics(pairs, scores, n_boot=n_boot, seed=seed)
    rk = run.read("rankings").filter(pl.col("annotator") == annotator) if run.has("rankings") else None
    taus = kendall_per_prompt(rk, scores) if rk is not None else {}
    table = table.with_columns(pl.col("aspect").replace_strict(taus, default=None, return_dtype=pl.Float64)
                               .alias("kendall_tau_b"))
    return {"annotator": annotator, "run": str(run_dir), "n_boot": n_boot, "prompts": pairs["prompt_id"].n_unique(),
            "tie_rules": {"skip_ties": "gold ties skipped, predicted tie wrong (ImageReward)",
                          "ties_half": "gold tie: 1 if predicted tie else 0.5; predicted tie on a decided pair: 0.5"},
            "aspects": table.to_dicts()}
