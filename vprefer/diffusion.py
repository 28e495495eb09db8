"""diffusers plumbing shared by generation, ReFL and Diffusion-DPO: load, condition, predict noise,
encode/decode, pixels from files, grids, LoRA I/O. It sits below the stages that use it (generate, rl).

SD 1.5 (``StableDiffusionPipeline``) and SDXL (``StableDiffusionXLPipeline``) are
both handled through the pipeline's own ``encode_prompt``; SDXL's extra
conditioning (pooled text embeddings and size/crop ids) is added here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vprefer.errors import InputError


def stand_in_must_exist(path: str, is_stand_in: bool) -> None:
    """Tiny stand-in pipelines are built by the CLI and the demo (``vprefer.testing``), never by the library."""
    if is_stand_in and not Path(path).exists():
        from vprefer.recipes import RecipeError

        raise RecipeError(f"{path} is a tiny stand-in pipeline that does not exist yet: build it with "
                          f"vprefer.testing.tiny_pipelines.make_tiny_sd({path!r}) (the CLI does this for you)")


def load_pipeline(name_or_path: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", *,
                  vae: str | None = None):
    """A diffusers pipeline from a hub id or folder, safety checker off, progress bars off; ``vae`` names a VAE
    to use instead of the pipeline's own (e.g. an fp16-safe SDXL VAE)."""
    from diffusers import AutoencoderKL, DiffusionPipeline

    kw = {"use_safetensors": True}
    if dtype is not None:
        kw["torch_dtype"] = dtype
    for what, name, cls in (("VAE", vae, AutoencoderKL), ("pipeline", name_or_path, DiffusionPipeline)):
        if name is None:
            continue
        try:
            loaded = cls.from_pretrained(name, **kw)
        except OSError as e:
            raise InputError(f"cannot load diffusers {what} {name!r}: {str(e).splitlines()[0]}") from None
        if cls is AutoencoderKL:
            kw["vae"] = loaded
    pipe = loaded
    upcast_vae(pipe)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def upcast_vae(pipe) -> None:
    """Keep a VAE whose config says ``force_upcast`` in fp32 when the pipeline is loaded in fp16: SDXL's VAE
    overflows in fp16 (NaN latents and black images). diffusers' SDXL pipelines upcast it around decoding;
    the training loops encode and decode outside the pipeline, so the VAE stays fp32 here (a VAE made
    fp16-safe, e.g. madebyollin/sdxl-fp16-fix, says ``force_upcast: false`` and stays fp16)."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)


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


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [0, 1], differentiable."""
    vae = pipe.vae  # often bf16/fp16 while the latents are fp32 (a frozen VAE in the weight dtype)
    x = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    return (x / 2 + 0.5).clamp(0, 1)


def encode_images(pipe, pixels: torch.Tensor, *, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels in [0, 1] -> scaled latents: a sample of the VAE posterior (what the reference training
    scripts use) or its mean (deterministic)."""
    with torch.no_grad():
        dist = pipe.vae.encode((pixels * 2 - 1).to(pipe.vae.dtype)).latent_dist
        if sample:
            lat = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        else:
            lat = dist.mean
        return lat.float() * pipe.vae.config.scaling_factor


def add_lora(unet, r: int, alpha: int, targets: Sequence[str], dropout: float = 0.0) -> None:
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                                target_modules=list(targets)))


def save_lora(pipe, out: Path, state_dict: dict | None = None) -> Path:
    """Write the UNet's LoRA in diffusers format: ``pipe.load_lora_weights(out)`` reads it back. ``state_dict``
    is the UNet's full state when the module itself holds shards (FSDP: ``accelerator.get_state_dict``)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    out.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, state_dict=state_dict))
    type(pipe).save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
    return out


def save_unet(unet, state_dict: dict, out: Path) -> Path:
    """A fully fine-tuned UNet in diffusers' layout (config + safetensors, sharded past 10 GB) from a full
    state dict. ``ModelMixin.save_pretrained`` would write the module's own tensors, which under FSDP are
    shards: the state comes from ``accelerator.get_state_dict`` instead. ``UNet2DConditionModel.from_pretrained``
    reads the folder back."""
    from huggingface_hub import save_torch_state_dict

    out.mkdir(parents=True, exist_ok=True)
    unet.save_config(out)
    save_torch_state_dict({k: v.detach().cpu() for k, v in state_dict.items()}, out,
                          filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size="10GB")
    return out


def load_pixels(path: str | Path, resolution: int) -> torch.Tensor:
    """(3, R, R) in [0, 1]: centre-cropped square, resized."""
    im = Image.open(path).convert("RGB")
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def grid(images: torch.Tensor, cols: int) -> Image.Image:
    """(B, 3, H, W) in [0, 1] -> one PIL image."""
    b, _, h, w = images.shape
    rows = math.ceil(b / cols)
    canvas = torch.ones(3, rows * h, cols * w)
    for i in range(b):
        r, c = divmod(i, cols)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i].float().cpu()
    return Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
