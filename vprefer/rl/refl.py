"""ReFL (ImageReward): reward feedback learning through one late denoising step.

Per step: run T scheduler steps without gradient down to a random step in
[t_lo, t_hi], make one denoiser call with gradient there, predict x0 (DDIM's x0 from
epsilon; for rectified flow ``x0 = x_t - sigma * v``), decode with
the VAE, score with the differentiable reward (``VPScore.score_pixels``), and
minimise ``relu(lambda - reward) * scale``. The pre-training regulariser (noise
MSE on real prompt/image pairs), which ImageReward's paper uses but its released
code omits, is added with weight ``pretrain_weight`` whenever data is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from vprefer.rl.common import DiffusionTrainerBase, DiffusionTrainingConfig, flow_knobs
from vprefer.rl.rewards import weighted_reward
from vprefer.rl.losses import noise_mse, refl_loss
from vprefer.rl.noising import noise_target, rollout_scheduler, sample_timesteps, training_scheduler
from vprefer.diffusion import decode, encode, encode_images, load_pixels
from vprefer.errors import InputError
from vprefer.recipes import RecipeError


@dataclass
class ReFLConfig(DiffusionTrainingConfig):
    num_steps: int = 40
    t_lo: int = 30
    t_hi: int = 39
    lam: float = 2.0
    grad_scale: float = 1e-3
    pretrain_weight: float = 1.0
    train_guidance_scale: float = field(default=5.0, metadata={"help": "CFG while sampling the rollout (1 = off)"})

    def __post_init__(self):
        # checked before any pipeline or reward loads: a bad gradient window fails in a second, not after a load
        if self.num_steps < 1 or not 0 <= self.t_lo <= self.t_hi < self.num_steps:
            raise RecipeError(f"need 0 <= t_lo <= t_hi < num_steps (the rollout's scheduler steps), got t_lo={self.t_lo}, "
                              f"t_hi={self.t_hi}, num_steps={self.num_steps}")
        if self.train_guidance_scale < 0 or self.grad_scale < 0 or self.pretrain_weight < 0:
            raise RecipeError(f"need train_guidance_scale >= 0, grad_scale >= 0 (0: the regulariser alone, the closed loop's control) and pretrain_weight >= 0, got "
                              f"{self.train_guidance_scale}, {self.grad_scale}, {self.pretrain_weight}")
        super().__post_init__()


class ReFLTrainer(DiffusionTrainerBase):
    config: ReFLConfig

    def __init__(self, config: ReFLConfig, *, prompts: Sequence[str], pretrain_data: Sequence[tuple[str, str]] = (),
                 **kw):
        from vprefer.rl.rewards import scored_only

        if scored_only(kw.get("reward")):
            raise InputError(f"ReFL needs a differentiable reward (a VP-Score); {kw['reward']} only scores: "
                             "use it with `vprefer rl grpo`, or as --holdout-reward")
        super().__init__(config, **kw)
        if self.reward is None:
            raise InputError("ReFL needs a differentiable reward (a VP-Score folder or an object with score_pixels)")
        self.prompts, self.pretrain = list(prompts), list(pretrain_data)
        if config.train_guidance_scale > 1 and not self.fam.supports_cfg:
            raise RecipeError(f"{config.pretrained}: this {self.fam.name} pipeline has no classifier-free guidance "
                              f"in training; set train_guidance_scale: 1 (and embedded_guidance for FLUX.1-dev)")
        # deterministic chain, x0 never clipped: DDIM for SD, the checkpoint's flow Euler sampler for SD3/FLUX
        self.sched = rollout_scheduler(self.pipe, config.resolution)
        # the regulariser's forward process (not the sampler)
        self.train_sched = training_scheduler(self.pipe, **flow_knobs(config))

    def _latent_shape(self, n: int) -> tuple[int, ...]:
        return self.fam.latent_shape(n, self.config.resolution)

    def compute_loss(self) -> tuple[torch.Tensor, dict]:
        """Rollout without grad to ts[mid], one UNet call with grad at ts[mid], x0 -> pixels -> reward."""
        c, bs = self.config, self.config.per_device_train_batch_size
        prompts = [self.rng.choice(self.prompts) for _ in range(bs)]
        g = c.train_guidance_scale
        cond = encode(self.pipe, prompts, cfg=g > 1, size=c.resolution)
        self.sched.set_timesteps(c.num_steps, device=self.acc.device)
        ts = self.sched.timesteps
        start = torch.randn(self._latent_shape(bs), generator=self.gen)  # this rank's stream
        latents = start.to(self.acc.device) * self.sched.init_noise_sigma
        mid = self.rng.randint(c.t_lo, c.t_hi)
        with torch.no_grad():
            for t in ts[:mid]:
                eps = self.fam.predict(self.unet, self.sched.scale_model_input(latents, t), t, cond, g)
                latents = self.sched.step(eps, t, latents).prev_sample
        t = ts[mid]
        eps = self.fam.predict(self.unet, self.sched.scale_model_input(latents, t), t, cond, g)
        x0 = self.sched.step(eps, t, latents).pred_original_sample
        pixels = decode(self.pipe, x0)
        r = weighted_reward(self.reward, prompts, pixels, c.reward_aspects)
        loss = refl_loss(r, lam=c.lam, scale=c.grad_scale)
        m = {"loss/refl": loss.item(), "reward/train": r.mean().item(), "t_index": mid,
             "draw/noise": start.flatten()[0].item()}
        if self.pretrain and c.pretrain_weight > 0:
            pre = self.pretrain_loss()
            loss = loss + c.pretrain_weight * pre
            m["loss/pretrain"] = pre.item()
        m["loss/total"] = loss.item()
        return loss, m

    def pretrain_loss(self) -> torch.Tensor:
        """Standard noise-prediction MSE on real (prompt, image) pairs: keeps the model on the data manifold."""
        c, bs = self.config, self.config.per_device_train_batch_size
        items = [self.rng.choice(self.pretrain) for _ in range(bs)]
        px = torch.stack([load_pixels(p, c.resolution) for _, p in items]).to(self.acc.device)
        lat = encode_images(self.pipe, px, sample=c.sample_latents, generator=self.gen)
        noise = torch.randn(lat.shape, generator=self.gen).to(lat)
        t = sample_timesteps(self.train_sched, bs, lat.device, self.gen)
        noisy = self.train_sched.add_noise(lat, noise, t)
        cond = encode(self.pipe, [p for p, _ in items], cfg=False, size=c.resolution)
        pred = self.fam.predict(self.unet, noisy, t, cond, 1.0)
        return noise_mse(pred, noise_target(self.train_sched, lat, noise, t)).mean()


def run_images(run_dir, limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, image path) pairs of a run: the real data for the pre-training regulariser."""
    from vprefer.store import as_run

    j = as_run(run_dir).image_paths()
    if limit is not None:
        j = j.head(limit)
    return list(j.select("prompt", "path").iter_rows())
