"""The two schedulers a fine-tuning loop needs, built apart from the pipeline's sampler.

Why not ``pipe.scheduler``: it is the *sampler* a user picked, and samplers are
stateful and parameterised differently. SDXL ships ``EulerDiscreteScheduler``,
whose ``add_noise`` returns ``x + sigma * eps`` (no variance-preserving scaling:
input std ~14.6 at t=999) and, after any sampling call, reuses the last step's
sigma = 0, so "noisy" equals clean. Training losses therefore noise with their
own ``DDPMScheduler`` built from the pipeline's scheduler config (the official
Diffusion-DPO and diffusers training scripts do the same), and the target
follows the config's ``prediction_type`` (epsilon; v-prediction for SD 2.x).

ReFL's rollout is a deterministic DDIM chain. ``DDIMScheduler.from_config`` fills
keys missing from a foreign config with DDIM defaults (``clip_sample=True``,
``set_alpha_to_one=True``), which clamps x0 in latent space and zeroes gradients
where it clips, so those are set explicitly here.
"""

from __future__ import annotations

import torch

from vprefer.errors import InputError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def training_scheduler(pipe):
    """A fresh variance-preserving forward process with the checkpoint's betas and prediction type."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False)
    if sched.config.prediction_type not in PREDICTION_TYPES:
        raise InputError(f"prediction_type {sched.config.prediction_type!r} is not supported for training "
                         f"(supported: {', '.join(PREDICTION_TYPES)})")
    return sched


def rollout_scheduler(pipe):
    """DDIM for ReFL's rollout: no clipping or thresholding of x0, the checkpoint's final-alpha convention."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False,
                                     set_alpha_to_one=False)


def noise_target(sched, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict at (latents, noise, t) under the scheduler's prediction type."""
    kind = sched.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return sched.get_velocity(latents, noise, t)
    raise InputError(f"prediction_type {kind!r} is not supported for training")


def sample_timesteps(sched, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform training timesteps in [0, num_train_timesteps)."""
    t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=generator)
    return t.to(device)
