"""``vprefer rl prompts``: GRPO prompt optimisation against VP-Score (a thin layer over vprefer.rl.prompt_opt)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from vprefer.cli._app import load_recipe, out, overrides_argument
from vprefer.cli.rl import rl
from vprefer.prompts.sources import read_prompts


@rl.command("prompts")
def prompts_cmd(
    recipe: str = typer.Option(..., "--recipe", help="rl/grpo-prompts-*.yaml (policy, generator, aspect weights, GRPO)."),
    reward: str = typer.Option(..., "--reward", help="VP-Score folder (the reward of a rewrite: its images' scores)."),
    prompts: Path = typer.Option(..., "--prompts", help="Run directory or prompt file (.txt, .jsonl, .csv, .parquet)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the LoRA rewriter, its tokenizer and metrics."),
    eval_prompts: Optional[Path] = typer.Option(None, "--eval-prompts", help="Held-out prompts for before/after."),
    holdout_reward: Optional[str] = typer.Option(None, "--holdout-reward", help="A second VP-Score to watch hacking."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override the recipe's max_steps."),
    overrides: Optional[List[str]] = overrides_argument(),
) -> None:
    """Train a prompt rewriter with TRL's GRPO: a short prompt becomes the prompt that makes the generator score best.

    Prompt-following is scored against the original prompt, so rewrites cannot drift from what the user asked. The
    result loads with transformers + peft; `vprefer prompts upsample RUN --annotator local:DIR` uses it. Any field of
    the recipe (PromptOptConfig: TRL's GRPOConfig plus the rewriter's) can be set after the options, e.g.
    `num_generations=8 generator.steps=10`.
    """
    from vprefer.rl.prompt_opt import PromptOptConfig, PromptOptTrainer
    from vprefer.testing.stand_ins import ensure_causal_lm, ensure_pipeline

    ev = read_prompts(eval_prompts) if eval_prompts else None
    cfg = load_recipe(PromptOptConfig, recipe, "rl", overrides, output_dir=str(out_dir), max_steps=max_steps,
                      eval_prompts=ev)
    ensure_causal_lm(cfg.policy, cfg.create_tiny_if_missing)
    ensure_pipeline(cfg.generator["pretrained"], bool(cfg.generator.get("create_tiny_if_missing")))
    s = PromptOptTrainer(cfg, prompts=read_prompts(prompts), reward=reward, holdout_reward=holdout_reward).train()
    if not s.get("main_process", True):  # one report and one summary.json, not one per process
        return
    r = s["train/rewards"]
    if r:
        out.print(f"GRPO reward (mean over each logged group) {r[0]:+.4f} -> {r[-1]:+.4f} over {len(r)} logs")
    if "after/reward" in s:
        out.print(f"held-out prompts: original {s['eval/original']:+.4f}, rewriter before {s['before/reward']:+.4f}, "
                  f"after {s['after/reward']:+.4f}")
    out.print(f"saved the LoRA rewriter to {out_dir}")
    (out_dir / "summary.json").write_text(json.dumps(s, indent=2, default=str))
