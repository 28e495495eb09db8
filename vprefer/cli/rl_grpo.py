"""``vprefer rl grpo``: online GRPO on the generator (DDPO / DanceGRPO on SD, Flow-GRPO on SD3 / FLUX)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vprefer.cli._app import load_recipe, out, overrides_argument
from vprefer.cli.rl import _report, rl
from vprefer.prompts.sources import read_prompts


@rl.command("grpo")
def grpo_cmd(
    recipe: Path = typer.Option(..., "--recipe", help="rl/grpo-*.yaml (grpo-sd15, grpo-sd35m, grpo-flux-dev, "
                                "grpo-world, grpo-world-flow, the tiny ones)."),
    prompts: Path = typer.Option(..., "--prompts", help="Training prompts: run directory, .txt, .jsonl, .csv, .parquet."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the LoRA, checkpoints and metrics.jsonl."),
    reward: Optional[str] = typer.Option(None, "--reward", help="A VP-Score folder or hub id, weighted by the recipe's "
                                         "reward_aspects; used when the recipe has no `rewards:` list."),
    holdout_reward: Optional[str] = typer.Option(None, "--holdout-reward", help="A second reward never trained on (VP-Score "
                                                 "folder, http://judge, module:function), scored on the eval prompts: "
                                                 "the reward-hacking watch (hacking_patience, stop_on_hacking)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override the recipe's max_steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT/checkpoints."),
    overrides: Optional[List[str]] = overrides_argument(),
) -> None:
    """Online GRPO: groups of images per prompt from the stochastic sampler, rewards normalised within each
    group, the clipped policy gradient on the sampled transitions, with LoRA. Any reward works, including
    a non-differentiable judge behind `vprefer serve-reward` (rewards='[http://host:port]').

    Any field of the recipe (GRPOConfig) can be set after the options, e.g.
    `vprefer rl grpo --recipe grpo-sd35m ... group_size=16 beta=0.01 rewards='[runs/vp-score, mypkg.r:ocr]'`.
    """
    from vprefer.rl import GRPOConfig, GRPOTrainer

    cfg = load_recipe(GRPOConfig, recipe, "rl", overrides, output_dir=str(out_dir), max_steps=max_steps)
    from vprefer.dist import state
    from vprefer.testing.stand_ins import ensure_pipeline

    with state().main_process_first():  # several processes: one builds a missing stand-in, the rest wait
        ensure_pipeline(cfg.pretrained, cfg.create_tiny_if_missing)
    tr = GRPOTrainer(cfg, prompts=read_prompts(prompts), reward=reward, holdout_reward=holdout_reward)
    hist = tr.train(resume=resume)
    if not state().is_main_process:
        return
    steps = [h for h in hist if "reward/train" in h]
    if steps:
        out.print(f"training reward {steps[0]['reward/train']:+.4f} -> {steps[-1]['reward/train']:+.4f}, "
                  f"ratio on the first step of each update {steps[-1]['grpo/ratio_first']:.6f} (must be 1)")
    _report(hist, out_dir)
