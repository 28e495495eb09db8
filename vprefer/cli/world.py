"""The learnable world's commands (issue 28): pretrain the models that have learned it.

Each writes a folder that ``from_pretrained`` loads (safetensors), deterministically: the same command
writes the same weights. The shipped copies under ``vprefer/world/models/`` were made by these commands
with their defaults (see the README beside them).
"""

from __future__ import annotations

from pathlib import Path

import typer

from vprefer.cli._app import app, out
from vprefer.errors import InputError

world_app = typer.Typer(help="The learnable stand-in world: pretrain the models that have learned it.",
                        no_args_is_help=True)
app.add_typer(world_app, name="world")


@world_app.command("pretrain-generator")
def pretrain_generator_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Folder for the diffusers pipeline (StableDiffusionPipeline)."),
    steps: int = typer.Option(1200, "--steps", help="UNet + text-encoder updates (the shipped generator: 1200)."),
    vae_steps: int = typer.Option(400, "--vae-steps", help="Autoencoder updates, first."),
    images: int = typer.Option(2048, "--images", help="Drawn training images (training combinations only)."),
    seed: int = typer.Option(0, "--seed", help="Every draw (data, initialisation, order) follows it: the same seed writes the same weights."),
    also_save_at: str = typer.Option("", "--also-save-at", help="Comma-separated step counts also saved to "
                                     "OUT-step<N> (each equals a run of N steps), to choose a length in one run."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Read held-out samples with the truth "
                                 "reader afterwards (about 30 s)."),
) -> None:
    """Pretrain the world's SD-architecture generator on drawn images and captions (mostly descriptive)."""
    from vprefer.world.generator import PretrainConfig, pretrain_generator

    try:
        snaps = tuple(int(x) for x in also_save_at.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--also-save-at takes step counts like 400,800, not {also_save_at!r}") from None
    cfg = PretrainConfig(steps=steps, vae_steps=vae_steps, images=images, seed=seed)
    pretrain_generator(out_dir, cfg, log=out.print, snapshots=snaps)
    out.print(f"wrote {out_dir}")
    if measure:
        from vprefer.diffusion import load_pipeline
        from vprefer.world.generator_check import measure as measure_pipe

        m = measure_pipe(load_pipeline(str(out_dir)))
        for style, r in m["by_style"].items():
            out.print(f"held-out prompts, {style:11s} style: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))


@world_app.command("pretrain-flow-generator")
def pretrain_flow_generator_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Folder for the diffusers pipeline (StableDiffusion3Pipeline)."),
    steps: int = typer.Option(600, "--steps", help="Transformer + text-encoder updates (the shipped one: 600)."),
    images: int = typer.Option(2048, "--images", help="Drawn training images (training combinations only)."),
    seed: int = typer.Option(0, "--seed", help="Every draw (data, initialisation, order) follows it: the same seed "
                             "writes the same weights."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Read held-out samples with the truth "
                                 "reader afterwards (about a minute)."),
) -> None:
    """Pretrain the world's SD3-architecture (rectified-flow) generator, reusing the SD world generator's VAE
    and tokenizer: the flow-matching loops are measured on the same truth as the SD ones."""
    from vprefer.world.flow_generator import FlowPretrainConfig, pretrain_flow_generator

    pretrain_flow_generator(out_dir, FlowPretrainConfig(steps=steps, images=images, seed=seed), log=out.print)
    out.print(f"wrote {out_dir}")
    if measure:
        from vprefer.diffusion import load_pipeline
        from vprefer.world.generator_check import measure as measure_pipe

        m = measure_pipe(load_pipeline(str(out_dir)))
        for style, r in m["by_style"].items():
            out.print(f"held-out prompts, {style:11s} style: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))


@world_app.command("pretrain-backbone")
def pretrain_backbone_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Folder for the CLIP (model, tokenizer, image processor)."),
    steps: int = typer.Option(2000, "--steps", help="Contrastive updates (0: save the random initialisation)."),
    batch_size: int = typer.Option(96, "--batch-size", help="Image-caption pairs per update."),
    pool: int = typer.Option(3000, "--pool", help="Images drawn once to train on."),
    seed: int = typer.Option(0, "--seed", help="Every draw (data, initialisation, order) follows it: the same seed writes the same weights."),
    shuffle_captions: bool = typer.Option(False, "--shuffle-captions", help="The wrong version, for checks: "
                                          "each image trained with another image's caption."),
    held_out: bool = typer.Option(True, "--held-out/--training-combinations-only",
                                  help="Draw held-out (colour, shape, background) triples too, as a foundation "
                                       "model has seen them (default); without them the vision tower learns "
                                       "shortcuts and misreads held-out shapes."),
) -> None:
    """Pretrain a small CLIP contrastively on drawn world images and their captions (VP-Score's world backbone)."""
    from vprefer.world.backbone import pretrain_backbone

    m = pretrain_backbone(out_dir, steps=steps, batch_size=batch_size, pool=pool, seed=seed, shuffle_captions=shuffle_captions,
                          held_out=held_out, log=out.print)
    z = m["held_out_zero_shot"]
    out.print(f"wrote {out_dir}: {m['parameters']:,} parameters, {steps} steps in {m['seconds']} s, loss "
              f"{m['first_loss'] or 0:.3f} -> {m['last_loss'] or 0:.3f}; zero-shot on held-out combinations: colour "
              f"{z['colour']:.2f}, shape {z['shape']:.2f}, background {z['background']:.2f}, all {z['all']:.2f}")


@world_app.command("pretrain-lm")
def pretrain_lm_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Folder for the causal LM and its tokenizer."),
    steps: int = typer.Option(3000, "--steps", help="Updates (0: save the random initialisation; 600 kept no "
                              "attribute of a held-out prompt, 3000 keep all)."),
    batch_size: int = typer.Option(24, "--batch-size", help="Prompt -> caption examples per update."),
    seed: int = typer.Option(0, "--seed", help="Every draw (data, initialisation, order) follows it: the same seed writes the same weights."),
) -> None:
    """Pretrain the small causal LM the GRPO rewriter starts from: world prompts in, descriptive captions out."""
    from vprefer.world.lm import pretrain_lm

    m = pretrain_lm(out_dir, steps=steps, batch_size=batch_size, seed=seed, log=out.print)
    h = m["held_out"]
    out.print(f"wrote {out_dir}: {m['parameters']:,} parameters, {steps} steps in {m['seconds']} s, loss "
              f"{m['first_loss'] or 0:.3f} -> {m['last_loss'] or 0:.3f}; greedy rewrites of held-out prompts that "
              f"keep their attributes: plain {h['plain']['keeps_attributes']:.2f}, short "
              f"{h['short']['keeps_attributes']:.2f}")
