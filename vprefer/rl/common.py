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
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from vprefer.recipes import RecipeError
from vprefer.diffusion import add_lora, for_pipeline, grid, load_pipeline, save_lora, save_unet, stand_in_must_exist
from vprefer.dist import params_in_sync
from vprefer.rl.config import DiffusionTrainingConfig, config_from_yaml, flow_knobs  # noqa: F401  (re-exported)
from vprefer.rl.hacking import HackingMonitor, divergence, weighted_mean
from vprefer.rl.ranks import RankStreams, mean_over_processes
from vprefer.rl.rewards import load_reward


def frozen_dtype(config, cuda: bool) -> torch.dtype | None:
    """The dtype to load the pipeline in: on a GPU under bf16/fp16 the frozen parts (VAE, text encoders, a
    LoRA's base UNet) are held in it, as the reference trainers do (SDXL's frozen fp32 weights alone are
    ~13 GB); trainable weights are made fp32 after loading. On a CPU there is no mixed precision: fp32."""
    if not cuda:
        return None
    return torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None


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
        scores: dict = {}
        for name, rm in (("reward", self.reward), ("holdout_reward", self.holdout)):
            if rm is not None:
                scores[name] = s = rm.score_pixels(list(prompts), imgs.to(self.acc.device))
                for k, a in enumerate(rm.aspects):
                    m[f"eval/{name}/{a}"] = s[:, k].mean().item()
        if "holdout_reward" in scores:
            m["eval/holdout_reward"] = weighted_mean(scores["holdout_reward"], self.holdout.aspects,
                                                     self.config.reward_aspects, all_if_none=True)
        m.update(self.train_objective(list(prompts), imgs.to(self.acc.device), scores.get("reward")))
        if len(prompts) > 1:  # diversity across prompts: falls under mode collapse (undefined for one prompt)
            m["eval/pixel_std"] = imgs.std(0).mean().item()
        return m

    def _evaluate_watched(self, tag: str | None = None) -> dict:
        """``evaluate``, averaged over processes (so every rank takes the same stop decision), with the watch's
        ``hacking/*`` verdict."""
        m = mean_over_processes(self.acc, self.evaluate(tag))
        return {**m, **self.monitor.observe(self.step_no, m)}

    def train_objective(self, prompts: list[str], imgs: torch.Tensor, scores: torch.Tensor | None) -> dict:
        """``eval/train_reward``: what the loop optimises, on the eval images (the hacking watch's first half);
        here ``self.reward``'s ``scores`` of them, weighted by the recipe's aspects (no second forward pass)."""
        if scores is None:
            return {}
        return {"eval/train_reward": weighted_mean(scores, self.reward.aspects, self.config.reward_aspects)}

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
        self.monitor = HackingMonitor(c.hacking_patience, c.hacking_min_delta)
        if c.stop_on_hacking and self.holdout is None:
            raise RecipeError("stop_on_hacking needs a held-out reward (--holdout-reward) to watch")
        if self.step_no:  # resumed: this run's evaluations so far, as the main process's metrics.jsonl has them
            from accelerate.utils import broadcast_object_list

            if self.acc.is_main_process:
                self.monitor.replay(self.out / "metrics.jsonl", self.step_no)
            self.monitor.points = broadcast_object_list([self.monitor.points])[0]
            self.monitor.signal = divergence(self.monitor.points, c.hacking_patience, c.hacking_min_delta)
        else:
            m = self._evaluate_watched("before")
            if c.stop_on_hacking and "eval/train_reward" not in m:
                raise RecipeError("stop_on_hacking needs the training reward on the eval prompts (DPO: --reward)")
            self.log({"phase": "before", **m})
        while self.step_no < c.max_steps:  # every counter here counts optimizer updates
            metrics = self.update()
            self.step_no += 1
            if self.step_no % max(1, c.logging_steps) == 0 or self.step_no == c.max_steps:
                self.log(metrics)
            if c.eval_every and self.step_no % c.eval_every == 0 and self.step_no < c.max_steps:
                m = self._evaluate_watched()
                self.log(m)
                if self.monitor.signal and c.stop_on_hacking:  # the same on every rank: decided on averages
                    self.stopped = f"stopped at step {self.step_no} of {c.max_steps}: {self.monitor.signal}"
                    self.log({"phase": "stopped", "reason": self.stopped})
                    break
            if c.save_steps and self.step_no % int(c.save_steps) == 0:
                self.checkpoint()
        m = m if self.stopped else self._evaluate_watched("after")  # stopped: those weights were just evaluated
        self.log({"phase": "after", **m, **self.sync_check()})
        self.save()
        # every rank waits for the main one to finish writing, then all tear down together: a rank that
        # destroys its process group while a peer is still busy leaves the peer's teardown waiting on it
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return self.history

