"""The rectified-flow/transformer family: SD 3.x (``StableDiffusion3Pipeline``) and FLUX (``FluxPipeline``).

Forward process (diffusers' SD3/FLUX training scripts): ``x_t = (1 - s) x_0 + s noise`` with target
``noise - x_0`` (the velocity; ``x_0 = x_t - s v``). ``s`` is drawn from a density over [0, 1]
(``logit_normal``: sigmoid of N(mean, std); ``uniform``; ``mode`` with ``mode_scale``), discretised on the
``num_train_timesteps`` grid as the diffusers scripts do, then shifted the way the checkpoint's sampler
shifts it: ``s' = shift s / (1 + (shift - 1) s)`` with the scheduler's static ``shift`` (SD 3.5: 3.0) or,
for a config with ``use_dynamic_shifting`` (FLUX.1-dev), ``shift = exp(mu)`` with ``mu`` from the image's
token count at the training resolution. The transformer's timestep is ``1000 s`` (FLUX takes ``s``).

Latents stay ``(B, C, H, W)`` in the loops. FLUX packs 2x2 patches into tokens ``(B, H/2 W/2, 4C)`` with
(0, row, col) image position ids and zero text ids, and embeds its distilled guidance instead of
classifier-free guidance: all of that happens inside :meth:`FluxFamily.predict`. The VAEs have a
``shift_factor`` as well as a ``scaling_factor``: latents = (vae latents - shift) * scale.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from vprefer.diffusion.base import Family
from vprefer.diffusion.sd import posterior
from vprefer.errors import InputError

DENSITIES = ("logit_normal", "uniform", "mode")


def shifted(s: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3/FLUX schedulers: more of the draws at high noise for shift > 1."""
    return shift * s / (1 + (shift - 1) * s)


def density(n: int, kind: str, *, logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws in [0, 1] from the training density (diffusers' ``compute_density_for_timestep_sampling``)."""
    if kind == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator) * logit_std + logit_mean)
    u = torch.rand(n, generator=generator)
    if kind == "uniform":
        return u
    if kind == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    raise InputError(f"timestep_density {kind!r} is not one of {', '.join(DENSITIES)}")


class FlowProcess:
    """The rectified-flow forward process, with the same loop-facing methods as ``sd.DDPMProcess``."""

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, density: str = "logit_normal",
                 logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29):
        if density not in DENSITIES:
            raise InputError(f"timestep_density {density!r} is not one of {', '.join(DENSITIES)}")
        self.config = SimpleNamespace(prediction_type="flow", num_train_timesteps=num_train_timesteps, shift=shift,
                                      density=density, logit_mean=logit_mean, logit_std=logit_std,
                                      mode_scale=mode_scale)

    def sigmas(self, index: torch.Tensor) -> torch.Tensor:
        """Shifted sigma of grid index ``index`` (index 0 = pure noise), as the scheduler's table holds it."""
        n = self.config.num_train_timesteps
        return shifted((n - index).to(torch.float32) / n, self.config.shift)

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        u = density(n, c.density, logit_mean=c.logit_mean, logit_std=c.logit_std, mode_scale=c.mode_scale,
                    generator=generator)
        index = (u * c.num_train_timesteps).long().clamp(0, c.num_train_timesteps - 1)
        return self.sigmas(index) * c.num_train_timesteps

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t).float() / self.config.num_train_timesteps

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma(t).to(latents.device).view(-1, *([1] * (latents.ndim - 1)))
        return ((1 - s) * latents + s * noise).to(latents.dtype)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - latents


class FlowRollout:
    """The checkpoint's flow-matching Euler sampler, stateless: ``step(v, t, x)`` returns ``prev_sample``
    (``x + (s_next - s) v``) and ``pred_original_sample`` (``x - s v``), the sigmas those of the pipeline's
    own sampling at this resolution (its shift, FLUX's ``mu`` and sigma grid)."""

    init_noise_sigma = 1.0

    def __init__(self, config, mu: float | None, pipeline_sigmas: bool):
        self.config, self.mu, self.pipeline_sigmas = config, mu, pipeline_sigmas
        self.timesteps = self.sigmas = None

    def set_timesteps(self, n: int, device=None) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        s = FlowMatchEulerDiscreteScheduler.from_config(self.config)
        kw = {"mu": self.mu} if self.config.get("use_dynamic_shifting") else {}
        if self.pipeline_sigmas:
            kw["sigmas"] = np.linspace(1.0, 1 / n, n)
        s.set_timesteps(n, device=device, **kw)
        self.timesteps, self.sigmas = s.timesteps, s.sigmas.to(s.timesteps.device)

    def scale_model_input(self, latents: torch.Tensor, t) -> torch.Tensor:
        return latents

    def step(self, v: torch.Tensor, t, latents: torch.Tensor) -> SimpleNamespace:
        i = int((self.timesteps == torch.as_tensor(t, device=self.timesteps.device)).nonzero()[0])
        s, s_next = self.sigmas[i].to(latents.device), self.sigmas[i + 1].to(latents.device)
        x = latents.float()
        return SimpleNamespace(prev_sample=(x + (s_next - s) * v.float()).to(latents.dtype),
                               pred_original_sample=(x - s * v.float()).to(latents.dtype))


