"""The two schedulers a fine-tuning loop needs, built apart from the pipeline's sampler by the pipeline's
family (``vprefer.diffusion``): why the loops never noise with ``pipe.scheduler`` is told in
``vprefer/diffusion/sd.py`` (DDPM/UNet) and ``vprefer/diffusion/flow.py`` (rectified flow).

A training process has ``add_noise(x0, noise, t)``, ``target(x0, noise, t)``, ``sample_timesteps(n,
generator)`` and ``config.prediction_type`` (epsilon, v_prediction, or flow: ``noise - x0``); a rollout
scheduler has ``set_timesteps``, ``timesteps``, ``init_noise_sigma``, ``scale_model_input`` and a ``step``
returning ``prev_sample`` and ``pred_original_sample``.
"""

from __future__ import annotations

import torch

from vprefer.diffusion import for_pipeline
from vprefer.diffusion.sd import PREDICTION_TYPES  # noqa: F401  (re-exported)


def training_scheduler(pipe, **knobs):
    """A fresh forward process with the checkpoint's schedule and target; ``knobs`` are the recipe's
    flow-matching settings (resolution, timestep_density, timestep_shift, logit_mean, logit_std, mode_scale),
    which the DDPM family does not use."""
    return for_pipeline(pipe).training_scheduler(**knobs)


def rollout_scheduler(pipe, resolution: int = 512):
    """The deterministic sampler of ReFL's rollout (DDIM for SD, the checkpoint's flow Euler for SD3/FLUX)."""
    return for_pipeline(pipe).rollout_scheduler(resolution)


def noise_target(sched, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser is trained to predict at (latents, noise, t) under the process's prediction type."""
    return sched.target(latents, noise, t)


def sample_timesteps(sched, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps from the process's density (uniform in [0, num_train_timesteps) for DDPM)."""
    return sched.sample_timesteps(n, generator).to(device)
