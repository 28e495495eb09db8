"""What ReFL, Diffusion-DPO and GRPO share: the Config base, accelerate set-up, LoRA, EMA, evaluation (and the
reward-hacking watch), checkpoints.

Each loop is a ``...Config`` (extending ``transformers.TrainingArguments`` for the
usual knobs: output_dir, learning_rate, max_steps, batch size, accumulation,
bf16/fp16, gradient checkpointing, logging/save steps, seed) plus a
``...Trainer`` whose ``train()`` is a short, linear loop over ``step()``.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments, get_scheduler

from vprefer.recipes import RecipeError, load_config
from vprefer.diffusion import add_lora, for_pipeline, grid, load_pipeline, save_lora, save_unet, stand_in_must_exist
from vprefer.diffusion.flow import DENSITIES
from vprefer.dist import params_in_sync
from vprefer.rl.hacking import HackingMonitor
from vprefer.rl.ranks import RankStreams, mean_over_processes
from vprefer.rl.rewards import load_reward, weighted_reward


def frozen_dtype(config, cuda: bool) -> torch.dtype | None:
    """The dtype to load the pipeline in: on a GPU under bf16/fp16 the frozen parts (VAE, text encoders, a
    LoRA's base UNet) are held in it, as the reference trainers do (SDXL's frozen fp32 weights alone are
    ~13 GB); trainable weights are made fp32 after loading. On a CPU there is no mixed precision: fp32."""
    if not cuda:
        return None
    return torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None


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


class DiffusionTrainerBase:
    config: DiffusionTrainingConfig
    ref = None  # a frozen copy of the denoiser for loops that need a reference under a full fine-tune
    stopped: str | None = None  # why the run ended before max_steps (stop_on_hacking)

    def __init__(self, config: DiffusionTrainingConfig, *, pipe=None, reward=None, holdout_reward=None,
                 callbacks: Sequence[Callable[[int, dict], None]] = ()):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, ProjectConfiguration

        self.config, self.out = config, Path(config.output_dir)
        mp = "bf16" if config.bf16 else "fp16" if config.fp16 else "no"
        # accumulation is done by hand in update() (one optimizer update = gradient_accumulation_steps
        # micro-batches), so every step counter below counts optimizer updates, as transformers does
        self.acc = Accelerator(mixed_precision=mp if torch.cuda.is_available() else "no", cpu=not torch.cuda.is_available(),
                               log_with="tensorboard" if "tensorboard" in (config.report_to or []) else None,
                               project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")))
        if config.ema_decay > 0 and self.acc.distributed_type == DistributedType.FSDP:
            raise RecipeError("ema_decay > 0 is not supported with FSDP yet (the EMA would hold shards that "
                              "checkpoints and the saved weights cannot gather): set ema_decay: 0 or use DDP")
        # the model is built on the shared seed (every rank starts from the same weights); every draw the
        # loop makes comes from its own per-rank streams (``self.rng``, ``self.gen``), seeded seed + rank
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        if pipe is None:
            stand_in_must_exist(config.pretrained, config.create_tiny_if_missing)
        self.pipe = pipe if pipe is not None else load_pipeline(config.pretrained,
                                                                frozen_dtype(config, torch.cuda.is_available()),
                                                                vae=config.pretrained_vae)
        self.pipe.to(self.acc.device)
        for m in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(self.pipe, m, None) is not None:
                getattr(self.pipe, m).requires_grad_(False)
        # the family (SD/SDXL, SD3, FLUX) answers every model-specific question; ``self.unet`` is its denoiser
        # (a UNet or a transformer), the name kept from the SD-only days
        self.fam = for_pipeline(self.pipe)
        self.fam.embedded_guidance = config.embedded_guidance
        self.fam.check_resolution(config.resolution)
        unet = self.fam.denoiser
        if config.use_lora:
            add_lora(unet, config.lora_rank, config.lora_alpha, config.lora_targets)
        else:
            unet.requires_grad_(True)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.params = [p for p in unet.parameters() if p.requires_grad]
        for p in self.params:  # master weights in fp32 even when the pipeline was loaded in bf16/fp16
            p.data = p.data.float()
        self.opt = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.before_prepare(unet)
        self.unet, self.opt = self.acc.prepare(unet, self.opt)
        # FSDP2 replaces every parameter with a sharded one (and re-points the optimizer): clipping, the EMA
        # and the sync check must use the prepared module's parameters, not the ones made above
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.lr_sched = get_scheduler(config.lr_scheduler_type, self.opt,
                                      num_warmup_steps=config.get_warmup_steps(config.max_steps),
                                      num_training_steps=config.max_steps, scheduler_specific_kwargs=config.lr_scheduler_kwargs or None)
        self.acc.register_for_checkpointing(self.lr_sched)
        self.ema = [p.detach().clone() for p in self.params] if config.ema_decay > 0 else None
        self.reward, self.holdout = load_reward(reward), load_reward(holdout_reward)
        self.callbacks = list(callbacks)
        self.streams = RankStreams(config.seed, self.acc.process_index)
        torch.manual_seed(config.seed + self.acc.process_index)  # any draw outside the streams differs per rank too
        self.step_no = 0
        self.history: list[dict] = []
        if self.acc.is_main_process:
            self.acc.init_trackers(type(self).__name__)

    @property
    def rng(self) -> random.Random:
        """This process's Python stream (pairs, prompts, the gradient step): seeded seed + rank, checkpointed."""
        return self.streams.py

    @property
    def gen(self) -> torch.Generator:
        """This process's torch stream (noise, timesteps, posterior samples): seeded seed + rank, checkpointed."""
        return self.streams.torch

    def before_prepare(self, unet) -> None:
        """Called with the plain UNet before ``accelerator.prepare`` wraps or shards it (FSDP2 replaces every
        parameter with a shard): the place to copy what must hold the full, unsharded weights."""

    # ------------------------------------------------------------------ pieces
    def compute_loss(self) -> tuple[torch.Tensor, dict]:  # pragma: no cover - implemented by the loops
        """One micro-batch: the loss to minimise and its metrics (no backward, no optimizer step)."""
        raise NotImplementedError

    def update(self) -> dict:
        """One optimizer update over ``gradient_accumulation_steps`` micro-batches; metrics are their mean."""
        k = max(1, self.config.gradient_accumulation_steps)
        ms: list[dict] = []
        for i in range(k):
            sync = contextlib.nullcontext() if i == k - 1 else self.acc.no_sync(self.unet)
            with sync:
                loss, m = self.compute_loss()
                self.acc.backward(loss / k)
            ms.append(m)
        lr = self.lr_sched.get_last_lr()[0]  # the rate this update uses
        self.optimizer_step()
        self.lr_sched.step()
        out = {key: float(np.mean([m[key] for m in ms if key in m])) for key in ms[-1]}
        out["lr"] = lr
        return out

    def optimizer_step(self) -> None:
        """Clip, step, zero the gradients, move the EMA: what ends every optimizer update of every loop."""
        if self.config.max_grad_norm:
            self.acc.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.lerp_(p.detach(), 1 - self.config.ema_decay)

    @contextlib.contextmanager
    def reference(self):
        """The reference model: adapters off (LoRA) or a frozen copy (``self.ref``, a full fine-tune's)."""
        if self.ref is not None:
            yield self.ref
            return
        u = self.acc.unwrap_model(self.unet)
        u.disable_adapters()
        try:
            yield u
        finally:
            u.enable_adapters()

    def _swap_ema(self) -> None:
        if self.ema is not None:
            for e, p in zip(self.ema, self.params):
                tmp = p.detach().clone()
                p.data.copy_(e)
                e.copy_(tmp)

    def log(self, metrics: dict) -> None:
        metrics = mean_over_processes(self.acc, {"step": self.step_no, "time": time.time(), **metrics})
        self.history.append(metrics)
        if self.acc.is_main_process:
            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"},
                         step=self.step_no)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        for cb in self.callbacks:
            cb(self.step_no, metrics)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], steps: int | None = None, seed: int | None = None) -> torch.Tensor:
        c = self.config
        g = torch.Generator(device="cpu").manual_seed(c.eval_seed if seed is None else seed)
        out = self.pipe(list(prompts), num_inference_steps=steps or c.eval_steps_sampling,
                        guidance_scale=c.guidance_scale, height=c.resolution, width=c.resolution,
                        generator=g, output_type="pt")
        return out.images.float().clamp(0, 1)

    @torch.no_grad()
    def evaluate(self, tag: str | None = None) -> dict:
        """Grid PNG + mean reward per aspect on the held-out prompts (+ the second, held-out reward)."""
        prompts = self.config.eval_prompts
        if not prompts:
            return {}
        self._swap_ema()
        try:
            imgs = self.sample(prompts)
        finally:
            self._swap_ema()
        (self.out / "eval").mkdir(parents=True, exist_ok=True)
        if self.acc.is_main_process:
            grid(imgs, cols=min(4, len(prompts))).save(self.out / "eval" / f"{tag or f'step-{self.step_no:06d}'}.png")
        m: dict = {}
        for name, rm in (("reward", self.reward), ("holdout_reward", self.holdout)):
            if rm is not None:
                s = rm.score_pixels(list(prompts), imgs.to(self.acc.device))
                for k, a in enumerate(rm.aspects):
                    m[f"eval/{name}/{a}"] = s[:, k].mean().item()
                if name == "holdout_reward":  # the recipe's aspects where the held-out reward has them, else all
                    ks = [k for k, a in enumerate(rm.aspects) if a in self.config.reward_aspects] or range(len(rm.aspects))
                    w = [self.config.reward_aspects.get(rm.aspects[k], 1.0) for k in ks]
                    m["eval/holdout_reward"] = sum(wi * s[:, k].mean().item() for wi, k in zip(w, ks)) / sum(map(abs, w))
        m.update(self.train_objective(list(prompts), imgs.to(self.acc.device)))
        if len(prompts) > 1:  # diversity across prompts: falls under mode collapse (undefined for one prompt)
            m["eval/pixel_std"] = imgs.std(0).mean().item()
        return m

    def train_objective(self, prompts: list[str], imgs: torch.Tensor) -> dict:
        """``eval/train_reward``: what the loop optimises, on the eval images (the hacking monitor's first half)."""
        if self.reward is None:
            return {}
        return {"eval/train_reward": weighted_reward(self.reward, prompts, imgs, self.config.reward_aspects).mean().item()}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Path:
        d = self.out / "checkpoints" / f"step-{self.step_no:06d}"
        self.acc.save_state(str(d), safe_serialization=True)
        if self.ema is not None and self.acc.is_main_process:
            save_file({str(i): e.detach().cpu().contiguous() for i, e in enumerate(self.ema)}, str(d / "ema.safetensors"))
        self.acc.wait_for_everyone()  # the folder exists before any rank writes its streams into it
        self.streams.save(d)  # one file per rank: each process has its own streams
        if self.acc.is_main_process:
            (d / "vprefer_state.json").write_text(json.dumps({"step": self.step_no}))
        self.acc.wait_for_everyone()
        return d

    def resume(self) -> int:
        ckpts = sorted((self.out / "checkpoints").glob("step-*"))
        if not ckpts:
            return 0
        self.acc.load_state(str(ckpts[-1]))
        self.step_no = json.loads((ckpts[-1] / "vprefer_state.json").read_text())["step"]
        self.streams.load(ckpts[-1], self.step_no)  # else the pair / prompt / timestep sequence restarts at 0
        if self.ema is not None and (ckpts[-1] / "ema.safetensors").exists():
            saved = load_file(str(ckpts[-1] / "ema.safetensors"))
            for i, e in enumerate(self.ema):
                e.copy_(saved[str(i)])
        return self.step_no

    def save(self) -> Path:
        """The result, written once (by the main process) after every process has finished its last update."""
        self.acc.wait_for_everyone()
        out = self.out / (self.fam.denoiser_name if not self.config.use_lora else "")
        self._swap_ema()
        try:
            # a collective: under FSDP every rank holds a shard and all of them take part in gathering the full
            # weights (with DDP or one process it is the plain state dict, no copy)
            state = self.acc.get_state_dict(self.unet)
            if not self.acc.is_main_process:
                return out
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "vprefer_rl.json").write_text(json.dumps(
                {"loop": type(self).__name__, "family": self.fam.name, "pretrained": self.config.pretrained, "resolution": self.config.resolution,
                 "use_lora": self.config.use_lora, "steps": self.step_no, **self.provenance(),
                 **({"stopped": self.stopped} if self.stopped else {})}, indent=2))
            if self.config.use_lora:
                return save_lora(self.pipe, self.out, state)
            return save_unet(self.acc.unwrap_model(self.unet), state, out)
        finally:
            self._swap_ema()

    def provenance(self) -> dict:
        """What the loop trained on, recorded in vprefer_rl.json (the DPO loop names its pairs' annotators)."""
        return {}

    def sync_check(self) -> dict:
        """With several processes: are the trained weights the same on every rank? (DDP should keep them so.)"""
        return params_in_sync(self.params)

    def train(self, resume: bool = False) -> list[dict]:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        c = self.config
        self.monitor = HackingMonitor(c.hacking_patience)
        if self.step_no:
            self.monitor.replay(self.out / "metrics.jsonl", self.step_no)
        else:
            m = self.evaluate("before")
            self.log({"phase": "before", **m, **self.monitor.observe(0, m)})
        while self.step_no < c.max_steps:  # every counter here counts optimizer updates
            metrics = self.update()
            self.step_no += 1
            if self.step_no % max(1, c.logging_steps) == 0 or self.step_no == c.max_steps:
                self.log(metrics)
            if c.eval_every and self.step_no % c.eval_every == 0 and self.step_no < c.max_steps:
                m = self.evaluate()
                self.log({**m, **self.monitor.observe(self.step_no, m)})
                if self.monitor.signal and c.stop_on_hacking:
                    self.stopped = f"stopped at step {self.step_no} of {c.max_steps}: {self.monitor.signal}"
                    self.log({"phase": "stopped", "reason": self.stopped})
                    break
            if c.save_steps and self.step_no % int(c.save_steps) == 0:
                self.checkpoint()
        m = self.evaluate("after")
        self.log({"phase": "after", **m, **({} if self.stopped else self.monitor.observe(self.step_no, m)),
                  **self.sync_check()})
        self.save()
        # every rank waits for the main one to finish writing, then all tear down together: a rank that
        # destroys its process group while a peer is still busy leaves the peer's teardown waiting on it
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return self.history

