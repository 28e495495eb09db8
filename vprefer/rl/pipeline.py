"""diffusers plumbing shared by ReFL and Diffusion-DPO: load, condition, predict noise, decode, LoRA I/O.

SD 1.5 (``StableDiffusionPipeline``) and SDXL (``StableDiffusionXLPipeline``) are
both handled through the pipeline's own ``encode_prompt``; SDXL's extra
conditioning (pooled text embeddings and size/crop ids) is added here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch


def load_pipeline(name_or_path: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", *,
                  create_tiny_if_missing: bool = False):
    """``create_tiny_if_missing`` (tests, demo): build a tiny SD pipeline at the path first if nothing is there."""
    from diffusers import DiffusionPipeline

    if create_tiny_if_missing and not Path(name_or_path).exists():
        make_tiny_sd(name_or_path)

    kw = {"use_safetensors": True}
    if dtype is not None:
        kw["torch_dtype"] = dtype
    try:
        pipe = DiffusionPipeline.from_pretrained(name_or_path, **kw)
    except OSError as e:
        raise ValueError(f"cannot load diffusers pipeline {name_or_path!r}: {str(e).splitlines()[0]}") from None
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


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


def save_lora(pipe, out: Path) -> Path:
    """Write the UNet's LoRA in diffusers format: ``pipe.load_lora_weights(out)`` reads it back."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    out.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    type(pipe).save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
    return out


def _tiny_parts(out: Path, sample_size: int, seed: int):
    """Char-level CLIP tokenizer written from local files, a tiny text config and a tiny-VAE factory."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    tdir = out / "_tok"
    tdir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-'":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (tdir / "vocab.json").write_text(json.dumps(vocab))
    (tdir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=48)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=48, bos_token_id=0, eos_token_id=1, pad_token_id=1)

    def vae():  # built last, after the text encoder(s) and UNet: the random-init order is part of the fixture
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                             norm_num_groups=8, sample_size=sample_size * 2)

    return tok, text, vae


_UNET = dict(in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
             attention_head_dim=8, norm_num_groups=8)


def make_tiny_sd(out: str | Path, *, sample_size: int = 16, seed: int = 0) -> Path:
    """A tiny SD-1.5-architecture pipeline from configs (random weights) with a char-level CLIP tokenizer
    written from local files: for tests, the demo and CPU benchmarks. Images are 2x the latent size."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    tok, text, vae = _tiny_parts(out, sample_size, seed)
    te = CLIPTextModel(CLIPTextConfig(**text))
    unet = UNet2DConditionModel(sample_size=sample_size, cross_attention_dim=32, **_UNET)
    sch = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae(), text_encoder=te, tokenizer=tok,
                            scheduler=sch, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out)
    return out


def make_tiny_sdxl(out: str | Path, *, sample_size: int = 16, seed: int = 0) -> Path:
    """The same for the SDXL architecture: two text encoders and the text_time added conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    tok, text, vae = _tiny_parts(out, sample_size, seed)
    te, te2 = CLIPTextModel(CLIPTextConfig(**text)), CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32))
    unet = UNet2DConditionModel(sample_size=sample_size, cross_attention_dim=64, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, **_UNET)
    sch = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    StableDiffusionXLPipeline(unet=unet, vae=vae(), text_encoder=te, text_encoder_2=te2,
                              tokenizer=tok, tokenizer_2=tok, scheduler=sch).save_pretrained(out)
    return out
