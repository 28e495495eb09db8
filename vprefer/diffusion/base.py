"""One interface over the generator families the training loops drive, one implementation per family.

ReFL, Diffusion-DPO, generation and sampling ask a :class:`Family` for what differs between a
DDPM/UNet pipeline (SD 1.5, SDXL: ``sd.py``) and a rectified-flow/transformer pipeline (SD 3.x, FLUX:
``flow.py``) and never branch on the model themselves:

- ``encode``: prompts -> conditioning (the family's text encoders, pooled embeddings, micro-conditioning);
- ``predict``: one denoiser call on unpacked latents ``(B, C, H, W)`` at timestep ``t`` (classifier-free
  guidance where the family has it; FLUX packs 2x2 patches and adds position ids and its guidance embedding
  inside the call);
- ``training_scheduler``: the forward process a loss noises with (``add_noise``, ``target``,
  ``sample_timesteps``, ``config.prediction_type``): DDPM epsilon/v for SD, ``x_t = (1 - s) x_0 + s noise``
  with target ``noise - x_0`` for rectified flow;
- ``rollout_scheduler``: a deterministic sampler whose ``step`` returns ``prev_sample`` and
  ``pred_original_sample`` (x0 from the prediction);
- ``encode_images`` / ``decode``: pixels in [0, 1] <-> scaled (and shifted) latents through the VAE;
- ``latent_shape``, ``denoiser`` / ``denoiser_name``, ``save_lora``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from vprefer.errors import InputError


class Family:
    """What a training loop needs from one generator family (see the module docstring)."""

    name = "?"
    denoiser_name = "unet"  # the pipeline component that is trained (folder name of a full fine-tune)
    supports_cfg = True  # classifier-free guidance in ``predict`` (FLUX.1-dev embeds its guidance instead)
    embedded_guidance: float | None = None  # FLUX.1-dev's guidance embedding; unused by families without one
    # which stochastic sampler online RL (GRPO) turns the rollout into: DDIM with eta > 0 (DDPO, DanceGRPO on
    # SD) or the flow ODE's marginal-preserving SDE (Flow-GRPO); vprefer.rl.grpo_math has both steps
    stochastic_sampler = "ddim"

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    def check_resolution(self, resolution: int) -> None:
        f = self.pipe.vae_scale_factor
        if resolution % f:
            raise InputError(f"resolution {resolution} is not a multiple of this pipeline's VAE factor {f}")

    def latent_shape(self, n: int, resolution: int) -> tuple[int, ...]:
        s = resolution // self.pipe.vae_scale_factor
        return (n, self.pipe.vae.config.latent_channels, s, s)

    # ---- implemented per family
    def encode(self, prompts: Sequence[str], *, cfg: bool, size: int):
        raise NotImplementedError

    def predict(self, model, latents: torch.Tensor, t, cond, guidance: float) -> torch.Tensor:
        raise NotImplementedError

    def training_scheduler(self, **knobs):
        raise NotImplementedError

    def rollout_scheduler(self, resolution: int):
        raise NotImplementedError

    def encode_images(self, pixels: torch.Tensor, *, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save_lora(self, out: Path, state_dict: dict | None = None) -> Path:
        """Write the denoiser's LoRA in diffusers format (``pipe.load_lora_weights(out)`` reads it back)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        out.mkdir(parents=True, exist_ok=True)
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.denoiser, state_dict=state_dict))
        type(self.pipe).save_lora_weights(str(out), **{f"{self.denoiser_name}_lora_layers": layers},
                                          safe_serialization=True)
        return out


def for_pipeline(pipe) -> Family:
    """The family of a loaded pipeline, made once per pipeline (its settings, e.g. the embedded guidance a
    trainer sets, are seen by every later call on the same pipeline)."""
    fam = pipe.__dict__.get("_vprefer_family")
    if fam is not None:
        return fam
    from vprefer.diffusion.flow import FluxFamily, SD3Family
    from vprefer.diffusion.sd import SDFamily

    kinds = {"FluxTransformer2DModel": FluxFamily, "SD3Transformer2DModel": SD3Family}
    if getattr(pipe, "unet", None) is not None:
        fam = SDFamily(pipe)
    elif type(getattr(pipe, "transformer", None)).__name__ in kinds:
        fam = kinds[type(pipe.transformer).__name__](pipe)
    else:
        raise InputError(f"{type(pipe).__name__}: no generator family for this pipeline (supported: SD 1.5/2.x/SDXL "
                         f"UNet pipelines, SD 3.x and FLUX transformer pipelines)")
    pipe.__dict__["_vprefer_family"] = fam
    return fam
