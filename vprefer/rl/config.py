"""The Config every diffusion loop (ReFL, Diffusion-DPO, GRPO) extends: ``transformers.TrainingArguments`` for
the usual knobs (output_dir, learning_rate, max_steps, batch size, accumulation, bf16/fp16, gradient
checkpointing, logging/save steps, seed) plus the generator's, the evaluation's and the reward-hacking watch's,
checked in ``__post_init__`` before any pipeline or reward loads (one line naming the key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments

from vprefer.diffusion.flow import DENSITIES
from vprefer.recipes import RecipeError, load_config


@dataclass
class DiffusionTrainingConfig(TrainingArguments):
    pretrained: str = field(default="stable-diffusion-v1-5/stable-diffusion-v1-5", metadata={"help": "diffusers pipeline"})
    resolution: int = 512
    use_lora: bool = True
    lora_rank: int = 8
    lora_alpha: int = 8
    lora_targets: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    ema_decay: float = field(default=0.0, metadata={"help": "0 = no EMA of the trained weights"})
    eval_prompts: list = field(default_factory=list)
    eval_every: int = 100
    eval_steps_sampling: int = 20
    eval_seed: int = 1234
    guidance_scale: float = 7.5
    reward_aspects: dict = field(default_factory=lambda: {"overall": 1.0})
    sample_latents: bool = field(default=True, metadata={"help": "encode real images with a sample of the VAE "
                                                                 "posterior (reference scripts), not its mean"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name; the "
                                                                         "reference ReFL/DPO scripts use constant "
                                                                         "(with warmup for DPO)"})
    create_tiny_if_missing: bool = field(default=False, metadata={"help": "tests/demo: `pretrained` is a tiny "
                                                                          "random stand-in the CLI builds if absent"})
    pretrained_vae: str | None = field(default=None, metadata={"help": "a VAE to use instead of the pipeline's, e.g. "
                                                                       "madebyollin/sdxl-fp16-fix for SDXL in fp16"})
    # rectified flow (SD 3.x, FLUX) only; the DDPM family draws t uniformly from its own schedule
    timestep_density: str = field(default="logit_normal", metadata={"help": "flow matching: density of the training "
                                                                            "sigma (logit_normal, uniform, mode)"})
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    timestep_shift: float | None = field(default=None, metadata={"help": "flow matching: shift of the training sigma; "
                                                                         "null = the checkpoint's (SD3.5: 3, FLUX: "
                                                                         "its resolution-dependent exp(mu)); 1 = none"})
    embedded_guidance: float = field(default=3.5, metadata={"help": "FLUX.1-dev's guidance embedding in training "
                                                                    "forwards and rollouts (no CFG there)"})
    hacking_patience: int = field(default=2, metadata={"help": "evaluations the held-out reward may stay below its "
                                                               "best while the training reward is above its value "
                                                               "there before a reward-hacking warning (0 = never)"})
    hacking_min_delta: float = field(default=0.01, metadata={"help": "falls and rises smaller than this (in the "
                                                                      "rewards' units) are noise to the watch"})
    stop_on_hacking: bool = field(default=False, metadata={"help": "end the run at that warning (weights saved)"})

    def __post_init__(self):
        # what a user can get wrong, checked before any pipeline or reward loads (one line naming the key)
        check = [(self.resolution >= 8 and self.resolution % 8 == 0, "resolution must be a positive multiple of 8"),
                 (self.lora_rank >= 1, "lora_rank must be >= 1"), (self.lora_alpha > 0, "lora_alpha must be > 0"),
                 (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1) (0 = no EMA)"),
                 (self.guidance_scale >= 0, "guidance_scale must be >= 0 (1 = no classifier-free guidance)"),
                 (self.eval_every >= 0, "eval_every must be >= 0 (0 = only before and after)"),
                 (self.eval_steps_sampling >= 1, "eval_steps_sampling must be >= 1"),
                 (self.timestep_density in DENSITIES, f"timestep_density must be one of {', '.join(DENSITIES)}"),
                 (self.logit_std > 0, "logit_std must be > 0"),
                 (self.timestep_shift is None or self.timestep_shift > 0, "timestep_shift must be > 0 or null"),
                 (self.embedded_guidance >= 0, "embedded_guidance must be >= 0"),
                 (self.hacking_patience >= 0, "hacking_patience must be >= 0 (0 = never warn)"),
                 (self.hacking_min_delta >= 0, "hacking_min_delta must be >= 0"),
                 (not self.stop_on_hacking or (self.eval_every > 0 and self.eval_prompts and self.hacking_patience),
                  "stop_on_hacking needs eval_every > 0, eval_prompts and hacking_patience >= 1"),
                 (bool(self.reward_aspects) and all(isinstance(w, (int, float)) for w in self.reward_aspects.values()),
                  "reward_aspects must map aspect names to numeric weights, e.g. {overall: 1.0}")]
        for ok, why in check:
            if not ok:
                raise RecipeError(f"{why}; got {why.split()[0]}={getattr(self, why.split()[0])!r}")
        if not torch.cuda.is_available():  # several CPU processes are one gloo job only when CPU is asked for
            self.use_cpu = True
        super().__post_init__()


def flow_knobs(config: DiffusionTrainingConfig) -> dict:
    """The recipe's forward-process settings, as the families' ``training_scheduler`` takes them."""
    return {k: getattr(config, k) for k in ("resolution", "timestep_density", "timestep_shift", "logit_mean",
                                            "logit_std", "mode_scale")}


def config_from_yaml(cls, path: str | Path, **overrides):
    """Recipe YAML (a path, or a name in ./rl/ or the repository's rl/) -> Config (``vprefer.recipes.load_config``)."""
    return load_config(cls, path, "rl", **overrides)