def as_batch(t, n: int, device) -> torch.Tensor:
    """A timestep (scalar, (1,) or (B,)) as a float (n,) tensor: B repeated when CFG doubled the batch."""
    t = torch.as_tensor(t, device=device).reshape(-1).float()
    return t.expand(n) if t.numel() == 1 else t.repeat(n // t.numel())


class FlowFamily(Family):
    denoiser_name = "transformer"
    stochastic_sampler = "flow_sde"
    patch = 2  # latent pixels per token side: SD3's patch_size, FLUX's 2x2 packing

    def __init__(self, pipe):
        super().__init__(pipe)
        self.sched_config = pipe.scheduler.config

    def image_seq_len(self, resolution: int) -> int:
        return (resolution // self.pipe.vae_scale_factor // self.patch) ** 2

    def mu(self, resolution: int) -> float:
        """FLUX's resolution-dependent shift exponent (diffusers' ``calculate_shift``)."""
        c = self.sched_config
        base_len, max_len = c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096)
        base, top = c.get("base_shift", 0.5), c.get("max_shift", 1.15)
        m = (top - base) / (max_len - base_len)
        return self.image_seq_len(resolution) * m + base - m * base_len

    def checkpoint_shift(self, resolution: int) -> float:
        """The shift the checkpoint's sampler applies at this resolution."""
        c = self.sched_config
        if not c.get("use_dynamic_shifting"):
            return float(c.get("shift", 1.0))
        mu = self.mu(resolution)
        return mu if c.get("time_shift_type", "exponential") == "linear" else math.exp(mu)

    def training_scheduler(self, *, resolution: int = 512, timestep_density: str = "logit_normal",
                           timestep_shift: float | None = None, logit_mean: float = 0.0, logit_std: float = 1.0,
                           mode_scale: float = 1.29, **_) -> FlowProcess:
        shift = self.checkpoint_shift(resolution) if timestep_shift is None else timestep_shift
        return FlowProcess(self.sched_config.get("num_train_timesteps", 1000), shift, timestep_density,
                           logit_mean, logit_std, mode_scale)

    def rollout_scheduler(self, resolution: int = 512) -> FlowRollout:
        return FlowRollout(self.sched_config, self.mu(resolution), pipeline_sigmas=False)

    def encode_images(self, pixels, *, sample=False, generator=None):
        c = self.pipe.vae.config
        return (posterior(self.pipe.vae, pixels, sample, generator) - (c.shift_factor or 0.0)) * c.scaling_factor

    def decode(self, latents):
        vae = self.pipe.vae
        x = vae.decode((latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)).to(vae.dtype))
        return (x.sample.float() / 2 + 0.5).clamp(0, 1)


class SD3Family(FlowFamily):
    name = "sd3"

    def __init__(self, pipe):
        super().__init__(pipe)
        self.patch = pipe.transformer.config.patch_size

    def encode(self, prompts, *, cfg, size):
        with torch.no_grad():
            pe, ne, pp, npool = self.pipe.encode_prompt(list(prompts), None, None, device=self.denoiser.device,
                                                        num_images_per_prompt=1, do_classifier_free_guidance=cfg)
        return SimpleNamespace(embeds=torch.cat([ne, pe]) if cfg else pe, pooled=torch.cat([npool, pp]) if cfg else pp)

    def predict(self, model, latents, t, cond, guidance):
        cfg = guidance > 1.0
        x = torch.cat([latents, latents]) if cfg else latents
        v = model(hidden_states=x, timestep=as_batch(t, x.shape[0], x.device), encoder_hidden_states=cond.embeds,
                  pooled_projections=cond.pooled).sample
        if cfg:
            u, c = v.chunk(2)
            v = u + guidance * (c - u)
        return v


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches as tokens, row-major (FluxPipeline's layout)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of height ``h`` and width ``w``."""
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids of the packed tokens: (0, row, col)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxFamily(FlowFamily):
    name = "flux"
    supports_cfg = False
    embedded_guidance = 3.5  # FLUX.1-dev's default guidance_scale

    def __init__(self, pipe):
        super().__init__(pipe)
        self.guidance_embeds = bool(pipe.transformer.config.get("guidance_embeds", False))

    def check_resolution(self, resolution: int) -> None:
        f = 2 * self.pipe.vae_scale_factor
        if resolution % f:
            raise InputError(f"resolution {resolution} is not a multiple of {f} (FLUX packs 2x2 latent patches)")

    def encode(self, prompts, *, cfg, size):
        if cfg:
            raise InputError("FLUX is guidance-distilled: it has no classifier-free guidance in training; set "
                             "train_guidance_scale: 1 and the guidance embedding with embedded_guidance")
        with torch.no_grad():
            pe, pooled, txt = self.pipe.encode_prompt(list(prompts), None, device=self.denoiser.device,
                                                      num_images_per_prompt=1)
        return SimpleNamespace(embeds=pe, pooled=pooled, txt_ids=txt)

    def rollout_scheduler(self, resolution: int = 512) -> FlowRollout:
        return FlowRollout(self.sched_config, self.mu(resolution), pipeline_sigmas=True)

    def predict(self, model, latents, t, cond, guidance):
        b, _, h, w = latents.shape
        g = None
        if self.guidance_embeds:
            g = torch.full((b,), float(self.embedded_guidance), device=latents.device)
        out = model(hidden_states=pack(latents), timestep=as_batch(t, b, latents.device) / 1000, guidance=g,
                    pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds, txt_ids=cond.txt_ids,
                    img_ids=image_ids(h, w, latents.device, latents.dtype)).sample
        return unpack(out, h, w)
