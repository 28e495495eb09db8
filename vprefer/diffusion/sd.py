"""The DDPM/UNet family: SD 1.5 / 2.x (``StableDiffusionPipeline``) and SDXL (``StableDiffusionXLPipeline``).

Prompts go through the pipeline's own ``encode_prompt``; SDXL's extra conditioning (pooled text
embeddings and size/crop ids) is added here.

Why the loops do not noise with ``pipe.scheduler``: it is the *sampler* a user picked, and samplers are
stateful and parameterised differently. SDXL ships ``EulerDiscreteScheduler``, whose ``add_noise`` returns
``x + sigma * eps`` (no variance-preserving scaling: input std ~14.6 at t=999) and, after any sampling
call, reuses the last step's sigma = 0, so "noisy" equals clean. Training losses therefore noise with their
own ``DDPMScheduler`` built from the pipeline's scheduler config (the official Diffusion-DPO and diffusers
training scripts do the same), and the target follows the config's ``prediction_type`` (epsilon;
v-prediction for SD 2.x).

ReFL's rollout is a deterministic DDIM chain. ``DDIMScheduler.from_config`` fills keys missing from a
foreign config with DDIM defaults (``clip_sample=True``, ``set_alpha_to_one=True``), which clamps x0 in
latent space and zeroes gradients where it clips, so those are set explicitly here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from vprefer.diffusion.base import Family
from vprefer.errors import InputError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


@dataclass
class Cond:
    """Text conditioning for a batch (classifier-free guidance doubles it: [uncond, cond])."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def kwargs(self) -> dict:
        kw: dict = {"encoder_hidden_states": self.embeds}
        if self.pooled is not None:
            kw["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kw


def encode(pipe, prompts: Sequence[str], *, cfg: bool, size: int) -> Cond:
    device = pipe.unet.device
    with torch.no_grad():
        if is_sdxl(pipe):
            pe, ne, pp, npool = pipe.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                                   do_classifier_free_guidance=cfg)
            ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=pe.dtype).repeat(len(prompts), 1)
            if cfg:
                return Cond(torch.cat([ne, pe]), torch.cat([npool, pp]), torch.cat([ids, ids]))
            return Cond(pe, pp, ids)
        pe, ne = pipe.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                    do_classifier_free_guidance=cfg)
        return Cond(torch.cat([ne, pe]) if cfg else pe)


def predict_noise(unet, latents: torch.Tensor, t, cond: Cond, guidance: float) -> torch.Tensor:
    cfg = guidance > 1.0
    x = torch.cat([latents, latents]) if cfg else latents
    eps = unet(x, t, **cond.kwargs()).sample
    if cfg:
        u, c = eps.chunk(2)
        eps = u + guidance * (c - u)
    return eps


def posterior(vae, pixels: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Pixels in [0, 1] -> unscaled VAE latents: a sample of the posterior or its mean, fp32."""
    with torch.no_grad():
        dist = vae.encode((pixels * 2 - 1).to(vae.dtype)).latent_dist
        if sample:
            return (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(dist.mean)).float()
        return dist.mean.float()


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [0, 1], differentiable."""
    vae = pipe.vae  # often bf16/fp16 while the latents are fp32 (a frozen VAE in the weight dtype)
    x = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    return (x / 2 + 0.5).clamp(0, 1)


def encode_images(pipe, pixels: torch.Tensor, *, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels in [0, 1] -> scaled latents: a sample of the VAE posterior (what the reference training
    scripts use) or its mean (deterministic)."""
    return posterior(pipe.vae, pixels, sample, generator) * pipe.vae.config.scaling_factor


class DDPMProcess(DDPMScheduler):
    """The variance-preserving forward process, with the loop-facing methods every family's process has."""

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kind = self.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.get_velocity(latents, noise, t)
        raise InputError(f"prediction_type {kind!r} is not supported for training")

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training timesteps in [0, num_train_timesteps)."""
        return torch.randint(0, self.config.num_train_timesteps, (n,), generator=generator)


class SDFamily(Family):
    name = "sd"
    denoiser_name = "unet"

    def latent_shape(self, n: int, resolution: int) -> tuple[int, ...]:
        s = resolution // self.pipe.vae_scale_factor
        return (n, self.pipe.unet.config.in_channels, s, s)

    def encode(self, prompts, *, cfg, size):
        return encode(self.pipe, prompts, cfg=cfg, size=size)

    def predict(self, model, latents, t, cond, guidance):
        return predict_noise(model, latents, t, cond, guidance)

    def training_scheduler(self, **knobs) -> DDPMProcess:
        """A fresh variance-preserving forward process with the checkpoint's betas and prediction type (the
        flow-matching knobs are not used by this family)."""
        sched = DDPMProcess.from_config(self.pipe.scheduler.config, clip_sample=False, thresholding=False)
        if sched.config.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction_type {sched.config.prediction_type!r} is not supported for training "
                             f"(supported: {', '.join(PREDICTION_TYPES)})")
        return sched

    def rollout_scheduler(self, resolution: int = 0) -> DDIMScheduler:
        """DDIM: no clipping or thresholding of x0, the checkpoint's final-alpha convention."""
        return DDIMScheduler.from_config(self.pipe.scheduler.config, clip_sample=False, thresholding=False,
                                         set_alpha_to_one=False)

    def encode_images(self, pixels, *, sample=False, generator=None):
        return encode_images(self.pipe, pixels, sample=sample, generator=generator)

    def decode(self, latents):
        return decode(self.pipe, latents)
