"""Generator fine-tuning commands: vprefer rl refl | dpo | sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from vprefer.cli._app import app, load_recipe, out, overrides_argument
from vprefer.prompts.sources import read_prompts

rl = typer.Typer(help="Fine-tune a diffusers generator against VP-Score (ReFL) or on preference pairs (Diffusion-DPO). "
                      "`accelerate launch -m vprefer rl ...` runs on several GPUs.", no_args_is_help=True)
app.add_typer(rl, name="rl")


def _report(history: list[dict], out_dir: Path) -> None:
    before = next((h for h in history if h.get("phase") == "before"), {})
    after = next((h for h in history if h.get("phase") == "after"), {})
    for k in sorted(k for k in after if k.startswith("eval/")):
        out.print(f"  {k}: {before.get(k, float('nan')):+.4f} -> {after[k]:+.4f}")
    stopped = next((h["reason"] for h in history if h.get("phase") == "stopped"), None)
    warned = next((h["step"] for h in history if h.get("hacking/diverged")), None)
    if stopped or warned is not None:
        out.print(f"[yellow]{stopped or f'reward hacking from step {warned}: the held-out reward fell while the training reward rose'}"
                  "[/yellow] (hacking/* in metrics.jsonl)")
    out.print(f"LoRA saved to {out_dir} (pipe.load_lora_weights('{out_dir}')); grids in {out_dir}/eval, "
              f"metrics in {out_dir}/metrics.jsonl, TensorBoard in {out_dir}/logs")


@rl.command("refl")
def refl_cmd(
    recipe: Path = typer.Option(..., "--recipe", help="rl/refl-*.yaml"),
    reward: str = typer.Option(..., "--reward", help="VP-Score folder or hub id (differentiable reward)."),
    prompts: Path = typer.Option(..., "--prompts", help="Training prompts: run directory, .txt, .jsonl, .csv, .parquet."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the LoRA, checkpoints and metrics.jsonl."),
    pretrain_data: Optional[Path] = typer.Option(None, "--pretrain-data", help="Run with real (prompt, image) pairs for "
                                                 "the noise-MSE regulariser (recommended)."),
    holdout_reward: Optional[str] = typer.Option(None, "--holdout-reward", help="A second reward never trained on (VP-Score "
                                                 "folder, http://judge, module:function), scored on the eval prompts: "
                                                 "the reward-hacking watch (hacking_patience, stop_on_hacking)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override the recipe's max_steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT/checkpoints."),
    overrides: Optional[List[str]] = overrides_argument(),
) -> None:
    """ReFL: reward feedback through one late denoising step, with LoRA on the UNet.

    Any field of the recipe (ReFLConfig: TrainingArguments plus ReFL's) can be set after the options, e.g.
    `vprefer rl refl --recipe refl-sd15 ... learning_rate=1e-5 t_lo=25 t_hi=35`.
    """
    from vprefer.rl import ReFLConfig, ReFLTrainer
    from vprefer.rl.refl import run_images

    cfg = load_recipe(ReFLConfig, recipe, "rl", overrides, output_dir=str(out_dir), max_steps=max_steps)
    from vprefer.dist import state
    from vprefer.testing.stand_ins import ensure_pipeline

    with state().main_process_first():  # several processes: one builds a missing stand-in, the rest wait
        ensure_pipeline(cfg.pretrained, cfg.create_tiny_if_missing)
    tr = ReFLTrainer(cfg, prompts=read_prompts(prompts), reward=reward, holdout_reward=holdout_reward,
                     pretrain_data=run_images(pretrain_data) if pretrain_data else ())
    hist = tr.train(resume=resume)
    if state().is_main_process:  # one report, not one per process
        _report(hist, out_dir)


@rl.command("dpo")
def dpo_cmd(
    recipe: Path = typer.Option(..., "--recipe", help="rl/dpo-*.yaml"),
    data: Path = typer.Option(..., "--data", help="Run directory with a pairs table, or a Pick-a-Pic parquet."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the LoRA, checkpoints and metrics.jsonl."),
    aspect: Optional[str] = typer.Option(None, "--aspect", help="Which aspect's pairs (default: the recipe's)."),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="Whose pairs: NAME or A,B (names as in "
                                            "`vprefer info RUN`); needed when the run holds several annotators' "
                                            "pairs. Overrides the recipe's annotators."),
    reward: Optional[str] = typer.Option(None, "--reward", help="VP-Score for periodic evaluation (optional)."),
    holdout_reward: Optional[str] = typer.Option(None, "--holdout-reward", help="A second reward never trained on (VP-Score "
                                                 "folder, http://judge, module:function), scored on the eval prompts: "
                                                 "the reward-hacking watch (hacking_patience, stop_on_hacking)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override the recipe's max_steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT/checkpoints."),
    overrides: Optional[List[str]] = overrides_argument(),
) -> None:
    """Diffusion-DPO on preference pairs (ties dropped); the reference is the UNet with adapters off.

    Any field of the recipe (DiffusionDPOConfig) can be set after the options, e.g. `beta=2500 learning_rate=1e-8`.
    """
    from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer
    from vprefer.rl.dpo import dpo_data

    cfg = load_recipe(DiffusionDPOConfig, recipe, "rl", overrides, output_dir=str(out_dir), max_steps=max_steps,
                      aspect=aspect,
                      annotators=[a.strip() for a in annotator.split(",") if a.strip()] if annotator else None)
    from vprefer.dist import state
    from vprefer.testing.stand_ins import ensure_pipeline

    with state().main_process_first():  # several processes: one builds a missing stand-in, the rest wait
        ensure_pipeline(cfg.pretrained, cfg.create_tiny_if_missing)
    with dpo_data(data, cfg.aspect, cfg.annotators) as (pairs, cfg.aspect):
        if state().is_main_process:
            out.print(f"training on {len(pairs):,} {cfg.aspect} pairs from {', '.join(sorted({p['annotator'] for p in pairs}))}")
        tr = DiffusionDPOTrainer(cfg, pairs=pairs, reward=reward, holdout_reward=holdout_reward)
        hist = tr.train(resume=resume)
    last = [h for h in hist if "dpo/implicit_acc" in h]
    if not state().is_main_process:
        return
    if last:
        out.print(f"implicit accuracy {last[0]['dpo/implicit_acc']:.2f} -> {last[-1]['dpo/implicit_acc']:.2f}, "
                  f"loss {last[0]['loss/dpo']:.4f} -> {last[-1]['loss/dpo']:.4f} over {len(pairs):,} pairs")
    _report(hist, out_dir)


@rl.command("sample")
def sample_cmd(
    lora: Path = typer.Option(..., "--lora", help="Folder written by rl refl/dpo."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompts to draw: run directory, .txt, .jsonl, .csv, "
                                 ".parquet."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the before/after grids."),
    base: Optional[str] = typer.Option(None, "--base", help="Base pipeline (default: the one it was trained on)."),
    steps: int = typer.Option(30, "--steps", help="Denoising steps per image."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise, the same with the LoRA off and on."),
) -> None:
    """Before/after grids: the same prompts and seeds with the LoRA off and on."""
    from vprefer.rl.sample import before_after

    r = before_after(lora, read_prompts(prompts), out_dir, base=base, steps=steps, guidance=guidance, seed=seed)
    out.print(f"wrote {r['before']}, {r['after']}, {r['pair']} (mean |after - before| = {r['changed']:.4f})")
    (out_dir / "sample.json").write_text(json.dumps({k: str(v) for k, v in r.items()}))
