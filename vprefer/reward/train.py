"""``train_reward()``: recipe + runs -> a saved VP-Score folder, linear and readable."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import torch
import yaml

from vprefer.config import build_dataclass
from vprefer.recipes import RecipeError
from vprefer.reward.build import build, init_from
from vprefer.reward.data import PairCollator, PairDataset, load_pairs, split_by_prompt
from vprefer.reward.model import VPScore
from vprefer.reward.recipe import RewardRecipe
from vprefer.reward.trainer import VPScoreConfig, VPScoreTrainer, pair_accuracy
from vprefer.dist import params_in_sync
from vprefer.ids import short_hash
from vprefer.secrets import redact


def training_config(recipe: RewardRecipe, out: Path, has_val: bool) -> VPScoreConfig:
    """The recipe's ``training:`` section -> VPScoreConfig by the loader every trainer's config uses
    (``vprefer.config.build_dataclass``: its keys are the config's fields); what depends on the machine, the run
    and the recipe's ``loss:`` section is set here."""
    cuda, t = torch.cuda.is_available(), recipe.training.settings()
    return build_dataclass(VPScoreConfig, {
        **t, "output_dir": str(out / "checkpoints"), "bf16": bool(t.get("bf16")) and cuda, "use_cpu": not cuda,
        # the backbone's checkpointing is switched on by build() (before LoRA / k-bit wrapping); the Trainer
        # must not try it again on the VPScore wrapper, which is no PreTrainedModel
        "gradient_checkpointing": False,
        "eval_strategy": "steps" if has_val and t.get("eval_steps") else "no",
        # tqdm's own switch, honoured; and no \r-redrawn bar in a log (the Trainer prints plain log lines instead)
        "disable_tqdm": os.environ.get("TQDM_DISABLE", "") in ("1", "true", "True") or not sys.stderr.isatty(),
        "tie_mode": recipe.loss.ties, "use_pair_weights": recipe.loss.use_pair_weights,
        "aspect_weights": recipe.loss.aspect_weights}, recipe.source, prefix="training.",
        from_cli=[k.split(".", 1)[1] for k in recipe.cli if k.startswith("training.")])


def calibration_items(df: pl.DataFrame, limit: int = 512) -> pl.DataFrame:
    """The (prompt, image) items calibration scores: the same ones on every run and every rank, whatever the
    row order of ``df`` (ReFL's ``lam`` threshold is defined on the calibrated scale). Chosen by a content hash
    of the prompt and the image file's name (images are stored under their sha256), so the pick is spread over
    prompts instead of taking the alphabetically first ones."""
    items = pl.concat([df.select("prompt", pl.col("win_path").alias("p")), df.select("prompt", pl.col("lose_path").alias("p"))]
                      ).unique()
    key = [short_hash("calibrate", pr, Path(pa).name) for pr, pa in items.iter_rows()]
    return items.with_columns(pl.Series("_key", key)).sort("_key", "prompt", "p").head(limit).drop("_key")


def calibrate(model: VPScore, df: pl.DataFrame, limit: int = 512) -> dict[str, tuple[float, float]]:
    """Mean/std of raw scores per aspect over (prompt, image) pairs of ``df`` (held-out when available)."""
    items = calibration_items(df, limit)
    raw = model.score(items["prompt"].to_list(), items["p"].to_list(), normalize=False)
    return {a: (float(np.mean(v)), float(np.std(v) or 1.0)) for a, v in raw.items()}


def train_reward(recipe: RewardRecipe, runs: Sequence[str | Path], out: str | Path, *, resume: bool = False) -> dict:
    out = Path(out)
    args = training_config(recipe, out, has_val=True)  # the training section is checked before data or model load
    torch.manual_seed(args.seed)
    if recipe.annotator_weights and not recipe.loss.use_pair_weights:
        raise RecipeError(f"recipe {recipe.name}: annotator_weights need loss.use_pair_weights: true")
    df = load_pairs(runs, recipe.aspects, recipe.annotators, recipe.annotator_weights)  # bad data fails here
    out.mkdir(parents=True, exist_ok=True)
    if recipe.loss.ties == "drop":
        df = df.filter(~pl.col("tie"))
    train_df, val_df = split_by_prompt(df, args.val_fraction, args.seed)
    model = build(recipe)
    if recipe.init_from:
        init_from(model, recipe.init_from)
    trainer = VPScoreTrainer(model=model, args=training_config(recipe, out, val_df.height > 0),
                             train_dataset=PairDataset(train_df),
                             eval_dataset=PairDataset(val_df) if val_df.height else None,
                             data_collator=PairCollator(model), compute_metrics=pair_accuracy, aspects=recipe.aspects)
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    result = trainer.train(resume_from_checkpoint=str(ckpts[-1]) if resume and ckpts else None)
    model.calibration = calibrate(model, val_df if val_df.height else train_df)  # same on every rank
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    summary = {"trainable_params": sum(p.numel() for p in trainable),
               "total_params": sum(p.numel() for p in model.parameters()),
               # weights + gradients + two Adam moments of the trainable ones (fp32): what scales with model size
               "train_state_mib": round(weights_mib + sum(p.numel() for p in trainable) * 12 / 2**20, 1),
               "train_pairs": train_df.height, "val_pairs": val_df.height,
               "train_prompts": train_df["prompt_id"].n_unique(), "val_prompts": val_df["prompt_id"].n_unique(),
               "steps": result.global_step, "train_loss": result.training_loss,
               "train_pairs_per_s": result.metrics.get("train_samples_per_second"),
               "train_runtime_s": result.metrics.get("train_runtime"),
               "runs": [str(r) for r in runs], "resumed_from": str(ckpts[-1]) if resume and ckpts else None,
               "annotators": sorted(df["annotator"].unique().to_list())}
    if val_df.height:
        summary["val"] = {k: v for k, v in trainer.evaluate().items()}  # a collective: every rank takes part
    summary.update(params_in_sync(trainable))
    if trainer.is_world_process_zero():  # with several processes the model and its records are written once
        model.save_pretrained(out)
        (out / "recipe.yaml").write_text(yaml.safe_dump(redact(recipe.resolved()), sort_keys=False))
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        # the prompts never trained on, so `eval-reward --held-out` can compare models on them fairly
        (out / "held_out.json").write_text(json.dumps({"runs": [str(r) for r in runs], "prompt_ids": sorted(
            val_df["prompt_id"].unique().to_list())}, indent=2))
    return summary
