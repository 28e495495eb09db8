"""diffusers plumbing shared by generation, ReFL and Diffusion-DPO, below the stages that use it (generate, rl).

``base.Family`` is the one interface the loops drive; ``sd.SDFamily`` (SD 1.5/2.x/SDXL, DDPM/UNet) and
``flow.SD3Family`` / ``flow.FluxFamily`` (rectified flow/transformer) implement it, and
:func:`for_pipeline` picks one for a loaded pipeline. The functions below taking a ``pipe`` dispatch to its
family, so ``encode(pipe, ...)``, ``decode(pipe, ...)`` work for every family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from vprefer.diffusion.base import Family, for_pipeline
from vprefer.diffusion.pipes import (
    add_lora,
    grid,
    load_pipeline,
    load_pixels,
    save_unet,
    stand_in_must_exist,
    upcast_vae,
)
from vprefer.diffusion.sd import Cond, is_sdxl, predict_noise


def encode(pipe, prompts: Sequence[str], *, cfg: bool, size: int):
    """Prompts -> the family's conditioning (CFG doubles the batch: [uncond, cond])."""
    return for_pipeline(pipe).encode(prompts, cfg=cfg, size=size)


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [0, 1], differentiable."""
    return for_pipeline(pipe).decode(latents)


def encode_images(pipe, pixels: torch.Tensor, *, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels in [0, 1] -> scaled latents: a sample of the VAE posterior (what the reference training
    scripts use) or its mean (deterministic)."""
    return for_pipeline(pipe).encode_images(pixels, sample=sample, generator=generator)


def save_lora(pipe, out: Path, state_dict: dict | None = None) -> Path:
    """Write the denoiser's LoRA in diffusers format: ``pipe.load_lora_weights(out)`` reads it back. ``state_dict``
    is the denoiser's full state when the module itself holds shards (FSDP: ``accelerator.get_state_dict``)."""
    return for_pipeline(pipe).save_lora(out, state_dict)


__all__ = ["Family", "for_pipeline", "add_lora", "grid", "load_pipeline", "load_pixels", "save_unet",
           "stand_in_must_exist", "upcast_vae", "Cond", "is_sdxl", "predict_noise", "encode", "decode",
           "encode_images", "save_lora"]
